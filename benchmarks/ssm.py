"""SSD scan and Mamba-2 step benchmark (not a test): prints a table of ratios measured in one run.

    python benchmarks/ssm.py            # full table (a few minutes on 2 CPU cores)
    python benchmarks/ssm.py --quick    # smaller sweep

Forward+backward time and peak memory of `ssd_scan` (best chunk per L), `ssd_reference` (the
sequential loop) and the quadratic masked L x L form of the same SSM, at B=16, H=16, P=64, N=16,
each the best of interleaved rounds (`--rounds`);
then the per-token cost of `Mamba2Backbone.step` (d_model 512, 2 layers, batch 1024) after a
context of 16 vs 1024 tokens. Memory is the peak RSS growth of a fresh subprocess per case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from functools import partial
from math import inf

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lightning_drama.allocator import keep_freed_memory  # noqa: E402
from lightning_drama.ssm import Mamba2Backbone, ssd_reference, ssd_scan  # noqa: E402

B, H, P, N = 16, 16, 64, 16
TUNED = True  # set by main(): whether glibc keeps freed memory (as the training CLI does)


def quadratic_ssd(x, dt, A, Bm, C, chunk_size=None, D=None, initial_state=None, reset=None):
    """The SSM as one masked L x L matrix (the 'attention' form of SSD): O(L^2) time and memory."""
    cs = torch.cumsum(dt * A, dim=1).transpose(1, 2)  # [b, H, L]
    L = x.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, float("-inf")))
    scores = torch.einsum("btgn,bsgn->bgts", C, Bm) * decay  # G = 1: broadcast over heads
    y = scores @ (x * dt[..., None]).transpose(1, 2)  # [b, H, L, P]
    return y.transpose(1, 2), None


METHODS = {"ssd_scan": ssd_scan, "ssd_reference": ssd_reference, "quadratic": quadratic_ssd}


def make_inputs(L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, H, P, generator=g)
    dt = F.softplus(torch.randn(B, L, H, generator=g) - 2.0)
    A = -torch.rand(H, generator=g) * 4 - 0.5
    Bm = torch.randn(B, L, 1, N, generator=g)
    C = torch.randn(B, L, 1, N, generator=g)
    # A dense upstream gradient, as in training (y.sum() would send a stride-0 one).
    grad_y = torch.randn(B, L, H, P, generator=g)
    return [t.requires_grad_() for t in (x, dt, A, Bm, C)] + [grad_y]


def fwd_bwd(method: str, L: int, chunk: int, inputs=None) -> None:
    inputs = inputs or make_inputs(L)
    *tensors, grad_y = inputs
    for t in tensors:  # fresh gradients each time, as after zero_grad(set_to_none=True)
        t.grad = None
    y, _ = METHODS[method](*tensors, chunk)
    y.backward(grad_y)


def time_it(fn, min_time: float = 0.5, max_reps: int = 10) -> float:
    fn()  # warm-up
    times: list[float] = []
    while sum(times) < min_time and len(times) < max_reps:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_peak_memory(method: str, L: int, chunk: int) -> None:
    """Runs in a subprocess: prints the peak RSS growth (MB) of one forward+backward.

    A sampling thread reads the resident size every millisecond (ru_maxrss would also count
    whatever peak the imports reached before the measurement).
    """
    inputs = make_inputs(L)
    before = current_rss_mb()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fwd_bwd(method, L, chunk, inputs)
    done.set()
    sampler.join()
    print(json.dumps({"peak_mb": max(peak[0], current_rss_mb()) - before}))


def peak_memory(method: str, L: int, chunk: int) -> float | None:
    if not sys.platform.startswith("linux"):
        return None
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(L), str(chunk)]
        + ([] if TUNED else ["--no-malloc-tuning"]),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def quadratic_fits(L: int) -> bool:
    # ~5 live fp32 [B, H, L, L] tensors through the backward pass; stay under ~8 GB.
    return 5 * B * H * L * L * 4 < 8 * 2**30


def bench_scan(lengths: list[int], chunks: list[int], rounds: int) -> dict[int, dict]:
    """Per L: the best chunk size, then `rounds` interleaved rounds of scan, reference and
    quadratic form, keeping each method's best time (machine noise then hits all of them alike;
    from L = 1024 up one round, as the reference alone takes seconds to tens of seconds)."""
    rows = {}
    for L in lengths:
        inputs = make_inputs(L)
        chunk_times = {c: time_it(partial(fwd_bwd, "ssd_scan", L, c, inputs)) for c in chunks}
        best = min(chunk_times, key=chunk_times.get)
        row = {"chunk": best, "scan": chunk_times[best], "reference": inf, "quadratic": None}
        for _ in range(rounds if L < 1024 else 1):
            row["scan"] = min(row["scan"], time_it(partial(fwd_bwd, "ssd_scan", L, best, inputs)))
            reference = time_it(partial(fwd_bwd, "ssd_reference", L, best, inputs), max_reps=2)
            row["reference"] = min(row["reference"], reference)
            if quadratic_fits(L):
                quadratic = time_it(partial(fwd_bwd, "quadratic", L, best, inputs), max_reps=3)
                row["quadratic"] = min(row["quadratic"] or inf, quadratic)
        row["mem_scan"] = peak_memory("ssd_scan", L, best)
        row["mem_reference"] = peak_memory("ssd_reference", L, best)
        row["mem_quadratic"] = peak_memory("quadratic", L, best) if quadratic_fits(L) else None
        rows[L] = row
        print(f"  measured L={L}", file=sys.stderr, flush=True)
    return rows


@torch.no_grad()
def bench_step(contexts: list[int], batch: int = 1024, steps: int = 20) -> dict[int, float]:
    torch.manual_seed(0)
    model = Mamba2Backbone(512, 2).eval()
    states = {}
    for ctx in contexts:
        state = model.initial_state(batch)
        for start in range(0, ctx, 64):  # build the context in pieces to bound memory
            piece = torch.randn(batch, min(64, ctx - start), 512)
            _, state = model(piece, state)
        states[ctx] = state
    x = torch.randn(batch, 512)
    per_token = {ctx: [] for ctx in contexts}
    for _ in range(3):  # interleave the contexts so machine noise hits both alike
        for ctx in contexts:
            state = states[ctx]
            model.step(x, state)
            t0 = time.perf_counter()
            for _ in range(steps):
                _, state = model.step(x, state)
            per_token[ctx].append((time.perf_counter() - t0) / steps)
    return {ctx: min(v) for ctx, v in per_token.items()}


def fmt(v, unit="ms"):
    if v is None:
        return "n/a"
    return f"{v * 1e3:.1f}" if unit == "ms" else f"{v:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="L up to 512, fewer chunk sizes")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds per L below 1024"
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default of returning freed memory to the OS (the CLI's training runs "
        "keep it, see lightning_drama/allocator.py)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global TUNED
    TUNED = not args.no_malloc_tuning and keep_freed_memory()
    if args.child:
        method, L, chunk = args.child
        child_peak_memory(method, int(L), int(chunk))
        return
    lengths = [64, 128, 256, 512] if args.quick else [64, 128, 256, 512, 1024, 2048]
    chunks = [32, 64] if args.quick else [16, 32, 64, 128]
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"malloc keeps freed memory: {TUNED}"
    )
    rows = bench_scan(lengths, chunks, args.rounds)
    print(f"\nSSD forward+backward, B={B} H={H} P={P} N={N} (fp32, CPU)\n")
    print(
        "| L | best chunk | ssd_scan ms | reference ms | quadratic ms | reference / scan "
        "| quadratic / scan | peak MB scan / ref / quad |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for L, r in rows.items():
        quad_ratio = f"{r['quadratic'] / r['scan']:.2f}" if r["quadratic"] else "n/a"
        print(
            f"| {L} | {r['chunk']} | {fmt(r['scan'])} | {fmt(r['reference'])} | "
            f"{fmt(r['quadratic'])} | {r['reference'] / r['scan']:.1f} | {quad_ratio} | "
            f"{fmt(r['mem_scan'], 'mb')} / {fmt(r['mem_reference'], 'mb')} / "
            f"{fmt(r['mem_quadratic'], 'mb')} |"
        )
    L1 = max(rows)
    growth = rows[L1]["scan"] / rows[256]["scan"] if 256 in rows else float("nan")
    print(
        f"\nssd_scan t({L1}) / t(256) = {growth:.2f} (linear would be {L1 / 256:.0f}; target <= "
        f"{'10' if L1 == 2048 else 'n/a'})"
    )
    print(
        f"reference / scan at L=128: {rows[128]['reference'] / rows[128]['scan']:.1f}x "
        "(target >= 10x)"
    )
    step = bench_step([16, 1024])
    print("\nMamba2Backbone.step, d_model 512, 2 layers, batch 1024 (fp32)\n")
    print("| context | ms per token |\n|---|---|")
    for ctx, t in step.items():
        print(f"| {ctx} | {t * 1e3:.2f} |")
    print(f"\nstep(1024) / step(16) = {step[1024] / step[16]:.3f} (target within 10 %)")


if __name__ == "__main__":
    main()
