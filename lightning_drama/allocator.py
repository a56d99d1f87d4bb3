"""glibc malloc tuning for training on a CPU.

By default glibc serves large blocks with mmap and returns freed memory to the OS, so every update
page-faults its big activations in again. Keeping freed memory in the process made the paper-size
world-model update 1.5-2.5x faster on our 2-core CI VMs (benchmarks/train_step.py, with and
without `--no-malloc-tuning`). The cost: the process keeps its peak memory, and more: glibc 2.36
does not reuse a freed block for the next aligned allocation of the same size (PyTorch allocates
with `posix_memalign`), so a paper-size fp32 update that peaks at 7.0 GB leaves the process at
12.2 GB resident. `main.py` applies `tune_malloc`, which bounds that on machines with less than
32 GiB of RAM (`DRAMA_MALLOC_TUNING` chooses: auto, keep, capped or 0).
"""

from __future__ import annotations

import ctypes
import os
import sys

from lightning_drama.checks import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Serve blocks below `mmap_threshold` bytes from the heap and never trim it. False where
    not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # -1 is SIZE_MAX for the trim threshold: never give the top of the heap back.
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, -1)
        )
    except (OSError, AttributeError):
        return False


# Blocks from this size up are mapped afresh each time (glibc's behaviour for large blocks)
# instead of being kept in the heap: see `tune_malloc`.
MMAP_THRESHOLD = 256 << 20
# With this much RAM the fastest setting, which holds ~11.6 GiB for the paper's fp32 update, fits.
KEEP_ALL_RAM = 32 << 30


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def tune_malloc(mode: str | None = None) -> str:
    """What `main.py` applies; returns the setting used: "keep", "capped" or "off".

    `mode` (default: the `DRAMA_MALLOC_TUNING` environment variable, else "auto"): "keep" keeps
    every block below 1 GiB in the heap (fastest, but fragmentation makes the paper-size fp32
    update hold 11.6 GiB); "capped" keeps blocks below `MMAP_THRESHOLD` and maps the larger ones
    afresh (8.6 GiB, 1.33x instead of 1.60x over glibc's defaults; benchmarks/memory.py, README);
    "auto" is "keep" with at least `KEEP_ALL_RAM` of RAM, else "capped"; "0" or "off": glibc's
    defaults.
    """
    mode = (mode or os.environ.get("DRAMA_MALLOC_TUNING") or "auto").lower()
    if mode in ("0", "off"):
        return "off"
    if mode == "auto":
        mode = "keep" if physical_memory() >= KEEP_ALL_RAM else "capped"
    if mode not in ("keep", "capped", "1"):
        raise ConfigError(f"DRAMA_MALLOC_TUNING must be auto, keep, capped or 0, got {mode!r}")
    threshold = MMAP_THRESHOLD if mode == "capped" else 1 << 30
    return ("capped" if mode == "capped" else "keep") if keep_freed_memory(threshold) else "off"
