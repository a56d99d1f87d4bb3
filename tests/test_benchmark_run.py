"""`python -m lightning_drama.benchmark run`: games x seeds on a local Ray, stopped, resumed,
retried, and its on-disk state (status, evaluations over versions, progress)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_drama.benchmark import run as bench
from lightning_drama.benchmark.__main__ import main as benchmark_main
from lightning_drama.checks import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# debug.yaml made tiny: 88 updates per run, a checkpoint every 5 updates (10 optimiser steps).
TINY = {
    "trainer": {
        "val_check_interval": 1000,  # no evaluation during fit: the runner adds the final one
        "log_every_n_steps": 5,
        "callbacks": [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"every_n_train_steps": 10, "save_top_k": 1, "save_last": True},
            }
        ],
    },
    "data": {
        "warmup_steps": 32,
        "total_env_steps": 120,
        "seq_len": 16,
        "imagine_batch": 16,
        "eval_episodes": 2,
        "eval_max_steps": 20,
    },
}


def run_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_run_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


# ------------------------------------------------------------------------------ what to run


def test_games_sets_ids_and_names():
    assert len(bench.parse_games("atari26")) == 26
    assert bench.parse_games("atari26")[0] == "ALE/Alien-v5"
    assert bench.parse_games("minatar") == [
        "MinAtar/Asterix-v1",
        "MinAtar/Breakout-v1",
        "MinAtar/Freeway-v1",
        "MinAtar/Seaquest-v1",
        "MinAtar/SpaceInvaders-v1",
    ]
    assert bench.parse_games("Pong, MinAtar/Breakout-v1,catch_env:Catch,ALE/Pong-v5") == [
        "ALE/Pong-v5",
        "MinAtar/Breakout-v1",
        "catch_env:Catch",
    ]
    with pytest.raises(ConfigError, match="neither a game set"):
        bench.parse_games("Pongg")
    with pytest.raises(ConfigError, match="no game"):
        bench.parse_games(" , ")


def test_run_directories():
    runs = bench.plan("/out", ["ALE/Pong-v5", "catch_env:Catch"], 2)
    assert [r.directory for r in runs] == [
        "/out/ALE_Pong-v5/seed_0",
        "/out/ALE_Pong-v5/seed_1",
        "/out/catch_env_Catch/seed_0",
        "/out/catch_env_Catch/seed_1",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data.env_id=ALE/Pong-v5"], "set by the benchmark"),
        (["--seed_everything", "3"], "set by the benchmark"),
        (["--trainer.logger=false"], "set by the benchmark"),
        (["--ckpt_path", "last"], "set by the benchmark"),
        (["--bogus", "1"], "unknown option --bogus"),
    ],
)
def test_reserved_and_unknown_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        bench._check_arguments(run_args(), options)


def test_bad_values_exit_2_with_one_line(capsys):
    assert benchmark_main(["run", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --seeds must be >= 1, got 0"
    assert benchmark_main(["run", "--games", "Nope", "--seeds", "1"]) == 2
    assert "neither a game set" in capsys.readouterr().err


def test_the_file_names_are_those_the_fit_writes():
    from lightning_drama.callbacks import PROGRESS_FILE
    from lightning_drama.module import EVALUATIONS_FILE

    assert bench.EVALUATIONS_FILE == EVALUATIONS_FILE
    assert bench.PROGRESS_FILE == PROGRESS_FILE


def test_fit_command_puts_the_run_after_the_users_configs(tmp_path):
    run = bench.Run("MinAtar/Breakout-v1", 3, str(tmp_path / "MinAtar_Breakout-v1" / "seed_3"))
    os.makedirs(run.directory)
    command = bench.fit_command(run, ["a.yaml", "b.yaml"], ["--model.wm_lr=1e-4"], "x/last.ckpt")
    overlay = os.path.join(run.directory, bench.OVERLAY_FILE)
    assert command[1:] == [
        "-m", "lightning_drama.cli", "fit", "--config", "a.yaml", "--config", "b.yaml",
        "--config", overlay, "--model.wm_lr=1e-4", "--ckpt_path", "x/last.ckpt",
    ]  # fmt: skip
    settings = yaml.safe_load(Path(overlay).read_text())
    assert settings["seed_everything"] == 3
    assert settings["data"] == {"env_id": "MinAtar/Breakout-v1", "seed": None}
    for logger in settings["trainer"]["logger"]:
        assert logger["init_args"]["save_dir"] == str(tmp_path / "MinAtar_Breakout-v1")
        assert logger["init_args"]["name"] == "seed_3"


# ----------------------------------------------------------------------- the state on disk


def write_evaluations(version: Path, *records: tuple[int, float]) -> None:
    version.mkdir(parents=True, exist_ok=True)
    with open(version / bench.EVALUATIONS_FILE, "a") as file:
        for steps, ret in records:
            file.write(json.dumps({"env_steps": steps, "return_mean": ret}) + "\n")


def test_evaluations_merge_versions_later_wins(tmp_path):
    run = bench.Run("catch_env:Catch", 0, str(tmp_path))
    write_evaluations(tmp_path / "version_0", (100, 1.0), (200, 2.0), (300, 3.0))
    write_evaluations(tmp_path / "version_2", (300, 30.0), (400, 40.0))  # resumed from 200
    write_evaluations(tmp_path / "version_10", (400, 400.0))  # numeric, not string, order
    write_evaluations(tmp_path / "abandoned_version_1", (500, -1.0))  # not part of the run
    with open(tmp_path / "version_10" / bench.EVALUATIONS_FILE, "a") as file:
        file.write('{"env_steps": 50')  # cut short by a crash
    assert [(r["env_steps"], r["return_mean"]) for r in bench.evaluations(run)] == [
        (100, 1.0),
        (200, 2.0),
        (300, 30.0),
        (400, 400.0),
    ]


def test_fresh_start_moves_unresumable_versions_aside(tmp_path):
    run = bench.Run("catch_env:Catch", 0, str(tmp_path))
    write_evaluations(tmp_path / "version_0", (100, 1.0))
    assert bench.newest_checkpoint(run) is None
    bench._abandon_unresumable_versions(run)
    assert bench.versions(run) == [] and bench.evaluations(run) == []
    assert (tmp_path / "abandoned_version_0" / bench.EVALUATIONS_FILE).exists()


def test_newest_checkpoint_is_of_the_newest_version_that_has_one(tmp_path):
    run = bench.Run("catch_env:Catch", 0, str(tmp_path))
    for version in ("version_0", "version_1"):
        (tmp_path / version / "checkpoints").mkdir(parents=True)
        (tmp_path / version / "checkpoints" / "last.ckpt").write_text("x")
    (tmp_path / "version_2").mkdir()  # started, crashed before its first checkpoint
    assert bench.newest_checkpoint(run) == str(tmp_path / "version_1" / "checkpoints/last.ckpt")


def test_a_directory_holds_one_experiment(tmp_path):
    args = run_args(seeds=2)
    bench._record_benchmark(str(tmp_path), args, ["a.yaml"], ["--model.wm_lr=1"], ["G/1"])
    # More games and seeds: the same experiment, extended.
    bench._record_benchmark(str(tmp_path), run_args(seeds=3), ["a.yaml"], ["--model.wm_lr=1"],
                            ["G/2"])  # fmt: skip
    record = json.loads((tmp_path / bench.BENCHMARK_FILE).read_text())
    assert record["games"] == ["G/1", "G/2"] and record["seeds"] == 3
    with pytest.raises(ConfigError, match="another --out"):
        bench._record_benchmark(str(tmp_path), args, ["a.yaml"], ["--model.wm_lr=2"], ["G/1"])


def test_the_drivers_first_ctrl_c_is_a_flag_the_second_raises():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with bench._ctrl_c_as_a_flag() as stop_requested:
        assert not stop_requested()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs at the next bytecode boundary
        assert stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_driver_leaves_an_ignored_sigint_alone():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with bench._ctrl_c_as_a_flag() as stop_requested:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert not stop_requested()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_board_counts_steps_and_estimates_the_time_left(tmp_path, monkeypatch):
    runs = bench.plan(str(tmp_path), ["G/1"], 3)
    clock = [1000.0]
    monkeypatch.setattr(bench.time, "monotonic", lambda: clock[0])

    def progress(run, steps):
        version = Path(run.directory) / "version_0"
        version.mkdir(parents=True, exist_ok=True)
        (version / "progress.json").write_text(
            json.dumps({"env_steps": steps, "total_env_steps": 1000})
        )

    board = bench.Board(runs)
    states = {runs[0]: "running", runs[1]: "running", runs[2]: "queued"}
    assert "env steps" not in board.line(states)  # nothing reported yet
    progress(runs[0], 100)
    progress(runs[1], 100)
    assert "env steps 200/3,000 (6.7 %)" in board.line(states)
    clock[0] += 10.0
    progress(runs[0], 150)
    progress(runs[1], 150)
    # 100 steps in 10 s, 2,700 to go: 270 s.
    line = board.line(states)
    assert "3 runs: 0 done, 2 running, 1 queued" in line
    assert "10.0 steps/s, ETA 0:04:30" in line


# ----------------------------------------------------------------------- on Ray, end to end


def benchmark_command(tmp_path: Path, games: str, seeds: int, retries: int) -> list[str]:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return [
        sys.executable, "-m", "lightning_drama.benchmark", "run",
        "--config", "debug.yaml", "--config", str(tmp_path / "tiny.yaml"),
        "--games", games, "--seeds", str(seeds), "--retries", str(retries),
        "--out", str(tmp_path / "out"), "--status-every", "2", "--label", "tiny",
        "--model.imagine_horizon=4",  # an override for every run
    ]  # fmt: skip


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def default_sigint() -> None:
    """In the benchmark's process: SIGINT as in a terminal, whatever this pytest inherited (a
    background job ignores it, and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def status(out: Path, game: str, seed: int) -> dict:
    return json.loads((out / game / f"seed_{seed}" / bench.STATUS_FILE).read_text())


@pytest.mark.slow
def test_stopped_benchmark_resumes_retries_and_reports(tmp_path):
    """2 image games x 2 seeds and a game that cannot be made: Ctrl-C while the first runs train
    (each writes last.ckpt and stops), rerun the same command (finished runs kept, stopped ones
    resumed from their checkpoints, the broken game tried 1 + --retries times and reported),
    then `report`."""
    out = tmp_path / "out"
    command = benchmark_command(tmp_path, "catch_env:Catch,MinAtar/Breakout-v1,"
                                "catch_env:BrokenCatch", 2, retries=1)  # fmt: skip
    first = subprocess.Popen(
        command, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    catch = [out / "catch_env_Catch" / f"seed_{s}" / "version_0" / "checkpoints" / "last.ckpt"
             for s in (0, 1)]  # fmt: skip
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in catch) and first.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.5)
    assert first.poll() is None, "the benchmark ended before both Catch runs wrote last.ckpt"
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 130, output
    assert "rerun the same command to resume" in output
    for seed in (0, 1):
        stopped = status(out, "catch_env_Catch", seed)
        assert stopped["state"] == "interrupted", output
        assert stopped["returncode"] == 130  # the fit's own Ctrl-C: last.ckpt written
    for seed in (0, 1):
        assert status(out, "MinAtar_Breakout-v1", seed)["state"] != "done"

    second = subprocess.run(
        command, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=900
    )
    output = second.stdout + second.stderr
    assert second.returncode == 1, output  # the broken game failed
    for game in ("catch_env_Catch", "MinAtar_Breakout-v1"):
        for seed in (0, 1):
            done = status(out, game, seed)
            assert done["state"] == "done", (game, seed, output)
            assert done["env_steps"] == 120
            run = bench.Run("", seed, str(out / game / f"seed_{seed}"))
            final = bench.evaluations(run)[-1]
            assert final["env_steps"] == 120 and len(final["returns"]) == 2
    for seed in (0, 1):  # resumed from the checkpoint written at Ctrl-C, in a new version
        log = (out / "catch_env_Catch" / f"seed_{seed}" / "attempt_2.log").read_text()
        assert "resuming from" in log and "version_0/checkpoints/last.ckpt" in log
        assert (out / "catch_env_Catch" / f"seed_{seed}" / "version_1").is_dir()
        hparams = yaml.safe_load(
            (out / "catch_env_Catch" / f"seed_{seed}" / "version_1" / "config.yaml").read_text()
        )
        assert hparams["model"]["imagine_horizon"] == 4  # the override reached every run
        assert hparams["seed_everything"] == seed
    for seed in (0, 1):
        broken = status(out, "catch_env_BrokenCatch", seed)
        assert broken["state"] == "failed" and broken["attempts"] == 2, output
        assert "BrokenCatch cannot be made" in broken["error"]
        assert (out / "catch_env_BrokenCatch" / f"seed_{seed}" / "attempt_2.log").exists()
    assert output.count("failed: catch_env:BrokenCatch seed 0") == 2  # tried, retried

    # A run killed during its final evaluation (after its last.ckpt): the rerun resumes it
    # (nothing left to train) and scores last.ckpt with `test`; the finished runs are skipped.
    scored = out / "catch_env_Catch" / "seed_0" / "version_1" / bench.EVALUATIONS_FILE
    kept = [line for line in scored.read_text().splitlines() if json.loads(line)["env_steps"] < 120]
    scored.write_text("".join(line + "\n" for line in kept))
    bench.update_status(bench.Run("catch_env:Catch", 0, str(scored.parent.parent)),
                        state="interrupted")  # fmt: skip
    # ... and before its last progress.json: the checkpoint alone says the budget was reached.
    progress = scored.parent / bench.PROGRESS_FILE
    progress.write_text(json.dumps({**json.loads(progress.read_text()), "env_steps": 110}))
    finished = [*command]
    finished[finished.index("--games") + 1] = "catch_env:Catch,MinAtar/Breakout-v1"
    third = subprocess.run(
        finished, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert third.returncode == 0, third.stdout + third.stderr
    assert "4 runs, 3 done already, 1 to run" in third.stdout
    final = bench.evaluations(bench.Run("", 0, str(scored.parent.parent)))[-1]
    assert final["env_steps"] == 120 and final["final_test"] and len(final["returns"]) == 2

    from lightning_drama.benchmark.report import report

    summary = report([str(out)], reps=200)
    files = {os.path.basename(path) for path in summary["files"]}
    assert {"report.md", "per_game.csv", "aggregates.csv", "curves.csv"} <= files
    assert {"sample_efficiency.png"} <= files
    text = (out / "report" / "report.md").read_text()
    assert "BrokenCatch cannot be made" in text
