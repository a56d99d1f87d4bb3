"""`python -m lightning_drama.experiments.gridworld`: the paper's long-sequence grid world (Fig. 3).

    python -m lightning_drama.experiments.gridworld [--backbones mamba2 mamba transformer gru]
        [--frames 16 64 256 1024] [--updates 300] [--tokens-per-update 26624]
        [--max-seconds-per-config 100] [--memory-cap-gb 6] [--out runs/gridworld] [--resume]

Drama (Wang et al., ICLR 2025) motivates its Mamba-2 world model with a grid world read as one
long token sequence: how well, how fast and in how much memory can a sequence model predict the
next token as the sequence grows? This module rebuilds that experiment.

The world: a 5 x 5 grid whose 16 outer cells are walls and whose 9 central cells are reachable. An
agent moves by uniformly random actions (north, south, east, west; into a wall = stay) towards a
goal on another central cell. When the agent moves onto the goal, agent and goal are placed at new
random distinct central cells, and that frame shows the new placement. A frame is its 25 cells in
row-major order (tokens wall 0, empty 1, agent 2, goal 3) followed by the action taken after it
(token 4 + action), so T frames are 26 T tokens from a vocabulary of 8; a sequence starts with a
random placement. Each target token has a category:

- `history`: a central cell of a frame that follows a normal move (stays at walls included): the
  previous frame and the action determine it, so a model that uses its history gets all right.
  Baselines: "empty" everywhere gets 7/9 = 0.78 (the trivial baseline); copying the previous
  frame gets about 0.86 (`baseline_copy`, measured on the same held-out tokens).
- `fresh`: a central cell of the first frame or of a frame right after the goal was reached: a
  random placement the history cannot determine (about 7/9 from predicting "empty"; a little more
  from the cells already seen in that frame).
- `action`: random, chance 1/4.
- `wall`: the 16 outer cells, always walls: trivially predictable, so reported on their own
  (`acc_wall` in results.csv) and left out of `acc_all` (all tokens but walls).

The model: `Embedding(8, d_model) -> backbone -> Linear(d_model, 8)` (`GridWorldModel`, a
LightningModule driven by a plain loop: `configure_optimizers`, then `training_step`, backward
and step per update), trained on next-token cross-entropy with AdamW (lr 6e-3, no weight decay,
gradient norm clipped at 1) on new sequences every update, evaluated on a fixed held-out set of
the same length from another seed stream; both depend only on `--seed` and the length, so every
backbone sees the same data. Of 3e-3, 6e-3 and 1e-2 (one seed each), the latter two learned
faster than 3e-3 (the GRU most) and alike; 6e-3 is the safer one. Backbones come from
`lightning_drama.ssm.backbones` by name; all have 2 layers and no dropout. The paper's exact sizes
are not available; we chose widths that give every model 55-60k parameters (within 8 % of each
other; the counts are printed and kept in results.json): d_model 64 for Mamba-2 (expand 2, head
size 32, state 16: 56,864), 60 for Mamba-1 (expand 2, state 16: 59,468), 56 for the Transformer
(8 heads as in the reference, feed-forward 2 x, fixed sinusoidal positions, since learned ones for
26k tokens would dwarf the rest of the model; attention over the whole sequence: 55,224) and 68
for the GRU (57,400). `--width KIND=N` changes them.

What is measured per (backbone, frames), each in a fresh child process: next-token accuracy on the
held-out set by category; the training time per update (median of the updates after `--warmup`);
the peak memory of training (CPU: the growth of the process's peak RSS over its RSS before
training; CUDA: `torch.cuda.max_memory_allocated`); and whether it fits `--memory-cap-gb`. On CPU
the child's address space is limited (`RLIMIT_AS`) to its size before training plus the cap, so an
allocation beyond the cap fails and is reported as OOM (CUDA: the per-process memory fraction and
`torch.cuda.OutOfMemoryError`). A backbone that runs out of memory at one length is not tried at
longer ones (reported as OOM, "skipped after OOM at T=..."). The Transformer materialises its
attention scores (B x heads x L^2 per layer, as the reference Drama does), so with a fixed number
of tokens per update its memory grows linearly with the sequence length.

Every update holds `--tokens-per-update` tokens (batch = tokens / (26 T)), so times and memory
compare lengths at equal work; the default, 26,624, is one sequence of the longest default length.
Training stops after `--updates` updates, or before an update that would end past
`--max-seconds-per-config` seconds (`updates_done` says which), so the backbones are compared at
equal time. Why these defaults: on this project's 2-core CPU (shared; one thread per
configuration, `--threads`) an update of 26,624 tokens took 1.0-1.6 s for Mamba-2, 2.7-4.3 s for
Mamba-1, 0.5 s (T=16) to 11-19 s (T=1024) for the GRU, which is sequential in the length, and 4-6
s (T=16) and 18-21 s (T=64, peak 5.9 GiB) for the Transformer, which runs out of 6 GiB at T=256
(one 5.3 GiB tensor of scores). Mamba-2 needs about 100-150 updates to pass the copy baseline on
history tokens at T=16 (the batch size hardly matters: learning is bound by updates, not tokens),
which 100 s per configuration gives it on an idle machine (about 0.7 s per update) and nearly on
a busy one. With 13 configurations at the time limit, the Transformer's T=64 (4 updates) and its
OOM at T=256, the default sweep takes about 24 minutes (extrapolated from the same sweep with a
25 s limit, which took 6.2 minutes), under the 30 the experiment is meant to fit; `--updates`
(300) only binds on faster machines.

Writes to `--out`, after every configuration (a crash or Ctrl-C loses nothing; `--resume` skips
the configurations already in results.csv): `results.csv`, `results.md` (the table), `results.json`
(the settings, argv, versions, hardware, parameter counts and all rows) and `gridworld.png`
(history accuracy, time per update and peak memory against sequence length; redrawn at most once
a minute, and at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError, check_float, check_int, check_ints
from lightning_drama.ssm.backbones import BACKBONES, build_backbone

Tensor = torch.Tensor

# ----------------------------------------------------------------------------- the world

SIDE = 5
GRID = SIDE * SIDE  # grid tokens per frame
FRAME = GRID + 1  # tokens per frame: the grid, then the action
WALL, EMPTY, AGENT, GOAL = 0, 1, 2, 3  # grid tokens
ACTION_TOKEN = 4  # action a is token 4 + a
VOCAB = 8
ACTIONS = ("north", "south", "east", "west")
MOVES = np.array([[-1, 0], [1, 0], [0, 1], [0, -1]])  # (row, column) step of each action
CENTRAL = np.array([r * SIDE + c for r in range(1, SIDE - 1) for c in range(1, SIDE - 1)])

CATEGORIES = ("history", "fresh", "action", "wall")
HISTORY, FRESH, ACTION, WALL_CELL = range(len(CATEGORIES))


def place(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A random placement of n worlds: (agent [n], goal [n]) flat cell indices, distinct, each
    pair uniform over the central cells."""
    agent = rng.integers(0, len(CENTRAL), n)
    goal = rng.integers(0, len(CENTRAL) - 1, n)
    goal = goal + (goal >= agent)  # skip the agent's cell
    return CENTRAL[agent], CENTRAL[goal]


def move(agent: np.ndarray, action: np.ndarray) -> np.ndarray:
    """agent [n] flat cells, action [n] in 0..3 -> the cells after the moves; into a wall = stay."""
    row, col = np.divmod(agent, SIDE)
    row, col = row + MOVES[action, 0], col + MOVES[action, 1]
    inside = (row >= 1) & (row <= SIDE - 2) & (col >= 1) & (col <= SIDE - 2)
    return np.where(inside, row * SIDE + col, agent)


def render(agent: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """agent, goal [n] flat cells -> grid tokens [n, 25], row-major."""
    grid = np.full((len(agent), GRID), WALL, dtype=np.int64)
    grid[:, CENTRAL] = EMPTY
    rows = np.arange(len(agent))
    grid[rows, agent] = AGENT
    grid[rows, goal] = GOAL
    return grid


def step(
    rng: np.random.Generator, agent: np.ndarray, goal: np.ndarray, action: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One move of n worlds -> (agent, goal, reached [n] bool); where the agent reached the goal
    both are placed anew."""
    moved = move(agent, action)
    reached = moved == goal
    new_agent, new_goal = place(rng, len(agent))
    return np.where(reached, new_agent, moved), np.where(reached, new_goal, goal), reached


def categorize(fresh: np.ndarray) -> np.ndarray:
    """fresh [B, T] bool (the frame is a new placement) -> token categories [B, 26 T] int8."""
    batch, frames = fresh.shape
    category = np.full((batch, frames, FRAME), WALL_CELL, dtype=np.int8)
    category[:, :, CENTRAL] = np.where(fresh[:, :, None], FRESH, HISTORY)
    category[:, :, GRID] = ACTION
    return category.reshape(batch, frames * FRAME)


def generate(rng: np.random.Generator, batch: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch` random sequences of `frames` frames -> (tokens [B, 26 T] int64, categories
    [B, 26 T] int8)."""
    tokens = np.empty((batch, frames, FRAME), dtype=np.int64)
    fresh = np.zeros((batch, frames), dtype=bool)
    actions = rng.integers(0, len(ACTIONS), (batch, frames))
    agent, goal = place(rng, batch)
    fresh[:, 0] = True
    for t in range(frames):
        tokens[:, t, :GRID] = render(agent, goal)
        tokens[:, t, GRID] = ACTION_TOKEN + actions[:, t]
        if t + 1 < frames:
            agent, goal, fresh[:, t + 1] = step(rng, agent, goal, actions[:, t])
    return tokens.reshape(batch, frames * FRAME), categorize(fresh)


def train_rng(seed: int, frames: int) -> np.random.Generator:
    """The stream of training sequences of one length."""
    return np.random.default_rng([seed, 0, frames])


def held_out(seed: int, frames: int, sequences: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed held-out set of one length: (tokens, categories) [sequences, 26 T], drawn from
    a seed stream no training sequence comes from."""
    return generate(np.random.default_rng([seed, 1, frames]), sequences, frames)


# ------------------------------------------------------------------------------ accuracy


def category_counts(predicted: np.ndarray, target: np.ndarray, category: np.ndarray) -> np.ndarray:
    """(correct, total) per category [4, 2] of predicted vs target tokens, all of one shape."""
    correct = (np.asarray(predicted) == np.asarray(target)).ravel()
    category = np.asarray(category).ravel()
    counts = np.zeros((len(CATEGORIES), 2), dtype=np.int64)
    counts[:, 0] = np.bincount(category, weights=correct, minlength=len(CATEGORIES))
    counts[:, 1] = np.bincount(category, minlength=len(CATEGORIES))
    return counts


def accuracies(counts: np.ndarray) -> dict[str, float]:
    """Accuracy per category and `all` (every category but walls); nan where there is no token."""
    out = {name: _ratio(counts[i, 0], counts[i, 1]) for i, name in enumerate(CATEGORIES)}
    kept = [i for i in range(len(CATEGORIES)) if i != WALL_CELL]
    out["all"] = _ratio(counts[kept, 0].sum(), counts[kept, 1].sum())
    return out


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def copy_baseline(tokens: np.ndarray, category: np.ndarray) -> float:
    """Accuracy on `history` tokens of predicting the same cell of the previous frame."""
    history = category[:, FRAME:] == HISTORY
    return float((tokens[:, FRAME:] == tokens[:, :-FRAME])[history].mean())


# --------------------------------------------------------------------------------- model


class GridWorldModel(pl.LightningModule):
    """`Embedding(8, d_model) -> backbone -> Linear(d_model, 8)`, next-token cross-entropy.

    Args:
        backbone: a name of `lightning_drama.ssm.backbones.BACKBONES`.
        d_model: width. n_layers: backbone layers.
        max_length: the longest sequence (the Transformer's attention window and positions).
        num_heads: Transformer heads. lr: AdamW's learning rate.
    """

    def __init__(
        self,
        backbone: str = "mamba2",
        d_model: int = 64,
        n_layers: int = 2,
        max_length: int = FRAME * 16,
        num_heads: int = 8,
        lr: float = 6e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.backbone = build_backbone(
            backbone, d_model, n_layers, headdim=32, num_heads=num_heads, max_length=max_length,
            positional="sinusoidal", dropout=0.0,
        )  # fmt: skip
        self.head = nn.Linear(d_model, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] int64 -> logits [B, L, 8] of the next tokens."""
        y, _ = self.backbone(self.embed(tokens))
        return self.head(y.to(self.head.weight.dtype))

    def training_step(self, batch: Tensor, batch_idx: int = 0) -> Tensor:
        """batch: tokens [B, L] -> mean cross-entropy of tokens 1..L-1 given those before."""
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    @torch.no_grad()
    def predict_tokens(self, tokens: Tensor) -> Tensor:
        """tokens [B, L] -> the most likely next tokens [B, L-1] (predictions of tokens 1..L-1)."""
        return self(tokens[:, :-1]).argmax(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM, VmSize), None where there is none."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    return 1024 * kib if kib is not None else _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return 1024 * kib
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else 1024 * peak  # bytes on macOS, KiB elsewhere


def _reset_peak_rss() -> bool:
    """Set the peak RSS (VmHWM) to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def memory_cap(cap_bytes: int, device: torch.device) -> Iterator[None]:
    """Allocations beyond `cap_bytes` more than now fail inside: CPU: the address-space limit
    (RLIMIT_AS) of this process is raised back on exit; CUDA: the per-process memory fraction.
    No cap for 0."""
    if cap_bytes <= 0:
        yield
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    size = _proc_status_kib("VmSize")
    if size is None:  # no /proc (not Linux): run without a cap
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 1024 * size + cap_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is an allocation failure (CPU allocator, numpy, CUDA)."""
    if isinstance(error, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "out of memory", "not enough memory")
    )


# ------------------------------------------------------------------------ one configuration

DEFAULT_WIDTHS = {"mamba2": 64, "mamba": 60, "transformer": 56, "gru": 68}
DEFAULT_LAYERS = 2
FIELDS = (
    "backbone", "frames", "tokens", "batch", "width", "layers", "params", "updates",
    "updates_done", "final_loss", "acc_history", "acc_fresh", "acc_action", "acc_all", "acc_wall",
    "baseline_copy", "eval_sequences", "n_history", "n_fresh", "n_action", "ms_per_update",
    "timed_updates", "peak_mib", "train_seconds", "eval_seconds", "status", "note",
)  # fmt: skip


def _log(message: str) -> None:
    print(f"[gridworld] {message}", file=sys.stderr, flush=True)


def build_model(settings: dict[str, Any], backbone: str, frames: int) -> GridWorldModel:
    return GridWorldModel(
        backbone,
        settings["widths"][backbone],
        settings["layers"],
        max_length=FRAME * frames,
        num_heads=settings["heads"],
        lr=settings["lr"],
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(settings: dict[str, Any], backbone: str, frames: int) -> dict[str, Any]:
    """Train and evaluate one (backbone, frames) in this process -> its results row.

    `settings`: the sweep's options as `settings_of` makes them. An allocation beyond the memory
    cap ends the configuration with status OOM.
    """
    device = torch.device(settings["device"])
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    torch.manual_seed(settings["seed"])
    length = FRAME * frames
    batch = settings["tokens_per_update"] // length
    sequences = max(1, settings["eval_tokens"] // length)
    row: dict[str, Any] = {
        "backbone": backbone, "frames": frames, "tokens": length, "batch": batch,
        "width": settings["widths"][backbone], "layers": settings["layers"],
        "updates": settings["updates"], "updates_done": 0, "eval_sequences": sequences,
        "status": "ok", "note": "",
    }  # fmt: skip
    model = build_model(settings, backbone, frames).to(device)
    row["params"] = count_parameters(model)
    optimizer = model.configure_optimizers()
    rng = train_rng(settings["seed"], frames)
    eval_tokens, eval_category = held_out(settings["seed"], frames, sequences)
    row["baseline_copy"] = copy_baseline(eval_tokens, eval_category)
    # Start threads and allocator arenas before the cap, so that they never count against it.
    warm = torch.zeros(1, min(length, 2 * FRAME), dtype=torch.int64, device=device)
    model.training_step(warm).backward()
    optimizer.zero_grad(set_to_none=True)

    label = f"{backbone} T={frames}"
    times: list[float] = []
    losses: list[float] = []
    cap = int(settings["memory_cap_gb"] * 2**30)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _rss_bytes()
        if not _reset_peak_rss():
            row["note"] = "peak RSS not resettable: peak includes the set-up"
    warmup = settings["warmup"]
    start = time.perf_counter()
    last_print = start
    phase = "training"
    try:
        with memory_cap(cap, device):
            model.train()
            for update in range(settings["updates"]):
                tokens = torch.from_numpy(generate(rng, batch, frames)[0]).to(device)
                _sync(device)
                t0 = time.perf_counter()
                loss = model.training_step(tokens, update)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                times.append(time.perf_counter() - t0)
                row["updates_done"] = update + 1
                now = time.perf_counter()
                done = update + 1 == settings["updates"]
                # Stop before an update that would end past the time limit (once the warm-up
                # and one timed update are done, so that there is a time per update).
                expected = float(np.median(times[-3:]))
                over = len(times) > warmup and now - start + expected > settings["max_seconds"]
                if done or over or now - last_print >= settings["progress_seconds"]:
                    _log(
                        f"{label} update {update + 1}/{settings['updates']} loss {losses[-1]:.4f} "
                        f"elapsed {now - start:.1f}s"
                    )
                    last_print = now
                if over and not done:
                    _log(f"{label}: time limit, stopping after {update + 1} updates")
                    break
            del tokens, loss
            _sync(device)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) - before
            else:
                peak = _peak_rss_bytes() - before
            row["train_seconds"] = time.perf_counter() - start
            row["peak_mib"] = max(peak, 0) / 2**20

            t0 = time.perf_counter()
            phase = "evaluation"
            model.eval()
            counts = np.zeros((len(CATEGORIES), 2), dtype=np.int64)
            for i in range(0, sequences, batch):
                chunk = torch.from_numpy(eval_tokens[i : i + batch]).to(device)
                predicted = model.predict_tokens(chunk).cpu().numpy()
                counts += category_counts(
                    predicted, eval_tokens[i : i + batch, 1:], eval_category[i : i + batch, 1:]
                )
            row["eval_seconds"] = time.perf_counter() - t0
    except Exception as error:  # only allocation failures are caught; others propagate
        if not is_out_of_memory(error):
            raise
        row["status"] = "OOM"
        row["note"] = f"{phase}: {_one_line(error)}"
        row["train_seconds"] = time.perf_counter() - start
        _log(f"{label}: out of memory ({row['note']})")
        return row
    timed = times[warmup:] if len(times) > warmup else times
    row["timed_updates"] = len(timed)
    row["ms_per_update"] = 1000 * float(np.median(timed))
    if len(times) <= warmup:
        row["note"] = _join(row["note"], "time per update includes warm-up updates")
    tail = losses[-max(1, min(10, len(losses) // 5)) :]
    row["final_loss"] = float(np.mean(tail))
    acc = accuracies(counts)
    row.update({f"acc_{name}": value for name, value in acc.items()})
    row.update({f"n_{name}": int(counts[i, 1]) for i, name in enumerate(CATEGORIES[:3])})
    _log(
        f"{label}: {row['updates_done']} updates, accuracy history {acc['history']:.3f} "
        f"(copy baseline {row['baseline_copy']:.3f}) fresh {acc['fresh']:.3f} action "
        f"{acc['action']:.3f}, {row['ms_per_update']:.0f} ms/update, peak "
        f"{row['peak_mib']:.0f} MiB"
    )
    return row


def _one_line(error: BaseException) -> str:
    """An error in a few words: the size of a failed allocation, else its first line."""
    found = re.search(r"tried to allocate (\d+) bytes", str(error))
    if found:
        return f"could not allocate {int(found[1]) / 2**30:.2f} GiB more"
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 160 else text[:157] + "..."


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


# ------------------------------------------------------------------------------ the sweep

RESULTS_CSV, RESULTS_MD, RESULTS_JSON, FIGURE = (
    "results.csv", "results.md", "results.json", "gridworld.png",
)  # fmt: skip
PLOT_SECONDS = 60.0  # gridworld.png is redrawn after a configuration at most this often
# What the forkserver imports once for all children (not this module: each child imports it
# itself, cheaply, as multiprocessing expects of a main module it runs again).
PRELOAD = ["numpy", "torch", "lightning.pytorch", "lightning_drama.ssm.backbones"]
# Settings that change the results: a resumed sweep must have the same ones.
SAME_FOR_RESUME = (
    "updates", "tokens_per_update", "max_seconds", "memory_cap_gb", "eval_tokens", "warmup",
    "seed", "lr", "widths", "layers", "heads", "device", "threads",
)  # fmt: skip


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The checked options as a plain dict (what the child process and results.json get)."""
    widths = dict(DEFAULT_WIDTHS)
    for item in args.width or []:
        kind, _, value = item.partition("=")
        if kind not in BACKBONES or not value.isdigit() or int(value) < 1:
            raise ConfigError(
                f"--width must be KIND=N with KIND one of {', '.join(BACKBONES)} and N >= 1, "
                f"got {item!r}"
            )
        widths[kind] = int(value)
    backbones = list(dict.fromkeys(args.backbones))
    for kind in backbones:
        if kind not in BACKBONES:
            raise ConfigError(
                f"--backbones: unknown backbone {kind!r}; choose from {', '.join(BACKBONES)}"
            )
    frames = sorted(set(check_ints("", "--frames", args.frames, minimum=1)))
    check_int("", "--updates", args.updates, minimum=1)
    longest = FRAME * frames[-1]
    check_int("", "--tokens-per-update", args.tokens_per_update, minimum=1)
    if args.tokens_per_update < longest:
        raise ConfigError(
            f"--tokens-per-update must hold one sequence of the longest length, {FRAME} x "
            f"{frames[-1]} frames = {longest} tokens, got {args.tokens_per_update}"
        )
    check_float("", "--max-seconds-per-config", args.max_seconds_per_config, above=0)
    check_float("", "--memory-cap-gb", args.memory_cap_gb, minimum=0)
    check_float("", "--lr", args.lr, above=0)
    check_int("", "--eval-tokens", args.eval_tokens, minimum=1)
    check_int("", "--warmup", args.warmup, minimum=0)
    check_int("", "--layers", args.layers, minimum=1)
    check_int("", "--heads", args.heads, minimum=1)
    check_int("", "--threads", args.threads, minimum=0)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return {
        "backbones": backbones,
        "frames": frames,
        "updates": args.updates,
        "tokens_per_update": args.tokens_per_update,
        "max_seconds": float(args.max_seconds_per_config),
        "memory_cap_gb": float(args.memory_cap_gb),
        "eval_tokens": args.eval_tokens,
        "warmup": args.warmup,
        "seed": args.seed,
        "lr": float(args.lr),
        "widths": {kind: widths[kind] for kind in BACKBONES},
        "layers": args.layers,
        "heads": args.heads,
        "device": args.device,
        "threads": args.threads,
        "isolation": args.isolation,
        "progress_seconds": float(args.progress_seconds),
        "out": args.out,
        "resume": bool(args.resume),
    }


def parameter_counts(settings: dict[str, Any]) -> dict[str, int | str]:
    """Parameters of each backbone's model (independent of the length: sinusoidal positions), or
    why it cannot be built."""
    counts: dict[str, int | str] = {}
    for kind in settings["backbones"]:
        try:
            counts[kind] = count_parameters(build_model(settings, kind, settings["frames"][0]))
        except ImportError as error:
            counts[kind] = f"not available: {_one_line(error)}"
    return counts


def run_child(settings: dict[str, Any], backbone: str, frames: int) -> dict[str, Any]:
    """`run_config` in a fresh child process, so that its memory, its peak and its cap are its own.

    Children are forked from a multiprocessing forkserver that has imported torch and Lightning
    once but never run torch: each starts in about a second, with no thread, tensor or allocator
    state of its parent or of an earlier configuration.
    """
    from lightning_drama.experiments import gridworld  # the importable module, also under -m

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    # The slowest update may overrun the time limit once; set-up and evaluation come on top.
    timeout = 3 * settings["max_seconds"] + 600
    with tempfile.TemporaryDirectory(prefix="gridworld_") as tmp:
        result_path = os.path.join(tmp, "result.json")
        process = context.Process(
            target=gridworld._child,
            args=(settings, backbone, frames, result_path),
            name=f"gridworld {backbone} T={frames}",
            daemon=True,  # ended with this process (Ctrl-C, an error)
        )
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            code = None
        else:
            code = process.exitcode
        if os.path.exists(result_path):
            with open(result_path) as file:
                return json.load(file)
    row = {"backbone": backbone, "frames": frames, "tokens": FRAME * frames, "status": "error"}
    if code is None:
        row["note"] = f"no result within {timeout:.0f} s: stopped"
    elif code == -signal.SIGKILL:
        row.update(status="OOM", note="the child process was killed (SIGKILL): out of memory")
    else:
        row["note"] = f"the child process exited with code {code} (see its error above)"
    return row


def _child(settings: dict[str, Any], backbone: str, frames: int, result_path: str) -> None:
    """The child's side of `run_child`: one configuration, its row written to `result_path`."""
    row = run_config(settings, backbone, frames)
    with open(result_path + ".tmp", "w") as file:
        json.dump(row, file)
    os.replace(result_path + ".tmp", result_path)


def sweep(settings: dict[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """Every (backbone, frames) of the settings, written to `out` after each -> results.json's
    content."""
    out = settings["out"]
    os.makedirs(out, exist_ok=True)
    rows = _previous_rows(settings) if settings["resume"] else []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts = parameter_counts(settings)
    for kind, count in counts.items():
        shown = f"{count:,}" if isinstance(count, int) else count
        _log(f"{kind}: d_model {settings['widths'][kind]}, {settings['layers']} layers, {shown}")
    sizes = [c for c in counts.values() if isinstance(c, int)]
    if sizes and max(sizes) > 1.15 * min(sizes):
        _log(f"note: parameter counts differ by more than 15 % ({min(sizes):,} - {max(sizes):,})")
    meta = {
        "argv": list(argv),
        "settings": settings,
        "parameters": counts,
        "versions": _versions(),
        "hardware": _hardware(settings["device"]),
        "started": started,
    }
    done = {(r["backbone"], int(r["frames"])) for r in rows}
    begin = last_plot = time.perf_counter()
    _write_all(out, rows, meta, finished=False, draw=False)
    finished = False
    try:
        for kind in settings["backbones"]:
            oom_at = min(
                (int(r["frames"]) for r in rows if r["backbone"] == kind and r["status"] == "OOM"),
                default=None,
            )
            for frames in settings["frames"]:
                if (kind, frames) in done:
                    _log(f"{kind} T={frames}: in results.csv already (--resume), skipped")
                    continue
                if isinstance(counts[kind], str):
                    row = {"status": "error", "note": counts[kind]}
                elif oom_at is not None and frames > oom_at:
                    row = {"status": "OOM", "note": f"skipped after OOM at T={oom_at}"}
                    _log(f"{kind} T={frames}: skipped after OOM at T={oom_at}")
                elif settings["isolation"] == "subprocess":
                    row = run_child(settings, kind, frames)
                else:
                    row = run_config(settings, kind, frames)
                row = {"backbone": kind, "frames": frames, "tokens": FRAME * frames, **row}
                if row["status"] == "OOM" and oom_at is None:
                    oom_at = frames
                rows.append(row)
                # Drawing takes a second or two: at most every PLOT_SECONDS, and at the end.
                draw = time.perf_counter() - last_plot >= PLOT_SECONDS
                _write_all(out, rows, meta, finished=False, draw=draw)
                last_plot = time.perf_counter() if draw else last_plot
        finished = True
    finally:  # also on Ctrl-C or an error: every row so far, and the plot of them
        content = _write_all(out, rows, meta, finished=finished, draw=True)
    _log(f"sweep done in {time.perf_counter() - begin:.0f} s: {os.path.join(out, RESULTS_MD)}")
    return content


def _previous_rows(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of results.csv in `out` (none without one); a ConfigError when results.json says
    they were made with other settings."""
    out = settings["out"]
    path = os.path.join(out, RESULTS_JSON)
    if os.path.exists(path):
        with open(path) as file:
            previous = json.load(file).get("settings", {})
        changed = [k for k in SAME_FOR_RESUME if k in previous and previous[k] != settings[k]]
        if changed:
            raise ConfigError(
                f"--resume: the results in {out} were made with other values of "
                f"{', '.join(changed)}; use another --out or run without --resume"
            )
    # A configuration that failed (not OOM) has no result: it runs again.
    return [r for r in read_results(os.path.join(out, RESULTS_CSV)) if r["status"] != "error"]


def read_results(path: str) -> list[dict[str, Any]]:
    """results.csv -> rows, numbers as numbers, missing values as None."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as file:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(file)]


def _parse(value: str) -> Any:
    if value == "":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _write_all(
    out: str, rows: list[dict[str, Any]], meta: dict[str, Any], finished: bool, draw: bool
) -> dict[str, Any]:
    """results.csv, results.md, results.json and (`draw`) gridworld.png, each replaced whole."""
    with _replacing(os.path.join(out, RESULTS_CSV)) as path, open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
    with _replacing(os.path.join(out, RESULTS_MD)) as path, open(path, "w") as file:
        file.write(markdown(rows, meta))
    if rows and draw:
        with _replacing(os.path.join(out, FIGURE)) as path:
            plot(rows, path, meta["settings"]["memory_cap_gb"])
    content = {
        **meta,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": finished,
        "results": rows,
    }
    with _replacing(os.path.join(out, RESULTS_JSON)) as path, open(path, "w") as file:
        json.dump(content, file, indent=1, default=str, allow_nan=True)
    return content


@contextlib.contextmanager
def _replacing(path: str) -> Iterator[str]:
    """Write to a temporary name, then replace `path` with it: a reader never sees half a file."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"  # the extension tells matplotlib the format
    yield tmp
    os.replace(tmp, path)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table with what its columns mean."""
    settings = meta["settings"]
    hardware = meta["hardware"]
    threads = settings["threads"] or "all"
    threads = f"{threads} thread{'s' if threads != 1 else ''} per configuration"
    lines = [
        "# Grid world: next-token prediction against sequence length",
        "",
        f"{hardware['device']}, torch {meta['versions']['torch']}; "
        f"{settings['tokens_per_update']:,} tokens per update, at most {settings['updates']} "
        f"updates or {settings['max_seconds']:g} s per configuration, AdamW lr {settings['lr']:g}, "
        f"memory cap {settings['memory_cap_gb']:g} GiB, {threads}, {settings['layers']} layers, "
        "widths " + ", ".join(f"{k} {settings['widths'][k]}" for k in settings["backbones"]) + ".",
        "",
        "Accuracy of the next token on held-out sequences of the same length: *history* — "
        "central cells after a normal move (determined by the history; predicting the previous "
        "frame's cell scores the copy baseline, predicting `empty` 7/9 ≈ 0.78); *fresh* — "
        "central cells of a new placement (first frame, after the goal; ≈ 0.78 from `empty`); "
        "*action* — random (0.25); *all* — every token but the walls (the outer cells, always "
        "walls, trivially predictable: `acc_wall` in results.csv). ms/update: median over the "
        f"updates after the first {settings['warmup']}. Peak MiB: the growth of peak memory "
        "during training. OOM: an allocation beyond the cap failed.",
        "",
        "| backbone | frames | tokens | params | updates done | acc_history | copy baseline | "
        "acc_fresh | acc_action | acc_all | ms/update | peak MiB | status |",
        "| --- |" + " ---: |" * 11 + " --- |",
    ]
    for r in rows:
        status = r.get("status", "")
        if r.get("note") and status != "ok":
            status += f" ({r['note']})"
        lines.append(
            f"| {r['backbone']} | {r['frames']} | {r['tokens']:,} | {_cell(r.get('params'), 0)} "
            f"| {_cell(r.get('updates_done'), 0)} | {_cell(r.get('acc_history'), 3)} | "
            f"{_cell(r.get('baseline_copy'), 3)} | {_cell(r.get('acc_fresh'), 3)} | "
            f"{_cell(r.get('acc_action'), 3)} | {_cell(r.get('acc_all'), 3)} | "
            f"{_cell(r.get('ms_per_update'), 0)} | {_cell(r.get('peak_mib'), 0)} | "
            f"{status.replace('|', '/')} |"
        )
    notes = [r for r in rows if r.get("note") and r.get("status") == "ok"]
    if notes:
        lines += [""] + [f"- {r['backbone']} T={r['frames']}: {r['note']}" for r in notes]
    lines += ["", f"![grid world]({FIGURE})", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, cap_gb: float) -> None:
    """Three panels against the sequence length in tokens (log x): accuracy on history tokens,
    time per update, peak memory; one line per backbone, OOM marked x at the panel's top."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    figure = Figure(figsize=(15, 4.6))
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.12, top=0.86, wspace=0.22)
    axes = figure.subplots(1, 3)
    panels = (
        ("acc_history", "accuracy on history tokens", False),
        ("ms_per_update", "training time per update (ms)", True),
        ("peak_mib", "peak training memory (MiB)", True),
    )
    kinds = list(dict.fromkeys(r["backbone"] for r in rows))
    colors = {kind: f"C{i}" for i, kind in enumerate(BACKBONES)}
    for ax, (key, title, log_y) in zip(axes, panels, strict=True):
        for kind in kinds:
            mine = sorted((r for r in rows if r["backbone"] == kind), key=lambda r: r["tokens"])
            ok = [r for r in mine if r["status"] == "ok" and _number(r.get(key))]
            ax.plot(
                [r["tokens"] for r in ok], [r[key] for r in ok], "o-", color=colors.get(kind),
                label=kind,
            )  # fmt: skip
            oom = [r["tokens"] for r in mine if r["status"] == "OOM"]
            if oom:
                ax.plot(
                    oom, [0.96] * len(oom), "x", color=colors.get(kind), markersize=10, mew=2.5,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                )  # fmt: skip
        if key == "acc_history":
            base = sorted(
                (r["tokens"], r["baseline_copy"]) for r in rows if _number(r.get("baseline_copy"))
            )
            if base:
                xs, ys = zip(*dict(base).items(), strict=True)
                ax.plot(xs, ys, ":", color="gray", label="copy previous frame")
            ax.axhline(7 / 9, color="gray", ls="--", lw=0.8, label="always empty (7/9)")
        if key == "peak_mib" and cap_gb > 0:
            ax.axhline(cap_gb * 1024, color="red", ls="--", lw=0.8, label=f"cap {cap_gb:g} GiB")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        ax.set_xlabel("sequence length (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    axes[2].legend(fontsize=8, loc="best")
    figure.suptitle("Grid world (x at the top: out of memory)")
    figure.savefig(path, dpi=110)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _versions() -> dict[str, str]:
    import matplotlib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
    }


def _hardware(device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    memory = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as file:
        names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        cpu = names[0] if names else cpu
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as file:
        memory = int(file.readline().split()[1]) / 2**20  # MemTotal in kB -> GiB
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu,
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["device"] = f"CUDA {torch.cuda.get_device_name(0)}"
    else:
        info["device"] = f"CPU {cpu} ({cores} cores)"
    return info


# ------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_drama.experiments.gridworld",
        description="The Drama paper's long-sequence grid world (Fig. 3): next-token accuracy, "
        "time and memory of sequence models against sequence length.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--backbones", nargs="+", default=list(BACKBONES), metavar="KIND",
        help=f"sequence models to compare, of {', '.join(BACKBONES)}",
    )  # fmt: skip
    parser.add_argument(
        "--frames", nargs="+", type=int, default=[16, 64, 256, 1024], metavar="T",
        help="sequence lengths in frames (26 tokens each)",
    )  # fmt: skip
    parser.add_argument(
        "--updates", type=int, default=300, help="training updates per configuration (at most)"
    )
    parser.add_argument(
        "--tokens-per-update", type=int, default=26624,
        help="tokens per update, batch = tokens / (26 T); at least 26 x the longest T",
    )  # fmt: skip
    parser.add_argument(
        "--max-seconds-per-config", type=float, default=100.0,
        help="stop training a configuration after this long (updates done are recorded)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-cap-gb", type=float, default=6.0,
        help="memory a configuration may add (GiB); beyond it: OOM. 0: no cap",
    )  # fmt: skip
    parser.add_argument(
        "--eval-tokens", type=int, default=26624,
        help="held-out tokens per length (at least one sequence)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=1, help="updates left out of the time per update"
    )
    parser.add_argument("--lr", type=float, default=6e-3, help="AdamW learning rate")
    parser.add_argument(
        "--width", action="append", metavar="KIND=N",
        help="d_model of a backbone (repeatable); defaults: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_WIDTHS.items()),
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS, help="backbone layers")
    parser.add_argument("--heads", type=int, default=8, help="Transformer attention heads")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per configuration; 0: torch's default (all cores). One thread keeps "
        "the times steady on a shared machine, where two-thread updates can take 3-4 x longer",
    )  # fmt: skip
    parser.add_argument(
        "--isolation", choices=("subprocess", "none"), default="subprocess",
        help="run each configuration in a fresh child process (its own memory and peak) or in "
        "this one (faster to start; the peak is this process's)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-seconds", type=float, default=10.0, help="seconds between progress lines"
    )
    parser.add_argument("--out", default="runs/gridworld", help="directory of the results")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the configurations already in OUT/results.csv (but those that failed with "
        "an error) and run only the others; the settings must be those of the results",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        settings = settings_of(args)
        sweep(settings, argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log(f"interrupted; the configurations done so far are in {args.out}")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
