"""Where bf16 autocast gains and where it doesn't: the world model's conv layers one by one.

    python benchmarks/wm_layers.py                 # 16 x 128 = 2048 frames, as in one update
    python benchmarks/wm_layers.py --frames 512    # quicker

Times, side by side in one run, forward + backward of each layer of the paper-size encoder and
decoder on the activations one world-model update gives it (2048 frames), in fp32 and under bf16
autocast (bf16 inputs, as the previous layer hands them on under autocast): each convolution, and
each BatchNorm + SiLU pair. Then the whole world-model update (`benchmarks/train_step.py`'s), so the
table shows which share of the update these kernels are and what speed-up bf16 can give them on this
CPU: the update cannot gain more from bf16 than its largest parts do. Each time is the best of
`--repeats` rounds that interleave the precisions, so drift hits both alike.

The first convolution computes no input gradient (the input is the frame), like in training.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_step import autocast, cpu_description, replay_batch  # noqa: E402
from lightning_drama.allocator import keep_freed_memory  # noqa: E402
from lightning_drama.optim import LaProp  # noqa: E402
from lightning_drama.world_model import WorldModel  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def layer_inputs(wm: WorldModel) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, input shape for one frame) of every conv and BatchNorm of the encoder and
    decoder, read off a forward pass of one frame."""
    found: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    modules = [("encoder", m) for m in wm.encoder.net] + [("decoder", m) for m in wm.decoder.net]
    for part, module in modules:
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d):

            def hook(mod: nn.Module, args: tuple, _out: object, part: str = part) -> None:
                found.append((part, mod, tuple(args[0].shape[1:])))

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        wm.train()
        obs = torch.zeros(2, wm.image_size, wm.image_size, 3, dtype=torch.uint8)
        wm.decoder(wm.sample(wm.encode(obs)))
    for h in hooks:
        h.remove()
    names = []
    for part, module, shape in found:
        c, h, w = shape
        if isinstance(module, nn.BatchNorm2d):
            names.append(f"{part} BN+SiLU {c}x{h}x{w}")
        else:
            kind = "convT" if isinstance(module, nn.ConvTranspose2d) else "conv"
            names.append(f"{part} {kind} {c}->{module.out_channels} at {h}x{w}")
    return [(n, m, s) for n, (_, m, s) in zip(names, found, strict=True)]


def layer_step(
    module: nn.Module, shape: tuple[int, ...], frames: int, precision: str, first: bool
) -> Callable[[], None]:
    """Forward + backward of one layer on random activations (bf16 ones under bf16 autocast)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.rand(frames, *shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(not first)

    def step() -> None:
        with autocast(precision):
            y = F.silu(module(x)) if isinstance(module, nn.BatchNorm2d) else module(x)
        y.backward(torch.ones_like(y))
        x.grad = None
        module.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2048, help="frames per layer call (16x128)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-update", action="store_true", help="skip timing the whole world-model update"
    )
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wm = WorldModel(6)
    layers = layer_inputs(wm)
    tasks: dict[str, dict[str, Callable[[], None]]] = {}
    for i, (name, module, shape) in enumerate(layers):
        first = i == 0
        tasks[name] = {p: layer_step(module, shape, args.frames, p, first) for p in PRECISIONS}
    if not args.no_update:
        opt = LaProp(wm.parameters())
        batch = replay_batch(args.frames // 128 or 1, min(128, args.frames), 6, torch.Generator())

        def update(precision: str) -> None:
            with autocast(precision):  # as in train_step.py
                loss, _ = wm.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        tasks["whole world-model update"] = {p: partial(update, p) for p in PRECISIONS}

    print(f"{cpu_description()}; threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.frames} frames, best of {args.repeats} interleaved rounds after 1 warm-up",
          flush=True)  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}
    for name, by_precision in tasks.items():
        for precision, fn in by_precision.items():
            fn()  # warm-up: oneDNN picks and JITs its kernels
            times[name, precision] = []
    for _ in range(args.repeats):
        for name, by_precision in tasks.items():
            for precision, fn in by_precision.items():
                start = time.perf_counter()
                fn()
                times[name, precision].append(time.perf_counter() - start)

    report({key: min(ts) for key, ts in times.items()}, list(tasks))


def report(best: dict[tuple[str, str], float], names: list[str]) -> dict[str, float]:
    """Print the table; return the speed-ups of the groups (and the bound, with the update)."""
    print("\n| part | fp32 ms | bf16 ms | bf16 speed-up |")
    print("|---|---|---|---|")
    sums = {group: dict.fromkeys(PRECISIONS, 0.0) for group in ("convolutions", "BN+SiLU")}
    for name in names:
        f, b = best[name, "fp32"], best[name, "bf16"]
        print(f"| {name} | {f * 1e3:.0f} | {b * 1e3:.0f} | {f / b:.2f}x |")
        if "update" not in name:
            group = "BN+SiLU" if "BN+SiLU" in name else "convolutions"
            for p in PRECISIONS:
                sums[group][p] += best[name, p]
    speedups = {}
    for group, by_precision in sums.items():
        f, b = by_precision["fp32"], by_precision["bf16"]
        speedups[group] = f / b
        print(f"| all {group} | {f * 1e3:.0f} | {b * 1e3:.0f} | {f / b:.2f}x |")
    if ("whole world-model update", "fp32") in best:
        # What bf16 could give the update if the rest of it (backbone, heads, loss, optimiser)
        # ran exactly 2x faster: "bound" with these layers at their measured speed-ups, and
        # "conv_bound" with BN+SiLU at 2x too (as perfect bandwidth-bound kernels would run).
        update = best["whole world-model update", "fp32"]
        layers = {p: sum(by_precision[p] for by_precision in sums.values()) for p in PRECISIONS}
        rest = max(update - layers["fp32"], 0.0)
        convs = sums["convolutions"]
        speedups["bound"] = update / (layers["bf16"] + rest / 2)
        speedups["conv_bound"] = update / (convs["bf16"] + (update - convs["fp32"]) / 2)
        print(
            f"\nThe conv layers and BN+SiLU are {layers['fp32'] / update:.0%} of the fp32 update. "
            f"With the rest of it exactly 2x faster in bf16, the update's bf16 speed-up would be "
            f"{speedups['bound']:.2f}x; with BN+SiLU 2x faster too, {speedups['conv_bound']:.2f}x."
        )
    return speedups


if __name__ == "__main__":
    main()
