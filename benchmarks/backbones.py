"""The four sequence models side by side (not a test): prints tables of times measured in one run.

    python benchmarks/backbones.py            # full tables (about 10 minutes on 2 CPU cores)
    python benchmarks/backbones.py --quick    # L up to 1024, fewer rounds
    python benchmarks/backbones.py --tiny     # seconds: d_model 64, for the tests

Each backbone at Drama XS size (d_model 512, 2 layers; Mamba-2 and Mamba-1 with d_state 16, the
Transformer with 8 heads), all without dropout so that the same work is timed:
1. forward + backward at the world model's training shape (batch 16, L = 128);
2. forward + backward of one sequence (batch 1) for L = 128 ... 4096;
3. `step` per token (batch 64) after a context of 16, 128 and 1024 steps. The Transformer's
   cache is sized to the context (max_length = context + 1), since its step costs O(max_length).
Every time is the best of interleaved rounds (`--rounds`), so machine noise hits all alike.
Targets (issue #17): Mamba-1's scan linear in L (t(2048) / t(256) <= 10) and within 3x of
Mamba-2 at L = 128; the Transformer's step no worse than linear in the cached length.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lightning_drama.ssm.backbones import BACKBONE_NAMES, BACKBONES, build_backbone  # noqa: E402


def make(kind: str, d_model: int, max_length: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    heads = 8 if d_model >= 64 else 2
    return build_backbone(kind, d_model, 2, num_heads=heads, max_length=max_length, dropout=0.0)


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocations, lazy inits
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        y, _ = model(x)
        y.square().mean().backward()

    return run


def bench_training(d_model: int, batch: int, length: int, rounds: int) -> dict[str, float]:
    models = {kind: make(kind, d_model, max_length=max(128, length)) for kind in BACKBONES}
    x = torch.randn(batch, length, d_model)
    best = dict.fromkeys(BACKBONES, float("inf"))
    for _ in range(rounds):
        for kind, model in models.items():
            best[kind] = min(best[kind], best_time(fwd_bwd(model, x), 1))
    return best


def bench_lengths(d_model: int, lengths: list[int], rounds: int) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {kind: {} for kind in BACKBONES}
    for length in lengths:
        x = torch.randn(1, length, d_model)
        for kind in BACKBONES:
            model = make(kind, d_model, max_length=max(128, length))
            repeats = rounds if length <= 1024 else 1
            out[kind][length] = best_time(fwd_bwd(model, x), repeats)
            del model
        print(f"  measured L={length}", file=sys.stderr, flush=True)
    return out


@torch.no_grad()
def bench_step(
    d_model: int, contexts: list[int], batch: int, steps: int, rounds: int
) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {kind: {} for kind in BACKBONES}
    for kind in BACKBONES:
        for ctx in contexts:
            model = make(kind, d_model, max_length=ctx + 1).eval()
            _, state = model(torch.randn(batch, ctx, d_model), model.initial_state(batch))
            x = torch.randn(batch, d_model)

            def run(model=model, state=state, x=x) -> None:
                for _ in range(steps):
                    _, state = model.step(x, state)

            out[kind][ctx] = best_time(run, rounds) / steps
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="L up to 1024, 2 rounds")
    parser.add_argument("--tiny", action="store_true", help="d_model 64, L up to 64 (tests)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    d_model, rounds = (64, 1) if args.tiny else (512, 2 if args.quick else args.rounds)
    lengths = [128, 256, 512, 1024, 2048, 4096]
    if args.quick:
        lengths = lengths[:4]
    if args.tiny:
        lengths = [32, 64]
    contexts = [4, 8] if args.tiny else [16, 128, 1024]
    batch, train_length = (2, 32) if args.tiny else (16, 128)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_model {d_model}, "
        "2 layers, fp32, no dropout"
    )
    names = [BACKBONE_NAMES[kind] for kind in BACKBONES]

    train = bench_training(d_model, batch, train_length, rounds)
    print(f"\n1. Forward + backward at the training shape (batch {batch}, L = {train_length})\n")
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    print("| ms | " + " | ".join(f"{train[k] * 1e3:.1f}" for k in BACKBONES) + " |")
    print(
        "| vs Mamba-2 | " + " | ".join(f"{train[k] / train['mamba2']:.2f}x" for k in BACKBONES)
        + " |"
    )  # fmt: skip

    per_length = bench_lengths(d_model, lengths, rounds)
    print("\n2. Forward + backward of one sequence (batch 1), ms\n")
    print("| L | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for length in lengths:
        print(
            f"| {length} | "
            + " | ".join(f"{per_length[k][length] * 1e3:.1f}" for k in BACKBONES)
            + " |"
        )
    short, long = (256, 2048) if 2048 in lengths else (lengths[0], lengths[-1])
    print(f"\nt({long}) / t({short}) (linear would be {long // short}):")
    for kind in BACKBONES:
        print(f"  {BACKBONE_NAMES[kind]}: {per_length[kind][long] / per_length[kind][short]:.2f}")

    step = bench_step(d_model, contexts, batch=8 if args.tiny else 64, steps=8, rounds=rounds)
    print("\n3. step per token (batch 64) after a context, ms\n")
    print("| context | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for ctx in contexts:
        print(f"| {ctx} | " + " | ".join(f"{step[k][ctx] * 1e3:.2f}" for k in BACKBONES) + " |")

    growth_m1 = per_length["mamba"][long] / per_length["mamba"][short]
    vs_m2 = train["mamba"] / train["mamba2"]
    c0, c1 = contexts[1], contexts[-1]
    growth_step = step["transformer"][c1] / step["transformer"][c0]
    print("\nTargets:")
    bound = 0.625 * long / short  # 10 for 2048 / 256
    print(f"  Mamba-1 t({long}) / t({short}) = {growth_m1:.2f} (target <= {bound:.0f}): "
          f"{'met' if growth_m1 <= bound else 'NOT met'}")  # fmt: skip
    print(f"  Mamba-1 / Mamba-2 at L = {train_length}, batch {batch} = {vs_m2:.2f}x "
          "(target <= 3x): "
          f"{'met' if vs_m2 <= 3 else 'NOT met'}")  # fmt: skip
    print(f"  Transformer step({c1}) / step({c0}) = {growth_step:.2f} (linear: {c1 / c0:.0f}): "
          f"{'met' if growth_step <= c1 / c0 else 'NOT met'}")  # fmt: skip
    return {"train": train, "lengths": per_length, "step": step}


if __name__ == "__main__":
    main()
