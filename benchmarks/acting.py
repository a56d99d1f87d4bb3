"""Time one acting step of the paper-size agent in both acting modes, side by side.

    python benchmarks/acting.py                 # Drama XS, one env, fp32
    python benchmarks/acting.py --envs 10       # ten envs at once (evaluation batches)

`acting=reference` (the default, the reference code's) re-encodes the last 16 frames and re-runs
the sequence model over them at every env step; `acting=posterior` encodes the current frame and
takes one recurrent step. Prints the median time per call of each over `--repeats` calls (after a
warm-up), their ratio, and that time as a share of one training update when `--update-seconds` is
given (e.g. the fp32 update time from benchmarks/fit.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_drama.agent import ActorCritic  # noqa: E402
from lightning_drama.policy import make_policy  # noqa: E402
from lightning_drama.world_model import WorldModel  # noqa: E402


def time_policy(policy, envs: int, repeats: int, image_size: int = 64) -> list[float]:
    """Seconds per call of `policy` over a running episode (the window full from the start)."""
    obs = torch.randint(0, 256, (envs, image_size, image_size, 3), dtype=torch.uint8)
    state, times = None, []
    for step in range(repeats + 17):  # 17 warm-up calls fill the reference's window
        is_first = torch.full((envs,), step == 0)
        start = time.perf_counter()
        _, state = policy(obs, is_first, state)
        if step >= 17:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", type=int, default=1, help="envs acted for in one call")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--actions", type=int, default=6, help="action count (Pong: 6)")
    parser.add_argument("--context", type=int, default=16, help="the reference's window")
    parser.add_argument("--update-seconds", type=float, default=None)
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for the tests)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    sizes = {}
    if args.tiny:
        sizes = dict(encoder_channels=(4, 8, 8, 8, 8), stoch=8, classes=8, d_model=64, n_layers=1,
                     headdim=16, chunk_size=16, head_hidden=32)  # fmt: skip
    wm = WorldModel(args.actions, **sizes)
    ac = ActorCritic(args.actions, state_dim=wm.state_dim)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.envs} env(s)")
    medians = {}
    for acting in ("reference", "posterior"):
        policy = make_policy(acting, wm, ac, context=args.context)
        medians[acting] = statistics.median(time_policy(policy, args.envs, args.repeats))
    print(
        "| acting | ms per call | ms per env step |"
        + (" of one update |" * bool(args.update_seconds))
    )
    print("|---|---|---|" + ("---|" * bool(args.update_seconds)))
    for acting, seconds in medians.items():
        row = f"| {acting} | {1e3 * seconds:.1f} | {1e3 * seconds / args.envs:.1f} |"
        if args.update_seconds:
            row += f" {100 * seconds / args.envs / args.update_seconds:.2f} % |"
        print(row)
    ratio = medians["reference"] / medians["posterior"]
    print(f"reference / posterior: {ratio:.1f}x")
    return medians


if __name__ == "__main__":
    main()
