"""Callbacks: the environment loop between updates, the env-step budget, and the checkpoints
that make a run survive a crash, a preemption or Ctrl-C."""

from __future__ import annotations

import glob
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

# Exit codes of a run stopped by a signal after saving its checkpoint: 128 + the signal's number,
# as a shell reports a process killed by it.
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


# Seconds per env step of the paper-size agent on our 2-core CPUs (README, Performance): fp32
# and bf16-mixed, fastest and slowest VM measured.
CPU_SECONDS_PER_STEP = {"fp32": (10.0, 20.0), "bf16": (5.5, 6.7)}


def cpu_cost_note(trainer: pl.Trainer, pl_module: pl.LightningModule, steps_left: int) -> str:
    """One line of warning when a paper-size model trains a long budget on a CPU (else "")."""
    world_model = getattr(pl_module, "world_model", None)
    if trainer.accelerator.__class__.__name__ != "CPUAccelerator" or world_model is None:
        return ""
    if world_model.d_model < 512 or steps_left < 10_000:
        return ""
    kind = "bf16" if "bf16" in str(trainer.precision) else "fp32"
    low, high = (steps_left * s / 3600 for s in CPU_SECONDS_PER_STEP[kind])
    return (
        f"Note: the paper-size model on a CPU takes about {CPU_SECONDS_PER_STEP[kind][0]:.0f}-"
        f"{CPU_SECONDS_PER_STEP[kind][1]:.0f} s per env step ({kind}, 2-core VMs, README: "
        f"Performance), so {steps_left:,} env steps take roughly {low:,.0f}-{high:,.0f} h. "
        "For a first result in minutes: python main.py fit --config configs/debug.yaml; for "
        "Atari100k, a GPU."
    )


class DramaProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with the env-step counter shown as the integer it is."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if "env_steps" in metrics:
            metrics["env_steps"] = int(metrics["env_steps"])
        return metrics


class RunInterrupted(SystemExit):
    """Ends the process after a signal, once `last.ckpt` is written (exit code 130 or 143)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its target and renames it into place.

    Lightning's own save goes through fsspec, which writes into `$TMPDIR` and then moves the
    file: when `$TMPDIR` is another filesystem (a tmpfs) the move is a copy, and a kill during it
    leaves a truncated `last.ckpt`. A rename within one directory is atomic: a reader sees the old
    file or the new one, never a part. Temporary files of a killed save (`*.tmp-<pid>`) are
    removed by `remove_orphans` when a run starts.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote storage
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{path}.tmp-{os.getpid()}"
        try:
            with open(temporary, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        _fsync_directory(directory)

    @staticmethod
    def remove_orphans(directory: str) -> list[str]:
        """Delete the temporary files that killed saves left in `directory`."""
        orphans = glob.glob(os.path.join(glob.escape(directory), "*.ckpt.tmp-*"))
        for orphan in orphans:
            os.remove(orphan)
        return orphans


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


PROGRESS_FILE = "progress.json"  # in the run directory (see EnvironmentLoop._write_progress)
PROGRESS_SECONDS = 10.0


class EnvironmentLoop(pl.Callback):
    """Steps the live environment(s) before every training step, ends the run on budget, and
    keeps `last.ckpt` fresh enough that a crash loses little.

    Before each update the DataModule's collector takes `data.env_steps_per_update` steps with
    the module's policy. After each update the run stops once `data.total_env_steps` env steps
    were taken by all processes together; `trainer.max_steps` is not used for this, since with
    two optimisers `global_step` counts optimiser steps, not updates.

    Crash safety: `last.ckpt` is also written every `checkpoint_every_minutes` of training (so a
    crash loses at most that much), and on SIGTERM (preemption) or the first Ctrl-C the current
    update is finished, `last.ckpt` written and the process exits with code 143 or 130, saying
    how to resume; a second Ctrl-C stops at once. Checkpoints are written atomically
    (`AtomicCheckpointIO`).

    Args:
        checkpoint_every_minutes: minutes of training between time-based `last.ckpt` writes
            (0: none; the periodic and final checkpoints of `ModelCheckpoint` stay as they are).
    """

    def __init__(self, checkpoint_every_minutes: float = 30.0) -> None:
        if isinstance(checkpoint_every_minutes, bool) or not checkpoint_every_minutes >= 0:
            from lightning_drama.checks import ConfigError

            raise ConfigError(
                f"EnvironmentLoop.checkpoint_every_minutes must be >= 0, "
                f"got {checkpoint_every_minutes!r}"
            )
        self.checkpoint_every_minutes = checkpoint_every_minutes
        self._last_save = time.monotonic()
        self._signal: str | None = None  # "SIGINT" once Ctrl-C was pressed
        self._previous_sigint: Any = None
        self._progress_path: str | None = None  # <run dir>/progress.json (rank 0)
        self._last_progress = 0.0
        self._fit_start = time.monotonic()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Temporary files of saves that were killed: in this run's checkpoint directory and in
        # that of the checkpoint it resumes (known once it is restored, i.e. here).
        callback = trainer.checkpoint_callback
        directories = {getattr(callback, "dirpath", None)}
        if trainer.ckpt_path and "://" not in str(trainer.ckpt_path):
            directories.add(os.path.dirname(os.path.abspath(str(trainer.ckpt_path))))
        for directory in directories - {None}:
            # Local directories only: remote storage saves through Lightning's own CheckpointIO.
            if trainer.is_global_zero and "://" not in directory and os.path.isdir(directory):
                for orphan in AtomicCheckpointIO.remove_orphans(directory):
                    rank_zero_info(f"Removed {orphan}, left by a checkpoint save that was killed")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (
            self._previous_sigint is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self._signal = "SIGINT"
        # A second Ctrl-C interrupts at once (Lightning then stops without a checkpoint).
        signal.signal(signal.SIGINT, self._previous_sigint or signal.default_int_handler)
        print(
            "\nCtrl-C: finishing this update and writing last.ckpt (press again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save = self._fit_start = time.monotonic()
        # log_dir is a collective under DDP: every rank asks, rank 0 writes.
        log_dir = trainer.log_dir if trainer.loggers else None
        if trainer.is_global_zero and log_dir is not None and "://" not in log_dir:
            self._progress_path = os.path.join(log_dir, PROGRESS_FILE)
        datamodule = self._datamodule(trainer)
        now = datamodule.env_steps_all_processes
        if datamodule.budget_reached:  # e.g. a finished run resumed with the same budget
            rank_zero_info(
                f"The budget of {datamodule.total_env_steps:,} env steps is reached already "
                f"({now:,}): nothing to train. Raise --data.total_env_steps to go on."
            )
            trainer.should_stop = True
            return
        rank_zero_info(
            f"Training until {datamodule.total_env_steps:,} env steps "
            f"(now {now:,}, {datamodule.env_steps_per_update} per update per process)"
        )
        note = cpu_cost_note(trainer, pl_module, datamodule.total_env_steps - now)
        if note:
            rank_zero_info(note)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        datamodule = self._datamodule(trainer)
        self._count_to_budget(trainer, datamodule, batch_idx)
        with trainer.precision_plugin.forward_context():
            episodes = datamodule.collect(pl_module.policy)
        pl_module.record_episodes(episodes)
        pl_module.log("env_steps", float(pl_module.env_steps), prog_bar=True, logger=False)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        datamodule = self._datamodule(trainer)
        if datamodule.budget_reached:
            trainer.should_stop = True
            self._save_last(trainer)
            self._write_progress(trainer, force=True)
            return
        self._write_progress(trainer)
        stop = self._signal or ("SIGTERM" if trainer.received_sigterm else None)
        if trainer.world_size > 1:  # every rank takes part in a save: decide together
            stop = (
                "SIGTERM"
                if trainer.strategy.reduce_boolean_decision(bool(stop), all=False)
                else None
            )
        if stop:
            self._stop(trainer, stop)
        minutes = self.checkpoint_every_minutes
        due = minutes > 0 and time.monotonic() - self._last_save >= 60 * minutes
        if trainer.world_size > 1:
            due = trainer.strategy.reduce_boolean_decision(due, all=False)
        if due:
            self._save_last(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # SIGTERM during an evaluation: Lightning stops there; the training state is that of the
        # last finished update, so it can still be saved.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            _print_stop(trainer, "SIGTERM", self._save_last(trainer))

    def _stop(self, trainer: pl.Trainer, name: str) -> None:
        _print_stop(trainer, name, self._save_last(trainer))
        self._write_progress(trainer, force=True)
        raise RunInterrupted(EXIT_CODES[name])

    def _write_progress(self, trainer: pl.Trainer, force: bool = False) -> None:
        """Every `PROGRESS_SECONDS` (and at the end), `<run dir>/progress.json`: env steps done
        and budgeted, updates, seconds of training in this process. What the benchmark runner
        shows as a live status; replaced atomically, so a reader never sees half a file."""
        now = time.monotonic()
        if self._progress_path is None or (
            not force and now - self._last_progress < PROGRESS_SECONDS
        ):
            return
        self._last_progress = now
        datamodule = self._datamodule(trainer)
        progress = {
            "env_steps": int(datamodule.env_steps_all_processes),
            "total_env_steps": int(datamodule.total_env_steps),
            "updates": int(trainer.fit_loop.epoch_loop.batch_progress.total.processed),
            "seconds": round(now - self._fit_start, 1),
            "time": time.time(),
        }
        os.makedirs(os.path.dirname(self._progress_path), exist_ok=True)
        partial = self._progress_path + ".partial"
        with open(partial, "w") as file:
            json.dump(progress, file)
        os.replace(partial, self._progress_path)

    @staticmethod
    def _count_to_budget(trainer: pl.Trainer, datamodule: Any, batch_idx: int) -> None:
        """Give the (tqdm) progress bar of the endless replay stream the number of updates to
        the budget, so that it shows how far the run is and when it will end."""
        callback = trainer.progress_bar_callback
        if not isinstance(callback, TQDMProgressBar):  # e.g. Rich's: left as Lightning shows it
            return
        bar = callback.train_progress_bar if callback.is_enabled else None
        if bar is None or getattr(bar, "total", 0) is not None:
            return
        per_update = datamodule.env_steps_per_update * trainer.world_size
        left = datamodule.total_env_steps - datamodule.env_steps_all_processes
        bar.total = batch_idx + max(1, math.ceil(left / per_update))
        # Resumed within the epoch: the updates before it were not done in this process, so they
        # must not count into the rate and the estimate of the time left.
        bar.initial = bar.n = batch_idx
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def _save_last(self, trainer: pl.Trainer) -> str | None:
        """Write `last.ckpt` of the run's ModelCheckpoint(save_last=True) now; returns its path
        (None without such a callback). ModelCheckpoint itself only refreshes last.ckpt together
        with a periodic save, so the final state of a budget-ended run is written here too."""
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
            return None
        if callback.dirpath is None:
            return None
        path = os.path.join(
            callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        )
        # Should ModelCheckpoint save "last" once more (at the end of training, when it saved
        # nothing in this run), it writes this same file rather than a last-v1.ckpt beside it.
        # Set before saving, as ModelCheckpoint does: the path is part of its state.
        callback.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)
        self._last_save = time.monotonic()
        return path

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "collect"):
            raise RuntimeError(
                "DramaModule trains on live environments: pass a DramaDataModule to trainer.fit "
                "(python main.py fit --config configs/atari.yaml sets one up)"
            )
        return datamodule


def _print_stop(trainer: pl.Trainer, name: str, saved: str | None) -> None:
    """Where the run stopped and how to go on (rank 0, on stderr)."""
    if not trainer.is_global_zero:
        return
    steps = trainer.datamodule.env_steps_all_processes
    if saved:
        then = f"last.ckpt written. Resume with the same command and --ckpt_path {saved}"
    else:
        then = "no checkpoint written (no ModelCheckpoint with save_last=True is configured)"
    print(f"\n{name}: stopped after {steps:,} env steps; {then}", file=sys.stderr, flush=True)
