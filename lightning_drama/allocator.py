"""glibc malloc tuning for training on a CPU.

By default glibc serves large blocks with mmap and returns freed memory to the OS, so every update
page-faults its big activations in again. Keeping freed memory in the process made the paper-size
world-model update about 1.6x faster on our 2-core CPU (benchmarks/train_step.py, with and without
`--no-malloc-tuning`). The cost: the process keeps its peak memory.
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
