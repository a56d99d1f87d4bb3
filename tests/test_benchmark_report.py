"""`python -m lightning_drama.benchmark report`: reading benchmark trees, statistics, files."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os

import numpy as np
import pytest

from lightning_drama.benchmark.published import (
    ATARI100K_PUBLISHED,
    MINATAR_RANDOM,
    MINATAR_RANDOM_ALL_ACTIONS,
    MINATAR_REFERENCE,
)
from lightning_drama.benchmark.report import (
    ATARI,
    ReportError,
    add_report_arguments,
    aggregate_metrics,
    improvement_per_game,
    interval_estimates,
    main_report,
    normalized,
    performance_profile,
    probability_of_improvement,
    read_evaluations,
    report,
    score_matrix,
)
from lightning_drama.scores import aggregate, human_normalized

REPS = 200


# ------------------------------------------------------------------ a benchmark tree on disk


def evaluation(env_steps: int, value: float, game: str | None = None, cut: float = 0.0) -> dict:
    """One line of `evaluations.jsonl`, as `module.py` writes it."""
    record = {
        "env_steps": env_steps,
        "return_mean": value,
        "return_std": 0.0,
        "returns": [value, value],
        "lengths": [100.0, 100.0],
        "episodes_cut": cut,
        "game": game,
        "greedy": False,
        "max_steps": 27000,
        "model": "Drama test",
    }
    if game is not None and not cut:
        record["human_normalized"] = human_normalized(game, value)
    return record


def write_benchmark(out, games: list[str], seeds: int, label: str | None = None) -> None:
    os.makedirs(out, exist_ok=True)
    meta = {"games": games, "seeds": seeds, "config": ["atari.yaml"], "overrides": []}
    if label:
        meta["label"] = label
    with open(os.path.join(out, "benchmark.json"), "w") as file:
        json.dump(meta, file)


def write_run(
    out,
    env_id: str,
    seed: int,
    state: str,
    versions: list[list[tuple[int, float]]],
    error: str | None = None,
    total: int = 30_000,
) -> str:
    """`OUT/<game_dir>/seed_<k>/` with status.json and one version_<i> per list of
    (env_steps, return) evaluations."""
    run = os.path.join(out, env_id.replace("/", "_").replace(":", "_"), f"seed_{seed}")
    os.makedirs(run, exist_ok=True)
    steps = max((s for evals in versions for s, _ in evals), default=0)
    status = {
        "env_id": env_id,
        "seed": seed,
        "state": state,
        "attempts": 1 + (state == "failed"),
        "error": error,
        "total_env_steps": total,
        "env_steps": steps,
        "wall_seconds": 12.5,
    }
    with open(os.path.join(run, "status.json"), "w") as file:
        json.dump(status, file)
    game = env_id.removeprefix("ALE/").removesuffix("-v5") if env_id.startswith("ALE/") else None
    for i, evals in enumerate(versions):
        os.makedirs(os.path.join(run, f"version_{i}"), exist_ok=True)
        with open(os.path.join(run, f"version_{i}", "evaluations.jsonl"), "w") as file:
            for step, value in evals:
                file.write(json.dumps(evaluation(step, value, game)) + "\n")
    return run


def partial_benchmark(out, label: str = "drama") -> None:
    """Pong and Breakout, 3 seeds each: 2 done per game, one Pong run still running, one
    Breakout run failed."""
    write_benchmark(out, ["ALE/Pong-v5", "ALE/Breakout-v5"], seeds=3, label=label)
    write_run(out, "ALE/Pong-v5", 0, "done", [[(10_000, -20.0), (30_000, 10.0)]])
    write_run(out, "ALE/Pong-v5", 1, "done", [[(10_000, -18.0)], [(30_000, 14.0)]])
    write_run(out, "ALE/Pong-v5", 2, "running", [[(10_000, -15.0)]])
    write_run(out, "ALE/Breakout-v5", 0, "done", [[(10_000, 1.0), (30_000, 5.0)]])
    write_run(out, "ALE/Breakout-v5", 1, "done", [[(10_000, 2.0), (30_000, 9.0)]])
    write_run(
        out,
        "ALE/Breakout-v5",
        2,
        "failed",
        [[(10_000, 0.0)]],
        error="RuntimeError: CUDA out of memory\nTraceback (most recent call last): ...",
    )


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------------------- statistics


def test_aggregate_metrics_match_hand_computed_values():
    scores = np.array(  # [3 runs, 4 games]
        [
            [0.1, 0.5, 1.2, 2.0],
            [0.3, 0.4, 0.8, 3.0],
            [0.2, 0.9, 1.0, 1.0],
        ]
    )
    median, iqm, mean, gap = aggregate_metrics(scores)
    # Per-game means 0.2, 0.6, 1.0, 2.0: median (0.6 + 1.0) / 2, mean 3.8 / 4.
    assert median == pytest.approx(0.8)
    assert mean == pytest.approx(0.95)
    # IQM: the 12 scores sorted, 3 dropped from each end: 0.4 0.5 0.8 0.9 1.0 1.0.
    assert iqm == pytest.approx(4.6 / 6)
    flat = sorted(scores.ravel().tolist())
    assert iqm == pytest.approx(sum(flat[3:9]) / 6)
    # Optimality gap: 1 - mean of min(score, 1) = 1 - 8.2 / 12.
    assert gap == pytest.approx(1 - 8.2 / 12)
    assert gap == pytest.approx(1 - sum(min(s, 1.0) for s in flat) / len(flat))

    point, lower, upper = interval_estimates(scores, aggregate_metrics, REPS, seed=0)
    assert point == pytest.approx([0.8, 4.6 / 6, 0.95, 1 - 8.2 / 12])
    assert np.all(lower <= point) and np.all(point <= upper)
    assert np.all(lower < upper)  # the runs differ, so the resamples do
    again = interval_estimates(scores, aggregate_metrics, REPS, seed=0)
    assert np.array_equal(again[1], lower) and np.array_equal(again[2], upper)


def test_probability_of_improvement_per_game_is_rliables():
    from rliable import metrics

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(3, 5)).astype(float)  # [runs, games], with ties
    y = rng.integers(0, 4, size=(4, 5)).astype(float)
    assert improvement_per_game(x, y).mean() == pytest.approx(
        metrics.probability_of_improvement(x, y)
    )


def test_performance_profile_and_score_matrix():
    scores = np.array([[0.0, 0.5], [1.0, 2.0]])
    assert performance_profile(scores, np.array([-1.0, 0.25, 0.75, 5.0])) == pytest.approx(
        [1.0, 0.75, 0.5, 0.0]
    )
    # The first n seeds of every game, n the fewest any game has: [runs, games].
    assert score_matrix([[1.0, 2.0, 3.0], [4.0, 5.0]]).tolist() == [[1.0, 4.0], [2.0, 5.0]]


def test_probability_of_improvement_hand_computed():
    x = np.array([[3.0, 1.0], [4.0, 1.0]])  # [runs, games]
    y = np.array([[1.0, 2.0], [2.0, 2.0]])
    value, low, high = probability_of_improvement(x, y, REPS, seed=0)
    # Game 1: every run of x beats every run of y (P = 1); game 2: none does (P = 0).
    assert value == pytest.approx(0.5)
    assert 0.0 <= low <= value <= high <= 1.0


# --------------------------------------------------------------------------- published scores


def test_published_drama_xs_gives_the_papers_aggregates():
    drama = ATARI100K_PUBLISHED["Drama XS"]
    result = aggregate([human_normalized(g, score) for g, score in drama.items()])
    # The paper states 105 % mean and 27 % median human-normalised score.
    assert 100 * result["mean"] == pytest.approx(105.0, abs=0.5)
    assert 100 * result["median"] == pytest.approx(27.0, abs=0.1)


def test_published_dreamerv3_gives_its_aggregates():
    dreamer = ATARI100K_PUBLISHED["DreamerV3"]
    result = aggregate([human_normalized(g, score) for g, score in dreamer.items()])
    # DreamerV3's Atari100k: 125 % mean, 49 % median (these scores give 124.7 % and 49.4 %).
    assert 100 * result["mean"] == pytest.approx(125.0, abs=1.0)
    assert 100 * result["median"] == pytest.approx(49.0, abs=1.0)


def test_published_tables_cover_the_26_games():
    for name, table in ATARI100K_PUBLISHED.items():
        assert len(table) == 26, name


# ------------------------------------------------------------------------ normalisation


def test_minatar_normalisation_uses_the_shipped_numbers():
    random, reference = MINATAR_RANDOM["Breakout"], MINATAR_REFERENCE["Breakout"]
    assert normalized("MinAtar/Breakout-v1", 20.0) == pytest.approx(
        (20.0 - random) / (reference - random)
    )
    assert normalized("MinAtar/Breakout-v1", random) == pytest.approx(0.0)
    assert normalized("MinAtar/Breakout-v1", reference) == pytest.approx(1.0)
    # -v0 acts in all 6 actions: its random policy is measured separately.
    random_all = MINATAR_RANDOM_ALL_ACTIONS["Breakout"]
    assert normalized("MinAtar/Breakout-v0", 20.0) == pytest.approx(
        (20.0 - random_all) / (reference - random_all)
    )
    # No reference for Seaquest; unknown env ids are raw returns only.
    assert normalized("MinAtar/Seaquest-v1", 10.0) is None
    assert normalized("CartPole-v1", 100.0) is None
    assert normalized("ALE/Pong-v5", 15.0) == pytest.approx(1.0)


def test_minatar_report_normalises_and_keeps_raw_only_games_out(tmp_path):
    out = tmp_path / "minatar"
    write_benchmark(out, ["MinAtar/Breakout-v1", "MinAtar/Seaquest-v1", "CartPole-v1"], seeds=2)
    for seed, value in enumerate([10.0, 20.0]):
        write_run(out, "MinAtar/Breakout-v1", seed, "done", [[(5_000, value)]])
        write_run(out, "MinAtar/Seaquest-v1", seed, "done", [[(5_000, value)]])
        write_run(out, "CartPole-v1", seed, "done", [[(5_000, 100 * value)]])
    summary = report([str(out)], reps=REPS)
    rows = {r["env_id"]: r for r in read_csv(os.path.join(summary["out"], "per_game.csv"))}
    random, reference = MINATAR_RANDOM["Breakout"], MINATAR_REFERENCE["Breakout"]
    expected = np.mean([(v - random) / (reference - random) for v in (10.0, 20.0)])
    assert float(rows["MinAtar/Breakout-v1"]["normalized_mean"]) == pytest.approx(expected)
    assert float(rows["MinAtar/Breakout-v1"]["random"]) == random
    assert rows["MinAtar/Seaquest-v1"]["normalized_mean"] == ""
    assert float(rows["CartPole-v1"]["return_mean"]) == 1500.0
    # The aggregate rests on Breakout alone.
    assert {(a["suite"], a["games"]) for a in summary["aggregates"]} == {
        (summary["aggregates"][0]["suite"], 1)
    }
    assert summary["aggregates"][0]["suite"].startswith("MinAtar")
    with open(summary["report"]) as file:
        text = file.read()
    assert "gymnax" in text and "raw returns only" in text


# --------------------------------------------------------------------------- reading runs


def test_versions_merge_later_version_wins(tmp_path):
    run = write_run(
        tmp_path,
        "ALE/Pong-v5",
        0,
        "done",
        [[(10_000, 1.0), (20_000, 2.0)], [(20_000, 5.0), (30_000, 6.0)]],
    )
    # Numeric order of versions: version_10 comes after version_2.
    for name, value in (("version_2", 7.0), ("version_10", 8.0)):
        os.makedirs(os.path.join(run, name))
        with open(os.path.join(run, name, "evaluations.jsonl"), "w") as file:
            file.write(json.dumps(evaluation(40_000, value)) + "\n")
            file.write('{"env_steps": 50000, "return_me')  # a line cut by a crash
    records = read_evaluations(run)
    assert [r["env_steps"] for r in records] == [10_000, 20_000, 30_000, 40_000]
    assert [r["return_mean"] for r in records] == [1.0, 5.0, 6.0, 8.0]


# ------------------------------------------------------------------------------- the report


def test_report_on_a_partial_benchmark(tmp_path):
    out = tmp_path / "bench"
    partial_benchmark(out)
    summary = report([str(out)], reps=REPS, seed=0)
    report_dir = out / "report"
    assert summary["out"] == str(report_dir)
    for name in (
        "report.md",
        "per_game.csv",
        "aggregates.csv",
        "curves.csv",
        "aggregates.png",
        "performance_profile.png",
        "sample_efficiency.png",
    ):
        assert (report_dir / name).stat().st_size > 0, name
    assert not (report_dir / "probability_of_improvement.png").exists()  # one directory

    rows = {r["env_id"]: r for r in read_csv(report_dir / "per_game.csv")}
    pong, breakout = rows["ALE/Pong-v5"], rows["ALE/Breakout-v5"]
    # Finished seeds only: Pong 10 and 14 (the second from a resumed version), Breakout 5 and 9.
    assert (pong["seeds_done"], pong["seeds_planned"], pong["seeds_running"]) == ("2", "3", "1")
    assert (breakout["seeds_done"], breakout["seeds_failed"]) == ("2", "1")
    assert float(pong["return_mean"]) == pytest.approx(12.0)
    assert float(pong["return_std"]) == pytest.approx(math.sqrt(8.0))  # sample std (n - 1)
    assert float(pong["normalized_mean"]) == pytest.approx((12.0 + 21.0) / 36.0)
    assert float(breakout["return_mean"]) == pytest.approx(7.0)
    assert float(breakout["return_std"]) == pytest.approx(math.sqrt(8.0))
    assert float(pong["published Drama XS"]) == 15.0
    assert float(breakout["published DreamerV3"]) == 10.0

    aggregates = [a for a in summary["aggregates"] if a["label"] == "drama"]
    assert {a["metric"] for a in aggregates} == {"Median", "IQM", "Mean", "Optimality gap"}
    for a in aggregates:
        assert (a["runs"], a["games"], a["suite"]) == (2, 2, ATARI)
        assert a["ci_low"] <= a["value"] <= a["ci_high"]
    mean = next(a for a in aggregates if a["metric"] == "Mean")
    expected = np.mean([human_normalized("Pong", 12.0), human_normalized("Breakout", 7.0)])
    assert mean["value"] == pytest.approx(expected)
    assert any(a["label"] == "Drama XS (published)" for a in summary["aggregates"])

    text = (report_dir / "report.md").read_text()
    assert "![aggregates](aggregates.png)" in text
    assert "![sample efficiency](sample_efficiency.png)" in text
    assert "| ALE/Pong-v5 | 2 / 3 |" in text
    assert "running" in text and "failed" in text
    assert "RuntimeError: CUDA out of memory" in text
    assert "Traceback" not in text  # only the error's first line
    assert "fewer than 3" in text  # the aggregates rest on 2 seeds per game
    assert any("fewer than 3" in w for w in summary["warnings"])

    # The curves use every evaluation, the running and failed runs' too.
    curves = read_csv(report_dir / "curves.csv")
    first_pong = next(
        c for c in curves if c["curve"] == "ALE/Pong-v5" and c["env_steps"] == "10000"
    )
    assert first_pong["runs"] == "3"
    assert float(first_pong["return_mean"]) == pytest.approx((-20.0 - 18.0 - 15.0) / 3)
    assert any(c["curve"].startswith("IQM") for c in curves)

    # Reproducible: the same seed gives the same intervals.
    again = report([str(out)], out=str(tmp_path / "again"), reps=REPS, seed=0)
    assert again["aggregates"] == summary["aggregates"]


def test_two_directories_probability_of_improvement(tmp_path):
    games = ["ALE/Pong-v5", "ALE/Breakout-v5", "ALE/Boxing-v5"]
    better, worse = tmp_path / "better", tmp_path / "worse"
    write_benchmark(better, games, seeds=3, label="better")
    write_benchmark(worse, games[:2], seeds=3)  # no label: named by its directory
    for seed in range(3):
        for g, env_id in enumerate(games):
            write_run(better, env_id, seed, "done", [[(30_000, 100.0 + 10 * g + seed)]])
        for env_id in games[:2]:
            write_run(worse, env_id, seed, "done", [[(30_000, -30.0 + seed)]])
    summary = report([str(better), str(worse)], out=str(tmp_path / "report"), reps=REPS)
    (row,) = summary["probability_of_improvement"]
    assert row["label"] == "better > worse"
    assert 0.0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1.0
    assert row["value"] > 0.9
    assert row["games"] == 2 and row["games_left_out"] == "ALE/Boxing-v5"  # only common games
    assert (tmp_path / "report" / "probability_of_improvement.png").stat().st_size > 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Probability of improvement" in text and "better > worse" in text
    assert "### worse" in text


def test_a_directory_without_runs_is_left_out_with_a_note(tmp_path):
    partial_benchmark(tmp_path / "bench")
    write_benchmark(tmp_path / "empty", ["ALE/Pong-v5"], seeds=2)  # planned, never started
    dirs = [str(tmp_path / name) for name in ("bench", "empty", "missing")]
    summary = report(dirs, reps=REPS)
    assert [b["label"] for b in summary["benchmarks"]] == ["drama"]
    assert any("empty" in w and "no runs found" in w for w in summary["warnings"])
    assert any("missing" in w and "not a directory" in w for w in summary["warnings"])
    with open(summary["report"]) as file:
        assert "no runs found" in file.read()


def test_runs_without_benchmark_json_are_discovered(tmp_path):
    write_run(tmp_path, "ALE/Pong-v5", 0, "done", [[(30_000, 15.0)]])
    write_run(tmp_path, "ALE/Pong-v5", 1, "running", [])
    summary = report([str(tmp_path)], reps=REPS)
    (row,) = summary["per_game"]
    assert (row["env_id"], row["seeds_done"], row["seeds_planned"]) == ("ALE/Pong-v5", 1, 2)
    assert row["normalized_mean"] == pytest.approx(1.0)


def test_nothing_to_report_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="no runs found"):
        report([str(tmp_path)])
    with pytest.raises(ReportError, match="not a directory"):
        report([str(tmp_path / "missing")])
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    args = parser.parse_args([str(tmp_path)])
    assert (args.dirs, args.out, args.reps, args.seed) == ([str(tmp_path)], None, 2000, 0)
    assert main_report(args) == 1
    error = capsys.readouterr().err
    assert "nothing to report" in error and "seed_<k>/status.json" in error
