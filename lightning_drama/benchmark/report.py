"""`python -m lightning_drama.benchmark report OUT [OUT2 ...]`: what a benchmark found.

    python -m lightning_drama.benchmark report runs/benchmark [runs/other] [--out DIR]
        [--reps 2000] [--seed 0]

Reads the directories `python -m lightning_drama.benchmark run` writes (`OUT/benchmark.json`, and
per run `OUT/<game>/seed_<k>/status.json` and `version_<N>/evaluations.jsonl`) and writes to
`--out` (default `<first OUT>/report`): `report.md` with the tables and the plots
(`aggregates.png`, `performance_profile.png`, `sample_efficiency.png` and, for two or more
directories, `probability_of_improvement.png`), and `per_game.csv`, `aggregates.csv`, `curves.csv`.

- A run's evaluations are those of all its `version_<N>` directories (a resumed run continues in a
  new one); at the same env steps a later version's evaluation replaces the earlier one. Its final
  evaluation is the one with the most env steps, and only runs whose state is `done` give final
  scores; runs still going, failed or interrupted appear in the curves and in a list of their own.
- Scores are normalised so that games can be aggregated: Atari100k games by the human-normalised
  score `(return - random) / (human - random)`, MinAtar games by `(return - random) / (reference -
  random)` with the random and reference returns of `published.py`. Games of one normalisation (a
  *suite*) are aggregated together; other env ids are reported as raw returns only.
- Aggregates over games follow Agarwal et al. (2021, "Deep RL at the Edge of the Statistical
  Precipice"), with rliable's metrics: median, IQM, mean and optimality gap of the normalised
  scores, with 95 % stratified-bootstrap confidence intervals; performance profiles; and, between
  two directories, the probability of improvement. They need the same number of runs in every game,
  so a suite's score matrix `[runs, games]` takes the first n finished seeds of each game, n the
  fewest any game has; games without a finished seed are left out, and the report says so.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from lightning_drama.benchmark.published import (
    ATARI100K_PUBLISHED,
    MINATAR_RANDOM,
    MINATAR_RANDOM_ALL_ACTIONS,
    MINATAR_REFERENCE,
    MINATAR_REFERENCE_NAME,
    MINATAR_REFERENCE_SOURCE,
)
from lightning_drama.benchmark.run import (
    BENCHMARK_FILE,
    STATUS_FILE,
    read_evaluations,
    read_json,
)
from lightning_drama.benchmark.run import run_progress as _run_progress
from lightning_drama.scores import ATARI_SCORES, game_from_env_id, human_normalized

LAYOUT = (
    "a directory written by `python -m lightning_drama.benchmark run --out DIR`: "
    "DIR/benchmark.json and, per run, DIR/<game>/seed_<k>/status.json with "
    "DIR/<game>/seed_<k>/version_<N>/evaluations.jsonl"
)

ATARI = "Atari100k (human-normalised)"
MINATAR = "MinAtar (random-to-reference normalised)"
METRICS = ("Median", "IQM", "Mean", "Optimality gap")
CONFIDENCE = 0.95
FEW_SEEDS = 3  # an aggregate over fewer runs per game than this is flagged as fragile
PROFILE_POINTS = 81  # thresholds tau of a performance profile
CURVE_POINTS = 20  # env-step points of an aggregate IQM curve
UNFINISHED = ("running", "queued", "interrupted", "failed", "unknown")


class ReportError(ValueError):
    """Nothing to report: what was asked for is not a benchmark directory with runs."""


# ------------------------------------------------------------------- a benchmark on disk


@dataclass
class Run:
    """One (game, seed) of a benchmark: its `status.json` and its merged evaluations."""

    env_id: str
    seed: int
    status: dict[str, Any]  # {} when the run has no status.json (planned, never started)
    evaluations: list[dict[str, Any]]  # by env steps, increasing

    @property
    def state(self) -> str:
        if self.status.get("state"):
            return str(self.status["state"])
        return "unknown" if self.evaluations else "pending"

    @property
    def final(self) -> dict[str, Any] | None:
        """The evaluation with the most env steps, which is the score of a finished run."""
        return self.evaluations[-1] if self.evaluations else None

    @property
    def finished(self) -> bool:
        return self.state == "done" and self.final is not None

    @property
    def error(self) -> str:
        lines = str(self.status.get("error") or "").strip().splitlines()
        return lines[0] if lines else ""


@dataclass
class Benchmark:
    directory: str
    label: str
    games: list[str]  # env ids: those of benchmark.json, then any others found on disk
    seeds: dict[str, int]  # env id -> seeds planned
    runs: list[Run]

    def runs_of(self, env_id: str) -> list[Run]:
        return sorted((r for r in self.runs if r.env_id == env_id), key=lambda r: r.seed)

    def finished(self, env_id: str) -> list[Run]:
        return [r for r in self.runs_of(env_id) if r.finished]

    @property
    def started(self) -> bool:
        return any(r.status or r.evaluations for r in self.runs)

    def count(self, state: str) -> int:
        return sum(r.state == state for r in self.runs)


def _progress(run_directory: str) -> dict[str, Any] | None:
    from lightning_drama.benchmark.run import Run as _Directory

    return _run_progress(_Directory("", 0, run_directory))


def _env_id_of_directory(name: str) -> str:
    """`ALE_Pong-v5` -> `ALE/Pong-v5`: the runner's directory name back to an env id, for a run
    without status.json (which has the real id)."""
    return re.sub(r"^(ALE|MinAtar)_", r"\1/", name)


def read_benchmark(directory: str) -> Benchmark:
    """The runs of one benchmark directory: those planned in benchmark.json (pending when never
    started) and every `<game>/seed_<k>` found on disk; none when it is not a directory."""
    if not os.path.isdir(directory):
        return Benchmark(directory, os.path.basename(os.path.abspath(directory)), [], {}, [])
    meta = read_json(os.path.join(directory, BENCHMARK_FILE)) or {}
    runs: dict[tuple[str, int], Run] = {}
    for game_name in sorted(os.listdir(directory)):
        game_path = os.path.join(directory, game_name)
        if not os.path.isdir(game_path):
            continue
        for seed_name in sorted(os.listdir(game_path)):
            match = re.fullmatch(r"seed_(\d+)", seed_name)
            run_path = os.path.join(game_path, seed_name)
            if not match or not os.path.isdir(run_path):
                continue
            status = read_json(os.path.join(run_path, STATUS_FILE)) or {}
            env_id = str(status.get("env_id") or _env_id_of_directory(game_name))
            seed = int(status.get("seed", match[1]))
            # Env steps as the run's own progress.json says (the status has them only once an
            # attempt ended), and its budget.
            progress = _progress(run_path)
            if progress:
                status = {**status, "env_steps": progress["env_steps"]}
                status["total_env_steps"] = progress["total_env_steps"]
            runs[env_id, seed] = Run(env_id, seed, status, read_evaluations(run_path))
    planned_games = [str(g) for g in meta.get("games") or []]
    planned_seeds = int(meta.get("seeds") or 0)
    for env_id in planned_games:
        for seed in range(planned_seeds):
            runs.setdefault((env_id, seed), Run(env_id, seed, {}, []))
    games = list(dict.fromkeys([*planned_games, *sorted({env_id for env_id, _ in runs})]))
    seeds = {
        g: max(planned_seeds if g in planned_games else 0, sum(e == g for e, _ in runs))
        for g in games
    }
    label = str(meta.get("label") or os.path.basename(os.path.abspath(directory)))
    return Benchmark(directory, label, games, seeds, list(runs.values()))


# ------------------------------------------------------------------------- normalisation


def _minatar_game(env_id: str) -> tuple[str, str] | None:
    """`MinAtar/Breakout-v1` -> (`Breakout`, `v1`)."""
    match = re.fullmatch(r"MinAtar/(?P<game>[A-Za-z]+)-(?P<version>v[01])", env_id)
    return (match["game"], match["version"]) if match and match["game"] in MINATAR_RANDOM else None


def random_return(env_id: str) -> float | None:
    """The return of a uniformly random policy, when known (Atari100k and MinAtar games)."""
    minatar = _minatar_game(env_id)
    if minatar is not None:
        game, version = minatar
        return (MINATAR_RANDOM if version == "v1" else MINATAR_RANDOM_ALL_ACTIONS)[game]
    game = game_from_env_id(env_id)
    return ATARI_SCORES[game][0] if game is not None else None


def reference_points(env_id: str) -> tuple[str, float, float] | None:
    """(suite, random return, human or reference return) of an env id; None when its returns
    cannot be normalised (an unknown env id, or a MinAtar game without a reference return)."""
    minatar = _minatar_game(env_id)
    if minatar is not None:
        reference = MINATAR_REFERENCE.get(minatar[0])
        return None if reference is None else (MINATAR, random_return(env_id), reference)
    game = game_from_env_id(env_id)
    return None if game is None else (ATARI, *ATARI_SCORES[game])


def suite_of(env_id: str) -> str | None:
    points = reference_points(env_id)
    return points[0] if points else None


def normalized(env_id: str, score: float) -> float | None:
    """The normalised score of a return (0 = random policy, 1 = human or reference), or None."""
    points = reference_points(env_id)
    if points is None:
        return None
    if points[0] == ATARI:
        return human_normalized(game_from_env_id(env_id), score)
    _, random, reference = points
    return (score - random) / (reference - random)


# -------------------------------------------------------------------------------- statistics


def _rliable_metrics():
    try:
        from rliable import metrics
    except ImportError as e:
        raise ReportError(f"the aggregates use rliable's metrics: pip install rliable ({e})") from e
    return metrics


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """[median, IQM, mean, optimality gap] of `scores: [runs, games]`, rliable's metrics: median
    and mean of the per-game means; IQM, the 25 % trimmed mean of all runs and games pooled;
    optimality gap, the mean shortfall of each score below 1 (the human or reference)."""
    metrics = _rliable_metrics()
    return np.array(
        [
            metrics.aggregate_median(scores),
            metrics.aggregate_iqm(scores),
            metrics.aggregate_mean(scores),
            metrics.aggregate_optimality_gap(scores),
        ]
    )


def _rliable_library():
    try:
        from rliable import library
    except ImportError as e:  # rliable.library needs `arch`, which needs pandas < 3 (arch 7)
        raise ReportError(
            "the confidence intervals use rliable's bootstrap: "
            f"pip install rliable 'pandas<3' ({e})"
        ) from e
    return library


def interval_estimates(
    scores: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], reps: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, lower, upper): `statistic(scores)` and its 95 % percentile stratified-bootstrap
    confidence interval, rliable's `get_interval_estimates` (each game's runs resampled on
    their own). `statistic` maps `[runs, games]` to `[k]`. The same seed gives the same CI."""
    np.random.seed(seed)  # noqa: NPY002 (rliable's bootstrap (arch) draws from it)
    points, intervals = _rliable_library().get_interval_estimates(
        {"x": scores},
        statistic,
        reps=reps,
        confidence_interval_size=CONFIDENCE,
    )
    return np.asarray(points["x"]), intervals["x"][0], intervals["x"][1]


def performance_profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """The fraction of all (run, game) scores above each threshold (rliable's score
    distribution, `run_score_deviation`): `[runs, games]` -> `[taus]`."""
    return np.array([(scores > tau).mean() for tau in taus])


def improvement_per_game(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(a run of X beats a run of Y) per game, ties counting one half: the Mann-Whitney U over
    `runs_x * runs_y`, as rliable's `probability_of_improvement` computes it per game.
    `x: [runs_x, games]`, `y: [runs_y, games]` -> `[games]`."""
    wins = (x[:, None] > y[None, :]).mean(axis=(0, 1))
    ties = (x[:, None] == y[None, :]).mean(axis=(0, 1))
    return wins + 0.5 * ties


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, reps: int, seed: int
) -> tuple[float, float, float]:
    """P(X > Y), averaged over games (rliable's `probability_of_improvement`), with its 95 % CI
    from rliable's bootstrap over the runs of X and of Y, each resampled within each game
    (`StratifiedIndependentBootstrap`). `x: [runs_x, games]`, `y: [runs_y, games]`."""
    metrics = _rliable_metrics()
    np.random.seed(seed)  # noqa: NPY002
    points, intervals = _rliable_library().get_interval_estimates(
        {"pair": [x, y]},
        lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
        reps=reps,
        confidence_interval_size=CONFIDENCE,
    )
    (lower,), (upper,) = intervals["pair"]
    return float(points["pair"][0]), float(lower), float(upper)


def score_matrix(columns: Sequence[Sequence[float]]) -> np.ndarray:
    """`[runs, games]` from each game's scores (seed order): the first n of every game, n the
    fewest any game has (rliable's estimators need the same number of runs per game)."""
    runs = min(len(column) for column in columns)
    return np.array([list(column[:runs]) for column in columns], dtype=np.float64).T


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value) over seeds."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return math.nan, math.nan
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else math.nan


# ----------------------------------------------------------------------------- the analysis


def _final_return(run: Run) -> float:
    return float(run.final["return_mean"])


def per_game_rows(benchmark: Benchmark) -> list[dict[str, Any]]:
    """One row per game: seeds, final return and normalised score (mean, std over the finished
    seeds), the reference points and the published scores."""
    rows = []
    for env_id in benchmark.games:
        runs = benchmark.runs_of(env_id)
        done = [r for r in runs if r.finished]
        returns = [_final_return(r) for r in done]
        scores = [normalized(env_id, value) for value in returns]
        points = reference_points(env_id)
        game = game_from_env_id(env_id) if points and points[0] == ATARI else None
        minatar = _minatar_game(env_id)
        random = random_return(env_id)
        return_mean, return_std = _mean_std(returns)
        score_mean, score_std = _mean_std(scores) if points else (math.nan, math.nan)
        row = {
            "label": benchmark.label,
            "env_id": env_id,
            "game": game or (minatar[0] if minatar else env_id),
            "suite": points[0] if points else "",
            "seeds_planned": benchmark.seeds[env_id],
            "seeds_done": len(done),
            "seeds_running": sum(r.state in ("running", "queued") for r in runs),
            "seeds_failed": sum(r.state == "failed" for r in runs),
            "env_steps": int(np.median([r.final["env_steps"] for r in done])) if done else "",
            "return_mean": return_mean,
            "return_std": return_std,
            "normalized_mean": score_mean,
            "normalized_std": score_std,
            "random": "" if random is None else random,
            "reference": points[2] if points else "",
            "episodes_cut": sum(float(r.final.get("episodes_cut") or 0) for r in done),
        }
        for name, table in ATARI100K_PUBLISHED.items():
            row[f"published {name}"] = table[game] if game else ""
        rows.append(row)
    return rows


def suite_columns(benchmark: Benchmark, suite: str) -> tuple[list[str], list[list[float]]]:
    """The games of a suite with a finished seed, and each one's normalised final scores."""
    games, columns = [], []
    for env_id in benchmark.games:
        if suite_of(env_id) != suite:
            continue
        scores = [normalized(env_id, _final_return(r)) for r in benchmark.finished(env_id)]
        if scores:
            games.append(env_id)
            columns.append(scores)
    return games, columns


def _value_at(evaluations: list[dict[str, Any]], step: int) -> float | None:
    """A run's latest evaluation return at or before `step`, if the run has reached `step`."""
    steps = [e["env_steps"] for e in evaluations]
    if not steps or not steps[0] <= step <= steps[-1]:
        return None
    return float(evaluations[int(np.searchsorted(steps, step, side="right")) - 1]["return_mean"])


def game_curve(runs: Sequence[Run]) -> list[tuple[int, list[float]]]:
    """(env steps, the returns of the runs that reached them) at every step any run evaluated."""
    steps = sorted({e["env_steps"] for r in runs for e in r.evaluations})
    curve = []
    for step in steps:
        values = [v for r in runs if (v := _value_at(r.evaluations, step)) is not None]
        curve.append((step, values))
    return curve


def iqm_curve(
    benchmark: Benchmark, suite: str, reps: int, seed: int
) -> list[tuple[int, int, float, float, float]]:
    """(env steps, runs per game, IQM, CI lower, CI upper) of a suite's normalised scores, at up
    to CURVE_POINTS of the env steps at which runs evaluated, while every game of the suite that
    has evaluations has a run there; every run counts, finished or not."""
    games = [
        g
        for g in benchmark.games
        if suite_of(g) == suite and any(r.evaluations for r in benchmark.runs_of(g))
    ]
    if not games:
        return []
    runs = {g: [r for r in benchmark.runs_of(g) if r.evaluations] for g in games}
    steps = np.unique([e["env_steps"] for g in games for r in runs[g] for e in r.evaluations])
    if steps.size > CURVE_POINTS:
        steps = steps[np.linspace(0, steps.size - 1, CURVE_POINTS).round().astype(int)]
    curve = []
    for step in steps:
        columns = [
            [normalized(g, v) for r in runs[g] if (v := _value_at(r.evaluations, step)) is not None]
            for g in games
        ]
        if not all(columns):
            continue
        scores = score_matrix(columns)
        point, lower, upper = interval_estimates(
            scores, lambda s: aggregate_metrics(s)[1:2], reps, seed
        )
        curve.append(
            (int(step), scores.shape[0], float(point[0]), float(lower[0]), float(upper[0]))
        )
    return curve


# ----------------------------------------------------------------------------------- plots


def _save(figure: Figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def _grid(panels: int, width: float = 4.0, height: float = 3.0) -> tuple[Figure, list[Any]]:
    columns = min(4, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns, height * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return figure, list(axes[:panels])


def plot_aggregates(aggregates: list[dict[str, Any]], labels: list[str], path: str) -> str:
    suites = list(dict.fromkeys(a["suite"] for a in aggregates))
    figure = Figure(figsize=(4 * len(METRICS), 0.6 * len(labels) + 1.6 * len(suites) + 0.4))
    axes = figure.subplots(len(suites), len(METRICS), squeeze=False)
    for row, suite in enumerate(suites):
        for column, metric in enumerate(METRICS):
            ax = axes[row, column]
            for y, label in enumerate(labels):
                found = [
                    a
                    for a in aggregates
                    if a["suite"] == suite and a["metric"] == metric and a["label"] == label
                ]
                if not found:
                    continue
                a = found[0]
                ax.plot([100 * a["ci_low"], 100 * a["ci_high"]], [y, y], lw=6, alpha=0.5, c=f"C{y}")
                ax.plot([100 * a["value"]], [y], "|", ms=14, mew=2, c="k")
            ax.set_yticks(range(len(labels)), labels if column == 0 else [""] * len(labels))
            ax.set_ylim(len(labels) - 0.3, -0.7)  # the first benchmark on top
            ax.set_title(f"{metric}\n{suite}", fontsize=10)
            ax.set_xlabel("normalised score (%)")
            ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_profiles(profiles: list[dict[str, Any]], path: str) -> str:
    suites = list(dict.fromkeys(p["suite"] for p in profiles))
    figure, axes = _grid(len(suites), 5.0, 3.5)
    for ax, suite in zip(axes, suites, strict=True):
        for i, p in enumerate(q for q in profiles if q["suite"] == suite):
            taus = 100 * p["taus"]
            ax.plot(taus, p["profile"], c=f"C{i}", label=f"{p['label']} ({p['runs']} runs/game)")
            ax.fill_between(taus, p["lower"], p["upper"], color=f"C{i}", alpha=0.2)
        ax.set_title(suite, fontsize=10)
        ax.set_xlabel("normalised score tau (%)")
        ax.set_ylabel("fraction of runs with score > tau")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(figure, path)


def plot_curves(
    benchmarks: list[Benchmark], iqm_curves: dict[tuple[str, str], list], path: str
) -> str:
    games = list(dict.fromkeys(g for b in benchmarks for g in b.games))
    suites = list(dict.fromkeys(suite for _, suite in iqm_curves))
    figure, axes = _grid(len(games) + len(suites))
    for ax, env_id in zip(axes, games, strict=False):
        for i, benchmark in enumerate(benchmarks):
            curve = [(s, v) for s, v in game_curve(benchmark.runs_of(env_id)) if v]
            if not curve:
                continue
            steps = np.array([s for s, _ in curve])
            values = [
                [normalized(env_id, v) * 100 for v in vs] if suite_of(env_id) else vs
                for _, vs in curve
            ]
            mean = np.array([np.mean(v) for v in values])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
            ax.plot(steps, mean, c=f"C{i}", label=benchmark.label)
            ax.fill_between(steps, mean - std, mean + std, color=f"C{i}", alpha=0.2)
        ax.set_title(env_id, fontsize=10)
        ax.set_ylabel("normalised score (%)" if suite_of(env_id) else "return")
    for ax, suite in zip(axes[len(games) :], suites, strict=True):
        for i, benchmark in enumerate(benchmarks):
            curve = iqm_curves.get((benchmark.label, suite))
            if not curve:
                continue
            steps, _, point, lower, upper = (np.array(c) for c in zip(*curve, strict=True))
            ax.plot(steps, 100 * point, c=f"C{i}", label=benchmark.label)
            ax.fill_between(steps, 100 * lower, 100 * upper, color=f"C{i}", alpha=0.2)
        ax.set_title(f"IQM, {suite}", fontsize=10)
        ax.set_ylabel("IQM normalised score (%)")
    for ax in axes:
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    if len(benchmarks) > 1:
        axes[0].legend(fontsize=8)
    return _save(figure, path)


def plot_improvement(rows: list[dict[str, Any]], path: str) -> str:
    figure = Figure(figsize=(6, 0.6 * len(rows) + 1.2))
    ax = figure.subplots()
    for y, row in enumerate(rows):
        ax.plot([row["ci_low"], row["ci_high"]], [y, y], lw=6, alpha=0.5, c=f"C{y}")
        ax.plot([row["value"]], [y], "|", ms=14, mew=2, c="k")
    ax.axvline(0.5, ls="--", c="gray")
    ax.set_yticks(range(len(rows)), [row["label"] for row in rows])
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(X > Y): probability of improvement, 95 % CI")
    return _save(figure, path)


# ------------------------------------------------------------------------------ the report


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 1, scale: float = 1.0) -> str:
    if _missing(value):
        return "—"
    return f"{scale * value:,.{digits}f}"


def _mean_pm(mean: float, std: float, scale: float = 1.0) -> str:
    if math.isnan(mean):
        return "—"
    return _fmt(mean, 1, scale) + ("" if math.isnan(std) else f" ± {_fmt(std, 1, scale)}")


def _write_csv(path: str, rows: list[dict[str, Any]], fields: Sequence[str]) -> str:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if _missing(v) else v for k, v in row.items()})
    return path


def _unique_labels(benchmarks: list[Benchmark]) -> None:
    seen: dict[str, int] = {}
    for b in benchmarks:
        seen[b.label] = seen.get(b.label, 0) + 1
    for b in benchmarks:
        if seen[b.label] > 1:
            b.label = f"{b.label} ({b.directory})"


def _suites(benchmarks: list[Benchmark]) -> list[str]:
    return list(dict.fromkeys(s for b in benchmarks for g in b.games if (s := suite_of(g))))


def aggregate_rows(
    benchmarks: list[Benchmark], reps: int, seed: int, warnings: list[str]
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """The four aggregates with CIs of each (benchmark, suite), and the score matrices
    `[runs, games]` they rest on, by (label, suite)."""
    rows, matrices = [], {}
    for b in benchmarks:
        for suite in _suites([b]):
            games, columns = suite_columns(b, suite)
            left_out = [g for g in b.games if suite_of(g) == suite and g not in games]
            if not games:
                warnings.append(f"{b.label}: no finished run in any {suite} game: no aggregates")
                continue
            scores = matrices[b.label, suite] = score_matrix(columns)
            point, lower, upper = interval_estimates(scores, aggregate_metrics, reps, seed)
            for i, metric in enumerate(METRICS):
                rows.append(
                    {
                        "label": b.label,
                        "suite": suite,
                        "metric": metric,
                        "value": float(point[i]),
                        "ci_low": float(lower[i]),
                        "ci_high": float(upper[i]),
                        "runs": scores.shape[0],
                        "games": scores.shape[1],
                        "games_left_out": " ".join(left_out),
                    }
                )
            if scores.shape[0] < FEW_SEEDS:
                warnings.append(
                    f"{b.label}, {suite}: the aggregates rest on {scores.shape[0]} finished "
                    f"run(s) per game (fewer than {FEW_SEEDS}) and {scores.shape[1]} game(s): "
                    "their confidence intervals say little"
                )
            if left_out:
                warnings.append(
                    f"{b.label}, {suite}: left out of the aggregates, no finished run: "
                    + ", ".join(left_out)
                )
    return rows, matrices


def published_rows(benchmarks: list[Benchmark]) -> list[dict[str, Any]]:
    """The published agents' aggregates over the Atari100k games our runs finished (one score
    per game, so no interval)."""
    finished = [g for g in _games(benchmarks) if suite_of(g) == ATARI]
    finished = [g for g in finished if any(b.finished(g) for b in benchmarks)]
    if not finished:
        return []
    games = [game_from_env_id(g) for g in finished]
    rows = []
    for name, table in ATARI100K_PUBLISHED.items():
        scores = np.array([[human_normalized(g, table[g]) for g in games]])  # [1 run, games]
        for metric, value in zip(METRICS, aggregate_metrics(scores), strict=True):
            rows.append(
                {
                    "label": f"{name} (published)",
                    "suite": ATARI,
                    "metric": metric,
                    "value": float(value),
                    "games": len(games),
                }
            )
    return rows


def profile_rows(
    matrices: dict[tuple[str, str], np.ndarray], reps: int, seed: int
) -> list[dict[str, Any]]:
    """Performance profile of each score matrix with its CI band, over thresholds shared by the
    benchmarks of a suite."""
    rows = []
    for suite in dict.fromkeys(suite for _, suite in matrices):
        mine = {label: m for (label, s), m in matrices.items() if s == suite}
        high = max(1.0, *(float(m.max()) for m in mine.values()))
        low = min(0.0, *(float(m.min()) for m in mine.values()))
        taus = np.linspace(low, high, PROFILE_POINTS)
        for label, scores in mine.items():
            np.random.seed(seed)  # noqa: NPY002 (rliable's profile bootstrap draws from it)
            points, bands = _rliable_library().create_performance_profile(
                {label: scores}, taus, reps=reps, confidence_interval_size=CONFIDENCE
            )
            point, (lower, upper) = points[label], bands[label]
            rows.append(
                {
                    "label": label,
                    "suite": suite,
                    "taus": taus,
                    "profile": point,
                    "lower": lower,
                    "upper": upper,
                    "runs": scores.shape[0],
                }
            )
    return rows


def improvement_rows(
    benchmarks: list[Benchmark], reps: int, seed: int, warnings: list[str]
) -> list[dict[str, Any]]:
    """P(X > Y) for each pair of benchmarks, over the games both finished. On raw final returns:
    P(X > Y) on a game does not change under an increasing rescaling of its returns, so every
    game counts, normalised or not."""
    rows = []
    for i, x in enumerate(benchmarks):
        for y in benchmarks[i + 1 :]:
            common = [g for g in x.games if x.finished(g) and y.finished(g)]
            if not common:
                warnings.append(f"{x.label} vs {y.label}: no game finished by both: no P(X > Y)")
                continue
            xs = score_matrix([[_final_return(r) for r in x.finished(g)] for g in common])
            ys = score_matrix([[_final_return(r) for r in y.finished(g)] for g in common])
            value, low, high = probability_of_improvement(xs, ys, reps, seed)
            rows.append(
                {
                    "label": f"{x.label} > {y.label}",
                    "suite": "games finished by both (raw returns)",
                    "metric": "P(X > Y)",
                    "value": value,
                    "ci_low": low,
                    "ci_high": high,
                    "runs": f"{xs.shape[0]} / {ys.shape[0]}",
                    "games": len(common),
                    "games_left_out": " ".join(g for g in _games([x, y]) if g not in common),
                }
            )
    return rows


def curve_rows(
    benchmarks: list[Benchmark], reps: int, seed: int
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list]]:
    """Sample-efficiency curves from every evaluation of every run: per game (mean, std over the
    runs at each env-step point) and, per suite, the IQM with its CI; and the IQM curves by
    (label, suite) for the plot."""
    rows = []
    for b in benchmarks:
        for env_id in b.games:
            for step, values in game_curve(b.runs_of(env_id)):
                mean, std = _mean_std(values)
                scores = [normalized(env_id, v) for v in values] if suite_of(env_id) else []
                score_mean, score_std = _mean_std(scores)
                rows.append(
                    {
                        "label": b.label,
                        "curve": env_id,
                        "env_steps": step,
                        "runs": len(values),
                        "return_mean": mean,
                        "return_std": std,
                        "normalized": score_mean,
                        "normalized_std": score_std,
                    }
                )
    iqm_curves = {}
    for b in benchmarks:
        for suite in _suites([b]):
            curve = iqm_curves[b.label, suite] = iqm_curve(b, suite, reps, seed)
            for step, runs, point, low, high in curve:
                rows.append(
                    {
                        "label": b.label,
                        "curve": f"IQM {suite}",
                        "env_steps": step,
                        "runs": runs,
                        "normalized": point,
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return rows, {key: curve for key, curve in iqm_curves.items() if curve}


def _games(benchmarks: list[Benchmark]) -> list[str]:
    return list(dict.fromkeys(g for b in benchmarks for g in b.games))


PER_GAME_FIELDS = (
    "label", "env_id", "game", "suite", "seeds_planned", "seeds_done", "seeds_running",
    "seeds_failed", "env_steps", "return_mean", "return_std", "normalized_mean", "normalized_std",
    "random", "reference", "episodes_cut", *(f"published {name}" for name in ATARI100K_PUBLISHED),
)  # fmt: skip
AGGREGATE_FIELDS = (
    "label", "suite", "metric", "value", "ci_low", "ci_high", "runs", "games", "games_left_out",
)  # fmt: skip
CURVE_FIELDS = (
    "label", "curve", "env_steps", "runs", "return_mean", "return_std", "normalized",
    "normalized_std", "ci_low", "ci_high",
)  # fmt: skip


def report(dirs: list[str], out: str | None = None, reps: int = 2000, seed: int = 0) -> dict:
    """Write the report of the benchmark directories `dirs` to `out` (default `<dirs[0]>/report`)
    and return its summary: `out`, `report` (the Markdown file), `files`, `benchmarks`,
    `per_game`, `aggregates`, `probability_of_improvement` and `warnings`. `reps` bootstrap
    resamples per confidence interval, drawn from `seed`. Raises ReportError when no directory
    has a run."""
    if not dirs:
        raise ReportError(f"no benchmark directory given; expected {LAYOUT}")
    if reps < 1:
        raise ReportError(f"reps must be >= 1 bootstrap resamples, got {reps}")
    benchmarks = [read_benchmark(d) for d in dirs]
    warnings = [
        f"{b.directory}: "
        + ("no runs found" if os.path.isdir(b.directory) else "not a directory")
        + f" (expected {LAYOUT}); left out of the report"
        for b in benchmarks
        if not b.started
    ]
    benchmarks = [b for b in benchmarks if b.started]
    if not benchmarks:
        raise ReportError(
            "nothing to report: " + "; ".join(warnings) + ". Start a benchmark with "
            "`python -m lightning_drama.benchmark run --out DIR ...`"
        )
    _unique_labels(benchmarks)
    warnings += [
        f"{b.label}: {r.env_id} seed {r.seed} is done but has no evaluation: not counted"
        for b in benchmarks
        for r in b.runs
        if r.state == "done" and not r.evaluations
    ]
    out = out or os.path.join(benchmarks[0].directory, "report")  # the first one with runs
    os.makedirs(out, exist_ok=True)

    per_game = [row for b in benchmarks for row in per_game_rows(b)]
    aggregates, matrices = aggregate_rows(benchmarks, reps, seed, warnings)
    published = published_rows(benchmarks)
    profiles = profile_rows(matrices, reps, seed)
    improvement = improvement_rows(benchmarks, reps, seed, warnings)
    curves, iqm_curves = curve_rows(benchmarks, reps, seed)

    files = [
        _write_csv(os.path.join(out, "per_game.csv"), per_game, PER_GAME_FIELDS),
        _write_csv(
            os.path.join(out, "aggregates.csv"),
            aggregates + improvement + published,
            AGGREGATE_FIELDS,
        ),
        _write_csv(os.path.join(out, "curves.csv"), curves, CURVE_FIELDS),
    ]
    images = {}
    if aggregates:
        path = os.path.join(out, "aggregates.png")
        images["aggregates"] = plot_aggregates(aggregates, [b.label for b in benchmarks], path)
    if profiles:
        images["profile"] = plot_profiles(profiles, os.path.join(out, "performance_profile.png"))
    if curves:
        path = os.path.join(out, "sample_efficiency.png")
        images["curves"] = plot_curves(benchmarks, iqm_curves, path)
    if improvement:
        path = os.path.join(out, "probability_of_improvement.png")
        images["improvement"] = plot_improvement(improvement, path)
    files += images.values()
    path = os.path.join(out, "report.md")
    sections = [
        _overview(benchmarks, warnings),
        _per_game_section(benchmarks, per_game),
        _aggregates_section(aggregates + published, improvement, images, reps, seed),
        _curves_section(images),
        _unfinished_section(benchmarks),
        _normalisation_section(),
    ]
    with open(path, "w") as file:
        file.write("\n".join(line for section in sections for line in section))
    files.append(path)
    return {
        "out": out,
        "report": path,
        "files": files,
        "benchmarks": [
            {
                "label": b.label,
                "directory": b.directory,
                "games": len(b.games),
                "runs": {state: b.count(state) for state in dict.fromkeys(r.state for r in b.runs)},
            }
            for b in benchmarks
        ],
        "per_game": per_game,
        "aggregates": aggregates + published,
        "probability_of_improvement": improvement,
        "warnings": warnings,
    }


def _overview(benchmarks: list[Benchmark], warnings: list[str]) -> list[str]:
    lines = ["# Benchmark report", ""]
    lines += [
        "| Benchmark | Directory | Games | Runs planned | done | running | failed | other |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in benchmarks:
        done, failed = b.count("done"), b.count("failed")
        running = b.count("running") + b.count("queued")
        lines.append(
            f"| {b.label} | `{b.directory}` | {len(b.games)} | {len(b.runs)} | {done} | "
            f"{running} | {failed} | {len(b.runs) - done - running - failed} |"
        )
    lines.append("")
    if warnings:
        lines += ["**Notes**", ""] + [f"- {w}" for w in warnings] + [""]
    return lines


def _per_game_section(benchmarks: list[Benchmark], per_game: list[dict[str, Any]]) -> list[str]:
    lines = ["## Per-game results", ""]
    lines += [
        "Final score of a run: its evaluation with the most env steps; only `done` runs count. "
        "Return: mean ± sample standard deviation (n − 1) over the finished seeds, whose number "
        "is in *Seeds*. Score: the normalised final return in % (Atari100k: human-normalised, "
        "0 = random, 100 = human; MinAtar: 0 = random policy, 100 = the reference, see "
        "*Normalisation*). Published columns are the papers' Atari100k scores.",
        "",
    ]
    names = list(ATARI100K_PUBLISHED)
    for b in benchmarks:
        rows = [r for r in per_game if r["label"] == b.label]
        lines += [f"### {b.label}", ""]
        lines.append(
            "| Game | Seeds done / planned | Env steps | Return | Score (%) | Random | "
            "Human / reference | " + " | ".join(names) + " |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(names))
        for r in rows:
            cut = f" (†{int(r['episodes_cut'])} cut)" if r["episodes_cut"] else ""
            lines.append(
                f"| {r['env_id']} | {r['seeds_done']} / {r['seeds_planned']} | "
                f"{_fmt(r['env_steps'], 0)} | {_mean_pm(r['return_mean'], r['return_std'])}{cut}"
                f" | {_mean_pm(r['normalized_mean'], r['normalized_std'], 100)} | "
                f"{_fmt(r['random'])} | {_fmt(r['reference'])} | "
                + " | ".join(_fmt(r[f"published {n}"], 0) for n in names)
                + " |"
            )
        lines.append("")
        if any(r["episodes_cut"] for r in rows):
            lines += [
                "† episodes of the final evaluations stopped by the evaluation step cap "
                "(`max_steps`): those returns are partial.",
                "",
            ]
    return lines


def _aggregates_section(aggregates, improvement, images, reps: int, seed: int) -> list[str]:
    lines = ["## Aggregates", ""]
    if aggregates:
        lines += [
            f"Normalised scores over games, in %, with 95 % stratified-bootstrap confidence "
            f"intervals ({reps} resamples, seed {seed}); rliable's definitions (median and mean "
            "of the per-game means, IQM of all runs and games, optimality gap below 100 %). "
            "*Runs × games*: the matrix they rest on (the first finished seeds of each game, as "
            "many as the game with the fewest has). Published rows: one score per game, over "
            "the Atari games that any benchmark here finished (their count in the last column; "
            "with several benchmarks that finished different games, compare each with care), "
            "no interval.",
            "",
            "| Benchmark | Suite | " + " | ".join(METRICS) + " | Runs × games |",
            "| --- | --- |" + " ---: |" * len(METRICS) + " ---: |",
        ]
        for label, suite in dict.fromkeys((a["label"], a["suite"]) for a in aggregates):
            found = {
                a["metric"]: a for a in aggregates if a["label"] == label and a["suite"] == suite
            }
            cells = []
            for metric in METRICS:
                a = found[metric]
                cell = _fmt(a["value"], 1, 100)
                if "ci_low" in a:
                    cell += f" [{_fmt(a['ci_low'], 1, 100)}, {_fmt(a['ci_high'], 1, 100)}]"
                cells.append(cell)
            shape = found[METRICS[0]]
            size = f"{shape['runs']} × {shape['games']}" if "runs" in shape else shape["games"]
            lines.append(f"| {label} | {suite} | " + " | ".join(cells) + f" | {size} |")
        lines += ["", "![aggregates](aggregates.png)", ""]
    else:
        lines += ["No aggregates: no game with a normalisation has a finished run.", ""]
    if "profile" in images:
        lines += [
            "### Performance profile",
            "",
            "Fraction of all (run, game) normalised scores above each threshold, with 95 % "
            "stratified-bootstrap bands.",
            "",
            "![performance profile](performance_profile.png)",
            "",
        ]
    if improvement:
        lines += [
            "### Probability of improvement",
            "",
            "P(X > Y): the probability that a run of X has a higher final return than a run of Y "
            "on a game, averaged over the games both finished (only those: see *Games*), with "
            "95 % CIs from resampling each one's runs independently.",
            "",
            "| X > Y | P(X > Y) | 95 % CI | Games | Runs per game (X / Y) | Games left out |",
            "| --- | ---: | --- | ---: | ---: | --- |",
        ]
        for row in improvement:
            lines.append(
                f"| {row['label']} | {row['value']:.3f} | [{row['ci_low']:.3f}, "
                f"{row['ci_high']:.3f}] | {row['games']} | {row['runs']} | "
                f"{row['games_left_out'] or '—'} |"
            )
        lines += ["", "![probability of improvement](probability_of_improvement.png)", ""]
    return lines


def _curves_section(images: dict[str, str]) -> list[str]:
    lines = ["## Sample efficiency", ""]
    if "curves" in images:
        lines += [
            "Every evaluation of every run, finished or not: per game the mean over the runs that "
            "reached each env-step point (a run's latest evaluation at or before it) ± one "
            "standard deviation; the normalised score where the game has one, else the raw "
            "return. *IQM* panels: the IQM of a suite's normalised scores, with 95 % bootstrap "
            "bands, over its games that have evaluations, at env-step points all of them reached.",
            "",
            "![sample efficiency](sample_efficiency.png)",
            "",
        ]
    else:
        lines += ["No run has an evaluation yet.", ""]
    return lines


def _unfinished_section(benchmarks: list[Benchmark]) -> list[str]:
    unfinished = [(b, r) for b in benchmarks for r in b.runs if r.state in UNFINISHED]
    pending = sum(b.count("pending") for b in benchmarks)
    lines = ["## Runs not finished", ""]
    if unfinished:
        lines += [
            "| Benchmark | Env | Seed | State | Env steps | Attempts | Error (first line) |",
            "| --- | --- | ---: | --- | ---: | ---: | --- |",
        ]
        for b, r in sorted(unfinished, key=lambda p: (p[0].label, p[1].env_id, p[1].seed)):
            steps = int(r.status.get("env_steps") or (r.final["env_steps"] if r.final else 0))
            total = int(r.status.get("total_env_steps") or 0)
            progress = f"{steps:,}" + (f" / {total:,}" if total else "")
            error = r.error.replace("|", "\\|") or "—"
            lines.append(
                f"| {b.label} | {r.env_id} | {r.seed} | {r.state} | {progress} | "
                f"{r.status.get('attempts', 0)} | {error} |"
            )
        lines.append("")
    lines += [f"{pending} run(s) not started (pending).", ""] if pending else []
    if not unfinished and not pending:
        lines += ["Every run is done.", ""]
    return lines


def _normalisation_section() -> list[str]:
    return [
        "## Normalisation",
        "",
        f"- {ATARI}: `(return - random) / (human - random)` with the Atari100k random and human "
        "scores (`lightning_drama.scores.ATARI_SCORES`).",
        f"- {MINATAR}: `(return - random) / (reference - random)`. Random: the mean return of a "
        "uniformly random policy, measured over 1,000 episodes (minimal action set for `-v1`, all "
        f"6 actions for `-v0`). Reference: {MINATAR_REFERENCE_NAME}, "
        f"{MINATAR_REFERENCE_SOURCE}. MinAtar games without a "
        f"reference ({', '.join(sorted(set(MINATAR_RANDOM) - set(MINATAR_REFERENCE)))}) are "
        "reported as raw returns only.",
        "- Other env ids: raw returns only, left out of the normalised aggregates.",
        "",
    ]


# ------------------------------------------------------------------------------------- CLI


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="OUT",
        help="benchmark directories (`run --out`); each is one algorithm, named by its "
        "benchmark.json label or its directory name",
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: <first OUT>/report)"
    )
    parser.add_argument(
        "--reps", type=int, default=2000, help="bootstrap resamples of each confidence interval"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")


def main_report(args: argparse.Namespace) -> int:
    try:
        summary = report(args.dirs, args.out, reps=args.reps, seed=args.seed)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    for warning in summary["warnings"]:
        print(f"note: {warning}")
    print(f"report: {summary['report']}")
    return 0
