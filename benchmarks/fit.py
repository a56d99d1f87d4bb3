"""Training-speed benchmark (not a test): env steps per second of a real run with atari.yaml.

    python benchmarks/fit.py                      # fp32 and bf16-mixed, 3 timed updates each
    python benchmarks/fit.py --updates 5 --precisions 32-true

Runs the real Trainer + DramaModule + DramaDataModule with the paper's settings from
configs/atari.yaml (Pong, batch 16 x 128, 1024 x (8 + 16) imagination), times every update after
the first (the collector's env step included), counts the FLOPs of one full update with
FlopCounterMode, and prints seconds per env step, world-model frames per second, the achieved
FLOP/s and the projected hours for Atari100k (100k env steps, one update each).

With `--dreamer-python PATH` (the python of a venv with sheeprl 0.8.4, see
benchmarks/dreamerv3_sheeprl.py for the install), the same run then measures sheeprl's DreamerV3
XS on Pong (replay ratio 1, batch 16 x 64, horizon 15) one gradient step at a time, in each
precision, with the same thread count and malloc setting, and prints both side by side with the
ratios of time per env step and of achieved FLOP/s:

    python benchmarks/fit.py --dreamer-python /work/venv-sheeprl/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.train_step import cpu_description  # noqa: E402
from lightning_drama.allocator import keep_freed_memory  # noqa: E402
from lightning_drama.data import DramaDataModule  # noqa: E402
from lightning_drama.module import DramaModule  # noqa: E402


class UpdateTimer(pl.Callback):
    """Wall time of each update, env step included (on_train_batch_start runs the collector)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def load_config() -> dict:
    with open(ROOT / "configs" / "atari.yaml") as f:
        return yaml.safe_load(f)


def make(config: dict, updates: int) -> tuple[DramaModule, DramaDataModule]:
    data = dict(config["data"])
    data.update(total_env_steps=data["warmup_steps"] + updates, replay_dir="memory")
    datamodule = DramaDataModule(**data)
    model = DramaModule(datamodule.num_actions, **config["model"])
    return model, datamodule


def measure(precision: str, updates: int) -> dict:
    config = load_config()
    pl.seed_everything(0)
    model, datamodule = make(config, updates + 1)  # the first update is warm-up
    timer = UpdateTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="cpu",
            precision=precision,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(model, datamodule=datamodule)
    seconds = statistics.median(timer.times[1:])
    flops = count_update_flops(model, datamodule, precision)
    batch = config["data"]["batch_size"] * config["data"]["seq_len"]
    return {
        "precision": precision,
        "s_per_update": seconds,
        "frames_per_s": batch / seconds,
        "flops": flops,
        "hours_100k": seconds * 100_000 / 3600,
    }


def count_update_flops(model: DramaModule, datamodule: DramaDataModule, precision: str) -> float:
    """FLOPs of one world-model update + imagination + actor-critic update (fwd and bwd)."""
    batch = next(iter(datamodule.train_dataloader())).sample()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with FlopCounterMode(display=False) as counter, autocast:
        loss, _ = model.world_model.loss(batch)
        loss.backward()
        context = {k: v for k, v in batch.items() if k.startswith("start_")}
        imagined = model.world_model.imagine(
            context,
            model.actor_critic.act,
            model.hparams.imagine_horizon,
            reward_timing=model.actor_critic.reward_timing,
        )
        ac_loss, _ = model.actor_critic.loss(imagined)
        ac_loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure_dreamer(python: str, precision: str, updates: int) -> dict:
    """sheeprl's DreamerV3 XS gradient step, in its own interpreter (its own dependencies)."""
    command = [python, str(ROOT / "benchmarks" / "dreamerv3_sheeprl.py"), "--precision", precision]
    command += ["--steps", str(updates), "--threads", str(torch.get_num_threads())]
    command += ["--malloc-tuning"]
    print(f"  running {' '.join(command)}", file=sys.stderr, flush=True)
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "precision": precision,
        "s_per_update": result["seconds_per_update"],
        "frames_per_s": result["wm_frames_per_second"],
        "flops": result["flops_per_update"],
        "hours_100k": result["seconds_per_update"] * 100_000 / 3600,
        "params": result["params"]["trained_total"],
    }


def print_table(rows: list[dict], agent: str) -> None:
    for r in rows:
        print(
            f"| {agent} | {r['precision']} | {r['s_per_update']:.2f} | {r['frames_per_s']:.0f} | "
            f"{r['flops'] / 1e9:.0f} | {r['flops'] / r['s_per_update'] / 1e9:.0f} | "
            f"{r['hours_100k']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per precision")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument(
        "--dreamer-python",
        help="python of a venv with sheeprl 0.8.4: also measure its DreamerV3 XS, side by side",
    )
    args = parser.parse_args()
    keep_freed_memory()  # as main.py does
    print(
        f"# {cpu_description()}; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; configs/atari.yaml (Pong)"
    )
    rows = [measure(p, args.updates) for p in args.precisions]
    dreamer = []
    if args.dreamer_python:
        dreamer = [measure_dreamer(args.dreamer_python, p, args.updates) for p in args.precisions]
    print(
        "\n| agent | precision | s per env step (= update) | world-model frames/s "
        "| GFLOP per update | achieved GFLOP/s | projected Atari100k hours |"
    )
    print("|---|---|---|---|---|---|---|")
    print_table(rows, "Drama XS (ours)")
    print_table(dreamer, "DreamerV3 XS (sheeprl 0.8.4)")
    if len(rows) > 1:
        print(
            f"\nDrama {rows[0]['precision']} / {rows[1]['precision']} time ratio: "
            f"{rows[0]['s_per_update'] / rows[1]['s_per_update']:.2f}"
        )
    for ours, theirs in zip(rows, dreamer, strict=False):
        flops_ratio = (ours["flops"] / ours["s_per_update"]) / (
            theirs["flops"] / theirs["s_per_update"]
        )
        print(
            f"{ours['precision']}: Drama / DreamerV3 achieved FLOP/s = {flops_ratio:.2f} "
            f"(target >= 1); time per env step Drama / DreamerV3 = "
            f"{ours['s_per_update'] / theirs['s_per_update']:.2f}; FLOPs per update "
            f"{ours['flops'] / theirs['flops']:.2f}x"
        )


if __name__ == "__main__":
    main()
