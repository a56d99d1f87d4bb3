"""lightning_drama.plot: reading CSVLogger runs, grouping seeds, the mean and band, the CLI."""

import csv
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from lightning_drama.plot import (
    Run,
    flatten_config,
    is_evaluation,
    load_runs,
    main,
    mean_and_band,
    plot_learning_curves,
    read_env_id,
    read_experiment,
    read_metrics,
    smooth,
    t_critical_95,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(
    version_dir: Path, rows: list[dict], env_id: str | None, ckpt_path: str | None = None
) -> Path:
    """A run as CSVLogger + LightningCLI leave it: sorted header, sparse rows, config.yaml.

    ``ckpt_path`` is the ``--ckpt_path`` a resumed fit (or a test run) was started with.
    """
    version_dir.mkdir(parents=True)
    columns = sorted({key for row in rows for key in row})
    with (version_dir / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (version_dir / "hparams.yaml").write_text("lr: 0.0001\n")
    if env_id is not None:
        (version_dir / "config.yaml").write_text(
            f"seed_everything: 0\ntrainer:\n  max_steps: 10\ndata:\n  env_id: {env_id}\n"
            f"  num_envs: 1\nckpt_path: {ckpt_path or 'null'}\n"
        )
    return version_dir


def training_rows(first: int, last: int, offset: float, normalized: bool) -> list[dict]:
    """Returns every 1000 env steps, a loss at other steps, an eval now and then."""
    rows = []
    for step in range(first, last + 1, 1000):
        ret = offset + step / 1000
        row = {"step": step, "epoch": 0, "env/episode_return": ret}
        if normalized:
            row["env/human_normalized"] = (ret + 21) / 36
        rows.append(row)
        rows.append({"step": step + 500, "epoch": 0, "train/wm/loss": 10 - step / 1000})
    for step in (5000, 10000):
        if first <= step <= last:
            rows.append({"step": step, "epoch": 0, "eval/return_mean": offset + step / 1000})
    return rows


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """Two seeds of Pong (logging the normalised score) and one Breakout run (not logging it)."""
    root = tmp_path / "logs"
    write_run(root / "pong/version_0", training_rows(1000, 10000, -20, True), "ALE/Pong-v5")
    write_run(root / "pong/version_1", training_rows(1500, 10500, -18, True), "ALE/Pong-v5")
    write_run(root / "breakout/version_0", training_rows(0, 8000, 2, False), "ALE/Breakout-v5")
    return root


def test_read_metrics_keeps_filled_cells_and_averages_repeats(tmp_path):
    rows = [
        {"step": 10, "a": 1.0},
        {"step": 10, "b": 5.0},
        {"step": 20, "a": 2.0},
        {"step": 20, "a": 4.0},  # logged twice at one step: averaged
        {"step": 30, "b": 7.0},
        {"step": 40, "a": "nan"},  # not finite: dropped
    ]
    write_run(tmp_path / "run", rows, None)
    metrics = read_metrics(tmp_path / "run/metrics.csv")
    assert sorted(metrics) == ["a", "b"]
    np.testing.assert_array_equal(metrics["a"][0], [10, 20])
    np.testing.assert_array_equal(metrics["a"][1], [1.0, 3.0])
    np.testing.assert_array_equal(metrics["b"][0], [10, 30])
    np.testing.assert_array_equal(metrics["b"][1], [5.0, 7.0])


def test_read_env_id_from_config_subclass_mode_and_hparams(tmp_path):
    plain = write_run(tmp_path / "a/version_0", [{"step": 0}], "ALE/Pong-v5")
    assert read_env_id(plain, tmp_path) == "ALE/Pong-v5"

    subclass = write_run(tmp_path / "b/version_0", [{"step": 0}], None)
    (subclass / "config.yaml").write_text(
        "data:\n  class_path: lightning_drama.data.DramaDataModule\n"
        "  init_args:\n    env_id: ALE/Boxing-v5\n"
    )
    assert read_env_id(subclass, tmp_path) == "ALE/Boxing-v5"

    # config.yaml one level up (a LightningCLI log dir above the logger's version dir)
    above = write_run(tmp_path / "c/version_0", [{"step": 0}], None)
    (tmp_path / "c/config.yaml").write_text("data:\n  env_id: CartPole-v1\n")
    assert read_env_id(above, tmp_path) == "CartPole-v1"
    assert read_env_id(above, above) is None  # not above the directory we were asked about

    from_hparams = write_run(tmp_path / "d/version_0", [{"step": 0}], None)
    (from_hparams / "hparams.yaml").write_text("env_id: ALE/Krull-v5\nseq_len: 64\n")
    assert read_env_id(from_hparams, tmp_path) == "ALE/Krull-v5"


def test_normalized_curve_computed_from_return_when_not_logged():
    steps = np.array([0.0, 100.0])
    breakout = Run(Path("b"), "ALE/Breakout-v5", {"env/episode_return": (steps, np.array([2, 9]))})
    np.testing.assert_array_equal(breakout.curve("env/human_normalized")[1], [0.0, 0.25])
    assert breakout.curve("eval/human_normalized") is None  # no eval/return_mean
    unknown = Run(Path("c"), "CartPole-v1", {"env/episode_return": (steps, np.array([2, 9]))})
    assert unknown.curve("env/human_normalized") is None


def test_smooth_is_a_trailing_moving_average():
    values = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    np.testing.assert_array_equal(smooth(values, 1), values)
    np.testing.assert_array_equal(smooth(values, 2), [0.0, 1.0, 3.0, 5.0, 7.0])
    np.testing.assert_array_equal(smooth(values, 3), [0.0, 1.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(smooth(values, 10), [0.0, 1.0, 2.0, 3.0, 4.0])


def test_t_critical_95():
    assert t_critical_95(1) == 12.7062
    assert t_critical_95(4) == 2.7764
    assert t_critical_95(30) == 2.0423
    assert t_critical_95(60) == pytest.approx(2.0003, abs=1e-4)
    assert t_critical_95(10**6) == pytest.approx(1.96, abs=1e-3)


def test_mean_and_band_hand_computed():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 2.0, 4.0]))
    b = (np.array([5.0, 15.0, 25.0]), np.array([1.0, 1.0, 1.0]))
    grid, mean, half = mean_and_band([a, b])
    # common range [5, 20]; grid = logged steps in it; a interpolates to [1, 2, 3, 4]
    np.testing.assert_array_equal(grid, [5.0, 10.0, 15.0, 20.0])
    np.testing.assert_array_equal(mean, [1.0, 1.5, 2.0, 2.5])
    # two seeds: std (ddof 1) = |a - b| / sqrt(2), sem = |a - b| / 2, t(0.975, 1) = 12.7062
    np.testing.assert_allclose(half, 12.7062 * np.array([0.0, 0.5, 1.0, 1.5]))

    c = (np.array([0.0, 10.0]), np.array([3.0, 6.0]))
    grid, mean, half = mean_and_band([a, c, c])
    np.testing.assert_array_equal(grid, [0.0, 10.0])
    np.testing.assert_array_equal(mean, [2.0, 14 / 3])
    # values [0, 3, 3] and [2, 6, 6]: std = sqrt(3) and sqrt(16 / 3), n = 3
    np.testing.assert_allclose(half, 4.3027 * np.array([1.0, 4 / 3]))

    grid, mean, half = mean_and_band([c])
    np.testing.assert_array_equal(mean, [3.0, 6.0])
    np.testing.assert_array_equal(half, [0.0, 0.0])


def test_mean_and_band_disjoint_seeds_raise():
    early = (np.array([0.0, 10.0]), np.array([0.0, 1.0]))
    late = (np.array([20.0, 30.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 10\], \[20, 30\] with no overlap"):
        mean_and_band([early, late])


def test_seeds_of_a_game_are_one_curve(runs_root):
    from lightning_drama.plot import load_runs

    fig = plot_learning_curves(load_runs([runs_root]), smooth_window=1)
    returns, normalized = fig.axes
    labels = returns.get_legend_handles_labels()[1]
    assert labels == ["Breakout (1 seed)", "Pong (2 seeds)"]
    pong = returns.lines[1]
    # common range [1500, 10000]; seeds are 2 apart, so the mean is seed 0's return + 1
    grid = np.concatenate([[1500], np.arange(2000, 10001, 500)])
    np.testing.assert_array_equal(pong.get_xdata(), grid)
    np.testing.assert_allclose(pong.get_ydata(), -19 + grid / 1000)
    # Breakout's normalised score is computed from its returns (no column logged)
    assert normalized.get_legend_handles_labels()[1] == [
        "Breakout (1 seed)",
        "Pong (2 seeds)",
        "human",
    ]
    np.testing.assert_allclose(normalized.lines[0].get_ydata(), np.arange(0, 9) / 28)


def test_seeds_without_a_common_range_are_drawn_one_by_one():
    early = Run(Path("a"), "ALE/Pong-v5", {"x": (np.array([0.0, 10.0]), np.array([0.0, 1.0]))})
    late = Run(Path("b"), "ALE/Pong-v5", {"x": (np.array([20.0, 30.0]), np.array([2.0, 3.0]))})
    with pytest.warns(UserWarning, match="x of Pong \\(2 seeds\\): .* drawing each seed"):
        fig = plot_learning_curves([early, late], ["x"], smooth_window=1)
    (ax,) = fig.axes
    assert [list(line.get_xdata()) for line in ax.lines] == [[0, 10], [20, 30]]
    assert ax.get_legend_handles_labels()[1] == ["Pong (2 seeds)"]


def test_main_writes_png(runs_root, tmp_path, capsys):
    out = tmp_path / "plots/curves.png"
    main([str(runs_root / "pong"), str(runs_root / "breakout/version_0"), "-o", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000


def test_main_errors_say_what_is_expected(runs_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")])
    assert "no metrics.csv found under" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main([str(runs_root), "--metric", "train/ac/loss", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert "no run has the column 'train/ac/loss'" in err
    assert "available columns: env/episode_return, env/human_normalized, epoch, " in err
    assert not (tmp_path / "x.png").exists()


def test_cli_subprocess(runs_root, tmp_path):
    out = tmp_path / "losses.png"
    result = subprocess.run(
        [sys.executable, "-m", "lightning_drama.plot", str(runs_root), "-o", str(out)]
        + ["--metric", "train/wm/loss", "--metric", "eval/human_normalized", "--smooth", "3"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_resumes_are_one_seed_and_test_runs_are_skipped(tmp_path, monkeypatch):
    """version_0 -> version_1 -> version_2 (resumes) and version_3 (a second seed); version_4 tests
    version_2's checkpoint. As LightningCLI writes it, a relative ckpt_path is relative to the
    directory training was started in: here tmp_path."""
    root = tmp_path / "runs/pong"
    # version_0 went on to 6000 after the checkpoint version_1 resumed from: from version_1's
    # first log (5000) on, what version_1 logged replaces it
    write_run(root / "version_0", training_rows(1000, 6000, -20, False), "ALE/Pong-v5")
    last = "checkpoints/last.ckpt"
    write_run(
        root / "version_1", training_rows(5000, 7000, -30, False), "ALE/Pong-v5",
        f"runs/pong/version_0/{last}",
    )  # fmt: skip
    write_run(
        root / "version_2", training_rows(8000, 10000, -40, False), "ALE/Pong-v5",
        str(root / f"version_1/{last}"),  # absolute
    )  # fmt: skip
    write_run(root / "version_3", training_rows(1000, 10000, -18, False), "ALE/Pong-v5")
    evaluation = [{"step": 0, "epoch": 0, "eval/return_mean": 5.0, "eval/return_std": 1.0}]
    write_run(root / "version_4", evaluation, "ALE/Pong-v5", f"runs/pong/version_2/{last}")
    monkeypatch.chdir(tmp_path / "runs")  # not where training ran: the run dirs anchor the path

    with pytest.warns(UserWarning, match=r"skipping .*version_4: no training metrics") as notes:
        runs = load_runs([Path("pong")])
    assert len(notes) == 1
    assert [run.path for run in runs] == [Path("pong/version_0"), Path("pong/version_3")]
    steps, returns = runs[0].metrics["env/episode_return"]
    np.testing.assert_array_equal(steps, np.arange(1000, 10001, 1000))
    np.testing.assert_array_equal(returns, [-19, -18, -17, -16, -25, -24, -23, -32, -31, -30])
    np.testing.assert_array_equal(runs[0].metrics["eval/return_mean"][0], [5000, 10000])
    np.testing.assert_array_equal(runs[0].metrics["eval/return_mean"][1], [-25, -30])

    fig = plot_learning_curves(runs, ["eval/return_mean"], smooth_window=1)
    (ax,) = fig.axes
    assert ax.get_legend_handles_labels()[1] == ["Pong (2 seeds)"]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [5000, 10000])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [(-25 - 13) / 2, (-30 - 8) / 2])
    assert fig.get_suptitle() == "mean of seeds, 95 % t-interval, no smoothing"


def test_a_run_resumed_from_elsewhere_is_a_seed_of_its_own(tmp_path):
    root = tmp_path / "runs/pong"
    elsewhere = str(tmp_path / "old/version_0/checkpoints/last.ckpt")  # not plotted
    write_run(root / "version_0", training_rows(5000, 8000, 0, False), "ALE/Pong-v5", elsewhere)
    # a checkpoint of Pong's version_0, resumed (fine-tuned) on another game: not its continuation
    breakout = write_run(
        root / "version_1", training_rows(9000, 10000, 0, False), "ALE/Breakout-v5",
        str(root / "version_0/checkpoints/last.ckpt"),
    )  # fmt: skip
    runs = load_runs([root])
    assert [run.path for run in runs] == [root / "version_0", breakout]
    np.testing.assert_array_equal(
        runs[0].metrics["env/episode_return"][0], [5000, 6000, 7000, 8000]
    )


def test_of_two_resumes_of_one_run_the_further_one_continues_it(tmp_path):
    root = tmp_path / "runs/pong"
    ckpt = str(root / "version_0/checkpoints/last.ckpt")
    write_run(root / "version_0", training_rows(1000, 3000, 0, False), "ALE/Pong-v5")
    write_run(root / "version_1", training_rows(4000, 9000, 10, False), "ALE/Pong-v5", ckpt)
    write_run(root / "version_2", training_rows(4000, 5000, 20, False), "ALE/Pong-v5", ckpt)
    with pytest.warns(UserWarning, match=r"version_2 and .*version_1 both resumed .* leaving out"):
        (run,) = load_runs([root])
    np.testing.assert_array_equal(
        run.metrics["env/episode_return"][1], [1, 2, 3, 14, 15, 16, 17, 18, 19]
    )


def test_main_says_what_it_skipped_in_one_line(tmp_path, monkeypatch, capsys):
    """The reported case: a resumed run and a test run were counted as seeds of eval/return_mean."""
    write_run(tmp_path / "runs/debug/version_0", training_rows(1000, 5000, 0, False), "ALE/Pong-v5")
    ckpt = "runs/debug/version_0/checkpoints/last.ckpt"
    rows = training_rows(6000, 10000, 0, False)
    write_run(tmp_path / "runs/debug/version_1", rows, "ALE/Pong-v5", ckpt)
    evaluation = [{"step": 0, "epoch": 0, "eval/return_mean": 5.0}]
    write_run(tmp_path / "runs/debug/version_2", evaluation, "ALE/Pong-v5", ckpt)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as escaped:
        main(["runs/debug", "--metric", "eval/return_mean", "-o", "curves.png"])
    assert escaped == []  # the notes go to stderr, one line each
    out, err = capsys.readouterr()
    assert out == "curves.png\n"
    assert err == (
        "python -m lightning_drama.plot: skipping runs/debug/version_2: no training metrics, only "
        "eval/ (a validate or test run, or a run stopped before its first log)\n"
    )

    with pytest.raises(SystemExit):
        main(["runs/debug/version_2", "-o", "x.png"])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("python -m lightning_drama.plot: skipping runs/debug/version_2")
    assert err[-1].endswith("error: no training run under runs/debug/version_2: every metrics.csv "
                            "has only eval/ columns")  # fmt: skip


def test_help_shows_a_single_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "95 % confidence band" in help_text
    assert "%%" not in help_text


def test_a_fit_that_logged_only_its_final_evaluation_is_not_a_test_run():
    fit = {"eval/return_mean": (np.array([60.0]), np.array([1.0]))}
    assert not is_evaluation(fit)  # a resume by a few steps: no training log, no epoch column
    assert is_evaluation({**fit, "epoch": (np.array([0.0]), np.array([0.0]))})
    assert not is_evaluation(
        {**fit, "epoch": fit["eval/return_mean"], "train/wm/loss": fit["eval/return_mean"]}
    )


def debug_rows(first: int, last: int, returns: int) -> list[dict]:
    """A debug-sized run: world-model and actor-critic losses every 20 env steps, an evaluation
    at the end, and the returns of only ``returns`` finished episodes (Pong is longer)."""
    rows = [
        {
            "step": step,
            "train/wm/recon": 1000 / step,
            "train/wm/kl": 2 - step / 1000,
            "train/ac/return": step / 100,
            "train/wm/loss": 1000 / step,
        }
        for step in range(first, last + 1, 20)
    ]
    rows += [{"step": first + 50 * (k + 1), "env/episode_return": -21.0} for k in range(returns)]
    rows.append({"step": last, "eval/return_mean": -20.0})
    return rows


def test_default_falls_back_to_world_model_metrics_when_too_few_returns(tmp_path):
    """The reported case: `plot runs/debug` failed without a return column, or drew two points."""
    write_run(tmp_path / "debug/version_0", debug_rows(84, 400, returns=0), "ALE/Pong-v5")
    note = r"env/episode_return: none, too few episodes .* drawing train/wm/recon, train/wm/kl"
    with pytest.warns(UserWarning, match=note) as notes:
        fig = plot_learning_curves(load_runs([tmp_path]), smooth_window=1)
    assert len(notes) == 1
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "train/wm/recon",
        "train/wm/kl",
        "train/ac/return",
    ]
    assert fig.axes[0].get_title() == "world model: reconstruction loss"
    assert fig.axes[0].get_yscale() == "log"  # falls by orders of magnitude
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_xdata(), np.arange(84, 401, 20))

    # Two returns (and one evaluation) are still too few: the same fallback, saying so.
    write_run(tmp_path / "debug/version_1", debug_rows(84, 400, returns=2), "ALE/Pong-v5")
    with pytest.warns(UserWarning, match="env/episode_return: at most 2 points a run, too few"):
        fig = plot_learning_curves(load_runs([tmp_path]), smooth_window=1)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "train/wm/recon",
        "train/wm/kl",
        "train/ac/return",
    ]

    # Three returns are a curve: no fallback, no note.
    write_run(tmp_path / "debug/version_2", debug_rows(84, 400, returns=3), "ALE/Pong-v5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_learning_curves(load_runs([tmp_path]), smooth_window=1)
    assert [ax.get_ylabel() for ax in fig.axes] == ["env/episode_return", "env/human_normalized"]


def test_fallback_prefers_enough_points_then_takes_what_was_logged(tmp_path):
    # Three evaluations outrank the world model; only MAX_FALLBACK_PANELS = 3 panels.
    rows = debug_rows(84, 400, returns=1)
    rows += [{"step": step, "eval/return_mean": -19.0} for step in (200, 300)]
    write_run(tmp_path / "a/version_0", rows, "ALE/Pong-v5")
    with pytest.warns(UserWarning, match="drawing eval/return_mean, train/wm/recon, train/wm/kl"):
        plot_learning_curves(load_runs([tmp_path / "a"]))

    # A run stopped after two logs: nothing has 3 points; the return, then the fallback order.
    write_run(tmp_path / "b/version_0", debug_rows(84, 104, returns=1), "ALE/Pong-v5")
    with pytest.warns(
        UserWarning, match="drawing env/episode_return, eval/return_mean, train/wm/recon"
    ):
        fig = plot_learning_curves(load_runs([tmp_path / "b"]))
    assert len(fig.axes) == 3

    # Nothing to fall back on: say what there is and how to choose.
    write_run(tmp_path / "c/version_0", [{"step": 10, "custom/x": 1.0}], "ALE/Pong-v5")
    with pytest.raises(ValueError, match=r"choose a column with --metric, available: custom/x"):
        plot_learning_curves(load_runs([tmp_path / "c"]))


def test_main_prints_one_note_for_the_fallback(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "runs/debug/version_0", debug_rows(84, 400, returns=0), "ALE/Pong-v5")
    monkeypatch.chdir(tmp_path)
    main(["runs/debug", "-o", "curves.png"])
    out, err = capsys.readouterr()
    assert out == "curves.png\n"
    assert err.count("\n") == 1
    assert err.startswith("python -m lightning_drama.plot: env/episode_return: none, too few")
    assert "drawing train/wm/recon, train/wm/kl, train/ac/return instead" in err
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)

    # Asked for by name, a missing metric stays an error that lists the columns.
    with pytest.raises(SystemExit):
        main(["runs/debug", "--metric", "env/episode_return", "-o", "x.png"])
    assert (
        "no run has the column 'env/episode_return'; available columns: " in capsys.readouterr().err
    )


def write_config(version_dir: Path, **overrides: object) -> None:
    """config.yaml as LightningCLI writes it; ``overrides`` set dotted keys (``model__acting``)."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "precision": "32-true",
            "logger": [{"class_path": "CSVLogger", "init_args": {"save_dir": "runs"}}],
            "enable_progress_bar": None,
        },
        "model": {"acting": "reference", "world_model": {"d_model": 64}},
        "data": {"env_id": "ALE/Pong-v5", "seed": None, "total_env_steps": 400},
        "ckpt_path": None,
    }
    for dotted, value in overrides.items():
        *parents, key = dotted.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    (version_dir / "config.yaml").write_text(yaml.safe_dump(config))


def test_runs_differing_only_in_the_seed_are_one_experiment(tmp_path, monkeypatch):
    """The reported case: seven debug runs with different configs were drawn as "7 seeds"."""
    root = tmp_path / "runs/debug"
    versions = [
        # seeds of the reference configuration: the seed, the budget, the log dir and the
        # progress bar do not change what is learned
        {},
        {"seed_everything": 1, "data__total_env_steps": 1000},
        {"data__seed": 7, "trainer__logger": [], "trainer__enable_progress_bar": False},
        # other experiments
        {"model__acting": "posterior"},
        {"model__acting": "posterior", "seed_everything": 3},
        {"model__world_model__d_model": 128},
    ]
    for k, overrides in enumerate(versions):
        version_dir = write_run(root / f"version_{k}", training_rows(1000, 5000, k, False), None)
        write_config(version_dir, **overrides)
    # version_6 resumes version_1 with a larger budget: it continues that seed
    resumed = write_run(root / "version_6", training_rows(6000, 8000, 1, False), None)
    ckpt = str(root / "version_1/checkpoints/last.ckpt")
    write_config(resumed, seed_everything=1, data__total_env_steps=2000, ckpt_path=ckpt)

    runs = load_runs([root])
    assert len(runs) == 6
    fig = plot_learning_curves(runs, ["env/episode_return"], smooth_window=1)
    (ax,) = fig.axes
    assert ax.get_legend_handles_labels()[1] == [
        "Pong, model.acting=reference, model.world_model.d_model=64 (3 seeds)",
        "Pong, model.acting=posterior, model.world_model.d_model=64 (2 seeds)",
        "Pong, model.acting=reference, model.world_model.d_model=128 (1 seed)",
    ]
    # returns of the seeds: offset k + step / 1000; the common range is [1000, 5000]
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(1000, 5001, 1000))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 1 + np.arange(1, 6))  # offsets 0, 1, 2
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 3.5 + np.arange(1, 6))  # offsets 3, 4
    assert len(ax.collections) == 2  # a band for each experiment with seeds

    # Two envs of one game: the env_id tells them apart.
    write_config(root / "version_1", data__env_id="PongNoFrameskip-v4", seed_everything=1)
    write_config(resumed, data__env_id="PongNoFrameskip-v4", ckpt_path=ckpt)
    runs = [run for run in load_runs([root]) if run.path.name in ("version_0", "version_1")]
    fig = plot_learning_curves(runs, ["env/episode_return"], smooth_window=1)
    assert fig.axes[0].get_legend_handles_labels()[1] == [
        "Pong, data.env_id=ALE/Pong-v5 (1 seed)",
        "Pong, data.env_id=PongNoFrameskip-v4 (1 seed)",
    ]


def test_read_experiment_drops_what_does_not_define_it(tmp_path):
    run = write_run(tmp_path / "version_0", [{"step": 0}], None)
    write_config(run, trainer__callbacks=[{"class_path": "DreamMedia"}], data__replay_dir="x")
    assert read_experiment(run, tmp_path) == {
        "trainer.precision": "32-true",
        "model.acting": "reference",
        "model.world_model.d_model": "64",
        "data.env_id": "ALE/Pong-v5",
    }
    assert read_experiment(write_run(tmp_path / "bare", [{"step": 0}], None), tmp_path) is None


def test_flatten_config():
    config = {
        "a": {"b": 1, "c": [8, 16], "d": None, "e": "text"},
        "data": {"class_path": "pkg.Data", "init_args": {"env_id": "X", "seed": 3}},
    }
    assert flatten_config(config) == {
        "a.b": "1",
        "a.c": "[8, 16]",
        "a.d": "null",
        "a.e": "text",
        "data.class_path": "pkg.Data",
        "data.env_id": "X",
        "data.seed": "3",
    }
