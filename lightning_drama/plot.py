"""Learning curves from the CSV logs of training runs.

    python -m lightning_drama.plot RUN_DIR [RUN_DIR ...] [-o out.png] [--metric NAME] [--smooth K]

A run is one ``metrics.csv`` written by Lightning's ``CSVLogger``
(``<save_dir>/<name>/version_<k>/metrics.csv``); every ``metrics.csv`` below a RUN_DIR is a run.
Rows are sparse (a row fills only the metrics logged at its step) and ``step`` is env steps.
A run that logged only ``eval/`` metrics is a ``validate`` or ``test`` run, not training, and is
skipped. A ``fit`` resumed from a checkpoint in another run's directory (``ckpt_path`` of its
``config.yaml``) logs into a new directory; it continues that run, and the two are joined into one.

Runs are seeds of one experiment when the ``config.yaml`` LightningCLI writes next to the log
differs only in keys that do not change what is learned (``NOT_THE_EXPERIMENT``: the seed, the
budget, where and how often things are logged, ...). The seeds of an experiment are drawn as one
curve: each seed is smoothed with a trailing moving average, interpolated onto the env steps
logged by any seed within the range all seeds cover, and averaged; the band is the 95 % Student-t
confidence interval of that mean, ``mean +- t(0.975, n - 1) * std / sqrt(n)`` over the n seeds.
A single run is drawn as its smoothed line. Experiments are labelled by their game and the keys
in which their configs differ (``Pong, model.acting=posterior (3 seeds)``). Runs without a
``config.yaml`` are grouped by env (``env_id`` of ``hparams.yaml``), or else each on its own.

Without ``--metric`` the episode return is drawn (and the human-normalised score when the game is
known). A run too short for a few finished episodes, such as ``configs/debug.yaml``'s, has fewer
than ``MIN_POINTS`` of them: then the first ``MAX_FALLBACK_PANELS`` metrics of ``FALLBACK`` that a
run logged at least ``MIN_POINTS`` times are drawn instead, with a note saying so. A metric asked
for with ``--metric`` is drawn however few its points, and is an error when no run logged it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import warnings
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from lightning_drama.scores import ATARI_SCORES, game_from_env_id, human_normalized

# (env steps [T] strictly increasing, values [T])
Curve = tuple[np.ndarray, np.ndarray]

RETURN = "env/episode_return"
NORMALIZED = "env/human_normalized"
# A human-normalised column a run did not log is computed from its return when the game is known.
NORMALIZED_FROM = {NORMALIZED: RETURN, "eval/human_normalized": "eval/return_mean"}
TITLES = {
    RETURN: "episode return",
    NORMALIZED: "human-normalised score",
    "eval/return_mean": "evaluation return",
    "eval/human_normalized": "evaluation human-normalised score",
    "train/wm/recon": "world model: reconstruction loss",
    "train/wm/kl": "world model: KL(posterior || prior)",
    "train/ac/return": "actor-critic: imagined lambda-return",
    "train/wm/loss": "world model: total loss",
    "train/ac/loss": "actor-critic: total loss",
}
# Losses that fall by orders of magnitude early on: a log axis keeps the later progress visible.
LOG_SCALE = {"train/wm/recon", "train/wm/loss"}

# Fewer logged points than this say little about a trend (a debug run has one or two returns).
MIN_POINTS = 3
# When no run has MIN_POINTS episode returns: the most informative metrics first. The score when
# evaluations ran often enough; then whether the world model learns to see (reconstruction) and
# to predict (KL of its prior from its posterior), and what the actor reaches in imagination.
FALLBACK = (
    "eval/return_mean",
    "train/wm/recon",
    "train/wm/kl",
    "train/ac/return",
    "train/wm/loss",
    "train/ac/loss",
)
MAX_FALLBACK_PANELS = 3

# Keys of config.yaml (dotted, with LightningCLI's init_args left out) that do not change what a
# run learns, so runs differing only in them are seeds of one experiment: the seed itself, the
# checkpoint a fit resumed from, the budget (a run resumed with a larger one goes on; nothing
# anneals over it), and where, how often and how fast things are logged, saved, evaluated, shown
# or stepped. A key matches itself and everything below it.
NOT_THE_EXPERIMENT = (
    "seed_everything",
    "data.seed",
    "ckpt_path",
    "weights_only",
    "data.total_env_steps",
    "data.replay_dir",
    "data.asynchronous_envs",
    "data.eval_envs",
    "trainer.accelerator",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.enable_autolog_hparams",
    "trainer.profiler",
    "trainer.log_every_n_steps",
    "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch",
    "trainer.num_sanity_val_steps",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
)
LAYOUT = "<save_dir>/<name>/version_<k>/metrics.csv, as written by Lightning's CSVLogger"

# Two-sided 95 % Student-t critical values t(0.975, df) for df = 1..30; beyond, a Cornish-Fisher
# expansion around the normal quantile is within 1e-4. Carried here to keep scipy out.
_T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z_975 = 1.959963984540054


class PlotError(ValueError):
    """Something about the runs given that the user has to fix; ``main`` prints it and exits."""


@dataclass
class Run:
    """The metrics of one ``metrics.csv``, the env the run was trained on and its experiment."""

    path: Path  # the directory holding metrics.csv (the first one, for runs joined over resumes)
    env_id: str | None  # None when neither config.yaml nor hparams.yaml names it
    metrics: dict[str, Curve]
    ckpt_path: str | None = None  # the checkpoint the run was resumed from, as config.yaml has it
    # Dotted key -> value of config.yaml without NOT_THE_EXPERIMENT; None without a config.yaml.
    experiment: dict[str, str] | None = None

    @property
    def group(self) -> Hashable:
        """Runs of one group are seeds of one experiment: the same config up to the seed (and
        NOT_THE_EXPERIMENT); without a config.yaml the same env, or (unknown env) the same path."""
        if self.experiment is not None:
            return self.env_id, tuple(sorted(self.experiment.items()))
        return self.env_id if self.env_id is not None else str(self.path)

    @property
    def label(self) -> str:
        """The game (or env, or path) the run played; ``group_labels`` adds what else differs."""
        if self.env_id is None:
            return str(self.path)
        return game_from_env_id(self.env_id) or self.env_id

    def curve(self, metric: str) -> Curve | None:
        if metric in self.metrics:
            return self.metrics[metric]
        source = NORMALIZED_FROM.get(metric)
        game = game_from_env_id(self.env_id) if self.env_id else None
        if source in self.metrics and game in ATARI_SCORES:
            steps, returns = self.metrics[source]
            return steps, np.array([human_normalized(game, r) for r in returns])
        return None


def find_metrics_files(path: Path) -> list[Path]:
    """Every ``metrics.csv`` at or below ``path`` (a file, a version dir or any parent dir)."""
    if not path.exists():
        raise PlotError(f"{path} does not exist; expected a run directory ({LAYOUT})")
    if path.is_file():
        if path.name != "metrics.csv":
            raise PlotError(f"{path} is not a metrics.csv; expected a run directory ({LAYOUT})")
        return [path]
    found = sorted(path.rglob("metrics.csv"))
    if not found:
        raise PlotError(f"no metrics.csv found under {path}; expected {LAYOUT}, or a dir above it")
    return found


def read_metrics(csv_path: Path) -> dict[str, Curve]:
    """Column -> (env steps, values) of the filled cells; values logged twice at a step averaged."""
    cells: dict[str, list[tuple[float, float]]] = {}
    with csv_path.open(newline="") as file:
        reader = csv.DictReader(file)
        if "step" not in (reader.fieldnames or []):
            raise PlotError(f"{csv_path} has no 'step' column; expected {LAYOUT}")
        for row in reader:
            if not row["step"]:
                continue
            step = float(row["step"])
            for column, cell in row.items():
                if column == "step" or column is None or not cell:
                    continue
                value = float(cell)
                if math.isfinite(value):
                    cells.setdefault(column, []).append((step, value))
    metrics = {}
    for column, pairs in cells.items():
        steps, values = np.array(pairs).T
        unique, index = np.unique(steps, return_inverse=True)
        mean = np.bincount(index, weights=values) / np.bincount(index)
        metrics[column] = (unique, mean)
    return metrics


def is_evaluation(metrics: dict[str, Curve]) -> bool:
    """Only ``eval/`` columns and Lightning's ``epoch``: a ``validate`` or ``test`` run.

    Those log through ``self.log``, which adds ``epoch``; a fit logs at env steps without it, so
    a fit too short for a training log (a resume by a few steps) is still a fit.
    """
    return "epoch" in metrics and all(c.startswith("eval/") or c == "epoch" for c in metrics)


def _string_in(config_path: Path, *keys: str) -> str | None:
    try:
        node = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as e:
        warnings.warn(f"cannot read {config_path} ({e}); ignoring it", stacklevel=2)
        return None
    for key in keys:
        if isinstance(node, dict) and isinstance(node.get("init_args"), dict):
            node = node["init_args"]  # LightningCLI's subclass mode: {class_path, init_args}
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, str) else None


def _config_files(run_dir: Path, root: Path) -> Iterator[Path]:
    """The ``config.yaml`` files from ``run_dir`` up to ``root``, nearest first."""
    for directory in (run_dir, *run_dir.parents):
        if (directory / "config.yaml").is_file():
            yield directory / "config.yaml"
        if directory == root or root not in directory.parents:
            return


def read_env_id(run_dir: Path, root: Path) -> str | None:
    """``data.env_id`` of the nearest ``config.yaml`` from ``run_dir`` up to ``root``.

    Falls back to the ``env_id`` the DataModule's hyperparameters put in ``hparams.yaml`` (runs
    started without LightningCLI).
    """
    for config in _config_files(run_dir, root):
        env_id = _string_in(config, "data", "env_id")
        if env_id is not None:
            return env_id
    if (run_dir / "hparams.yaml").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # hparams may hold tags safe_load refuses; optional
            return _string_in(run_dir / "hparams.yaml", "env_id")
    return None


def flatten_config(node: object, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"model.world_model.d_model": "64", ...}``; lists are leaves.

    LightningCLI's subclass mode (``{class_path, init_args}``) flattens to ``<key>.class_path``
    and the init_args' keys directly below ``<key>``. Values are strings as a user would type
    them: a plain string as is, anything else as JSON (``null``, ``true``, ``[8, 16]``).
    """
    if not isinstance(node, dict):
        value = node if isinstance(node, str) else json.dumps(node, sort_keys=True, default=str)
        return {prefix: value}
    if isinstance(node.get("init_args"), dict):
        node = {key: value for key, value in node.items() if key != "init_args"} | node["init_args"]
    flat = {}
    for key, value in node.items():
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def defines_experiment(key: str) -> bool:
    return not any(key == k or key.startswith(f"{k}.") for k in NOT_THE_EXPERIMENT)


def read_experiment(run_dir: Path, root: Path) -> dict[str, str] | None:
    """The keys of the nearest ``config.yaml`` that define the experiment; None without one."""
    config = next(_config_files(run_dir, root), None)
    if config is None:
        return None
    try:
        node = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return None  # read_env_id has warned already
    if not isinstance(node, dict):
        return None
    return {k: v for k, v in flatten_config(node).items() if defines_experiment(k)}


def read_ckpt_path(run_dir: Path, root: Path) -> str | None:
    """``ckpt_path`` of the nearest ``config.yaml``: the checkpoint a resumed fit started from."""
    config = next(_config_files(run_dir, root), None)
    return _string_in(config, "ckpt_path") if config is not None else None


def resumed_from(run: Run, runs: Sequence[Run]) -> Run | None:
    """The run of ``runs`` (same env) whose directory holds the checkpoint ``run`` resumed from.

    A relative ``ckpt_path`` is relative to the directory training was started in, which is
    normally above the run's own log directory (``save_dir: runs``): the nearest directory above
    ``run`` that puts the checkpoint inside another run is taken.
    """
    if run.ckpt_path is None:
        return None
    ckpt = Path(run.ckpt_path).expanduser()
    starts = [Path()] if ckpt.is_absolute() else [*run.path.resolve().parents, Path.cwd()]
    others = [(o.path.resolve(), o) for o in runs if o is not run and o.env_id == run.env_id]
    for start in starts:
        above_ckpt = (start / ckpt).resolve().parents
        for other_dir, other in others:
            if other_dir in above_ckpt:
                return other
    return None


def last_step(run: Run) -> float:
    return max(steps[-1] for steps, _ in run.metrics.values())


def continue_with(run: Run, resumed: Run) -> Run:
    """``run`` up to the first step ``resumed`` logged, then ``resumed``: one seed.

    What ``run`` logged from there on came after the checkpoint, from training the resume
    replaced (it was interrupted), so it is dropped.
    """
    start = min(steps[0] for steps, _ in resumed.metrics.values())
    metrics = {}
    for column in run.metrics.keys() | resumed.metrics.keys():
        steps, values = run.metrics.get(column, (np.empty(0), np.empty(0)))
        later_steps, later_values = resumed.metrics.get(column, (np.empty(0), np.empty(0)))
        before = steps < start
        if before.any() or len(later_steps):
            metrics[column] = (
                np.concatenate([steps[before], later_steps]),
                np.concatenate([values[before], later_values]),
            )
    return Run(run.path, run.env_id, metrics, run.ckpt_path, run.experiment)


def join_resumes(runs: Sequence[Run]) -> list[Run]:
    """One run per seed: each run followed by its chain of resumes, joined with ``continue_with``.

    When two runs resumed from checkpoints of the same run, the one whose chain got further is
    its continuation and the other is left out with a warning.
    """
    resumes: dict[int, list[Run]] = {id(run): [] for run in runs}
    roots = []
    for run in runs:
        source = resumed_from(run, runs)
        if source is None:
            roots.append(run)
        else:
            resumes[id(source)].append(run)

    def reach(run: Run) -> float:
        return max([last_step(run), *(reach(resumed) for resumed in resumes[id(run)])])

    seeds = []
    for root in roots:
        seed, run = root, root
        while resumes[id(run)]:
            nxt = max(resumes[id(run)], key=reach)
            for other in resumes[id(run)]:
                if other is not nxt:
                    warnings.warn(
                        f"{other.path} and {nxt.path} both resumed from a checkpoint of "
                        f"{run.path}; leaving out {other.path}, which got less far",
                        stacklevel=2,
                    )
            seed, run = continue_with(seed, nxt), nxt
        seeds.append(seed)
    return seeds


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """The training runs below ``paths``, one per seed: evaluation runs skipped, resumes joined."""
    runs: list[Run] = []
    seen = set()
    for path in paths:
        root = path.resolve() if path.is_dir() else path.resolve().parent
        for csv_path in find_metrics_files(path):
            run_dir = csv_path.parent
            if run_dir.resolve() in seen:
                continue  # given twice (a dir and a dir above it)
            seen.add(run_dir.resolve())
            metrics = read_metrics(csv_path)
            if is_evaluation(metrics):
                warnings.warn(
                    f"skipping {run_dir}: no training metrics, only eval/ "
                    "(a validate or test run, or a run stopped before its first log)",
                    stacklevel=2,
                )
                continue
            env_id = read_env_id(run_dir.resolve(), root)
            ckpt_path = read_ckpt_path(run_dir.resolve(), root)
            experiment = read_experiment(run_dir.resolve(), root)
            runs.append(Run(run_dir, env_id, metrics, ckpt_path, experiment))
    if not runs:
        names = ", ".join(str(path) for path in paths)
        raise PlotError(f"no training run under {names}: every metrics.csv has only eval/ columns")
    return join_resumes(runs)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (fewer at the start); 1 = unchanged."""
    if window < 1:
        raise PlotError(f"the smoothing window must be >= 1 logged points, got {window}")
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)


def t_critical_95(df: int) -> float:
    """``t(0.975, df)``: the half-width of a 95 % confidence interval in units of the sem."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_and_band(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``grid [T]``, ``mean [T]`` and the 95 % half-width ``[T]`` of the seeds' curves.

    The grid is every env step any seed logged within the range all seeds cover, so no seed is
    extrapolated; with a single curve the half-width is 0.
    """
    start = max(steps[0] for steps, _ in curves)
    end = min(steps[-1] for steps, _ in curves)
    if start > end:
        ranges = ", ".join(f"[{steps[0]:g}, {steps[-1]:g}]" for steps, _ in curves)
        raise PlotError(f"the seeds cover env-step ranges {ranges} with no overlap to average on")
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    values = np.stack([np.interp(grid, steps, v) for steps, v in curves])  # [seeds, T]
    n = len(curves)
    if n == 1:
        return grid, values[0], np.zeros_like(grid)
    sem = values.std(axis=0, ddof=1) / math.sqrt(n)
    return grid, values.mean(axis=0), t_critical_95(n - 1) * sem


def most_points(runs: Sequence[Run], metric: str) -> int:
    """The most points any run logged of ``metric`` (0 when none did)."""
    curves = [curve for curve in (run.curve(metric) for run in runs) if curve is not None]
    return max((len(steps) for steps, _ in curves), default=0)


def fallback_metrics(runs: Sequence[Run]) -> list[str]:
    """Up to ``MAX_FALLBACK_PANELS`` of ``FALLBACK``, in its order, that some run logged at least
    ``MIN_POINTS`` times; when none has that many, those of ``RETURN`` and ``FALLBACK`` logged."""
    candidates = [m for m in FALLBACK if most_points(runs, m) >= MIN_POINTS]
    if not candidates:
        candidates = [m for m in (RETURN, *FALLBACK) if most_points(runs, m) > 0]
    if not candidates:
        available = sorted({column for run in runs for column in run.metrics})
        raise PlotError(
            f"no run logged {RETURN} or any of {', '.join(FALLBACK)}; choose a column with "
            f"--metric, available: {', '.join(available)}"
        )
    return candidates[:MAX_FALLBACK_PANELS]


def panel_metrics(runs: Sequence[Run], metrics: Sequence[str] | None) -> list[str]:
    """The metrics to draw, one panel each.

    Asked-for metrics are drawn as asked; one that no run has is an error. By default the episode
    return and (when known) the human-normalised score, or, when no run logged ``MIN_POINTS``
    returns, the ``fallback_metrics`` with a note (a warning) saying why.
    """
    if metrics:
        for metric in metrics:
            if all(run.curve(metric) is None for run in runs):
                available = sorted({column for run in runs for column in run.metrics})
                raise PlotError(
                    f"no run has the column {metric!r}; available columns: {', '.join(available)}"
                )
        return list(metrics)
    returns = most_points(runs, RETURN)
    if returns >= MIN_POINTS:
        return [RETURN, NORMALIZED] if most_points(runs, NORMALIZED) else [RETURN]
    panels = fallback_metrics(runs)
    logged = f"at most {returns} point{'s' if returns > 1 else ''} a run" if returns else "none"
    warnings.warn(
        f"{RETURN}: {logged}, too few episodes finished for a curve; drawing {', '.join(panels)} "
        f"instead (the first of {', '.join(FALLBACK)} with {MIN_POINTS}+ points, else with any; "
        "choose with --metric)",
        stacklevel=2,
    )
    return panels


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped into experiments (``Run.group``), in the order of their first run."""
    groups: dict[Hashable, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return list(groups.values())


def group_labels(groups: Sequence[Sequence[Run]], max_keys: int = 3) -> list[str]:
    """One legend label per experiment: its game and the config keys whose values differ between
    experiments (``Pong, model.acting=posterior``); at most ``max_keys`` of them, then a count."""
    experiments = [group[0].experiment for group in groups]
    configs = [e for e in experiments if e is not None]
    keys = sorted({key for config in configs for key in config})
    # The game names the env, unless two envs play one game (ALE/Pong-v5, PongNoFrameskip-v4).
    env_ids = {group[0].env_id for group in groups}
    named = {"data.env_id"} if len({group[0].label for group in groups}) == len(env_ids) else set()
    differing = [
        key for key in keys if key not in named and len({config.get(key) for config in configs}) > 1
    ]
    labels = []
    for group, experiment in zip(groups, experiments, strict=True):
        parts = [group[0].label]
        if experiment is not None:
            parts += [f"{key}={experiment.get(key, 'unset')}" for key in differing[:max_keys]]
            if len(differing) > max_keys:
                parts.append(f"+{len(differing) - max_keys} more keys")
        labels.append(", ".join(parts))
    return labels


def plot_learning_curves(
    runs: Sequence[Run], metrics: Sequence[str] | None = None, smooth_window: int = 5
) -> Figure:
    """One panel per metric (default: episode return and, when known, human-normalised score;
    see ``panel_metrics``), one line per experiment (``group_runs``)."""
    panels = panel_metrics(runs, metrics)
    groups = group_runs(runs)
    names = group_labels(groups)

    # Not pyplot: a Figure of its own leaves the caller's matplotlib backend alone.
    fig = Figure(figsize=(6 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, metric in zip(axes, panels, strict=True):
        positive = True
        for color, (group, name) in enumerate(zip(groups, names, strict=True)):
            curves = [c for c in (run.curve(metric) for run in group) if c is not None]
            if not curves:
                continue
            positive = positive and all((values > 0).all() for _, values in curves)
            curves = [(steps, smooth(values, smooth_window)) for steps, values in curves]
            label = f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            style = {"color": f"C{color}", "markersize": 3}
            try:
                grid, mean, half = mean_and_band(curves)
            except PlotError as e:
                warnings.warn(f"{metric} of {label}: {e}; drawing each seed", stacklevel=2)
                for seed, (steps, values) in enumerate(curves):
                    few = "o" if len(steps) <= 20 else None  # sparse metrics (evals) as points
                    ax.plot(steps, values, marker=few, label=None if seed else label, **style)
                continue
            few = "o" if len(grid) <= 20 else None
            ax.plot(grid, mean, marker=few, label=label, **style)
            if len(curves) > 1:
                ax.fill_between(grid, mean - half, mean + half, color=f"C{color}", alpha=0.2)
        if metric in NORMALIZED_FROM:
            ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8, label="human")
        if metric in LOG_SCALE and positive:
            ax.set_yscale("log")
        ax.set_title(TITLES.get(metric, metric))
        ax.set_xlabel("env steps")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    band = "mean of seeds, 95 % t-interval" if any(len(g) > 1 for g in groups) else ""
    smoothing = f"moving average over {smooth_window} logs" if smooth_window > 1 else "no smoothing"
    fig.suptitle(", ".join(filter(None, [band, smoothing])), fontsize="small")
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_drama.plot",
        description="Draw learning curves from the CSVLogger logs of training runs into a PNG. "
        "Runs whose config.yaml differ only in the seed (or in logging, budget and the like) are "
        "seeds of one experiment, averaged with a 95 % confidence band; different configs are "
        "labelled by what differs. A run resumed from another's checkpoint continues it; "
        "validate/test runs are skipped.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR",
        help="a run's log dir (holding metrics.csv) or any dir above runs",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("learning_curves.png"),
        help="PNG to write (default: learning_curves.png)",
    )  # fmt: skip
    parser.add_argument(
        "--metric", action="append", metavar="NAME",
        help=f"column to plot instead of the default {RETURN} and {NORMALIZED} (or, when "
        f"runs have fewer than {MIN_POINTS} returns, the first of {', '.join(FALLBACK)} they "
        "logged); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--smooth", type=int, default=5, metavar="K",
        help="trailing moving average over K logged points per run; 1 = none (default: 5)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # What was skipped or could not be averaged, one line each, before the output or the error.
    error = None
    with warnings.catch_warnings(record=True) as notes:
        try:
            fig = plot_learning_curves(load_runs(args.runs), args.metric, args.smooth)
        except PlotError as e:
            error = e
    for note in notes:
        print(f"{parser.prog}: {note.message}", file=sys.stderr)
    if error is not None:
        parser.error(str(error))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(args.output)


if __name__ == "__main__":
    main()
