"""`python -m lightning_drama.benchmark run`: games x seeds, each one ordinary `fit`, on Ray.

    python -m lightning_drama.benchmark run --config atari.yaml --games atari26 --seeds 5 \\
        [--address auto|ray://host:port] [--gpus-per-run 0.5] [--cpus-per-run 2] \\
        [--out runs/benchmark] [--data.* / --model.* / --trainer.* overrides for every run]

Each (game, seed) is the CLI's own `fit` (same configs, checkpoints, exact resume) in a child
process, in `OUT/<game>/seed_<k>/version_<N>/`, launched by a Ray task: Ray places the tasks on
the CPUs / GPUs of this machine or of a cluster (`--address`); this module only submits them,
retries failures and shows progress. Every run directory has a `status.json` (state, attempts,
error) and its attempts' logs, so the benchmark can be stopped and resumed at any point:

- rerunning the same command skips finished runs and resumes the others from their newest
  `last.ckpt` (a new `version_<N>` continues exactly where the checkpoint left off);
- a run that fails is retried `--retries` times (resuming where it can); its error stays in
  `status.json` and `attempt_<n>.log`;
- Ctrl-C writes `OUT/stop`: every running fit writes `last.ckpt` and stops (as a fit's own
  Ctrl-C does), queued runs are cancelled; a second Ctrl-C stops at once.

On a cluster, OUT must be a directory every node sees at the same path (a shared filesystem), and
lightning_drama must be installed on every node.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import yaml

from lightning_drama.checks import ConfigError
from lightning_drama.envs import MINATAR_GAMES
from lightning_drama.scores import ATARI_SCORES, game_from_env_id

GAME_SETS: dict[str, tuple[str, ...]] = {
    "atari26": tuple(f"ALE/{game}-v5" for game in ATARI_SCORES),  # the Atari100k games
    "minatar": tuple(f"MinAtar/{game}-v1" for game in MINATAR_GAMES),
}
STATUS_FILE = "status.json"
BENCHMARK_FILE = "benchmark.json"
# Written by each fit into its version directory (DramaModule, EnvironmentLoop); the same names.
EVALUATIONS_FILE = "evaluations.jsonl"
PROGRESS_FILE = "progress.json"
OVERLAY_FILE = "benchmark.yaml"  # the run's own settings, given to fit after the user's configs
# A run's exit codes that retrying cannot fix: a bad value in the config or on the command line.
NO_RETRY_CODES = {2: "a configuration error"}
# Options the benchmark sets per run itself.
RESERVED = ("--data.env_id", "--data.seed", "--seed_everything", "--trainer.logger", "--ckpt_path")
STOP_FILE = "stop"  # OUT/stop: the driver's Ctrl-C, seen by every task
STOP_GRACE_SECONDS = 60.0  # after SIGINT, before SIGTERM (see _stop_child)
STOP_SECONDS = 600.0  # how long a stopped run may take to write last.ckpt before it is killed


# ------------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Run:
    """One (game, seed) of a benchmark and its directory `OUT/<game>/seed_<k>`."""

    env_id: str
    seed: int
    directory: str

    @property
    def label(self) -> str:
        return f"{self.env_id} seed {self.seed}"


def parse_games(text: str) -> list[str]:
    """`atari26`, `minatar`, or comma-separated env ids (a bare Atari100k game name such as
    `Pong` means `ALE/Pong-v5`); sets and ids may be mixed: `minatar,ALE/Pong-v5`."""
    games: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item in GAME_SETS:
            games += GAME_SETS[item]
        elif "/" in item or ":" in item:
            games.append(item)
        elif game_from_env_id(item) is not None:
            games.append(f"ALE/{game_from_env_id(item)}-v5")
        else:
            raise ConfigError(
                f"--games: {item!r} is neither a game set ({', '.join(GAME_SETS)}), an env id "
                "('ALE/Pong-v5', 'MinAtar/Breakout-v1', 'package.module:Class') nor an "
                "Atari100k game name ('Pong')"
            )
    if not games:
        raise ConfigError("--games: no game given (e.g. --games atari26, minatar or ALE/Pong-v5)")
    return list(dict.fromkeys(games))  # once each, in order


def game_directory(env_id: str) -> str:
    """`ALE/Pong-v5` -> `ALE_Pong-v5`: the env id as one directory name."""
    return re.sub(r"[/:\\]", "_", env_id)


def plan(out: str, games: list[str], seeds: int) -> list[Run]:
    return [
        Run(env_id, seed, os.path.join(out, game_directory(env_id), f"seed_{seed}"))
        for env_id in games
        for seed in range(seeds)
    ]


# ------------------------------------------------------------------- the state on disk


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing, cut short or not an object."""
    try:
        with open(path) as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: dict[str, Any]) -> None:
    """Replace `path` atomically (readers on other nodes never see half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.{socket.gethostname()}.{os.getpid()}.partial"  # unique across nodes
    with open(partial, "w") as file:
        json.dump(data, file, indent=1)
    os.replace(partial, path)


def read_status(run: Run) -> dict[str, Any]:
    return read_json(os.path.join(run.directory, STATUS_FILE)) or {
        "env_id": run.env_id,
        "seed": run.seed,
        "state": "pending",
        "attempts": 0,
        "error": None,
    }


def update_status(run: Run, **fields: Any) -> dict[str, Any]:
    status = {**read_status(run), **fields}
    write_json(os.path.join(run.directory, STATUS_FILE), status)
    return status


def _versions(run_directory: str) -> list[str]:
    numbered = []
    for path in glob.glob(os.path.join(run_directory, "version_*")):
        match = re.fullmatch(r"version_(\d+)", os.path.basename(path))
        if match and os.path.isdir(path):
            numbered.append((int(match[1]), path))
    return [path for _, path in sorted(numbered)]


def versions(run: Run) -> list[str]:
    """The run's Lightning version directories, oldest first."""
    return _versions(run.directory)


def newest_checkpoint(run: Run) -> str | None:
    """`last.ckpt` of the newest version that has one: where the run resumes."""
    for version in reversed(versions(run)):
        path = os.path.join(version, "checkpoints", "last.ckpt")
        if os.path.isfile(path):
            return path
    return None


def run_progress(run: Run) -> dict[str, Any] | None:
    """The furthest `progress.json` of the run's versions (env steps done and budgeted)."""
    found = [read_json(os.path.join(v, PROGRESS_FILE)) for v in versions(run)]
    found = [p for p in found if p]
    return max(found, key=lambda p: p["env_steps"]) if found else None


def read_evaluations(run_directory: str) -> list[dict[str, Any]]:
    """The evaluations of a run over its `version_<N>` directories, by env steps; at the same env
    steps a later version's evaluation replaces an earlier one (a resumed run repeats the steps
    after its checkpoint). A line cut short by a crash is skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    for version in _versions(run_directory):
        try:
            with open(os.path.join(version, EVALUATIONS_FILE)) as file:
                lines = file.read().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
                step = int(record["env_steps"])
                float(record["return_mean"])
            except (ValueError, KeyError, TypeError):
                continue
            by_step[step] = record
    return [by_step[step] for step in sorted(by_step)]


def evaluations(run: Run) -> list[dict[str, Any]]:
    return read_evaluations(run.directory)


# ---------------------------------------------------------------- one attempt (a Ray task)


def _prepare_child() -> None:
    """In the child, before the fit starts: SIGINT and SIGTERM as a plain process has them (a
    Ray worker blocks SIGINT, and the signal mask and ignored signals are kept across exec: the
    fit would never see the stop request); on Linux, SIGTERM when the Ray worker that started
    it dies, so a fit never outlives its task (SIGTERM makes it write last.ckpt and stop)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_child(command: list[str], log: Any, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # a terminal's Ctrl-C reaches it only through its task
        preexec_fn=_prepare_child,
    )


class RunStopped(Exception):
    """The benchmark was stopped (its stop file appeared) and the child has ended."""

    def __init__(self, returncode: int):
        super().__init__(f"stopped, exit code {returncode}")
        self.returncode = returncode


def stop_file(run: Run) -> str:
    """`OUT/stop`: written by the driver on Ctrl-C, read by every task (on a cluster, through
    the shared filesystem the benchmark directory must be on)."""
    return os.path.join(os.path.dirname(os.path.dirname(run.directory)), STOP_FILE)


def _wait(child: subprocess.Popen, stop: str) -> int:
    """The child's exit code. While it runs, checks for the stop file every half second: then
    the child gets SIGINT (a fit writes last.ckpt and exits 130), `STOP_SECONDS` to end, and
    RunStopped is raised. (A file, not `ray.cancel`: Ray raises its KeyboardInterrupt in a task
    only once the task's Python code runs again, i.e. after a long child has ended.)"""
    try:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if os.path.exists(stop):
                    raise KeyboardInterrupt from None
    except KeyboardInterrupt:  # the stop file, or ray.cancel when the task gets to see it
        raise RunStopped(_stop_child(child)) from None


def _stop_child(child: subprocess.Popen) -> int:
    """SIGINT (the fit finishes its update, writes last.ckpt, exits 130); when it is still busy
    after `STOP_GRACE_SECONDS` (an evaluation, which SIGINT does not cut short), SIGTERM (it
    stops at the next evaluation batch and writes last.ckpt, exit 143); after `STOP_SECONDS`
    in all, SIGKILL."""
    deadline = time.monotonic() + STOP_SECONDS
    for sent, grace in ((signal.SIGINT, STOP_GRACE_SECONDS), (signal.SIGTERM, None)):
        child.send_signal(sent)
        wait = deadline - time.monotonic() if grace is None else grace
        try:
            return child.wait(timeout=max(1.0, wait))
        except subprocess.TimeoutExpired:
            continue
    child.kill()
    return child.wait()


def _wait_for_earlier_fit(run: Run) -> str | None:
    """An earlier attempt's fit can outlive its task (a Ray worker killed for memory: the fit
    gets SIGTERM and writes last.ckpt first). Wait for it to end before this attempt uses the
    same directory; an error when it does not end."""
    status = read_status(run)
    pid = status.get("pid")
    if not pid or status.get("host") != socket.gethostname():
        return None  # none recorded, or on another node (its own SIGTERM ends it there)
    deadline = time.monotonic() + STOP_SECONDS
    while _is_fit(pid):
        if time.monotonic() > deadline:
            return f"the fit of an earlier attempt (pid {pid}) is still running"
        time.sleep(1.0)
    return None


def _is_fit(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"lightning_drama" in file.read()
    except OSError:  # gone (or not Linux: nothing to check)
        return False


def run_overlay(run: Run) -> dict[str, Any]:
    """What the benchmark sets in each run, on top of the user's configs: the game, the seed,
    the run directory (TensorBoard + CSV loggers into `OUT/<game>/seed_<k>/version_<N>`)."""
    save_dir, name = os.path.split(os.path.abspath(run.directory))
    loggers = [
        {
            "class_path": f"lightning.pytorch.loggers.{cls}",
            "init_args": {"save_dir": save_dir, "name": name, **extra},
        }
        for cls, extra in (("TensorBoardLogger", {"default_hp_metric": False}), ("CSVLogger", {}))
    ]
    return {
        "seed_everything": run.seed,
        "trainer": {"logger": loggers, "enable_progress_bar": False},  # progress.json instead
        "data": {"env_id": run.env_id, "seed": None},  # envs and replay from seed_everything
    }


def fit_command(run: Run, configs: list[str], overrides: list[str], ckpt: str | None) -> list[str]:
    overlay = os.path.join(run.directory, OVERLAY_FILE)
    with open(overlay, "w") as file:
        yaml.safe_dump(run_overlay(run), file, sort_keys=False)
    command = [sys.executable, "-m", "lightning_drama.cli", "fit"]
    for config in configs:
        command += ["--config", config]
    command += ["--config", overlay, *overrides]
    return command + (["--ckpt_path", ckpt] if ckpt else [])


def _said_nothing_to_train(log_path: str) -> bool:
    """The fit resumed a checkpoint that had trained its whole budget already (the CLI says so
    and exits 0), e.g. one that died between writing last.ckpt and its last progress.json."""
    try:
        with open(log_path, errors="replace") as file:
            return "nothing to train" in file.read()
    except OSError:
        return False


def _error_of(log_path: str, returncode: int) -> str:
    """One line on why a child failed: its `error:` line, else the last line of its log."""
    try:
        with open(log_path, errors="replace") as file:
            lines = [line.rstrip() for line in file.read().splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line for line in lines if line.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return f"{how}: {last.strip()[:500]}"


def _abandon_unresumable_versions(run: Run) -> list[str]:
    """A run that starts afresh (no last.ckpt anywhere) renames the versions of its earlier
    attempts to `abandoned_version_<N>[_k]`: nothing there can be resumed, and their evaluations
    must not mix with the new attempt's."""
    moved = []
    for version in versions(run):
        name = os.path.basename(version)
        target = os.path.join(run.directory, f"abandoned_{name}")
        count = 1
        while os.path.exists(target):  # an earlier fresh start's version_<N> had the same N
            count += 1
            target = os.path.join(run.directory, f"abandoned_{name}_{count}")
        os.replace(version, target)
        moved.append(target)
    return moved


def attempt_run(
    run: Run, configs: list[str], overrides: list[str], attempt: int, threads: int
) -> dict[str, Any]:
    """Train `run` in a child process until it ends: resumes its newest last.ckpt, and once
    the budget is reached makes sure its final evaluation is recorded. Runs inside a Ray task;
    writes `status.json` itself, so a lost driver loses nothing."""
    os.makedirs(run.directory, exist_ok=True)
    if os.path.exists(stop_file(run)):  # stopped while this task waited for a CPU
        return update_status(run, state="interrupted", pid=None)
    busy = _wait_for_earlier_fit(run)
    if busy:
        return update_status(run, state="failed", error=busy, returncode=None)
    ckpt = newest_checkpoint(run)
    log_path = os.path.join(run.directory, f"attempt_{attempt}.log")
    started = time.time()
    with open(log_path, "w") as log:
        if ckpt is None:
            for moved in _abandon_unresumable_versions(run):
                log.write(f"benchmark: no last.ckpt to resume; moved {moved} aside\n")
        else:
            log.write(f"benchmark: resuming from {ckpt}\n")
        command = fit_command(run, configs, overrides, ckpt)
        log.write("benchmark: " + " ".join(command) + "\n")
        log.flush()
        child = _start_child(command, log, threads)
        update_status(
            run,
            state="running",
            attempts=attempt,
            pid=child.pid,
            host=socket.gethostname(),
            log=os.path.basename(log_path),
        )
        try:
            returncode = _wait(child, stop_file(run))
        except RunStopped as stopped:
            return update_status(run, state="interrupted", pid=None, returncode=stopped.returncode)
    progress = run_progress(run) or {}
    finished = returncode == 0 and (
        progress.get("env_steps", -1) >= progress.get("total_env_steps", float("inf"))
        or _said_nothing_to_train(log_path)  # its checkpoint had the budget (the CLI checked)
    )
    result: dict[str, Any] = {"returncode": returncode, "env_steps": progress.get("env_steps")}
    if finished:
        try:
            error = _ensure_final_evaluation(run, configs, overrides, threads, log_path)
        except RunStopped:  # trained, not yet scored: a rerun evaluates last.ckpt
            return update_status(run, state="interrupted", pid=None, returncode=returncode)
        result["state"] = "failed" if error else "done"
        result["error"] = error
    else:
        result["state"] = "failed"
        result["error"] = (
            _error_of(log_path, returncode)
            if returncode
            else "the fit ended before its env-step budget (see " + log_path + ")"
        )
    result["wall_seconds"] = round(time.time() - started, 1)
    update_status(run, pid=None, **result)
    return result


def _ensure_final_evaluation(
    run: Run, configs: list[str], overrides: list[str], threads: int, log_path: str
) -> str | None:
    """The benchmark's score is the evaluation at the end of the budget. A fit evaluates at
    `trainer.val_check_interval`; when the budget does not end on one, evaluate last.ckpt now
    (the CLI's `test`) and record it like the fit's own. Returns an error, or None."""
    progress = run_progress(run) or {}
    records = evaluations(run)
    if records and records[-1]["env_steps"] >= progress.get("env_steps", 0):
        return None
    ckpt = newest_checkpoint(run)
    if ckpt is None:
        return "finished, but no last.ckpt to evaluate"
    command = [sys.executable, "-m", "lightning_drama.benchmark.run", "final-evaluation", ckpt]
    command += fit_command(run, configs, overrides, None)[4:]  # the same configs and overrides
    with open(log_path, "a") as log:
        log.write("benchmark: final evaluation: " + " ".join(command) + "\n")
        log.flush()
        returncode = _wait(_start_child(command, log, threads), stop_file(run))
    return _error_of(log_path, returncode) if returncode else None


def final_evaluation(ckpt: str, cli_args: list[str]) -> None:
    """`test` of `ckpt` with the run's configs; the result is appended to the evaluations of
    the checkpoint's version directory (marked `"final_test": true`)."""
    from lightning_drama.cli import main

    cli = main(["test", *cli_args, "--ckpt_path", ckpt])
    result = {**cli.model.last_eval, "final_test": True}
    version = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    with open(os.path.join(version, EVALUATIONS_FILE), "a") as file:
        file.write(json.dumps(result) + "\n")


# -------------------------------------------------------------------------------- the driver


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        help="the fit config of every run (repeatable, as for main.py; default atari.yaml)",
    )
    parser.add_argument(
        "--games",
        default="atari26",
        help="atari26, minatar, or comma-separated env ids (ALE/Pong-v5,MinAtar/Breakout-v1)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 of every game")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use: auto (one started with `ray start`) or ray://host:port; "
        "default: start Ray on this machine",
    )
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs (threads) per run")
    parser.add_argument(
        "--gpus-per-run", type=float, default=0.0, help="GPUs per run (0.5: two share one)"
    )
    parser.add_argument("--out", default="runs/benchmark", help="the benchmark's directory")
    parser.add_argument("--retries", type=int, default=2, help="retries of a failed run")
    parser.add_argument("--label", default=None, help="the name of this benchmark in reports")
    parser.add_argument(
        "--status-every", type=float, default=30.0, help="seconds between status lines"
    )


def _check_arguments(args: argparse.Namespace, overrides: list[str]) -> None:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {args.retries}")
    if not args.cpus_per_run > 0:
        raise ConfigError(f"--cpus-per-run must be > 0, got {args.cpus_per_run}")
    if not args.gpus_per_run >= 0:
        raise ConfigError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
    if not args.status_every > 0:
        raise ConfigError(f"--status-every must be > 0, got {args.status_every}")
    for option in overrides:
        if not option.startswith("--"):
            continue
        key = option.split("=", 1)[0]
        if key in RESERVED or key.startswith("--trainer.logger"):
            raise ConfigError(
                f"{key} is set by the benchmark for each run (games with --games, seeds with "
                "--seeds, run directories under --out, resuming by rerunning the command)"
            )
        if not key.startswith(("--data.", "--model.", "--trainer.")):
            raise ConfigError(
                f"unknown option {key}: the benchmark's own options are listed by --help; "
                "the runs take --data.* / --model.* / --trainer.* overrides"
            )


def _check_fit_arguments(configs: list[str], overrides: list[str]) -> None:
    """Parse the runs' config once before anything starts: a typo fails now, not in 130 runs."""
    command = [sys.executable, "-m", "lightning_drama.cli", "fit"]
    for config in configs:
        command += ["--config", config]
    command += [*overrides, "--data.env_id", "ALE/Pong-v5", "--print_config"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ConfigError("the runs' config does not parse: " + (lines[-1] if lines else ""))


def _record_benchmark(out: str, args: argparse.Namespace, configs, overrides, games) -> None:
    """`OUT/benchmark.json`: what this directory is a benchmark of. A rerun may add games and
    seeds; other configs or overrides would mix two experiments in one report: refused."""
    path = os.path.join(out, BENCHMARK_FILE)
    known = read_json(path)
    configs_abs = [os.path.abspath(c) if os.path.exists(c) else c for c in configs]
    if known and (known.get("config") != configs_abs or known.get("overrides") != overrides):
        raise ConfigError(
            f"{out} holds a benchmark of config {known.get('config')} with overrides "
            f"{known.get('overrides')}; this command has {configs_abs} and {overrides}. Use "
            "another --out for another experiment (report can compare the two directories)"
        )
    record = {
        "config": configs_abs,
        "overrides": overrides,
        "games": list(dict.fromkeys([*(known or {}).get("games", []), *games])),
        "seeds": max(args.seeds, (known or {}).get("seeds", 0)),
        "label": args.label or (known or {}).get("label") or os.path.basename(os.path.abspath(out)),
        "created": (known or {}).get("created", time.strftime("%Y-%m-%d %H:%M:%S")),
    }
    write_json(path, record)


class Board:
    """Counts of runs by state, env steps and the estimated time left, printed as one line.

    The time left is the env steps still to take over the rate at which the runs took them
    since this board first saw each of them (warm-ups and resumed steps do not count)."""

    def __init__(self, runs: list[Run], out=sys.stdout):
        self.runs = runs
        self.out = out
        self.start = time.monotonic()
        self.first_seen: dict[Run, tuple[int, float]] = {}  # env steps, time

    def _steps(self) -> tuple[int, int | None, float]:
        """Env steps done, budgeted (None before any run reported) and taken per second."""
        done, totals, gained, since = 0, {}, 0, time.monotonic()
        for run in self.runs:
            progress = run_progress(run)
            if not progress:
                continue
            done += progress["env_steps"]
            totals[run] = progress["total_env_steps"]
            steps, seen = self.first_seen.setdefault(run, (progress["env_steps"], time.monotonic()))
            gained += progress["env_steps"] - steps
            since = min(since, seen)
        if not totals:
            return done, None, 0.0
        usual = max(set(totals.values()), key=list(totals.values()).count)  # not started: this
        budget = sum(totals.get(run, usual) for run in self.runs)
        elapsed = time.monotonic() - since
        return done, budget, gained / elapsed if elapsed > 0 else 0.0

    def line(self, states: dict[Run, str]) -> str:
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        order = ("done", "running", "queued", "failed", "interrupted")
        parts = [f"{counts.get(s, 0)} {s}" for s in order if counts.get(s) or s in order[:3]]
        done, budget, rate = self._steps()
        text = f"[{_clock(time.monotonic() - self.start)}] {len(self.runs)} runs: "
        text += ", ".join(parts)
        if budget:
            text += f" | env steps {done:,}/{budget:,} ({100 * done / budget:.1f} %)"
            if rate > 0 and done < budget:
                text += f" | {rate:.1f} steps/s, ETA {_clock((budget - done) / rate)}"
        return text

    def show(self, states: dict[Run, str]) -> None:
        print(self.line(states), file=self.out, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def summary_table(runs: list[Run]) -> str:
    """One row per run: state, env steps, attempts, final return, error."""
    rows = [f"{'run':<40} {'state':<11} {'env steps':>11} {'tries':>5} {'return':>9}  error"]
    for run in runs:
        status = read_status(run)
        progress = run_progress(run) or {}
        records = evaluations(run)
        final = f"{records[-1]['return_mean']:.1f}" if records else "-"
        steps = f"{progress['env_steps']:,}" if progress else "-"
        error = (status.get("error") or "").splitlines()[:1] if status["state"] != "done" else []
        error = error[0][:80] if error else ""
        rows.append(
            f"{run.label:<40} {status['state']:<11} {steps:>11} {status.get('attempts', 0):>5} "
            f"{final:>9}  {error}"
        )
    return "\n".join(rows)


def run_benchmark(args: argparse.Namespace, overrides: list[str]) -> int:
    """The driver: submit every unfinished run as a Ray task, retry failures, show progress.
    Returns the exit code (0: every run done, 1: some failed, 130: stopped by Ctrl-C)."""
    import ray

    configs = args.config or ["atari.yaml"]
    _check_arguments(args, overrides)
    games = parse_games(args.games)
    out = os.path.abspath(args.out)
    from lightning_drama.cli import resolve_config_paths

    # Absolute: Ray's workers on other nodes do not start in this directory.
    configs = [os.path.abspath(resolve_config_paths(["--config", c])[1]) for c in configs]
    _check_fit_arguments(configs, overrides)
    os.makedirs(out, exist_ok=True)
    _record_benchmark(out, args, configs, overrides, games)
    with contextlib.suppress(FileNotFoundError):  # the last invocation's Ctrl-C
        os.remove(os.path.join(out, STOP_FILE))
    runs = plan(out, games, args.seeds)

    todo = []
    for run in runs:
        status = read_status(run)
        if status["state"] == "done":
            continue
        # A rerun gives failed runs a fresh set of retries (the cause may have been fixed).
        todo.append(run)
    print(
        f"benchmark {out}: {len(games)} games x {args.seeds} seeds = {len(runs)} runs, "
        f"{len(runs) - len(todo)} done already, {len(todo)} to run",
        flush=True,
    )
    if not todo:
        print(summary_table(runs))
        return 0

    if args.address is None:
        ray.init(include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    else:
        try:
            ray.init(address=args.address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(
                f"--address {args.address}: no Ray cluster there ({error}); start one with "
                "`ray start --head`, or leave --address out to run on this machine"
            ) from None
    try:
        return _drive(ray, args, out, runs, todo, configs, overrides)
    finally:
        ray.shutdown()


def _drive(ray, args, out, runs, todo, configs, overrides) -> int:
    resources = ray.cluster_resources()
    if args.cpus_per_run > resources.get("CPU", 0) or args.gpus_per_run > resources.get("GPU", 0):
        raise ConfigError(
            f"a run asks for {args.cpus_per_run} CPUs and {args.gpus_per_run} GPUs, the Ray "
            f"cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} GPUs"
        )
    task = ray.remote(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run, max_retries=0)(
        attempt_run
    )
    threads = max(1, int(args.cpus_per_run))
    states = {run: read_status(run)["state"] for run in runs}
    tries: dict[Run, int] = {}
    pending: dict[Any, Run] = {}

    def submit(run: Run) -> None:
        attempts = read_status(run).get("attempts", 0) + 1  # over every invocation
        tries[run] = tries.get(run, 0) + 1  # in this one
        update_status(run, state="queued")
        states[run] = "queued"
        pending[task.remote(run, configs, overrides, attempts, threads)] = run

    for run in todo:
        submit(run)
    board = Board(runs)
    board.show(states)
    last_line = time.monotonic()
    failed = False
    try:
        with _ctrl_c_as_a_flag() as stop_requested:
            while pending:
                if stop_requested():
                    raise KeyboardInterrupt
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker died, out of memory, ...
                        lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
                        result = {"state": "failed", "returncode": None, "error": lines[-1][:500]}
                        # The pid stays: the next attempt waits for that fit to end.
                        update_status(run, state="failed", error=result["error"])
                    if result["state"] == "interrupted":  # someone wrote OUT/stop
                        states[run] = "interrupted"
                        print(f"stopped: {run.label}", flush=True)
                        continue
                    if result["state"] == "done":
                        states[run] = "done"
                        records = evaluations(run)
                        score = (
                            f", final return {records[-1]['return_mean']:.2f}" if records else ""
                        )
                        print(f"done: {run.label}{score}", flush=True)
                        continue
                    code = result.get("returncode")
                    retry = code not in NO_RETRY_CODES and tries[run] <= args.retries
                    print(
                        f"failed: {run.label} (try {tries[run]} of {args.retries + 1}): "
                        f"{result['error']}" + ("; retrying" if retry else ""),
                        flush=True,
                    )
                    if retry:
                        submit(run)
                    else:
                        states[run] = "failed"
                        failed = True
                for run in pending.values():
                    states[run] = read_status(run)["state"]
                if time.monotonic() - last_line >= args.status_every:
                    board.show(states)
                    last_line = time.monotonic()
    except KeyboardInterrupt:
        _stop(ray, out, pending)
        print(summary_table(runs))
        print(
            "stopped: rerun the same command to resume (finished runs are kept, the others "
            "resume from their last.ckpt)",
            flush=True,
        )
        return 130
    board.show(states)
    print(summary_table(runs))
    print(f"report: python -m lightning_drama.benchmark report {out}", flush=True)
    return 1 if failed else 0


@contextlib.contextmanager
def _ctrl_c_as_a_flag():
    """Within: the first SIGINT only sets a flag, which the driver's loop polls (once a second).
    A KeyboardInterrupt raised inside a Ray call can be lost there (seen in CI: Ctrl-C while the
    loop waited on Ray, and the benchmark ran on to the end); a flag cannot. A second SIGINT raises
    at once. Where SIGINT is not Python's default handler (ignored in a background job), it is left
    alone."""
    requested = []
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(True)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop(ray, out: str, pending: dict[Any, Run]) -> None:
    """Ctrl-C: every running fit writes last.ckpt and stops (the stop file tells their tasks);
    queued runs are cancelled. A second Ctrl-C stops at once."""
    print(
        f"\nCtrl-C: stopping {len(pending)} runs, each running one writes its last.ckpt first "
        "(press Ctrl-C again to stop at once)",
        flush=True,
    )
    with open(os.path.join(out, STOP_FILE), "w") as file:
        file.write("stopped by Ctrl-C\n")
    for ref, run in pending.items():
        if read_status(run)["state"] == "queued":
            ray.cancel(ref, force=False)
    try:
        ray.wait(list(pending), num_returns=len(pending), timeout=STOP_SECONDS + 30)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
    for run in pending.values():
        if read_status(run)["state"] in ("queued", "running"):
            update_status(run, state="interrupted", pid=None)


def main_run(args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        return run_benchmark(args, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # internal: a finished run's final evaluation (see attempt_run)
    if sys.argv[1:2] != ["final-evaluation"]:
        raise SystemExit("usage: python -m lightning_drama.benchmark run ...")
    final_evaluation(sys.argv[2], sys.argv[3:])
