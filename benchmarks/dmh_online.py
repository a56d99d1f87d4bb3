"""Online testing time of DM-H against AD (not a test): seconds per test episode as the in-context
history grows, the DM-H paper's efficiency claim (9-28x faster online testing than AD).

    python -m benchmarks.dmh_online --envs darkroom large_darkroom --episodes 20

Untrained networks at the paper's sizes (the time does not depend on the weights), one task,
``--episodes`` consecutive episodes with the memory carried, 1 CPU thread by default. DM-H's
Mamba reads 4 tokens per block of c steps and its GPT re-reads the current block (at most
3 c - 1 tokens) at every step: constant work per step. AD reads one token per step through the
Transformer's key/value cache, a fixed buffer as long as its window (set to the whole test
history), so its work per step is that window's from the first step on. "AD, no cache"
re-reads the whole history at every step, as a Transformer without a cache must (measured on
``--no-cache-steps`` steps at half the test history, scaled to an episode).
The ratios are AD / DM-H for the same episode index.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lightning_drama.dmh.baselines import AlgorithmDistillation, play_ad_in_context  # noqa: E402
from lightning_drama.dmh.envs import env_settings, make_dmh_env, task_at  # noqa: E402
from lightning_drama.dmh.model import DecisionMambaHybrid  # noqa: E402
from lightning_drama.dmh.module import play_in_context  # noqa: E402


def episode_length(env: str) -> int:
    return int(env_settings(env)["episode_length"])


def no_cache_seconds_per_step(model: AlgorithmDistillation, history: int, steps: int) -> float:
    """Mean time of one AD step that re-reads a history of ``history`` steps in full."""
    states = torch.randint(0, 9, (1, history, 2)).float()
    batch = {
        "states": states, "actions": torch.zeros(1, history, dtype=torch.long),
        "rewards": torch.zeros(1, history), "dones": torch.zeros(1, history),
        "loss_mask": torch.ones(1, history),
    }  # fmt: skip
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            model(batch)
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["darkroom", "large_darkroom"])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cache-steps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        "| env | history (steps) | DM-H s / episode | AD (cache) s / episode | ratio "
        "| AD (no cache) s / episode | ratio |\n|---|---|---|---|---|---|---|"
    )
    for env in args.envs:
        length = episode_length(env)
        total = length * args.episodes
        task = [task_at(env, 0)]
        torch.manual_seed(0)
        dmh = DecisionMambaHybrid(state_dim=2, num_actions=5, c=20 if "large" in env else 5,
                                  max_timestep=length).eval()  # fmt: skip
        ad = AlgorithmDistillation(state_dim=2, num_actions=5, max_length=total + 1).eval()
        make_dmh_env(env, task[0]).close()
        _, dmh_seconds = play_in_context(dmh, env, task, args.episodes, float(length))
        _, ad_seconds = play_ad_in_context(ad, env, task, args.episodes, float(length))
        mid = total // 2
        no_cache = no_cache_seconds_per_step(ad, mid, args.no_cache_steps) * length
        d, a = dmh_seconds[0], ad_seconds[0]
        for e in sorted({0, args.episodes // 2, args.episodes - 1}):
            history = f"{e * length}-{(e + 1) * length}"
            row = f"| {env} | {history} | {d[e]:.3f} | {a[e]:.3f} | {a[e] / d[e]:.2f} |"
            if e == args.episodes // 2:
                row += f" {no_cache:.3f} | {no_cache / d[e]:.1f} |"
            else:
                row += " – | – |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
