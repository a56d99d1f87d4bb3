"""Time one world-model update and one imagination + actor-critic update at the paper's sizes.

    python benchmarks/train_step.py            # 16 x 128 windows, 1024 x (8 + 16) imagination
    python benchmarks/train_step.py --wm-batch 4 --starts 256 --repeats 1   # quicker

Prints, for fp32 and bf16 autocast, the best time of `--repeats` updates (after one warm-up update
that also counts the FLOPs with `torch.utils.flop_counter.FlopCounterMode`), the achieved FLOP/s,
and that rate as a fraction of a large fp32 matmul's FLOP/s measured in the same run. Only matmul /
conv FLOPs are counted (what FlopCounterMode knows), so the fraction is a lower bound.

On Linux, glibc returns every freed block above 32 MB to the OS, so each large activation is
page-faulted in again on the next update; `--malloc-tuning` (default on) raises glibc's mmap and
trim thresholds for this process so that freed memory is reused. Timings on a shared machine are
noisy: the best of several repeats is the meaningful number.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_drama.agent import ActorCritic  # noqa: E402
from lightning_drama.allocator import keep_freed_memory  # noqa: E402
from lightning_drama.optim import LaProp  # noqa: E402
from lightning_drama.world_model import WorldModel  # noqa: E402


def matmul_flops_per_s(dtype: torch.dtype, n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def copy_bytes_per_s(megabytes: int = 512, repeats: int = 3) -> float:
    """Memory bandwidth of a plain fp32 copy (bytes read + written per second): the updates'
    element-wise passes are bound by it, and it differs between otherwise identical VMs."""
    src = torch.randn(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * src.nbytes / min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its bf16 instructions, from /proc/cpuinfo (Linux; "unknown CPU"
    elsewhere). The bf16 speed-up depends on them: with AMX, oneDNN's bf16 convolutions run on
    tile units and gain far more than with AVX512-BF16 alone."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    bf16 = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"))
            if flag in flags]  # fmt: skip
    return ", ".join([fields.get("model name", "unknown CPU"), *(bf16 or ["no bf16 instructions"])])


FP32_TARGET = 0.30  # of the fp32 matmul rate
BF16_TARGET = 1.8  # bf16 autocast speed-up over fp32


def target_lines(fp32_of_matmul: float, bf16_speedup: float | None) -> list[str]:
    """The world-model update's performance targets (issue #3), met or not."""
    lines = [
        f"fp32 world-model update at {fp32_of_matmul:.0%} of the fp32 matmul rate "
        f"(target >= {FP32_TARGET:.0%}): {'met' if fp32_of_matmul >= FP32_TARGET else 'NOT met'}"
    ]
    if bf16_speedup is not None:
        met = "met" if bf16_speedup >= BF16_TARGET else "NOT met"
        lines.append(
            f"bf16 autocast speed-up of the world-model update {bf16_speedup:.2f}x "
            f"(target >= {BF16_TARGET}x): {met}"
        )
    return lines


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"unknown precision {precision!r}: use fp32 or bf16")


def replay_batch(batch: int, length: int, num_actions: int, g: torch.Generator) -> dict:
    is_first = torch.rand(batch, length, generator=g) < 0.01
    return {
        "obs": torch.randint(0, 256, (batch, length, 64, 64, 3), dtype=torch.uint8, generator=g),
        "action": torch.randint(0, num_actions, (batch, length), generator=g),
        "reward": torch.randn(batch, length, generator=g),
        "terminated": torch.rand(batch, length, generator=g) < 0.01,
        "is_first": is_first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wm-batch", type=int, default=16)
    parser.add_argument("--wm-length", type=int, default=128)
    parser.add_argument("--starts", type=int, default=1024)
    parser.add_argument("--context", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--num-actions", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--malloc-tuning", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    tuned = keep_freed_memory() if args.malloc_tuning else False
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    wm = WorldModel(args.num_actions)
    ac = ActorCritic(args.num_actions, state_dim=wm.state_dim)
    wm_opt, ac_opt = LaProp(wm.parameters()), LaProp(ac.parameters())
    batch = replay_batch(args.wm_batch, args.wm_length, args.num_actions, g)
    ctx_batch = replay_batch(args.starts, args.context, args.num_actions, g)
    context = {f"start_{k}": v for k, v in ctx_batch.items()}

    def world_model_update() -> None:
        loss, _ = wm.loss(batch)
        wm_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wm.parameters(), wm.grad_clip)
        wm_opt.step()

    def actor_critic_update() -> None:
        imagined = wm.imagine(context, ac.act, args.horizon, reward_timing=ac.reward_timing)
        loss, _ = ac.loss(imagined)
        ac_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ac.parameters(), ac.grad_clip)
        ac_opt.step()
        ac.update_slow_critic()

    print(
        f"{cpu_description()}; threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"malloc tuning {'on' if tuned else 'off'}; "
        f"world model {wm.parameter_counts()['total'] / 1e6:.2f} M parameters; "
        f"best of {args.repeats} after 1 warm-up",
        flush=True,
    )
    matmul = {"fp32": matmul_flops_per_s(torch.float32), "bf16": matmul_flops_per_s(torch.bfloat16)}
    copy = copy_bytes_per_s()
    print(
        f"matmul 4096^3: fp32 {matmul['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {matmul['bf16'] / 1e9:.0f} GFLOP/s; 512 MB copy {copy / 1e9:.0f} GB/s",
        flush=True,
    )
    wm_name = f"world model {args.wm_batch}x{args.wm_length}"
    tasks = {
        wm_name: world_model_update,
        f"imagine+AC {args.starts}x({args.context}+{args.horizon})": actor_critic_update,
    }
    rows, best = [], {}
    precisions = args.precisions.split(",")
    for name, fn in tasks.items():
        flops, times = {}, {p: [] for p in precisions}
        for precision in precisions:
            with autocast(precision), FlopCounterMode(display=False) as counter:
                fn()  # warm-up, and the FLOP count
            flops[precision] = counter.get_total_flops()
        # Interleave the precisions so that load from other processes hits both alike.
        for _ in range(args.repeats):
            for precision in precisions:
                with autocast(precision):
                    times[precision].append(_timed(fn))
        for precision in precisions:
            t, med, n = min(times[precision]), statistics.median(times[precision]), flops[precision]
            best[name, precision] = t
            rows.append((name, precision, t, med, n, n / t))
            print(
                f"{name:28s} {precision:5s} best {t:6.2f} s, median {med:6.2f}"
                f"  {n / 1e12:6.3f} TFLOP  {n / t / 1e9:7.1f} GFLOP/s  "
                f"{n / t / matmul['fp32']:6.1%} of fp32 matmul",
                flush=True,
            )

    print("\n| update | precision | best time (s) | median (s) | TFLOP | GFLOP/s | of fp32 matmul |"
          " bf16 speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, precision, t, med, flops, rate in rows:
        speedup = ""
        if precision == "bf16" and (name, "fp32") in best:
            speedup = f"{best[name, 'fp32'] / t:.2f}x"
        print(
            f"| {name} | {precision} | {t:.2f} | {med:.2f} | {flops / 1e12:.3f} |"
            f" {rate / 1e9:.1f} | {rate / matmul['fp32']:.1%} | {speedup} |"
        )
    print(
        f"\nmatmul 4096^3 in the same run: fp32 {matmul['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {matmul['bf16'] / 1e9:.0f} GFLOP/s; 512 MB copy {copy / 1e9:.0f} GB/s; "
        f"{torch.get_num_threads()} threads"
    )
    if (args.wm_batch, args.wm_length) == (16, 128) and (wm_name, "fp32") in best:
        rate = next(row[5] for row in rows if row[:2] == (wm_name, "fp32"))
        speedup = None
        if (wm_name, "bf16") in best:
            speedup = best[wm_name, "fp32"] / best[wm_name, "bf16"]
        print("\n" + "\n".join(target_lines(rate / matmul["fp32"], speedup)))


if __name__ == "__main__":
    main()
