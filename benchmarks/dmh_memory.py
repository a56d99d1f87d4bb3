"""How long a passive T-maze fits (not a test): peak memory and time of one training step of DM-H
and of the Decision Transformer on one whole episode of corridor length k (k + 1 steps), batch 1,
the paper's model sizes, on the CPU.

    python -m benchmarks.dmh_memory --lengths 100 1000 3000 10000 20000 --limit-gb 16

The paper's T-maze claim: DM-H reaches success 1.0 up to k = 20,000, where DT runs out of memory.
DT must hold a whole episode in its window (3 (k + 1) tokens, attention memory quadratic in k);
DM-H's Mamba reads 4 tokens per block of c = 5 steps (linear in k) and its GPT one block at a
time. Each (model, k) runs in a fresh process whose address space is capped at ``--limit-gb``
(``RLIMIT_AS``), so running out of memory is a clean failure there, reported as "out of memory",
instead of the system's OOM killer. The peak is the process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_step(algorithm: str, length: int) -> dict[str, float]:
    """One forward + backward pass on a random episode of the T-maze of corridor ``length``."""
    import torch

    sys.path.insert(0, str(ROOT))
    from lightning_drama.dmh.baselines import DecisionTransformer
    from lightning_drama.dmh.model import DecisionMambaHybrid

    torch.manual_seed(0)
    steps = length + 1
    padded = -(-steps // 5) * 5
    g = torch.Generator().manual_seed(0)
    batch = {
        "states": torch.randint(0, 2, (1, padded, 3), generator=g).float(),
        "actions": torch.randint(0, 4, (1, padded), generator=g),
        "rewards": torch.zeros(1, padded),
        "rtg": torch.ones(1, padded),
        "dones": torch.zeros(1, padded),
        "timesteps": torch.arange(padded)[None],
        "loss_mask": torch.ones(1, padded),
        "subgoals": torch.zeros(1, padded, 3),
        "pad": torch.zeros(1, padded, dtype=torch.bool),
    }
    if algorithm == "dmh":
        net = DecisionMambaHybrid(state_dim=3, num_actions=4, c=5, max_timestep=padded)
    else:
        net = DecisionTransformer(
            state_dim=3, num_actions=4, context_steps=padded, max_timestep=padded
        )
    started = time.perf_counter()
    loss, _ = net.loss(batch)
    loss.backward()
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 3000, 10000, 20000])
    parser.add_argument("--algorithms", nargs="+", default=["dmh", "dt"], choices=["dmh", "dt"])
    parser.add_argument("--limit-gb", type=float, default=16.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--child", nargs=2, metavar=("ALGORITHM", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import torch

        torch.set_num_threads(args.threads)
        try:
            print(json.dumps(one_step(args.child[0], int(args.child[1]))))
        except (RuntimeError, MemoryError) as error:
            message = str(error).splitlines()[0][:200]
            if not isinstance(error, MemoryError) and "alloc" not in message.lower():
                raise  # not running out of memory
            print(json.dumps({"error": message}))
        return 0
    rows = []
    print("| k | model | one training step | peak memory |\n|---|---|---|---|")
    for length in args.lengths:
        for algorithm in args.algorithms:
            command = [sys.executable, "-m", "benchmarks.dmh_memory", "--limit-gb",
                       str(args.limit_gb), "--threads", str(args.threads),
                       "--child", algorithm, str(length)]  # fmt: skip
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"error": f"exit {done.returncode}"}
            row.update(k=length, algorithm=algorithm)
            rows.append(row)
            name = "DM-H" if algorithm == "dmh" else "DT"
            if "error" in row and row["error"].startswith("exit"):
                print(f"| {length} | {name} | failed ({row['error']}): {done.stderr[-300:]} | – |")
            elif "error" in row:
                print(f"| {length} | {name} | out of memory ({args.limit_gb:g} GB cap) | – |")
            else:
                print(f"| {length} | {name} | {row['seconds']:.2f} s | {row['peak_mb']:,.0f} MB |")
            sys.stdout.flush()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
