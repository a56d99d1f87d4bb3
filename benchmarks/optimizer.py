"""LaProp's step, foreach (one kernel per operation and group) against the per-tensor loop, on
the parameters of the paper's world model and actor-critic (configs/atari.yaml sizes).

    python benchmarks/optimizer.py [--steps 20] [--device cpu]

Prints ms per step of each, measured alternately in one run, and their ratio; with the skip flag
set (the sync-free path that masks every change) as a third row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lightning_drama.module import DramaModule  # noqa: E402
from lightning_drama.optim import LaProp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = DramaModule(6).to(device)  # the paper's sizes (Drama XS)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimisers = {
        "per-tensor loop": LaProp(params, foreach=False),
        "foreach": LaProp(params),
        "foreach, skip flag set (false)": LaProp(params),
    }
    flag = torch.tensor(False, device=device)
    times: dict[str, list[float]] = {name: [] for name in optimisers}
    for step in range(args.steps + 2):
        for name, opt in optimisers.items():
            if "skip" in name:
                opt.skip_next_step_if(flag)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= 2:  # the first steps allocate the state
                times[name].append(time.perf_counter() - start)
    n = sum(p.numel() for p in params)
    print(f"# {len(params)} tensors, {n / 1e6:.2f} M parameters, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| LaProp step | ms (median) | ratio to the loop |")
    print("|---|---|---|")
    loop = statistics.median(times["per-tensor loop"])
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"| {name} | {ms:.1f} | {statistics.median(values) / loop:.2f} |")


if __name__ == "__main__":
    main()
