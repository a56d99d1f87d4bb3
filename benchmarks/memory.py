"""Peak memory and speed of paper-size updates under each glibc malloc setting, side by side.

    python benchmarks/memory.py                       # fp32, 3 timed updates per setting
    python benchmarks/memory.py --precision bf16 --repeats 2

Each setting runs in its own process (malloc settings apply per process): one warm-up update,
then `--repeats` timed updates, each a world-model update (16 x 128) and an imagination +
actor-critic update (1024 x (8 + 16)) as `benchmarks/train_step.py` times them. Prints per
setting the median seconds per update, the peak resident memory (ru_maxrss) and the resident
memory after the last update, and the speed relative to glibc's defaults.

Settings (lightning_drama/allocator.py): `off` (glibc's defaults), `keep` (every block below
1 GiB served from a heap that is never trimmed: the fastest), `capped` (what `main.py` applies:
`keep` with the mmap threshold lowered so that large blocks are mapped afresh, which bounds the
fragmentation that made `keep` hold far more than its live peak; `main.py` uses it on machines
with less than 32 GiB of RAM), `capped:<MB>` (another threshold, to try).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = ("off", "keep", "capped")


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def child(setting: str, precision: str, repeats: int, tiny: bool) -> dict:
    from lightning_drama import allocator

    name, _, megabytes = setting.partition(":")
    if name == "off":
        applied = False
    elif name == "keep":
        applied = allocator.keep_freed_memory()
    elif megabytes:  # capped:<MB>, a threshold to try
        applied = allocator.keep_freed_memory(int(megabytes) << 20)
    else:
        applied = allocator.tune_malloc("capped") == "capped"
    import torch

    from benchmarks.train_step import autocast, replay_batch
    from lightning_drama.agent import ActorCritic
    from lightning_drama.optim import LaProp
    from lightning_drama.world_model import WorldModel

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sizes = (2, 16, 32) if tiny else (16, 128, 1024)
    wm = WorldModel(6, **(dict(d_model=64, headdim=16) if tiny else {}))
    ac = ActorCritic(6, state_dim=wm.state_dim)
    wm_opt, ac_opt = LaProp(wm.parameters()), LaProp(ac.parameters())
    batch = replay_batch(sizes[0], sizes[1], 6, g)
    context = {f"start_{k}": v for k, v in replay_batch(sizes[2], 8, 6, g).items()}

    def update() -> None:
        with autocast(precision):
            loss, _ = wm.loss(batch)
        wm_opt.zero_grad(set_to_none=True)
        loss.backward()
        wm_opt.step()
        with autocast(precision):
            imagined = wm.imagine(context, ac.act, 16)
            loss, _ = ac.loss(imagined)
        ac_opt.zero_grad(set_to_none=True)
        loss.backward()
        ac_opt.step()

    update()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"setting": setting, "applied": bool(applied), "seconds": statistics.median(times),
            "peak_bytes": peak, "end_bytes": rss_bytes()}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--tiny", action="store_true", help="a tiny model (for the tests)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.precision, args.repeats, args.tiny)))
        return []
    rows = []
    for setting in args.settings.split(","):
        command = [sys.executable, __file__, "--child", setting, "--precision", args.precision,
                   "--repeats", str(args.repeats), *(["--tiny"] if args.tiny else [])]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{setting}: {rows[-1]}", flush=True)
    base = next((r["seconds"] for r in rows if r["setting"] == "off"), None)
    print(f"\n| malloc setting | s per update ({args.precision}) | peak RSS | RSS after |"
          " speed-up over glibc defaults |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        speedup = f"{base / r['seconds']:.2f}x" if base else ""
        print(f"| {r['setting']} | {r['seconds']:.2f} | {r['peak_bytes'] / 2**30:.1f} GiB |"
              f" {r['end_bytes'] / 2**30:.1f} GiB | {speedup} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
