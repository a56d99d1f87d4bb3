"""When reading a value back from the device is free, and when it is not."""

from __future__ import annotations

import torch


def host_reads_are_free(device: torch.device) -> bool:
    """A value read back to Python (`.item()`, `if tensor:`, `.tolist()`) costs nothing on a CPU.
    On an accelerator it waits for all the work queued before it and leaves the device idle while
    Python catches up, so the training step reads nothing back except on its logging steps, and
    data-dependent choices (the SSD form, how often divergence is checked) take the branch that
    needs no read. Tests patch this to see the accelerator's behaviour on a CPU."""
    return torch.device(device).type == "cpu"
