"""RMS normalisation, plain and gated (the Mamba-2 output norm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # Normalise in fp32 under autocast; keep fp64 when the model runs in fp64.
    return x if x.dtype == torch.float64 else x.float()


class RMSNorm(nn.Module):
    """`x / rms(x) * weight`, computed in fp32 (fp64 stays fp64), returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _upcast(x)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.to(h.dtype)).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """Mamba-2's `norm(y * silu(z))`: gate first, then normalise per group of channels."""

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-6) -> None:
        super().__init__(dim, eps)
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(
                f"GatedRMSNorm: dim {dim} is not divisible by group_size {self.group_size}"
            )

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = _upcast(y) * F.silu(_upcast(z))
        h = h.unflatten(-1, (-1, self.group_size))  # [..., groups, group_size]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h.flatten(-2) * self.weight.to(h.dtype)).to(y.dtype)
