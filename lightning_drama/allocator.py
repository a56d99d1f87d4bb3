"""glibc malloc tuning for training on a CPU.

By default glibc serves large blocks with mmap and returns freed memory to the OS, so every update
page-faults its big activations in again. Keeping freed memory in the process made the paper-size
world-model update 1.5-2.5x faster on our 2-core CI VMs (benchmarks/train_step.py, with and
without `--no-malloc-tuning`). The cost: the process keeps its peak memory, and more: glibc 2.36
does not reuse a freed block for the next aligned allocation of the same size (PyTorch allocates
with `posix_memalign`), so a paper-size fp32 update that peaks at 7.0 GB leaves the process at
12.2 GB resident. `main.py` applies it unless `DRAMA_MALLOC_TUNING=0`.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Serve blocks below 1 GiB from the heap and never trim it. False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # -1 is SIZE_MAX for the trim threshold: never give the top of the heap back.
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, -1)
        )
    except (OSError, AttributeError):
        return False
