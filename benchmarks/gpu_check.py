"""One-command GPU check: fused kernels, device tests, speed and targets, in one JSON and one table.

    python -m benchmarks.gpu_check                                   # the GPU (cuda): ~3-8 min
    python -m benchmarks.gpu_check --wheels wheels                   # + mamba-ssm from wheels/
    python -m benchmarks.gpu_check --device cpu --tiny --skip-tests  # CI: ~30 s on a CPU

Phases, in this order (`--out`/gpu_check.json and .md are rewritten after each, so a run killed by
a time limit still leaves what it measured; the speed comes before the tests for that reason):

1. fused kernels: with `--wheels DIR`, `pip install --no-index --find-links DIR
   --only-binary=:all: mamba-ssm causal-conv1d` (never the network; wheels only, so that a source
   distribution cannot start a half-hour CUDA build); then whether `mamba_ssm` and
   `causal_conv1d` import, their versions, and whether lightning_drama's dispatch found them.
2. speed: the real Trainer + DramaModule + DramaDataModule of configs/atari.yaml (Pong, the
   collector included, `bf16-mixed`; `--tiny`: configs/debug.yaml's model, smaller batches):
   `--warmup-updates` untimed updates, then `--updates` updates timed as they run (no added
   synchronisation: the real ms per env step), then as many again with each part wrapped, on
   this run's instances only, in device synchronisations (the split: replay sampling, transfer to
   the device, acting, env step, world-model update, imagination, actor-critic update). If the
   warm-up's pace says the timed updates would take more than `--speed-budget` seconds, fewer are
   timed. FLOPs of one update: `benchmarks.fit.count_update_flops` (the pure-PyTorch path, on a
   fresh model), against a bf16 matmul measured in the same run. Peak device memory, the
   projected Atari100k hours and, with `--compile`, the compile time (first update minus the
   steady state).
3. no NaN: the losses of every update of the `bf16-mixed` run, and a short `16-mixed` run (CUDA
   only: Lightning has no fp16 AMP on the CPU).
4. tests (unless `--skip-tests`): `pytest -m device --device <device> tests/` and
   `tests/test_kernels.py`, each in a subprocess with a timeout; pass / fail counts and the tail.

Targets (issue): projected Atari100k <= 3 h (<= 108 ms per env step; stretch <= 1.5 h), and
imagination + actor-critic update <= 2x the world-model update. The exit code is 1 when a phase
failed with an error (a target missed is not an error).

What the GPU machine needs beside torch (it has no internet: everything comes from a folder of
wheels made elsewhere, for its platform and Python):

- the project's runtime dependencies (requirements.txt): lightning, torchmetrics, gymnasium,
  ale-py, opencv-python-headless, einops, omegaconf, jsonargparse[signatures], tensorboard,
  numpy, matplotlib (and theirs, e.g. pyyaml);
- for the tests phase: pytest (requirements-dev.txt also lists pytest-timeout; without
  nbformat / nbclient / transformers a few test files fail to import, which the check reports
  and goes past);
- optionally the fused kernels: mamba-ssm and causal-conv1d, and what they depend on:
  transformers (`import mamba_ssm` imports it) with its dependencies, ninja, packaging,
  setuptools, einops (triton comes with torch).

On a machine with internet (for the GPU machine's Python version and architecture):

    pip download -d wheels -r requirements.txt pytest transformers ninja packaging setuptools \
        --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64

(lightning depends on torch, so this also fetches torch and its nvidia-* wheels: delete them,
`rm wheels/torch-* wheels/nvidia_* wheels/triton-*`; the GPU machine's own torch satisfies them.)
mamba-ssm and causal-conv1d publish only source distributions on PyPI (their setup.py fetches a
prebuilt wheel from GitHub at install time, or compiles for a long time with nvcc): put into
`wheels/` the prebuilt wheels of their GitHub releases (state-spaces/mamba,
Dao-AILab/causal-conv1d) that match the GPU machine's torch, CUDA, Python and C++ ABI, or build
them with `pip wheel --no-build-isolation --no-deps mamba-ssm causal-conv1d -w wheels` on a
machine with the same torch and a CUDA toolkit. On the GPU machine install the project first,
`pip install --no-index --find-links wheels -r requirements.txt pytest`, then run this check
with `--wheels wheels`: the check itself installs only mamba-ssm and causal-conv1d from there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ATARI100K_STEPS = 100_000
TARGET_HOURS = 3.0  # issue: projected Atari100k <= 3 h ...
STRETCH_HOURS = 1.5  # ... stretch <= 1.5 h
TARGET_IMAGINATION_RATIO = 2.0  # imagination + actor-critic <= 2x the world-model update
# The parts of one update in the split run, in the order they happen.
PARTS = (
    "replay_sample",  # DeferredBatch drawn in on_before_batch_transfer (DFS + numpy -> torch)
    "to_device",  # transfer_batch_to_device: the windows and imagination starts to the device
    "acting",  # the policy's forward in EnvironmentLoop.on_train_batch_start
    "env_step",  # the rest of the collect: env.step, replay write
    "world_model",  # loss + backward + clip + optimiser step + scheduler
    "imagination",  # world_model.imagine
    "actor_critic",  # loss + backward + step + slow critic + logging
)
TINY_DATA_KEYS = ("capacity", "warmup_steps", "batch_size", "seq_len", "imagine_batch")
TINY_DATA_KEYS += ("imagine_context",)
# --tiny: configs/debug.yaml's model, with still smaller batches (seconds on a busy 2-core CPU).
TINY_DATA = {"batch_size": 2, "seq_len": 16, "imagine_batch": 16, "warmup_steps": 32}

_START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - _START:6.1f} s] {message}", flush=True)


# --------------------------------------------------------------------------- pure arithmetic


def atari100k_projection(
    ms_per_update: float, ms_per_warmup_step: float, atari_data: dict[str, Any]
) -> dict[str, Any]:
    """Wall-clock of one Atari100k run with configs/atari.yaml's data settings.

    The budget (`total_env_steps`, 100,000) includes the `warmup_steps` random-action steps,
    which take no update; every later update takes `env_steps_per_update` env steps.
    """
    total = int(atari_data.get("total_env_steps", ATARI100K_STEPS))
    warmup = int(atari_data["warmup_steps"])
    per_update = int(atari_data.get("env_steps_per_update", 1))
    updates = math.ceil((total - warmup) / per_update)
    seconds = (updates * ms_per_update + warmup * ms_per_warmup_step) / 1000
    return {
        "total_env_steps": total,
        "warmup_steps": warmup,
        "env_steps_per_update": per_update,
        "updates": updates,
        "ms_per_update": ms_per_update,
        "ms_per_env_step": ms_per_update / per_update,
        "ms_per_warmup_step": ms_per_warmup_step,
        "hours": seconds / 3600,
    }


def verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each {"value", "limit", "verdict"} (SKIP where not measured)."""
    out: dict[str, dict[str, Any]] = {}
    projection = results.get("atari100k")
    hours = projection["hours"] if projection else None
    for name, limit in (("atari100k_le_3h", TARGET_HOURS), ("atari100k_le_1.5h", STRETCH_HOURS)):
        out[name] = {
            "value": hours,
            "limit": limit,
            "ms_per_env_step": projection["ms_per_env_step"] if projection else None,
            "ms_limit": limit * 3.6e6 / ATARI100K_STEPS,
            "verdict": verdict(None if hours is None else hours <= limit),
        }
    split = (results.get("speed") or {}).get("split")
    ratio = None
    if split and split["parts_ms"]["world_model"] > 0:
        parts = split["parts_ms"]
        ratio = (parts["imagination"] + parts["actor_critic"]) / parts["world_model"]
    out["imagination_ac_le_2x_wm"] = {
        "value": ratio,
        "limit": TARGET_IMAGINATION_RATIO,
        "verdict": verdict(None if ratio is None else ratio <= TARGET_IMAGINATION_RATIO),
    }
    for precision, check in (results.get("nan_check") or {}).items():
        out[f"no_nan_{precision}"] = {
            "value": check.get("finite"),
            "verdict": verdict(check.get("finite")),
            "note": check.get("note", ""),
        }
    syncs = (results.get("host_syncs") or {}).get("host_syncs_per_update")
    out["no_host_syncs_in_the_training_step"] = {
        "value": None if syncs is None else max(syncs, default=0),
        "verdict": verdict(None if syncs is None else max(syncs, default=0) == 0),
        "note": "bf16-mixed, updates that are not logging steps; CUDA only",
    }
    return out


PYTEST_WORDS = ("passed", "failed", "skipped", "deselected", "errors", "error", "xfailed")
PYTEST_WORDS += ("xpassed",)


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's summary line ("3 passed, 1 skipped, 9 deselected in 2.1s")."""
    lines = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    counts: dict[str, int] = {}
    for number, word in re.findall(
        r"(\d+) (" + "|".join(PYTEST_WORDS) + r")\b", "\n".join(lines[-1:])
    ):
        counts["errors" if word == "error" else word] = int(number)
    return counts


# --------------------------------------------------------------------------- phase 1: kernels


def install_kernels(wheels: str | None, timeout: float) -> dict[str, Any]:
    if not wheels:
        return {"installed": False, "reason": "no --wheels folder given"}
    if not os.path.isdir(wheels):
        return {"installed": False, "reason": f"{wheels} is not a folder"}
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels]
    command += ["--only-binary=:all:", "mamba-ssm", "causal-conv1d"]
    progress(f"installing the fused kernels: {' '.join(command)}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"installed": False, "reason": f"pip did not finish in {timeout:.0f} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with {done.returncode}"
        return {"installed": False, "reason": reason, "pip_tail": done.stderr[-2000:]}
    return {"installed": True, "reason": ""}


def kernel_status() -> dict[str, Any]:
    """Whether mamba_ssm / causal_conv1d import (with their versions) and lightning_drama's
    dispatch found them (imported here for the first time, after any install)."""
    from importlib import metadata

    importlib.invalidate_caches()
    status: dict[str, Any] = {}
    for module, dist in (("mamba_ssm", "mamba-ssm"), ("causal_conv1d", "causal-conv1d")):
        entry: dict[str, Any] = {"import": False, "version": None, "error": ""}
        try:
            entry["version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            entry["error"] = "not installed"
        if entry["version"]:
            try:
                importlib.import_module(module)
                entry["import"] = True
            except Exception as error:  # noqa: BLE001 - any failure: not usable
                entry["error"] = f"{type(error).__name__}: {error}"[:300]
        status[module] = entry
    from lightning_drama.ssm import kernels

    status["fused_scan_available"] = kernels.mamba_chunk_scan_combined is not None
    status["fused_conv_available"] = kernels.causal_conv1d_fn is not None
    return status


# --------------------------------------------------------------------------- phase 2: speed


class Sync:
    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self._torch = torch

    def __call__(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()


def wrap_attribute(obj, name: str, make):
    """Sets `obj.name = make(obj.name)` on this instance only; returns the function that undoes
    it (puts back an instance attribute, e.g. the policy or a compiled function, or removes the
    wrapper so that the class's method shows again)."""
    original = getattr(obj, name)
    own = name in vars(obj)
    setattr(obj, name, make(original))

    def restore() -> None:
        if own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)

    return restore


class Splitter:
    """Wraps methods of this run's instances (never the classes) to time the parts of an update,
    with a device synchronisation at each boundary. `install` / `remove` switch it on and off."""

    def __init__(self, model, datamodule, sync: Sync, transfer_owner=None) -> None:
        self.model, self.datamodule, self.sync = model, datamodule, sync
        # whose transfer_batch_to_device Lightning calls (the datamodule's, unless only the
        # model overrides it: a wrapper on the datamodule would then take the model's place)
        self.transfer_owner = datamodule if transfer_owner is None else transfer_owner
        self.records: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self._wrapped: list = []  # the functions that undo the wrappers
        self._imagine: tuple[float, float] | None = None

    def _timed(self, part: str, fn):
        def wrapper(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.sync()
            self.current[part] += time.perf_counter() - start
            return result

        return wrapper

    def _collect(self, fn):
        def wrapper(*args, **kwargs):
            acting_before = self.current["acting"]
            self.sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.sync()
            acting = self.current["acting"] - acting_before
            self.current["env_step"] += time.perf_counter() - start - acting
            return result

        return wrapper

    def _imagine_wrapper(self, fn):
        def wrapper(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.sync()
            self._imagine = (start, time.perf_counter())
            return result

        return wrapper

    def _training_step(self, fn):
        def wrapper(*args, **kwargs):
            self._imagine = None
            self.sync()
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.sync()
            end = time.perf_counter()
            if self._imagine is None:  # a skipped update (non-finite world-model loss)
                self.current["world_model"] += end - start
            else:
                begin, finish = self._imagine
                self.current["world_model"] += begin - start
                self.current["imagination"] += finish - begin
                self.current["actor_critic"] += end - finish
            return result

        return wrapper

    def _part(self, part: str):
        return lambda fn: self._timed(part, fn)

    def _wrap(self, obj, name: str, make) -> None:
        self._wrapped.append(wrap_attribute(obj, name, make))

    def install(self) -> None:
        self.current = defaultdict(float)
        self._wrap(self.datamodule, "on_before_batch_transfer", self._part("replay_sample"))
        self._wrap(self.transfer_owner, "transfer_batch_to_device", self._part("to_device"))
        self._wrap(self.datamodule, "collect", self._collect)
        self._wrap(self.model, "policy", self._part("acting"))  # an attribute, not a method
        self._wrap(self.model, "training_step", self._training_step)
        self._wrap(self.model.world_model, "imagine", self._imagine_wrapper)

    def end_update(self) -> None:
        self.records.append({part: self.current[part] for part in PARTS})
        self.current = defaultdict(float)

    def remove(self) -> None:
        for restore in reversed(self._wrapped):
            restore()
        self._wrapped.clear()

    @property
    def active(self) -> bool:
        return bool(self._wrapped)


class LossRecorder:
    """Keeps a copy of every world-model and actor-critic loss of a run (on the device, no host
    sync).

    The world-model loss is taken from the functions `training_step` gets from
    `DramaModule._training_functions`, outside them: with `--compile` that is the compiled
    loss, which must not be traced with a recorder inside, and whose output a CUDA graph
    (mode "reduce-overhead") overwrites at its next replay, hence the copy.
    """

    def __init__(self, model) -> None:
        self.losses: dict[str, list] = {"world_model": [], "actor_critic": []}
        self._restore = [
            wrap_attribute(
                model.actor_critic, "loss", lambda fn: self._recording("actor_critic", fn)
            )
        ]
        if hasattr(model, "_training_functions"):
            self._restore.append(wrap_attribute(model, "_training_functions", self._functions))
        else:  # an older DramaModule: training_step calls world_model.loss itself
            self._restore.append(
                wrap_attribute(
                    model.world_model, "loss", lambda fn: self._recording("world_model", fn)
                )
            )

    def _functions(self, fn):
        def wrapper(*args, **kwargs):
            functions = dict(fn(*args, **kwargs))
            functions["wm_loss"] = self._recording("world_model", functions["wm_loss"])
            return functions

        return wrapper

    def _recording(self, part: str, fn):
        import torch

        def wrapper(*args, **kwargs):
            loss, extra = fn(*args, **kwargs)
            self.losses[part].append(loss.detach().to(torch.float32, copy=True))
            return loss, extra

        return wrapper

    def remove(self) -> None:
        for restore in self._restore:
            restore()

    def summary(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"finite": True}
        for part, values in self.losses.items():
            if not values:
                out[part] = {"count": 0}
                out["finite"] = False
                continue
            stacked = torch.stack(values).cpu()
            finite = bool(torch.isfinite(stacked).all())
            out[part] = {"count": len(values), "finite": finite, "last": float(stacked[-1])}
            out["finite"] = out["finite"] and finite
        return out


def transfer_owner(model, datamodule):
    from lightning.pytorch.utilities.model_helpers import is_overridden

    hook = "transfer_batch_to_device"
    if is_overridden(hook, model) and not is_overridden(hook, datamodule):
        return model
    return datamodule


def update_clock_callback(
    sync: Sync, splitter: Splitter, datamodule, warmup: int, timed: int, budget_s: float
):
    import lightning.pytorch as pl

    class UpdateClock(pl.Callback):
        """End time of every update. Synchronises only at phase boundaries (and during the
        split phase, whose wrappers synchronise anyway); installs and removes the split.

        After the warm-up, if the 2 x `timed` updates would take more than `budget_s` at the
        warm-up's pace, fewer are timed (at least 3 each) and the run's env-step budget shrinks
        with them."""

        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []
            self.timed = timed
            self.shortened_from: int | None = None

        def on_train_start(self, trainer, pl_module) -> None:
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            done = len(self.ends) + 1
            splitting = splitter.active
            if splitting or done in (1, warmup, warmup + self.timed, warmup + 2 * self.timed):
                sync()
            self.ends.append(time.perf_counter())
            if splitting:
                splitter.end_update()
            if done == warmup:
                self._fit_budget()
            if done == warmup + self.timed:
                splitter.install()
            elif done == warmup + 2 * self.timed:
                splitter.remove()

        def _fit_budget(self) -> None:
            if budget_s <= 0:
                return
            times = [b - a for a, b in zip([self.start, *self.ends[:-1]], self.ends, strict=True)]
            pace = statistics.median(times[1:] or times)
            fits = max(3, int(budget_s / (2 * pace)))
            if fits < self.timed:
                self.shortened_from, self.timed = self.timed, fits
                num_envs = datamodule.num_envs  # a collect takes whole steps of all envs
                per_update = -(-datamodule.env_steps_per_update // num_envs) * num_envs
                datamodule.total_env_steps = datamodule.env_steps + 2 * fits * per_update
                progress(
                    f"speed: {pace * 1000:.0f} ms per warm-up update; timing {fits} + {fits} "
                    f"updates instead of {timed} + {timed} (--speed-budget {budget_s:.0f} s)"
                )

    return UpdateClock()


def load_configs(tiny: bool) -> tuple[dict, dict]:
    """(the run's config, configs/atari.yaml). Tiny: atari.yaml with configs/debug.yaml's model
    sizes and data sizes (same env, acting, sampling)."""
    import yaml

    from benchmarks.fit import load_config

    atari = load_config()
    config = json.loads(json.dumps(atari))
    if tiny:
        with open(ROOT / "configs" / "debug.yaml") as f:
            debug = yaml.safe_load(f)
        for key in ("world_model", "actor_critic"):
            config["model"][key].update(debug["model"][key])
        for key in ("imagine_horizon", "wm_lr", "ac_lr", "warmup_updates"):
            config["model"][key] = debug["model"][key]
        for key in TINY_DATA_KEYS:
            config["data"][key] = debug["data"][key]
        config["data"].update(TINY_DATA)
    return config, atari


def check_compile_supported() -> None:
    from lightning_drama.module import DramaModule

    if "compile" not in inspect.signature(DramaModule.__init__).parameters:
        raise SystemExit(
            "--compile: DramaModule has no `compile` argument (--model.compile) in this checkout "
            "yet; run without --compile, or after that change is in"
        )


def make_trainer(device: str, precision: str, callbacks: list, root: str):
    import lightning.pytorch as pl
    import torch

    index = torch.device(device).index  # --device cuda:1: that GPU
    return pl.Trainer(
        accelerator="cuda" if device.startswith("cuda") else "cpu",
        devices=1 if index is None else [index],
        precision=precision,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=100,  # configs/atari.yaml's
        callbacks=callbacks,
        default_root_dir=root,
    )


def build(config: dict, updates: int, compile_model: bool):
    import lightning.pytorch as pl

    from benchmarks.fit import make

    config = json.loads(json.dumps(config))
    if compile_model:
        config["model"]["compile"] = True
    pl.seed_everything(0, verbose=False)
    # benchmarks.fit.make budgets warmup_steps + `updates` env steps: one per update there.
    per_update = int(config["data"].get("env_steps_per_update", 1))
    return make(config, updates * per_update)


def time_setup(datamodule) -> dict[str, float]:
    """Wraps datamodule.setup to time the warm-up prefill (env creation included)."""
    timing = {"seconds": 0.0}
    original = datamodule.setup

    def setup(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        timing["seconds"] += time.perf_counter() - start
        return result

    datamodule.setup = setup
    return timing


def matmul_tflops(device: str, dtype_name: str, n: int, repeats: int) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    sync = Sync(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory(device: str) -> dict[str, Any]:
    import torch

    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_gib = rss * (1 if sys.platform == "darwin" else 1024) / 2**30
    if device.startswith("cuda"):
        return {
            "kind": "torch.cuda.max_memory_allocated",
            "gib": torch.cuda.max_memory_allocated() / 2**30,
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "host_max_rss_gib": rss_gib,
        }
    return {"kind": "process max RSS (CPU run)", "gib": rss_gib, "host_max_rss_gib": rss_gib}


def count_flops(config: dict, num_actions: int, datamodule, device: str, precision: str) -> float:
    """benchmarks.fit.count_update_flops on a fresh model of the same config on `device`, with
    the fused kernels switched off (FlopCounterMode does not see inside them) and a batch of this
    run's replay moved to the device."""

    from benchmarks.fit import count_update_flops
    from lightning_drama.module import DramaModule
    from lightning_drama.ssm import kernels

    model = DramaModule(num_actions, **config["model"]).to(device)
    sampled = next(iter(datamodule.train_dataloader())).sample()
    on_device = {key: value.to(device) for key, value in sampled.items()}
    shim = SimpleNamespace(train_dataloader=lambda: [SimpleNamespace(sample=lambda: on_device)])
    saved = kernels.mamba_chunk_scan_combined, kernels.causal_conv1d_fn
    kernels.mamba_chunk_scan_combined = kernels.causal_conv1d_fn = None
    try:
        flops = count_update_flops(model, shim, precision)
    finally:
        kernels.mamba_chunk_scan_combined, kernels.causal_conv1d_fn = saved
    return flops  # the model and batch go with this frame (measure_speed empties the cache)


def measure_speed(args, config: dict) -> dict[str, Any]:
    import tempfile

    import torch

    warmup, timed = args.warmup_updates, args.updates
    sync = Sync(args.device)
    model, datamodule = build(config, warmup + 2 * timed, args.compile)
    setup_timing = time_setup(datamodule)
    losses = LossRecorder(model)
    splitter = Splitter(model, datamodule, sync, transfer_owner(model, datamodule))
    clock = update_clock_callback(sync, splitter, datamodule, warmup, timed, args.speed_budget)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    progress(
        f"speed: {warmup} warm-up + {timed} timed + {timed} split updates, {args.precision}, "
        f"{'tiny sizes' if args.tiny else 'configs/atari.yaml'}"
        + (", compiled" if args.compile else "")
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args.device, args.precision, [clock], tmp)
        trainer.fit(model, datamodule=datamodule)
    memory = peak_memory(args.device)
    losses.remove()
    ends, timed = clock.ends, clock.timed
    if len(ends) != warmup + 2 * timed:
        raise RuntimeError(f"expected {warmup + 2 * timed} updates, the run did {len(ends)}")
    per_update = [b - a for a, b in zip([clock.start, *ends[:-1]], ends, strict=True)]
    plain = per_update[warmup : warmup + timed]
    split_totals = per_update[warmup + timed :]
    ms = 1000.0
    unsync_ms = (ends[warmup + timed - 1] - ends[warmup - 1]) * ms / timed
    per_env_step = int(config["data"].get("env_steps_per_update", 1))
    parts_ms = {p: statistics.fmean(r[p] for r in splitter.records) * ms for p in PARTS}
    split_ms = statistics.fmean(split_totals) * ms
    steady_ms = statistics.median(plain) * ms
    speed: dict[str, Any] = {
        "config": "tiny (configs/debug.yaml model, smaller batches)"
        if args.tiny
        else "configs/atari.yaml",
        "env_id": config["data"]["env_id"],
        "precision": args.precision,
        "compile": bool(args.compile),
        "warmup_updates": warmup,
        "timed_updates": timed,
        "timed_updates_asked": clock.shortened_from or timed,
        "env_steps_per_update": per_env_step,
        "unsynchronised": {
            "ms_per_update": unsync_ms,
            "ms_per_update_median": steady_ms,
            "ms_per_env_step": unsync_ms / per_env_step,
            "per_update_ms": [t * ms for t in plain],
        },
        "split": {
            "ms_per_update": split_ms,
            "parts_ms": parts_ms,
            "parts_ms_per_env_step": {p: v / per_env_step for p, v in parts_ms.items()},
            "parts_sum_ms": sum(parts_ms.values()),
            # Lightning's loop and hooks (on_after_batch_transfer, logging), the clock itself
            "other_ms": split_ms - sum(parts_ms.values()),
            "updates": len(splitter.records),
            "per_update_ms": [t * ms for t in split_totals],
        },
        "warmup_per_update_ms": [t * ms for t in per_update[:warmup]],
        "first_update_ms": per_update[0] * ms,
        "first_update_overhead_s": (per_update[0] * ms - steady_ms) / 1000,
        "warmup_prefill_s": setup_timing["seconds"],
        "ms_per_warmup_step": setup_timing["seconds"] * ms / config["data"]["warmup_steps"],
        "peak_memory": memory,
        "losses": losses.summary(),
    }
    if args.compile:  # the first update's excess; later recompiles show in the warm-up times
        speed["compile_s"] = speed["first_update_overhead_s"]
    progress(
        f"speed: {unsync_ms:.1f} ms per update unsynchronised, {split_ms:.1f} ms split "
        f"({', '.join(f'{p} {v:.1f}' for p, v in parts_ms.items())} ms)"
    )
    progress("speed: counting the FLOPs of one update")
    flops = count_flops(config, datamodule.num_actions, datamodule, args.device, args.precision)
    n, repeats = (
        (8192, 20) if args.device.startswith("cuda") else ((1024, 3) if args.tiny else (2048, 3))
    )
    progress(f"speed: {n}x{n} matmuls")
    matmul = {
        dtype: matmul_tflops(args.device, dtype, n, repeats) for dtype in ("bfloat16", "float32")
    }
    achieved = flops / (unsync_ms / ms) / 1e12
    speed.update(
        flops_per_update=flops,
        achieved_tflops=achieved,
        matmul_size=n,
        matmul_tflops=matmul,
        fraction_of_bf16_matmul=achieved / matmul["bfloat16"],
    )
    datamodule.teardown("fit")
    del trainer, model, datamodule
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return speed


class _SyncCounts(list):
    """Host syncs per update (CUDA's sync debug mode inside `training_step`), with examples."""

    def __init__(self) -> None:
        super().__init__()
        self.examples: list[str] = []

    def pop_examples(self) -> list[str]:
        examples, self.examples = self.examples, []
        return examples


def watch_host_syncs(model) -> _SyncCounts:
    """Count the synchronising CUDA calls each `training_step` makes, with
    `torch.cuda.set_sync_debug_mode("warn")` (the module promises none between logging steps)."""
    import warnings

    import torch

    counts = _SyncCounts()
    step = model.training_step

    def watched(batch, batch_idx):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return step(batch, batch_idx)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                syncs = [w for w in caught if "synchroniz" in str(w.message)]
                counts.append(len(syncs))
                counts.examples += [
                    f"{os.path.basename(w.filename)}:{w.lineno}: {str(w.message)[:80]}"
                    for w in syncs
                ]

    model.training_step = watched
    return counts


def nan_run(args, config: dict, precision: str, updates: int) -> dict[str, Any]:
    """A short run in `precision`: are all its losses finite?"""
    import tempfile

    import torch

    if precision == "16-mixed" and not args.device.startswith("cuda"):
        return {"finite": None, "note": "skipped: Lightning has no fp16 AMP on the CPU"}
    model, datamodule = build(config, updates, False)
    losses = LossRecorder(model)
    syncs = watch_host_syncs(model) if args.device.startswith("cuda") else None
    progress(f"nan check: {updates} updates in {precision}")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args.device, precision, [], tmp)
        trainer.fit(model, datamodule=datamodule)
    losses.remove()
    summary = losses.summary()
    summary["updates"] = updates
    if syncs is not None:  # none of these updates is a logging step (log_every_n_steps 100)
        summary["host_syncs_per_update"] = syncs
        summary["host_sync_examples"] = sorted(set(syncs.pop_examples()))[:5]
    datamodule.teardown("fit")
    del trainer, model, datamodule
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return summary


# --------------------------------------------------------------------------- phase 4: tests


PYTEST_EXIT = {
    0: "ok",
    1: "tests failed",
    2: "interrupted",
    3: "internal error",
    4: "usage error (an unknown option: --device not defined in tests/conftest.py yet?)",
    5: "no tests collected",
}


def run_pytest(arguments: list[str], timeout: float) -> dict[str, Any]:
    # --continue-on-collection-errors: a test file importing a package this machine lacks
    # (nbformat, transformers, ...) must not stop the device tests of the other files.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors", *arguments]
    progress(f"tests: {' '.join(command[1:])} (timeout {timeout:.0f} s)")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        out = error.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return {
            "command": " ".join(command[1:]),
            "returncode": None,
            "ok": False,
            "status": f"timed out after {timeout:.0f} s",
            "counts": pytest_counts(out),
            "tail": out[-3000:],
            "seconds": timeout,
        }
    output = done.stdout + done.stderr
    counts = pytest_counts(done.stdout)
    status = PYTEST_EXIT.get(done.returncode, f"exit code {done.returncode}")
    collection_errors = [line for line in done.stdout.splitlines() if line.startswith("ERROR ")]
    if done.returncode == 1 and not counts.get("failed") and collection_errors:
        status = f"no test failed, but {len(collection_errors)} file(s) could not be collected"
    return {
        "command": " ".join(command[1:]),
        "returncode": done.returncode,
        "ok": done.returncode == 0,
        "status": status,
        "counts": counts,
        "collection_errors": collection_errors[:20],
        "missing_modules": sorted(set(re.findall(r"No module named '([^']+)'", output))),
        "tail": output[-3000:],
        "seconds": time.perf_counter() - start,
    }


def run_tests(args) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest is not installed (install it from the wheels folder)"}
    return {
        "device": run_pytest(
            ["-m", "device", "--device", args.device, "tests/"], args.test_timeout
        ),
        "kernels": run_pytest(["tests/test_kernels.py"], min(args.test_timeout, 120.0)),
    }


# --------------------------------------------------------------------------- environment


def environment(device: str) -> dict[str, Any]:
    import lightning
    import torch

    from benchmarks.train_step import cpu_description

    env: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__,
        "cpu": cpu_description(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
        env["device_memory_gib"] = props.total_memory / 2**30
        env["capability"] = f"{props.major}.{props.minor}"
        with contextlib.suppress(Exception):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            env["driver"] = (
                subprocess.run(query, capture_output=True, text=True, timeout=10)
                .stdout.split("\n")[0]
                .strip()
                or None
            )
    else:
        env["device_name"] = env["cpu"]
    return env


# --------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str = ".1f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{unit}"


def _kernels_text(kernels: dict[str, Any]) -> str:
    install = kernels.get("install", {})
    found = [kernels.get(m, {}) for m in ("mamba_ssm", "causal_conv1d")]
    if all(entry.get("import") for entry in found):
        text = f"mamba-ssm {found[0]['version']}, causal-conv1d {found[1]['version']}"
    elif not any(entry.get("version") for entry in found):
        text = f"fused kernels: not installed ({install.get('reason') or 'not found'})"
    else:
        text = "; ".join(
            f"{name} {entry.get('version') or ''}: {entry.get('error') or 'imports'}"
            for name, entry in zip(("mamba-ssm", "causal-conv1d"), found, strict=True)
        )
    scan = "fused" if kernels.get("fused_scan_available") else "pure PyTorch"
    conv = "fused" if kernels.get("fused_conv_available") else "pure PyTorch"
    return f"{text}; SSD scan: {scan}, causal conv: {conv}"


def _speed_rows(speed: dict[str, Any]) -> list[tuple[str, str]]:
    unsync, split, per = speed["unsynchronised"], speed["split"], speed["env_steps_per_update"]
    compiled = ", torch.compile" if speed["compile"] else ""
    timed = f"{speed['timed_updates']} + {split['updates']} split, after "
    timed += f"{speed['warmup_updates']} warm-up; {per} env step(s) per update"
    if speed.get("timed_updates_asked", speed["timed_updates"]) != speed["timed_updates"]:
        timed += f" (asked {speed['timed_updates_asked']}: cut to --speed-budget)"
    median = unsync["ms_per_update_median"] / per
    matmul = speed["matmul_tflops"]
    achieved = f"{speed['achieved_tflops']:.3g} = {speed['fraction_of_bf16_matmul']:.1%} of a "
    achieved += f"{speed['matmul_size']}x{speed['matmul_size']} bf16 matmul "
    achieved += f"({matmul['bfloat16']:.3g} TFLOP/s; fp32 {matmul['float32']:.3g})"
    memory = speed["peak_memory"]
    first = f"{speed['first_update_ms']:.0f} ms"
    if speed.get("compile_s") is not None:
        first += f"; compile time {speed['compile_s']:.1f} s"
    rows = [
        ("config", f"{speed['config']}, {speed['env_id']}, {speed['precision']}{compiled}"),
        ("updates", timed),
        ("ms per env step", f"**{unsync['ms_per_env_step']:.1f}** (median {median:.1f})"),
        ("split (synchronised), ms per env step", f"{split['ms_per_update'] / per:.1f} in all"),
    ]
    for part, value in split["parts_ms_per_env_step"].items():
        rows.append((f"- {part.replace('_', ' ')}", f"{value:.1f}"))
    rows += [
        ("- other (Lightning's loop)", f"{split['other_ms'] / per:.1f}"),
        ("GFLOP per update", f"{speed['flops_per_update'] / 1e9:.1f}"),
        ("achieved TFLOP/s", achieved),
        ("peak memory", f"{memory['gib']:.2f} GiB ({memory['kind']})"),
        ("first update", first),
    ]
    return rows


def _target_text(name: str, target: dict[str, Any]) -> str:
    value = target.get("value")
    if name.startswith("atari100k"):
        shown = f"{_fmt(value, '.2f', ' h')} (limit {target['limit']} h = "
        shown += f"{target['ms_limit']:.0f} ms per env step)"
    elif name.startswith("imagination"):
        shown = f"{_fmt(value, '.2f', 'x')} the world-model update (limit {target['limit']}x)"
    elif name.startswith("no_host_syncs"):
        shown = f"{_fmt(value, 'd')} host syncs at most in one update ({target['note']})"
    else:
        shown = target.get("note") or ("all losses finite" if value else "non-finite losses")
    return f"**{target['verdict']}** {shown}"


def markdown(results: dict[str, Any]) -> str:
    """The report as a two-column Markdown table (ready for the README)."""
    env = results.get("environment", {})
    device = str(env.get("device_name", "?"))
    if env.get("device_memory_gib"):
        device += f", {env['device_memory_gib']:.0f} GiB, driver {env.get('driver')}"
    versions = f"torch {env.get('torch')}, CUDA {env.get('cuda')}, lightning {env.get('lightning')}"
    versions += f", Python {env.get('python')}"
    if env.get("triton"):
        versions += f", triton {env['triton']}"
    rows = [
        ("device", device),
        ("versions", versions),
        ("mamba-ssm", _kernels_text(results.get("kernels", {}))),
    ]
    tests = results.get("tests")
    if tests is None:
        rows.append(("tests", "not run (--skip-tests)" if results.get("skip_tests") else "n/a"))
    elif "skipped" in tests:
        rows.append(("tests", tests["skipped"]))
    else:
        for name, run in tests.items():
            counts = ", ".join(f"{v} {k}" for k, v in run["counts"].items()) or "no summary"
            missing = ", ".join(run.get("missing_modules", []))
            missing = f" (missing modules: {missing})" if missing else ""
            rows.append((f"tests: {name}", f"{run['status']}: {counts}{missing}"))
    if results.get("speed"):
        rows += _speed_rows(results["speed"])
    projection = results.get("atari100k")
    if projection:
        hours = f"**{projection['hours']:.2f} h** ({projection['updates']:,} updates + "
        hours += f"{projection['warmup_steps']:,} random warm-up steps)"
        rows.append(("projected Atari100k", hours))
    for name, target in results.get("targets", {}).items():
        rows.append((f"target {name}", _target_text(name, target)))
    if results.get("tiny"):
        rows.append(("note", "tiny mode: not the paper's config, the targets do not apply"))
    if results.get("error"):
        rows.append(("error", results["error"]))
    rows.append(("check took", f"{results.get('elapsed_s', 0):.0f} s"))
    lines = ["| check | result |", "|---|---|"]
    lines += [f"| {name} | {value.replace('|', '/')} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def save(results: dict[str, Any], out: Path) -> None:
    results["elapsed_s"] = time.perf_counter() - _START
    results.pop("targets", None)
    results["targets"] = targets(results)  # last in the file
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json / .md")
    parser.add_argument("--wheels", default=None, help="folder with mamba-ssm/causal-conv1d wheels")
    parser.add_argument("--updates", type=int, default=None, help="timed updates (100; tiny: 2)")
    parser.add_argument("--warmup-updates", type=int, default=None, help="untimed (5; tiny: 1)")
    parser.add_argument("--nan-updates", type=int, default=None, help="16-mixed run (5; tiny: 2)")
    parser.add_argument("--precision", default="bf16-mixed", help="of the timed run")
    parser.add_argument("--tiny", action="store_true", help="configs/debug.yaml sizes (CI)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--compile", action="store_true", help="DramaModule(compile=True)")
    parser.add_argument(
        "--test-timeout",
        type=float,
        default=240.0,
        help="seconds for the device tests (test_compile's inductor test compiles; the kernel "
        "tests get at most 120 s)",
    )
    parser.add_argument("--pip-timeout", type=float, default=180.0)
    parser.add_argument(
        "--speed-budget",
        type=float,
        default=240.0,
        help="seconds for the timed + split updates: fewer are timed if they would take longer "
        "at the warm-up's pace (0: no limit)",
    )
    args = parser.parse_args(argv)
    for name in ("updates", "warmup_updates", "nan_updates"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.updates = args.updates or (2 if args.tiny else 100)
    args.warmup_updates = args.warmup_updates or (1 if args.tiny else 5)
    args.nan_updates = args.nan_updates or (2 if args.tiny else 5)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    command = ["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)]
    results: dict[str, Any] = {
        "command": " ".join(command),
        "tiny": args.tiny,
        "skip_tests": args.skip_tests,
    }
    # Before anything imports lightning_drama: its kernel dispatch looks for mamba-ssm on import.
    install = install_kernels(args.wheels, args.pip_timeout)
    if not install["installed"]:
        progress(f"fused kernels: not installed ({install['reason']})")
    import torch

    from lightning_drama.allocator import tune_malloc
    from lightning_drama.quiet import silence

    silence()
    tune_malloc()  # as main.py does (glibc's thresholds; DRAMA_MALLOC_TUNING chooses)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (torch.cuda.is_available())")
    if args.device.startswith("cuda") and torch.device(args.device).index is not None:
        torch.cuda.set_device(torch.device(args.device))  # synchronize() waits on this one
    if args.compile:
        check_compile_supported()
    results["environment"] = environment(args.device)
    results["kernels"] = {"install": install, **kernel_status()}
    scan = "fused" if results["kernels"]["fused_scan_available"] else "pure PyTorch"
    progress(f"device: {results['environment']['device_name']}; SSD scan: {scan}")
    save(results, out)

    config, atari = load_configs(args.tiny)
    try:
        speed = measure_speed(args, config)
        results["speed"] = speed
        results["atari100k"] = atari100k_projection(
            speed["unsynchronised"]["ms_per_update"], speed["ms_per_warmup_step"], atari["data"]
        )
        results["nan_check"] = {args.precision: speed["losses"]}
        save(results, out)
        progress(f"projected Atari100k: {results['atari100k']['hours']:.2f} h")
    except Exception as error:  # keep what was measured and still run the tests
        results["error"] = f"speed: {type(error).__name__}: {error}"
        results["traceback"] = traceback.format_exc()[-4000:]
        progress(f"speed phase failed: {results['error']}")
        traceback.print_exc()
        save(results, out)
    for precision in ("16-mixed", "bf16-mixed"):
        if precision in results.setdefault("nan_check", {}):
            continue
        try:
            results["nan_check"][precision] = nan_run(args, config, precision, args.nan_updates)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            results["nan_check"][precision] = {
                "finite": False,
                "note": f"the run failed: {message}",
            }
            results.setdefault("error", f"nan check {precision}: {message}")
            progress(f"nan check {precision} failed: {message}")
            traceback.print_exc()
        save(results, out)

    if args.device.startswith("cuda"):
        try:
            results["host_syncs"] = nan_run(args, config, "bf16-mixed", args.nan_updates)
        except Exception as error:
            results["host_syncs"] = {"note": f"the run failed: {type(error).__name__}: {error}"}
            traceback.print_exc()
        save(results, out)

    if not args.skip_tests:
        results["tests"] = run_tests(args)
        save(results, out)
    save(results, out)
    table = (out / "gpu_check.md").read_text()
    progress(f"done; wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    print("\n" + table, flush=True)
    return results


if __name__ == "__main__":
    sys.exit(1 if main().get("error") else 0)
