"""Data-path benchmark: collector overhead over raw env stepping, DFS sampling time, replay memory.

    python benchmarks/data.py [--env ALE/Pong-v5] [--steps 3000] [--capacity 100000]

Targets (issue 4): collector overhead <= 10 % of raw stepping; one 16 x 128 window batch plus
1024 x 8 imagination starts from a full 100k buffer in <= 20 ms.
"""

from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import gymnasium as gym
import numpy as np

from lightning_drama.data import Collector, ReplayBuffer, ReplayStream
from lightning_drama.envs import make_env


def stepping_seconds(env_id: str, steps: int, rounds: int) -> tuple[float, float]:
    """Median seconds per step of the bare env loop and of the collector, in alternating rounds.

    Both step the same preprocessed env with uniform random actions; alternating short rounds and
    taking medians keeps other load on the machine from favouring either side.
    """
    env = make_env(env_id)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = env.action_space.n
    collector = Collector([partial(make_env, env_id)], ReplayBuffer(steps + 1), seed=0)
    collector.collect(1)  # first reset outside the timing, as for the bare loop
    per_round = steps // rounds
    raw, collected = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(n)))
            if terminated or truncated:
                env.reset()
        raw.append((time.perf_counter() - start) / per_round)
        start = time.perf_counter()
        collector.collect(per_round)
        collected.append((time.perf_counter() - start) / per_round)
    env.close()
    collector.close()
    return float(np.median(raw)), float(np.median(collected))


class NullEnv(gym.Env):
    """Returns a fixed frame instantly: timing the collector on it leaves only its own work."""

    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def reset(self, *, seed=None, options=None):
        return np.zeros((64, 64, 3), np.uint8), {}

    def step(self, action):
        return np.zeros((64, 64, 3), np.uint8), 0.0, False, False, {"train_terminated": False}


def collector_own_seconds(steps: int) -> float:
    """Seconds per step the collector spends outside the env (policy, replay write, counters)."""
    collector = Collector([NullEnv], ReplayBuffer(steps + 1), seed=0)
    collector.collect(1)
    start = time.perf_counter()
    collector.collect(steps)
    return (time.perf_counter() - start) / steps


def full_replay(capacity: int, sampling: str) -> ReplayBuffer:
    replay = ReplayBuffer(capacity, sampling=sampling, seed=0)
    rng = np.random.default_rng(0)
    # write real bytes: untouched zero pages would make the gathers unrealistically cheap
    for lo in range(0, capacity, 10_000):
        hi = min(lo + 10_000, capacity)
        replay.data["obs"][lo:hi] = rng.integers(0, 256, (hi - lo, 64, 64, 3), np.uint8)
    replay.data["action"][:] = rng.integers(0, 6, capacity)
    replay.size[:] = capacity
    replay.pos[:] = capacity // 3  # a wrapped ring
    return replay


def sample_ms(replay: ReplayBuffer, repeats: int) -> tuple[float, float, float]:
    """Median ms of (windows, starts, both through the DataModule's stream)."""
    stream = ReplayStream(replay, 16, 128, 1024, 8)
    windows, starts, both = [], [], []
    stream.sample()  # warm-up
    for _ in range(repeats):
        t0 = time.perf_counter()
        replay.sample(16, 128)
        t1 = time.perf_counter()
        replay.sample_starts(1024, 8)
        t2 = time.perf_counter()
        stream.sample()
        t3 = time.perf_counter()
        windows.append(t1 - t0)
        starts.append(t2 - t1)
        both.append(t3 - t2)
    return tuple(1e3 * float(np.median(x)) for x in (windows, starts, both))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--steps", type=int, default=3000)  # per side, in 6 rounds
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    raw_s, collector_s = stepping_seconds(args.env, args.steps, rounds=6)
    own_s = collector_own_seconds(args.steps)
    rows = [
        ("raw env steps/s", f"{1 / raw_s:,.0f}", "bare loop, same preprocessing"),
        ("collector steps/s (random policy)", f"{1 / collector_s:,.0f}", ""),
        (
            "collector overhead (steps/s ratio)",
            f"{100 * (collector_s / raw_s - 1):.1f} %",
            "<= 10 %",
        ),
        ("collector own time per step", f"{1e6 * own_s:.0f} us", "on an instant env"),
        ("collector own time / raw step", f"{100 * own_s / raw_s:.1f} %", "<= 10 %"),
    ]
    for sampling in ("dfs", "uniform"):
        replay = full_replay(args.capacity, sampling)
        windows, starts, both = sample_ms(replay, args.repeats)
        rows += [
            (f"{sampling}: 16 x 128 windows", f"{windows:.1f} ms", ""),
            (f"{sampling}: 1024 x 8 starts", f"{starts:.1f} ms", ""),
            (f"{sampling}: windows + starts batch", f"{both:.1f} ms", "target <= 20 ms"),
        ]
        nbytes = replay.nbytes
        del replay
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    rows += [
        (f"replay memory ({args.capacity:,} rows)", f"{nbytes / 2**30:.2f} GiB", ""),
        ("replay bytes per row", f"{nbytes / args.capacity:,.0f} B", "12,288 B frame"),
        ("peak RSS of this process", f"{peak_rss_gib:.2f} GiB", "one 100k buffer at a time"),
    ]
    print(f"env {args.env}, {args.steps} steps per loop, median of {args.repeats} samples")
    width = max(len(name) for name, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    main()
