"""DM-H against its baselines on a CPU budget (not a test): the in-context learning curves on
held-out tasks and the online time per episode, next to the paper's numbers.

    python -m benchmarks.dmh --envs darkroom --algorithms dmh ad dm --minutes 10
    python -m benchmarks.dmh --envs passive_tmaze --algorithms dmh dt --length 100 --minutes 5

For each env it makes the learning histories once (`lightning_drama.dmh.data.generate`, into
``--data-dir/<env>``; reused when present), then for each algorithm trains with
``configs/dmh/<config>.yaml`` (``--config``; default: the env's own config, else darkroom.yaml)
for ``--minutes`` of wall time (Lightning's ``max_time``; the number of steps reached is
reported), and plays the held-out tasks in context (``eval_episodes`` consecutive episodes per
task, one memory carried across them). It writes ``<out>/results.json`` after every run (so an
interrupted benchmark keeps what it measured) and prints a Markdown table: first / last / mean
return over the test episodes, the paper's final-episode number, steps trained, and the seconds
per test episode (the online-time claim, DM-H vs AD).

AD and DM train on contexts in history order (``--data.order history``, as AD does); DM-H and DT
on contexts sorted by return (DM-H's). DT sees single episodes (``episodes_per_context`` 1).
The baselines read no blocks, so they run with ``--data.episode_blocks false``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lightning_drama.dmh.__main__ import main as dmh_main  # noqa: E402
from lightning_drama.dmh.data import generate  # noqa: E402
from lightning_drama.dmh.module import ALGORITHM_NAMES, ALGORITHMS  # noqa: E402

# The paper's final-episode returns (DM-H and AD(Transformer); 20 test episodes) and T-maze
# success (DM-H 1.0 up to k = 20,000).
PAPER = {
    "darkroom": {"dmh": 14.0, "ad": 13.0},
    "darkroom_hard": {"dmh": 0.93, "ad": 0.4},
    "key_to_door": {"dmh": 2.0, "ad": 0.15},
    "large_darkroom": {"dmh": 15.0, "ad": 1.0},
    "large_darkroom_hard": {"dmh": 0.87, "ad": 0.2},
    "large_key_to_door": {"dmh": 1.55, "ad": 0.2},
    "passive_tmaze": {"dmh": 1.0},
}
# Per-algorithm overrides of the env's config (the same data, evaluation and budget).
ALGORITHM_ARGS = {
    "dmh": [],
    "ad": ["--model.algorithm", "ad", "--data.order", "history",
           "--data.episode_blocks", "false"],
    "dm": ["--model.algorithm", "dm", "--data.order", "history",
           "--data.episode_blocks", "false"],
    "dt": ["--model.algorithm", "dt", "--data.episodes_per_context", "1",
           "--data.min_episodes_per_context", "null", "--data.episode_blocks", "false"],
}  # fmt: skip


def config_for(env: str, given: str | None) -> Path:
    if given:
        return Path(given)
    own = ROOT / "configs" / "dmh" / f"{env}.yaml"
    return own if own.is_file() else ROOT / "configs" / "dmh" / "darkroom.yaml"


def read_curve(run: Path) -> tuple[list[float], float | None]:
    """(mean return per test episode, seconds per episode) of a finished test run."""
    rows = list(csv.DictReader((run / "in_context.csv").open()))
    curve = [float(r["mean_return"]) for r in rows]
    seconds = None
    metrics = run / "metrics.csv"
    if metrics.is_file():
        for row in csv.DictReader(metrics.open()):
            if row.get("test/seconds_per_episode"):
                seconds = float(row["test/seconds_per_episode"])
    return curve, seconds


def run_one(
    env: str, algorithm: str, args: argparse.Namespace, data: Path, out: Path
) -> dict[str, object]:
    """Train ``algorithm`` on ``env`` for the budget, test it, return its row."""
    name = f"{env}_{algorithm}"
    overlay = out / f"{name}.yaml"  # one CSV log per run, no periodic checkpoints
    overlay.write_text(
        yaml.safe_dump({"trainer": {
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(out), "name": name}}],
            "callbacks": [], "enable_checkpointing": False, "enable_progress_bar": False,
        }})
    )  # fmt: skip
    common = [
        "--config", str(config_for(env, args.config)), "--config", str(overlay),
        "--data.data_dir", str(data), "--model.eval_episodes", str(args.eval_episodes),
        *ALGORITHM_ARGS[algorithm], *args.extra,
    ]  # fmt: skip
    fields = args.model_fields.get(algorithm)
    if fields is not None or algorithm != "dmh":  # the configs' model fields are DM-H's
        common += ["--model.model", fields or "{}"]
    started = time.perf_counter()
    minutes, seconds = divmod(round(args.minutes * 60), 60)
    fit = dmh_main(["fit", *common, "--trainer.max_steps", "-1",
                    "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}"])  # fmt: skip
    fit_seconds = time.perf_counter() - started
    checkpoint = Path(fit.trainer.log_dir) / "final.ckpt"
    fit.trainer.save_checkpoint(checkpoint)
    steps = fit.trainer.global_step
    test = dmh_main(["test", *common, "--ckpt_path", str(checkpoint)])
    curve, seconds = read_curve(Path(test.trainer.log_dir))
    return {
        "env": env,
        "algorithm": algorithm,
        "steps": steps,
        "fit_minutes": round(fit_seconds / 60, 2),
        "curve": curve,
        "first": curve[0],
        "last": curve[-1],
        "mean": sum(curve) / len(curve),
        "seconds_per_episode": seconds,
        "paper": PAPER.get(env, {}).get(algorithm),
    }


def table(results: list[dict[str, object]]) -> str:
    lines = [
        "| env | algorithm | steps (budget) | first | last | mean | paper (last) | s / episode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = "–" if r["paper"] is None else f"{r['paper']:g}"
        sec = "–" if r["seconds_per_episode"] is None else f"{r['seconds_per_episode']:.3f}"
        lines.append(
            f"| {r['env']} | {ALGORITHM_NAMES[r['algorithm']]} | {r['steps']} "
            f"({r['fit_minutes']} min) | {r['first']:.2f} | {r['last']:.2f} | {r['mean']:.2f} | "
            f"{paper} | {sec} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["darkroom"])
    parser.add_argument("--algorithms", nargs="+", default=["dmh", "ad", "dm"], choices=ALGORITHMS)
    parser.add_argument("--minutes", type=float, default=10, help="training wall time per run")
    parser.add_argument("--tasks", type=int, default=60, help="training tasks (histories)")
    parser.add_argument("--episodes", type=int, default=200, help="episodes per history")
    parser.add_argument("--length", type=int, help="T-maze corridor length k")
    parser.add_argument("--algorithm", help="the histories' learner (default: the env's)")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config", help="a configs/dmh yaml for every env (default: per env)")
    parser.add_argument("--data-dir", default="data/dmh/benchmark")
    parser.add_argument("--out", default="runs/dmh_benchmark")
    parser.add_argument(
        "--model-fields", nargs="*", default=[], metavar="ALGORITHM=JSON",
        help="the network's config fields of an algorithm, e.g. ad='{\"d_model\": 64}' "
        "(default: the config's for dmh, the class defaults for the baselines)",
    )  # fmt: skip
    parser.add_argument("extra", nargs="*", help="more CLI overrides, after --")
    args = parser.parse_args(argv)
    try:
        args.model_fields = dict(item.split("=", 1) for item in args.model_fields)
        for value in args.model_fields.values():
            json.loads(value)
    except ValueError as error:
        parser.error(f"--model-fields: expected ALGORITHM=JSON items ({error})")
    if not 1 / 60 <= args.minutes < 60:
        parser.error("--minutes must be at least 1 s and below 60 min")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, object]] = []
    record = {"machine": platform.processor() or platform.machine(), "threads":
              torch.get_num_threads(), "torch": torch.__version__, "args": vars(args),
              "results": results}  # fmt: skip
    for env in args.envs:
        env_kwargs = {"length": args.length} if args.length and "tmaze" in env else {}
        suffix = f"_k{args.length}" if env_kwargs else ""
        data = Path(args.data_dir) / f"{env}{suffix}"
        if not data.is_dir():
            tasks = 1 if env == "passive_tmaze" else args.tasks
            generate(env, tasks, args.episodes, data, seed=0, algorithm=args.algorithm,
                     env_kwargs=env_kwargs)  # fmt: skip
        extra_env = ["--model.env", env]
        if env_kwargs:
            extra_env += ["--model.env_kwargs", json.dumps(env_kwargs)]
        for algorithm in args.algorithms:
            args.extra = [*extra_env, *args.extra]
            results.append(run_one(env, algorithm, args, data, out))
            args.extra = args.extra[len(extra_env) :]
            (out / "results.json").write_text(json.dumps(record, indent=1))
            print(table(results), flush=True)
    print(f"\n{table(results)}\n(results: {out / 'results.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
