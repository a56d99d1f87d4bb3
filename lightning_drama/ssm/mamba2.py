"""The Mamba-2 layer (Dao & Gu, 2024) and its pre-norm residual backbone.

Both follow the sequence-model contract of this package:
`forward(x [B, L, D], state=None, reset=None [B, L]) -> (y, state)` parallel over L,
`step(x [B, D], state, reset=None [B]) -> (y, state)` in O(1), and `initial_state(batch_size)`;
a state is a tuple of tensors with the batch first, so rows can be selected or repeated by indexing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError
from lightning_drama.ssm import kernels
from lightning_drama.ssm.norm import GatedRMSNorm
from lightning_drama.ssm.residual import ResidualStack
from lightning_drama.ssm.residual import check_reset as _check_reset
from lightning_drama.ssm.residual import state_dtype as _state_dtype
from lightning_drama.ssm.ssd import ssd_scan, ssd_step

Tensor = torch.Tensor
State = tuple[Tensor, ...]


class Mamba2(nn.Module):
    """One Mamba-2 mixer.

    in_proj -> [z, x, B, C, dt]; depthwise causal conv1d + SiLU over xBC;
    dt = softplus(dt + dt_bias); A = -exp(A_log) per head; SSD scan with D skip;
    gated RMSNorm `norm(y * silu(z))`; out_proj.

    Args:
        d_model: width of the input and output.
        d_state: SSM state size N per head.
        d_conv: causal convolution kernel width.
        expand: d_inner = expand * d_model.
        headdim: channels per head P; heads H = d_inner / headdim.
        ngroups: groups G of B and C shared by H / G heads each.
        chunk_size: SSD chunk length (32-64 is fastest on CPU).
        dt_min, dt_max, dt_init_floor: range of the log-uniform initial step sizes.
        force_torch: never use the fused `mamba-ssm` kernels, even on CUDA.
        norm_eps: epsilon of the gated RMSNorm (1e-5, mamba-ssm's `RMSNormGated` default).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        force_torch: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ConfigError(
                f"Mamba2: d_inner = expand * d_model = {expand} * {d_model} = {d_inner} is not "
                f"divisible by headdim {headdim}"
            )
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ConfigError(f"Mamba2: heads ({nheads}) not divisible by ngroups ({ngroups})")
        if d_conv < 1:
            raise ConfigError(f"Mamba2: d_conv must be >= 1, got {d_conv}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, nheads, ngroups
        self.chunk_size = chunk_size
        self.force_torch = force_torch
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self._xbc_sizes = [d_inner, ngroups * d_state, ngroups * d_state]

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=False)
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise conv
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim).uniform_(-bound, bound))

        dt = torch.exp(
            torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(nheads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(nheads))
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """(conv_state [B, d_conv-1, conv_dim], ssm_state [B, heads, headdim, d_state]), zeros."""
        dtype = self.in_proj.weight.dtype
        device = device if device is not None else self.in_proj.weight.device
        conv = torch.zeros(batch_size, self.d_conv - 1, self.conv_dim, dtype=dtype, device=device)
        ssm = torch.zeros(
            batch_size,
            self.nheads,
            self.headdim,
            self.d_state,
            dtype=_state_dtype(dtype),
            device=device,
        )
        return conv, ssm

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _padded_inputs(
        self, xBC: Tensor, conv_state: Tensor | None, reset: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """`[conv_state, xBC]` along time, [b, k-1+L, C], and the number of resets up to each of
        its positions, [b, k-1+L] (None without resets): two inputs are connected when their
        counts are equal, i.e. no reset lies between them."""
        if conv_state is None:
            conv_state = xBC.new_zeros(xBC.shape[0], self.d_conv - 1, self.conv_dim)
        xpad = torch.cat([conv_state.to(xBC.dtype), xBC], dim=1)
        if reset is None:
            return xpad, None
        count = F.pad(torch.cumsum(reset.to(torch.int32), dim=1), (self.d_conv - 1, 0))
        return xpad, count

    def _conv(self, xpad: Tensor, count: Tensor | None, L: int) -> Tensor:
        """Causal depthwise conv + SiLU as k shifted multiply-adds -> [b, L, C].

        Tap j sees the input k-1-j steps back; it is dropped when a reset lies between that input
        and the output, which is what a fresh start (zero padding) would have seen.
        """
        weight = self.conv_weight.to(xpad.dtype)
        out = self.conv_bias.to(xpad.dtype).expand(xpad.shape[0], L, -1)
        now = None if count is None else count[:, self.d_conv - 1 :]
        for j in range(self.d_conv):
            tap = xpad[:, j : j + L] * weight[:, j]
            if count is not None:
                tap = tap * (count[:, j : j + L] == now).unsqueeze(-1).to(xpad.dtype)
            out = out + tap
        return F.silu(out)

    def _final_conv_state(self, xpad: Tensor, count: Tensor | None, L: int) -> Tensor:
        """The last k-1 inputs; those before the last reset must not reach the next step."""
        window = xpad[:, L:]
        if count is not None:
            window = window * (count[:, L:] == count[:, -1:]).unsqueeze(-1).to(window.dtype)
        return window

    def forward(
        self, u: Tensor, state: State | None = None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """u: [B, L, d_model] -> (y [B, L, d_model], (conv_state, ssm_state))."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2: expected input [B, L, {self.d_model}], got {tuple(u.shape)}")
        b, L, _ = u.shape
        _check_reset(reset, (b, L), "Mamba2.forward")
        conv_state, ssm_state = (None, None) if state is None else state
        z, xBC, dt = self._split(self.in_proj(u))
        xpad, count = self._padded_inputs(xBC, conv_state, reset)
        new_conv_state = self._final_conv_state(xpad, count, L)
        if kernels.use_fused_conv(xBC, self.conv_dim, self.force_torch):  # pragma: no cover
            xBC = kernels.fused_conv(xBC, self.conv_weight, self.conv_bias, conv_state, reset)
        else:
            xBC = self._conv(xpad, count, L)
        x, B, C = torch.split(xBC, self._xbc_sizes, dim=-1)
        x = x.reshape(b, L, self.nheads, self.headdim)
        B = B.reshape(b, L, self.ngroups, self.d_state)
        C = C.reshape(b, L, self.ngroups, self.d_state)
        sd = _state_dtype(self.dt_bias.dtype)
        dt = F.softplus(dt.to(sd) + self.dt_bias.to(sd))  # [b, L, H], fp32
        A = -torch.exp(self.A_log.to(sd))
        if kernels.use_fused_scan(x, self.d_inner, self.force_torch):  # pragma: no cover
            y, ssm_state = kernels.fused_scan(
                x, dt, A, B, C, self.chunk_size, self.D, ssm_state, reset
            )
        else:
            y, ssm_state = ssd_scan(x, dt, A, B, C, self.chunk_size, self.D, ssm_state, reset)
        y = self.norm(y.reshape(b, L, self.d_inner), z)
        return self.out_proj(y), (new_conv_state, ssm_state)

    def step(self, u: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """u: [B, d_model] -> (y [B, d_model], state); O(1) in the context length."""
        if u.dim() != 2 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba2.step: expected input [B, {self.d_model}], got {tuple(u.shape)}"
            )
        b = u.shape[0]
        _check_reset(reset, (b,), "Mamba2.step")
        conv_state, ssm_state = state
        if reset is not None:
            keep = (~reset).to(conv_state.dtype)
            conv_state = conv_state * keep[:, None, None]
            ssm_state = ssm_state * keep.to(ssm_state.dtype)[:, None, None, None]
        z, xBC, dt = self._split(self.in_proj(u))
        window = torch.cat([conv_state.to(xBC.dtype), xBC.unsqueeze(1)], dim=1)  # [b, k, C]
        conv_out = (window * self.conv_weight.to(xBC.dtype).T).sum(1) + self.conv_bias.to(xBC.dtype)
        xBC = F.silu(conv_out)
        x, B, C = torch.split(xBC, self._xbc_sizes, dim=-1)
        sd = _state_dtype(self.dt_bias.dtype)
        dt = F.softplus(dt.to(sd) + self.dt_bias.to(sd))  # [b, H], fp32
        y, ssm_state = ssd_step(
            x.reshape(b, self.nheads, self.headdim),
            dt,
            -torch.exp(self.A_log.to(sd)),
            B.reshape(b, self.ngroups, self.d_state),
            C.reshape(b, self.ngroups, self.d_state),
            ssm_state,
            self.D,
        )
        y = self.norm(y.reshape(b, self.d_inner), z)
        return self.out_proj(y), (window[:, 1:], ssm_state)


class Mamba2Backbone(ResidualStack):
    """Pre-norm residual stack of Mamba-2 layers with a final RMSNorm (`ResidualStack`).

    The residual stream is kept in fp32 (fp64 for fp64 inputs) under autocast; each layer adds
    `dropout(mixer(norm(residual)))`. The state is the flat tuple
    `(conv_0, ssm_0, conv_1, ssm_1, ...)`, every tensor with the batch first.

    Args:
        d_model: width of the stream. n_layers: number of Mamba-2 blocks.
        d_state, d_conv, expand, headdim, ngroups, chunk_size: see `Mamba2`.
        dropout: dropout on each residual add (0: the reference Drama has none).
        force_torch: never use the fused `mamba-ssm` CUDA kernels.
        norm_eps: epsilon of the block norms, the final norm and each mixer's gated norm (1e-5,
            mamba-ssm's `norm_epsilon` and `RMSNormGated` default, which the reference uses).
    """

    kind = "mamba2"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dropout: float = 0.0,
        force_torch: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        def make_mixer() -> Mamba2:
            return Mamba2(
                d_model,
                d_state,
                d_conv,
                expand,
                headdim,
                ngroups,
                chunk_size,
                force_torch=force_torch,
                norm_eps=norm_eps,
            )

        super().__init__(d_model, n_layers, make_mixer, dropout=dropout, norm_eps=norm_eps)
