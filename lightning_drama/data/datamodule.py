"""DramaDataModule: owns the env(s), the replay buffer with DFS and the collector.

``setup("fit")`` builds them and prefills the warm-up with random actions, so that the first
batch can be drawn. ``train_dataloader`` streams batches from an infinite
``IterableDataset`` with ``num_workers=0`` (the replay lives in this process and keeps growing). The
training loop steps the envs between updates through :meth:`DramaDataModule.collect`.

The stream yields :class:`DeferredBatch` es, sampled in ``on_before_batch_transfer``: Lightning
fetches one batch ahead of the update it trains, and a draw at that moment would be in the
checkpoint written after the current update; a run resumed from it would then draw another batch
than the run that went on. So the replay's RNG and DFS counts in a checkpoint are those of the
updates done, and a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.data.collector import Collector, Policy
from lightning_drama.data.replay import SAMPLING_MODES, ReplayBuffer, ReplayFileError, copy_files
from lightning_drama.envs import make_env

log = logging.getLogger(__name__)


class DeferredBatch:
    """A batch of a :class:`ReplayStream` not drawn yet: :meth:`sample` draws it (once)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ReplayStream):
        self._stream: ReplayStream | None = stream

    def sample(self) -> dict[str, torch.Tensor]:
        if self._stream is None:
            raise RuntimeError("this batch was already sampled")
        stream, self._stream = self._stream, None
        return stream.sample()


class ReplayStream(IterableDataset):
    """Endless batches: windows ``[B, L, ...]`` and imagination starts ``start_* [N, C, ...]``.

    With ``deferred=True`` it yields :class:`DeferredBatch` es that draw from the replay only when
    sampled (see the module docstring).
    """

    def __init__(
        self,
        replay: ReplayBuffer,
        batch_size: int,
        seq_len: int,
        imagine_batch: int,
        imagine_context: int,
        deferred: bool = False,
    ):
        self.replay = replay
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.imagine_batch = imagine_batch
        self.imagine_context = imagine_context
        self.deferred = deferred

    def sample(self) -> dict[str, torch.Tensor]:
        windows = self.replay.sample(self.batch_size, self.seq_len)
        starts = self.replay.sample_starts(self.imagine_batch, self.imagine_context)
        batch = {key: torch.from_numpy(value) for key, value in windows.items()}
        batch.update({f"start_{key}": torch.from_numpy(value) for key, value in starts.items()})
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | DeferredBatch]:
        while True:
            yield DeferredBatch(self) if self.deferred else self.sample()


class DramaDataModule(pl.LightningDataModule):
    """Live Atari100k (or any image env) data for Drama.

    Batch keys: ``obs`` uint8 [B, L, 64, 64, 3], ``action`` int64 [B, L], ``reward`` float32
    [B, L], ``terminated``, ``truncated``, ``is_first`` bool [B, L] (B = batch_size, L = seq_len),
    and the same keys prefixed ``start_`` with shape [N, C, ...] (N = imagine_batch,
    C = imagine_context).

    Args:
        env_id: ``"ALE/<Game>-v5"``, a Gymnasium id or ``"package.module:ClassName"``
            (see ``lightning_drama.envs.make_env``).
        num_envs: environments stepped in parallel (per process); each writes its own replay stream.
        capacity: replay rows in total; memory is about capacity x 12,288 bytes (100k = 1.2 GB).
        warmup_steps: env steps of uniform random actions collected in ``setup`` before training.
        total_env_steps: env-step budget of the run, all processes together and the warm-up
            included (Atari100k: 100,000); see ``budget_reached``.
        env_steps_per_update: env steps taken by each :meth:`collect` call (Drama: one per
            update).
        batch_size: world-model windows per batch (B).
        seq_len: rows per world-model window (L).
        imagine_batch: imagination starts per batch (N).
        imagine_context: rows of context per imagination start (C).
        sampling: ``"dfs"`` (Dynamic Frequency-Based Sampling) or ``"uniform"`` (the paper's
            ablation).
        dfs_tau: DFS temperature of the world-model windows.
        imagine_tau: DFS temperature of the imagination starts.
        seed: base seed of the envs and the replay's sampling; each process adds
            ``rank * num_envs``, env i of a process gets its seed + i. ``None`` (default): the
            run's ``seed_everything``, so one flag gives another seed of an experiment.
        env_options: keyword options of ``make_env`` (e.g. ``noop_max``,
            ``repeat_action_probability``, ``life_loss_termination``).
        replay_dir: where the replay arrays live, as memory-mapped ``.npy`` files. ``None``
            (default): ``<run directory>/replay`` when a Trainer with a logger is attached (so a
            checkpoint only has to flush them), in RAM otherwise; ``"memory"``: always in RAM
            (each checkpoint then writes the arrays to ``<run directory>/replay``). A resumed
            run starts from a copy of the replay of the checkpoint it resumes and writes only
            into its own.
        asynchronous_envs: step several envs in subprocesses instead of in turn.
        eval_episodes: episodes per ``validate`` / ``test`` run (and per evaluation during fit);
            the reference's eval.py plays 100.
        eval_envs: evaluation episodes played at once, one env each, with one batched policy call
            per step; each episode still runs to its end. An evaluation is reproducible for the
            same ``eval_seed`` and ``eval_envs``.
        eval_max_steps: env steps after which an evaluation episode is cut (27,000 = the
            108,000-frame Atari cap).
        eval_seed: seed of the first evaluation episode; episode i uses ``eval_seed + i``.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        capacity: int = 100_000,
        warmup_steps: int = 1032,
        total_env_steps: int = 100_000,
        env_steps_per_update: int = 1,
        batch_size: int = 16,
        seq_len: int = 128,
        imagine_batch: int = 1024,
        imagine_context: int = 8,
        sampling: str = "dfs",
        dfs_tau: float = 10.0,
        imagine_tau: float = 10.0,
        seed: int | None = None,
        env_options: dict[str, Any] | None = None,
        replay_dir: str | None = None,
        asynchronous_envs: bool = False,
        eval_episodes: int = 100,
        eval_envs: int = 10,
        eval_max_steps: int = 27_000,
        eval_seed: int = 10_000,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_choice("data", "sampling", sampling, SAMPLING_MODES)
        if not isinstance(env_id, str) or not env_id:
            raise ConfigError(f"data.env_id must be a non-empty string, got {env_id!r}")
        counts = dict(num_envs=num_envs, capacity=capacity, warmup_steps=warmup_steps,
                      total_env_steps=total_env_steps, env_steps_per_update=env_steps_per_update,
                      batch_size=batch_size, imagine_batch=imagine_batch,
                      imagine_context=imagine_context, eval_episodes=eval_episodes,
                      eval_envs=eval_envs, eval_max_steps=eval_max_steps)  # fmt: skip
        for name, value in counts.items():
            check_int("data", name, value, 1)
        # One step of dynamics needs two rows: the KL compares a step's prior with the next.
        check_int("data", "seq_len", seq_len, 2)
        check_int("data", "eval_seed", eval_seed, 0)
        if seed is not None:
            check_int("data", "seed", seed, 0)
        check_float("data", "dfs_tau", dfs_tau, above=0.0)
        check_float("data", "imagine_tau", imagine_tau, above=0.0)
        if total_env_steps <= warmup_steps:
            raise ConfigError(
                f"data.total_env_steps ({total_env_steps}) must be larger than data.warmup_steps "
                f"({warmup_steps}): the budget counts the warm-up's random-action steps too"
            )
        if warmup_steps > capacity:
            raise ConfigError(
                f"data.warmup_steps ({warmup_steps}) must fit in the replay (data.capacity "
                f"{capacity}): the warm-up's rows would overwrite each other"
            )
        stream_capacity = capacity // num_envs
        longest = max(seq_len, imagine_context)
        if longest > stream_capacity:
            raise ConfigError(
                f"data.seq_len ({seq_len}) and data.imagine_context ({imagine_context}) must fit "
                f"in the replay: data.capacity {capacity} / data.num_envs {num_envs} = "
                f"{stream_capacity} rows per env"
            )
        if warmup_steps // num_envs < longest:
            raise ConfigError(
                f"data.warmup_steps ({warmup_steps}) must give every env at least "
                f"max(seq_len, imagine_context) = {longest} steps to sample the first batch; "
                f"raise it to at least {longest * num_envs}"
            )
        self.env_id = env_id
        self.num_envs = num_envs
        self.capacity = capacity
        self.warmup_steps = warmup_steps
        self.total_env_steps = total_env_steps
        self.env_steps_per_update = env_steps_per_update
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.imagine_batch = imagine_batch
        self.imagine_context = imagine_context
        self.sampling = sampling
        self.dfs_tau = dfs_tau
        self.imagine_tau = imagine_tau
        self.seed = seed
        self.env_options = dict(env_options or {})
        self.replay_dir = replay_dir
        self.asynchronous_envs = asynchronous_envs
        self.eval_episodes = eval_episodes
        self.eval_envs = eval_envs
        self.eval_max_steps = eval_max_steps
        self.eval_seed = eval_seed

        # The CLI links num_actions into the model before setup: probe one env now (this also
        # rejects a bad env id at construction).
        probe = make_env(env_id, **self.env_options)
        self.num_actions = int(probe.action_space.n)
        probe.close()

        self.replay: ReplayBuffer | None = None
        self.collector: Collector | None = None
        self._pending_state: dict[str, Any] | None = None
        self._restored: int | None = None  # env_steps of the state restored in setup
        # Checkpoint being resumed (set by the CLI) so setup reopens its replay instead of
        # collecting a fresh warm-up; Lightning itself restores state only after setup.
        self.resume_from: str | None = None
        self._run_dir: str | None = None  # the Trainer's log_dir, absolute (set in setup)
        self._warned_replay_elsewhere = False

    @property
    def base_seed(self) -> int:
        """``seed``, or when it is None the run's ``seed_everything`` (0 without one)."""
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        """Build the replay, envs and collector and prefill the warm-up (for ``fit``).

        When the run resumes from a checkpoint (``resume_from`` set by the CLI, or
        ``trainer.ckpt_path``), the replay files of that checkpoint are copied into this run's
        replay directory (or read into RAM) instead, and no warm-up is collected. ``validate`` /
        ``test`` only need the evaluation envs, made per episode.
        """
        if stage not in (None, "fit") or self.replay is not None:
            return
        if self.trainer is not None and self.trainer.loggers:
            self._run_dir = os.path.abspath(self.trainer.log_dir)  # log_dir: a DDP collective
        if self._pending_state is None:
            self._pending_state = self._state_from_checkpoint()
        resume = self._pending_state
        if resume is None and self.total_env_steps <= self.warmup_steps * self.world_size:
            raise ConfigError(
                f"total_env_steps ({self.total_env_steps}) must be larger than the warm-up of "
                f"all {self.world_size} processes ({self.world_size} x {self.warmup_steps})"
            )
        rank = self.rank
        seed = self.base_seed + rank * self.num_envs
        replay_dir, copied = self._new_replay_dir(), False
        if resume is not None and replay_dir is not None:
            copied = self._copy_checkpoint_replay(resume, replay_dir)
        self.replay = ReplayBuffer(
            self.capacity,
            num_streams=self.num_envs,
            sampling=self.sampling,
            tau=self.dfs_tau,
            imagine_tau=self.imagine_tau,
            imagine_count_scale=self.batch_size / self.imagine_batch,
            seed=seed,
            directory=replay_dir,
            reopen=copied,
        )
        where = f"memory-mapped in {replay_dir}" if replay_dir else "in RAM"
        rank_zero_info(
            f"Replay: {self.capacity:,} rows, {self.replay.nbytes / 2**30:.2f} GiB per process "
            f"({where}), sampling={self.sampling}"
        )
        env_fn = partial(make_env, self.env_id, **self.env_options)
        self.collector = Collector(
            [env_fn] * self.num_envs, self.replay, seed=seed, asynchronous=self.asynchronous_envs
        )
        if resume is not None:  # restored before setup: no warm-up to redo
            self._apply_state(resume, frames_in_files=copied)
            self._pending_state = None
        else:
            self.collector.collect(self.warmup_steps, policy=None)

    def _rank_path(self, path: str) -> str:
        """The per-process variant of a rank-0 path (each DDP rank has its own replay)."""
        if self.world_size > 1 and os.path.basename(path) == "rank_0":
            return os.path.join(os.path.dirname(path), f"rank_{self.rank}")
        return path

    def _run_replay_dir(self, base: str | None = None) -> str | None:
        """`base` (default `<run directory>/replay`), per rank under DDP; None without a run dir."""
        if base is None:
            if self.trainer is None or not self.trainer.loggers:
                return None
            base = os.path.join(self.trainer.log_dir, "replay")  # log_dir: a DDP collective
        return os.path.join(base, f"rank_{self.rank}") if self.world_size > 1 else base

    def _new_replay_dir(self) -> str | None:
        return None if self.replay_dir == "memory" else self._run_replay_dir(self.replay_dir)

    @property
    def _checkpoint_path(self) -> str | None:
        """The checkpoint file being resumed, if any (Lightning resolves names like "last")."""
        for path in (
            self.trainer.ckpt_path if self.trainer is not None else None,
            self.resume_from,
        ):
            if path and os.path.isfile(str(path)):
                return str(path)
        return None

    def _state_from_checkpoint(self) -> dict[str, Any] | None:
        path = self._checkpoint_path
        if path is None:
            return None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = checkpoint.get(type(self).__qualname__)
        return self._own_state(state) if state else None

    def _own_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint holds rank 0's state; other DDP ranks read theirs next to their replay."""
        self._check_world_size(state)
        saved_to = self._saved_replay_dir(state)
        if self.world_size > 1 and self.rank > 0 and saved_to:
            own = os.path.join(saved_to, f"state-{state['env_steps']}.pt")
            state = torch.load(own, map_location="cpu", weights_only=True)
        return state

    def _check_world_size(self, state: dict[str, Any]) -> None:
        """Every DDP process has its own replay and env-step count, and the checkpoint holds rank
        0's: only a run of as many processes can take them over."""
        saved = state.get("world_size")
        if saved is None:  # a checkpoint from before the count: DDP replays were in rank_K/
            ddp = os.path.basename(state.get("replay_saved_to") or "") == "rank_0"
            if ddp == (self.world_size > 1):
                return
            saved = "several" if ddp else 1
        elif saved == self.world_size:
            return
        checkpoint = f" {self._checkpoint_path}" if self._checkpoint_path else ""
        raise ConfigError(
            f"the checkpoint{checkpoint} was written by a run of {saved} "
            f"process{'' if saved == 1 else 'es'}, this run has {self.world_size}: each process "
            "kept its own replay and env-step count, which a run of another size cannot take "
            "over. Resume with as many processes as that run had (--trainer.devices and "
            "--trainer.num_nodes, with its --trainer.strategy; see config.yaml in its run "
            "directory)"
        )

    def _copy_checkpoint_replay(self, state: dict[str, Any], destination: str) -> bool:
        """Copy the replay files of the checkpoint being resumed into ``destination``, this run's
        replay directory; False when the checkpoint saved no frames.

        The resumed run then writes only into its copy, never into a replay that a checkpoint
        still needs (those of the run it continues, or of a sibling run resumed from the same
        checkpoint): each run directory holds the replay its checkpoints name.
        """
        source = self._checkpoint_frames(state)
        if source is None:
            return False
        if os.path.isdir(destination) and os.path.samefile(source, destination):
            checkpoints = os.path.dirname(os.path.realpath(self._checkpoint_path or ""))
            if self._run_dir and os.path.dirname(checkpoints) == os.path.realpath(self._run_dir):
                return True  # the run goes on in its own directory (a logger with a fixed version)
            raise ConfigError(
                f"data.replay_dir {destination} holds the replay of the checkpoint being resumed: "
                "this run would write into it, and that checkpoint (or another run resumed from "
                "it) would then read this run's frames. Give this run another --data.replay_dir "
                "(it starts with a copy of those files), or leave it unset to keep the replay in "
                "the run directory"
            )
        start = time.perf_counter()
        nbytes = copy_files(source, destination, self.capacity, self.num_envs)
        rank_zero_info(
            f"Replay: copied {source} to {os.path.abspath(destination)} ({nbytes / 2**20:,.0f} MiB "
            f"in {time.perf_counter() - start:.1f} s); this run writes only into its copy"
        )
        return True

    def _checkpoint_frames(self, state: dict[str, Any]) -> str | None:
        """The directory with this process's replay frames of a checkpoint's state; None when
        it saved none (an in-RAM replay without a run directory)."""
        saved_to = self._saved_replay_dir(state)
        if saved_to is None or os.path.isdir(saved_to):
            return saved_to
        if int(state["replay"]["size"].sum()) == 0:
            return None
        raise ReplayFileError(
            f"the replay frames of this checkpoint are missing (saved to {saved_to}): keep the "
            "run's replay/ directory with its checkpoints, or start a new run"
        )

    def _saved_replay_dir(self, state: dict[str, Any]) -> str | None:
        """This process's replay files of the checkpoint being resumed.

        A checkpoint in ``<run dir>/checkpoints/`` names its replay by its place relative to
        ``<run dir>`` (``replay``; ``../version_0/replay`` for a run resumed before resumed runs
        had their own copy), so a copied or moved run, or one resumed from another working
        directory, reads its own frames. Otherwise, or if they are not there, the absolute path
        the replay was saved to.
        """
        relative, path = state.get("replay_in_run"), self._checkpoint_path
        if relative and path:
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            candidate = self._rank_path(os.path.normpath(os.path.join(run_dir, relative)))
            if os.path.isfile(os.path.join(candidate, "obs.npy")):
                return candidate
            if state.get("replay_saved_to") and not self._warned_replay_elsewhere:
                self._warned_replay_elsewhere = True
                log.warning(
                    "replay: no %s next to the checkpoint's run directory; reading %s, where the "
                    "replay was saved (copy or move a run directory together with its replay/, "
                    "and with the run directory whose replay it names)",
                    relative, self._rank_path(state["replay_saved_to"]),
                )  # fmt: skip
        saved_to = state.get("replay_saved_to")
        return self._rank_path(saved_to) if saved_to else None

    def train_dataloader(self) -> DataLoader:
        if self.replay is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        stream = ReplayStream(
            self.replay,
            self.batch_size,
            self.seq_len,
            self.imagine_batch,
            self.imagine_context,
            deferred=True,
        )
        # batch_size=None: the stream yields whole batches; num_workers=0: the replay is live.
        # Its own generator: making the iterator draws a seed, which must not come from the
        # global RNG that the checkpoint restores for the policy and dropout.
        return DataLoader(stream, batch_size=None, num_workers=0, generator=torch.Generator())

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Draw a deferred batch now, right before the update that trains on it."""
        if isinstance(batch, DeferredBatch):
            batch = batch.sample()
            if self.trainer is not None:
                batch = self.trainer.precision_plugin.convert_input(batch)
        return batch

    def collect(self, policy: Policy | None = None) -> list[dict[str, float]]:
        """Take ``env_steps_per_update`` env steps with ``policy``; returns finished episodes."""
        if self.collector is None:
            raise RuntimeError("call setup('fit') before collect()")
        return self.collector.collect(self.env_steps_per_update, policy)

    @property
    def env_steps(self) -> int:
        """Env steps taken by this process."""
        return self.collector.env_steps if self.collector is not None else 0

    @property
    def env_steps_all_processes(self) -> int:
        """Env steps taken by all processes together (each takes as many as this one): what
        ``total_env_steps`` counts."""
        return self.env_steps * self.world_size

    @property
    def budget_reached(self) -> bool:
        """True once all processes together took ``total_env_steps``."""
        return self.env_steps_all_processes >= self.total_env_steps

    def state_dict(self) -> dict[str, Any]:
        """Counters, DFS counts and RNG states, where the replay frames are, and the number of
        processes (a checkpoint resumes only with as many).

        The frames are not put into the checkpoint: a memory-mapped replay (the default under a
        Trainer) is flushed in place, an in-RAM one is written to ``<run directory>/replay``
        (see ``ReplayBuffer.save``: a save killed midway leaves the previous checkpoint
        resumable). Under DDP every rank also writes its own state next to its replay, since the
        checkpoint only holds rank 0's.
        """
        if self.replay is None:
            return dict(self._pending_state or {})
        saved_to = self.replay.directory
        if saved_to is None:
            saved_to = self._run_replay_dir()
        in_run = None
        if saved_to is not None:
            saved_to = os.path.abspath(saved_to)
            self.replay.save(saved_to)
            # Relative to the run directory, when it is this run's or a sibling run's replay.
            if self._run_dir and saved_to.startswith(os.path.dirname(self._run_dir) + os.sep):
                in_run = os.path.relpath(saved_to, self._run_dir)
        state = {
            # numpy arrays become tensors: checkpoints must load with torch.load(weights_only=True)
            "replay": _checkpoint_safe(self.replay.state_dict(include_data=False)),
            "collector": _checkpoint_safe(self.collector.state_dict()),
            "replay_dir": self.replay.directory,
            "replay_saved_to": saved_to,
            "replay_in_run": in_run,
            "env_steps": self.env_steps,
            "world_size": self.world_size,
        }
        if saved_to is not None and self.world_size > 1:
            torch.save(state, os.path.join(saved_to, f"state-{self.env_steps}.pt"))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.trainer is not None and self.trainer.state.fn not in (None, TrainerFn.FITTING):
            return  # validate / test play fresh episodes: neither replay nor counters are used
        state_dict = self._own_state(state_dict)
        if self.replay is None:
            self._pending_state = state_dict
        elif self._restored is not None and self._restored == state_dict.get("env_steps"):
            pass  # setup already restored this state from the checkpoint file
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: dict[str, Any], frames_in_files: bool = False) -> None:
        """Restore ``state``; ``frames_in_files``: the replay's files are those of the state
        already (setup copied them), else its frames are read from where they were saved."""
        self.replay.load_state_dict(state["replay"])
        self.collector.load_state_dict(state["collector"])
        frames = None if frames_in_files else self._checkpoint_frames(state)
        if frames is not None:
            self.replay.load(frames)
        self._restored = state.get("env_steps")
        self._top_up_after_resume()

    def _top_up_after_resume(self) -> None:
        """A resume may drop replay rows an interrupted run overwrote after the checkpoint (see
        ReplayBuffer); with fewer rows than one window left, collect the rest as the warm-up
        does (random actions), so that the first batch can be drawn."""
        short = max(self.seq_len, self.imagine_context) - int(self.replay.size.min())
        if short <= 0:
            return
        log.warning(
            "replay: %s rows per env left after the resume, fewer than one window; collecting "
            "%s steps per env with random actions first",
            self.replay.size.tolist(), short,
        )  # fmt: skip
        self.collector.collect(short * self.num_envs, policy=None)
        self.collector.policy_state = None  # it did not see those steps: start afresh

    # ---- evaluation ----------------------------------------------------------------------

    def make_eval_env(self) -> Any:
        """A fresh environment for evaluation episodes (same options as training)."""
        return make_env(self.env_id, **self.env_options)

    def _episode_indices(self) -> DataLoader:
        # One batch of `eval_envs` episode indices per step, played at once; under DDP Lightning
        # shards the batches over the ranks. Its own generator, as for training: iterating it
        # leaves the global RNG alone.
        episodes = list(range(self.eval_episodes))
        return DataLoader(episodes, batch_size=self.eval_envs, generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._episode_indices()

    def test_dataloader(self) -> DataLoader:
        return self._episode_indices()


def _checkpoint_safe(obj: Any) -> Any:
    """numpy arrays and scalars -> tensors and Python numbers, recursively."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: _checkpoint_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_checkpoint_safe(value) for value in obj)
    return obj
