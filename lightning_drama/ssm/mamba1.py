"""The Mamba-1 layer (Gu & Dao, 2023; mamba-ssm's `Mamba`) and its pre-norm residual backbone.

Both follow the sequence-model contract of this package (see `mamba2.py`):
`forward(x [B, L, D], state=None, reset=None [B, L]) -> (y, state)` parallel over L,
`step(x [B, D], state, reset=None [B]) -> (y, state)` in O(1), and `initial_state(batch_size)`;
a state is a tuple of tensors with the batch first, so rows can be selected or repeated by indexing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lightning_drama.checks import ConfigError
from lightning_drama.ssm import kernels
from lightning_drama.ssm.residual import ResidualStack, check_reset, state_dtype
from lightning_drama.ssm.selective_scan import (
    DEFAULT_CHUNK_SIZE,
    selective_scan,
    selective_scan_step,
)

Tensor = torch.Tensor
State = tuple[Tensor, ...]


def _padded_inputs(
    x: Tensor, conv_state: Tensor | None, reset: Tensor | None, d_conv: int
) -> tuple[Tensor, Tensor | None]:
    """`[conv_state, x]` along time, [b, k-1+L, C], and the number of resets up to each of its
    positions, [b, k-1+L] (None without resets): two inputs are connected when their counts are
    equal, i.e. no reset lies between them."""
    if conv_state is None:
        conv_state = x.new_zeros(x.shape[0], d_conv - 1, x.shape[-1])
    xpad = torch.cat([conv_state.to(x.dtype), x], dim=1)
    if reset is None:
        return xpad, None
    count = F.pad(torch.cumsum(reset.to(torch.int32), dim=1), (d_conv - 1, 0))
    return xpad, count


class _CausalConvFn(torch.autograd.Function):
    """The depthwise causal conv before its activation, as k shifted multiply-adds, with a
    hand-written backward pass: autograd through k overlapping slices of the padded input would
    build k zero-filled gradients of its full size and add them up (a fifth of the whole layer's
    time at L = 2048).

    xpad [b, k-1+L, C]; weight [C, k] and bias [C] (or None) in xpad's dtype; taps [k, b, L, 1]
    (1 where tap j reaches the output, 0 across a reset) or None -> [b, L, C].
    """

    @staticmethod
    def forward(ctx, xpad, weight, bias, taps):
        k = weight.shape[1]
        b, L, C = xpad.shape[0], xpad.shape[1] - k + 1, xpad.shape[2]
        out = xpad.new_zeros(b, L, C) if bias is None else bias.expand(b, L, C).clone()
        for j in range(k):  # tap j sees the input k-1-j steps back
            x_j = xpad[:, j : j + L] if taps is None else xpad[:, j : j + L] * taps[j]
            out.addcmul_(x_j, weight[:, j])
        ctx.save_for_backward(xpad, weight, taps)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xpad, weight, taps = ctx.saved_tensors
        k, L = weight.shape[1], grad.shape[1]
        grad_x = torch.zeros_like(xpad) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for j in range(k):
            g_j = grad if taps is None else grad * taps[j]
            if grad_x is not None:
                grad_x[:, j : j + L].addcmul_(g_j, weight[:, j])
            if grad_w is not None:
                grad_w[:, j] = (g_j * xpad[:, j : j + L]).sum((0, 1))
        grad_b = grad.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _causal_conv(
    xpad: Tensor, count: Tensor | None, weight: Tensor, bias: Tensor | None, L: int
) -> Tensor:
    """Causal depthwise conv + SiLU -> [b, L, C]; weight [C, k].

    Tap j sees the input k-1-j steps back; it is dropped when a reset lies between that input
    and the output, which is what a fresh start (zero padding) would have seen.
    """
    d_conv = weight.shape[1]
    taps = None
    if count is not None:
        now = count[:, d_conv - 1 :]
        taps = torch.stack([count[:, j : j + L] == now for j in range(d_conv)])
        taps = taps.unsqueeze(-1).to(xpad.dtype)  # [k, b, L, 1]
    bias = None if bias is None else bias.to(xpad.dtype)
    return F.silu(_CausalConvFn.apply(xpad, weight.to(xpad.dtype), bias, taps))


def _final_conv_state(xpad: Tensor, count: Tensor | None, L: int) -> Tensor:
    """The last k-1 inputs; those before the last reset must not reach the next step."""
    window = xpad[:, L:]
    if count is not None:
        window = window * (count[:, L:] == count[:, -1:]).unsqueeze(-1).to(window.dtype)
    return window


class Mamba(nn.Module):
    """One Mamba-1 mixer (mamba-ssm's `Mamba`, `mamba_simple.py`).

    in_proj -> [x, z]; depthwise causal conv1d + SiLU over x; x_proj -> [dt, B, C];
    delta = softplus(dt_proj(dt)) (its bias added inside the scan); A = -exp(A_log) per channel
    and state index (S4D-real); selective scan with D skip, gated by silu(z); out_proj.

    Args:
        d_model: width of the input and output.
        d_state: SSM state size N per channel.
        d_conv: causal convolution kernel width.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the step-size projection; "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: range of the log-uniform initial step sizes.
        dt_init: "random" (dt_proj weight uniform in +-dt_rank^-0.5 * dt_scale) or "constant".
        dt_scale: scale of dt_proj's initial weight.
        conv_bias: the convolution has a bias. bias: in_proj and out_proj have biases.
        chunk_size: steps per chunk of the selective scan (`selective_scan`).
        force_torch: never use the fused `mamba-ssm` / `causal-conv1d` kernels, even on CUDA.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        force_torch: bool = False,
    ) -> None:
        super().__init__()
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ConfigError(f"Mamba: dt_rank must be 'auto' or an integer >= 1, got {dt_rank!r}")
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if value < 1:
                raise ConfigError(f"Mamba: {name} must be >= 1, got {value}")
        if expand < 1:
            raise ConfigError(f"Mamba: expand must be >= 1, got {expand}")
        if chunk_size < 1:
            raise ConfigError(f"Mamba: chunk_size must be >= 1, got {chunk_size}")
        if dt_init not in ("random", "constant"):
            raise ConfigError(f"Mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ConfigError(f"Mamba: need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        d_inner = expand * d_model
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner, self.dt_rank = d_inner, dt_rank
        self.chunk_size = chunk_size
        self.force_torch = force_torch

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise conv
        self.conv_weight = nn.Parameter(torch.empty(d_inner, d_conv).uniform_(-bound, bound))
        self.conv_bias = (
            nn.Parameter(torch.empty(d_inner).uniform_(-bound, bound)) if conv_bias else None
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        dt_init_std = dt_rank**-0.5 * dt_scale
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        )
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(dt_init_std)
            else:
                self.dt_proj.weight.uniform_(-dt_init_std, dt_init_std)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        # S4D-real: A[d, n] = -(n + 1) for every channel.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # [d_inner, d_state]
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """(conv_state [B, d_conv-1, d_inner], ssm_state [B, d_inner, d_state]), zeros."""
        dtype = self.in_proj.weight.dtype
        device = device if device is not None else self.in_proj.weight.device
        conv = torch.zeros(batch_size, self.d_conv - 1, self.d_inner, dtype=dtype, device=device)
        ssm = torch.zeros(
            batch_size, self.d_inner, self.d_state, dtype=state_dtype(dtype), device=device
        )
        return conv, ssm

    def _ssm_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x [..., d_inner] (after the conv) -> (delta without its bias [..., d_inner], A, B, C)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias goes in with the softplus
        A = -torch.exp(self.A_log.to(state_dtype(self.A_log.dtype)))  # [d_inner, d_state]
        return delta, A, B, C

    def forward(
        self, u: Tensor, state: State | None = None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """u: [B, L, d_model] -> (y [B, L, d_model], (conv_state, ssm_state))."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: expected input [B, L, {self.d_model}], got {tuple(u.shape)}")
        b, L, _ = u.shape
        check_reset(reset, (b, L), "Mamba.forward")
        conv_state, ssm_state = (None, None) if state is None else state
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [b, L, d_inner] each
        xpad, count = _padded_inputs(x, conv_state, reset, self.d_conv)
        new_conv_state = _final_conv_state(xpad, count, L)
        if kernels.use_fused_conv(x, self.d_inner, self.force_torch):  # pragma: no cover
            x = kernels.fused_conv(x, self.conv_weight, self.conv_bias, conv_state, reset)
        else:
            x = _causal_conv(xpad, count, self.conv_weight, self.conv_bias, L)
        delta, A, B, C = self._ssm_params(x)
        if kernels.use_fused_selective_scan(
            x, ssm_state, reset, self.force_torch
        ):  # pragma: no cover
            y, ssm_state = kernels.fused_selective_scan(
                x, delta, A, B, C, self.D, z, self.dt_proj.bias
            )
        else:
            y, ssm_state = selective_scan(
                x,
                delta,
                A,
                B,
                C,
                D=self.D,
                z=z,
                delta_bias=self.dt_proj.bias,
                delta_softplus=True,
                initial_state=ssm_state,
                reset=reset,
                chunk_size=self.chunk_size,
            )
        return self.out_proj(y), (new_conv_state, ssm_state)

    def step(self, u: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """u: [B, d_model] -> (y [B, d_model], state); O(1) in the context length."""
        if u.dim() != 2 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"Mamba.step: expected input [B, {self.d_model}], got {tuple(u.shape)}"
            )
        b = u.shape[0]
        check_reset(reset, (b,), "Mamba.step")
        conv_state, ssm_state = state
        if reset is not None:
            keep = (~reset).to(conv_state.dtype)
            conv_state = conv_state * keep[:, None, None]
            ssm_state = ssm_state * keep.to(ssm_state.dtype)[:, None, None]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        window = torch.cat([conv_state.to(x.dtype), x.unsqueeze(1)], dim=1)  # [b, k, d_inner]
        conv_out = (window * self.conv_weight.to(x.dtype).T).sum(1)
        if self.conv_bias is not None:
            conv_out = conv_out + self.conv_bias.to(x.dtype)
        x = F.silu(conv_out)
        delta, A, B, C = self._ssm_params(x)
        y, ssm_state = selective_scan_step(
            x,
            delta,
            A,
            B,
            C,
            ssm_state,
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )
        return self.out_proj(y), (window[:, 1:], ssm_state)


class MambaBackbone(ResidualStack):
    """Pre-norm residual stack of Mamba-1 layers with a final RMSNorm (`ResidualStack`), the same
    stack as `Mamba2Backbone` (mamba-ssm's `MixerModel` with `Mamba` mixers).

    The residual stream is kept in fp32 (fp64 for fp64 inputs) under autocast; each layer adds
    `dropout(mixer(norm(residual)))`. The state is the flat tuple
    `(conv_0, ssm_0, conv_1, ssm_1, ...)`, every tensor with the batch first.

    Args:
        d_model: width of the stream. n_layers: number of Mamba-1 blocks.
        d_state, d_conv, expand, dt_rank, chunk_size: see `Mamba`.
        dropout: dropout on each residual add.
        force_torch: never use the fused `mamba-ssm` CUDA kernels.
        norm_eps: epsilon of the block norms and the final norm (1e-5, mamba-ssm's default).
    """

    kind = "mamba"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dropout: float = 0.0,
        force_torch: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        def make_mixer() -> Mamba:
            return Mamba(
                d_model,
                d_state,
                d_conv,
                expand,
                dt_rank,
                chunk_size=chunk_size,
                force_torch=force_torch,
            )

        super().__init__(d_model, n_layers, make_mixer, dropout=dropout, norm_eps=norm_eps)
