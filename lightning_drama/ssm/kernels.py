"""Optional fused CUDA kernels from the `mamba-ssm` / `causal-conv1d` packages.

Both imports are guarded with `except Exception`: off CUDA they fail in many ways (missing
Triton, a binary built for another torch, no GPU driver), and the pure-PyTorch path must still run.
Install them on a CUDA machine with `pip install mamba-ssm causal-conv1d`.
"""

from __future__ import annotations

import torch

try:  # pragma: no cover - needs CUDA
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
except Exception:  # noqa: BLE001 - any failure means "not available"
    mamba_chunk_scan_combined = None

try:  # pragma: no cover - needs CUDA
    from causal_conv1d import causal_conv1d_fn
except Exception:  # noqa: BLE001
    causal_conv1d_fn = None


def kernels_available() -> bool:
    """True when the fused SSD kernel imported (it still needs CUDA tensors to be used)."""
    return mamba_chunk_scan_combined is not None


def use_fused_scan(x: torch.Tensor, channels: int, force_torch: bool) -> bool:
    """The fused scan runs on CUDA tensors whose channel counts are multiples of 8."""
    return (
        mamba_chunk_scan_combined is not None
        and not force_torch
        and x.is_cuda
        and channels % 8 == 0
    )


def use_fused_conv(x: torch.Tensor, channels: int, force_torch: bool) -> bool:
    return causal_conv1d_fn is not None and not force_torch and x.is_cuda and channels % 8 == 0


def fused_scan(x, dt, A, B, C, chunk_size, D, initial_state, reset):  # pragma: no cover - CUDA
    """`ssd_scan` through `mamba_chunk_scan_combined`; resets become sequence indices."""
    seq_idx = None
    if reset is not None:
        seq_idx = torch.cumsum(reset.to(torch.int32), dim=1).to(torch.int32).contiguous()
        if initial_state is not None:
            initial_state = (
                initial_state * (~reset[:, 0]).to(initial_state.dtype)[:, None, None, None]
            )
    # The kernel's chunk must be a power of two; 256 is its tuned default.
    y, final = mamba_chunk_scan_combined(
        x.contiguous(),
        dt.contiguous(),
        A.float(),
        B.contiguous(),
        C.contiguous(),
        chunk_size=max(chunk_size, 64),
        D=None if D is None else D.float(),
        initial_states=None if initial_state is None else initial_state.float(),
        seq_idx=seq_idx,
        return_final_states=True,
    )
    return y, final.float()


def fused_conv(xBC, weight, bias, conv_state, reset):  # pragma: no cover - CUDA
    """Depthwise causal conv + SiLU through `causal_conv1d_fn`; xBC [b, L, C], weight [C, k]."""
    length = xBC.shape[1]
    seq_idx = None
    if reset is not None:
        seq_idx = torch.cumsum(reset.to(torch.int32), dim=1).to(torch.int32).contiguous()
    # channel-last layout: a [b, C, L] view of a contiguous [b, L, C] tensor.
    initial = None
    if conv_state is not None and seq_idx is None:
        initial = conv_state.contiguous().transpose(1, 2)
    elif conv_state is not None:
        # The kernel takes no initial state together with seq_idx: prepend the state instead,
        # as sequence 0 (a reset at t=0 makes position 0 sequence 1, cut off from it).
        xBC = torch.cat([conv_state.to(xBC.dtype), xBC], dim=1)
        seq_idx = torch.cat(
            [torch.zeros_like(seq_idx[:, :1]).expand(-1, conv_state.shape[1]), seq_idx], 1
        )
        seq_idx = seq_idx.contiguous()
    x = xBC.contiguous().transpose(1, 2)
    out = causal_conv1d_fn(
        x, weight, bias, seq_idx=seq_idx, initial_states=initial, activation="silu"
    )
    return out.transpose(1, 2)[:, -length:]


# --- Mamba-1: mamba-ssm's selective scan ----------------------------------------------------

try:  # pragma: no cover - needs CUDA
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except Exception:  # noqa: BLE001
    selective_scan_fn = None


def use_fused_selective_scan(
    x: torch.Tensor,
    initial_state: torch.Tensor | None,
    reset: torch.Tensor | None,
    force_torch: bool,
) -> bool:
    """The fused Mamba-1 scan runs on CUDA tensors and has neither an initial state nor resets:
    only a fresh start (no state, no reset after position 0) can use it."""
    if selective_scan_fn is None or force_torch or not x.is_cuda or initial_state is not None:
        return False
    return reset is None or not bool(reset[:, 1:].any())  # pragma: no cover - CUDA


def fused_selective_scan(u, delta, A, B, C, D, z, delta_bias):  # pragma: no cover - CUDA
    """`selective_scan(..., delta_softplus=True)` from a zero state through mamba-ssm's
    `selective_scan_fn`; u, delta, z [b, L, d], B, C [b, L, n] (its layout is channel-first)."""
    y, last_state = selective_scan_fn(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A.float(),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D.float(),
        z=z.transpose(1, 2),
        delta_bias=delta_bias.float(),
        delta_softplus=True,
        return_last_state=True,
    )
    return y.transpose(1, 2), last_state.float()
