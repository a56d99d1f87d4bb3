"""The pre-norm residual stack shared by the Mamba-1 and Mamba-2 backbones.

`ResidualStack` holds `n_layers` mixers, each with the sequence-model contract of this package
(`forward(x, state, reset) -> (y, state)`, `step`, `initial_state` with a (conv, ssm) state pair
and an `out_proj`), and runs `residual + dropout(mixer(norm(residual)))` per layer, then a final
RMSNorm, as mamba-ssm's `MixerModel` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lightning_drama.checks import ConfigError
from lightning_drama.ssm.norm import RMSNorm

Tensor = torch.Tensor
State = tuple[Tensor, ...]


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """SSM states live in fp32 (fp64 for fp64 models) whatever the autocast dtype."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def check_reset(reset: Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if reset is not None and tuple(reset.shape) != shape:
        raise ValueError(f"{what}: reset must have shape {shape}, got {tuple(reset.shape)}")


class ResidualStack(nn.Module):
    """Pre-norm residual stack of mixers with a final RMSNorm.

    The residual stream is kept in fp32 (fp64 for fp64 inputs) under autocast; each layer adds
    `dropout(mixer(norm(residual)))`. The state is the flat tuple
    `(conv_0, ssm_0, conv_1, ssm_1, ...)`, every tensor with the batch first. Error messages
    name the subclass.

    Args:
        d_model: width of the stream. n_layers: number of blocks.
        make_mixer: builds one mixer (called n_layers times, after the block norms are made).
        dropout: dropout on each residual add.
        norm_eps: epsilon of the block norms and the final norm.
    """

    kind = "residual"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        make_mixer: Callable[[], nn.Module],
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"{type(self).__name__}: n_layers must be >= 1, got {n_layers}")
        self.d_model = d_model
        self.n_layers = n_layers
        self.norms = nn.ModuleList(RMSNorm(d_model, eps=norm_eps) for _ in range(n_layers))
        self.mixers = nn.ModuleList(make_mixer() for _ in range(n_layers))
        self.final_norm = RMSNorm(d_model, eps=norm_eps)
        # mamba-ssm's `_init_weights` (GPT-2's scheme), which the reference uses: each residual
        # branch's output projection scaled by 1 / sqrt(n_layers).
        with torch.no_grad():
            for mixer in self.mixers:
                mixer.out_proj.weight.div_(math.sqrt(n_layers))
        self.dropout = nn.Dropout(dropout)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return tuple(s for mixer in self.mixers for s in mixer.initial_state(batch_size, device))

    def _layer_states(self, state: State | None, batch_size: int) -> list[State | None]:
        if state is None:
            return [None] * self.n_layers
        name = type(self).__name__
        if len(state) != 2 * self.n_layers:
            raise ValueError(
                f"{name}: state must hold {2 * self.n_layers} tensors "
                f"(conv and ssm per layer), got {len(state)}"
            )
        for s in state:
            if s.shape[0] != batch_size:
                raise ValueError(f"{name}: state batch {s.shape[0]} != input batch {batch_size}")
        return [(state[2 * i], state[2 * i + 1]) for i in range(self.n_layers)]

    def _run(
        self, x: Tensor, state: State | None, reset: Tensor | None, one_step: bool
    ) -> tuple[Tensor, State]:
        """The residual stack: `mixer.step` per layer when `one_step`, else `mixer.forward`."""
        residual = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        new_state: list[Tensor] = []
        for norm, mixer, layer_state in zip(
            self.norms, self.mixers, self._layer_states(state, x.shape[0]), strict=True
        ):
            run = mixer.step if one_step else mixer
            h, s = run(norm(residual), layer_state, reset)
            residual = residual + self.dropout(h).to(residual.dtype)
            new_state.extend(s)
        return self.final_norm(residual), tuple(new_state)

    def forward(
        self, x: Tensor, state: State | None = None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: [B, L, d_model], reset: [B, L] bool -> (y [B, L, d_model] fp32, state)."""
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"{name}: expected input [B, L, {self.d_model}], got {tuple(x.shape)}")
        check_reset(reset, tuple(x.shape[:2]), f"{name}.forward")
        return self._run(x, state, reset, one_step=False)

    def step(self, x: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """x: [B, d_model], reset: [B] bool -> (y [B, d_model] fp32, state)."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"{type(self).__name__}.step: expected input [B, {self.d_model}], "
                f"got {tuple(x.shape)}"
            )
        return self._run(x, state, reset, one_step=True)
