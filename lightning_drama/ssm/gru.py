"""A plain multi-layer GRU: the recurrent baseline the Drama paper argues against.

Same contract as the Mamba backbones; the state is `(h [B, n_layers, d_model],)`, batch first.
A reset zeroes the hidden state of that row before the step, which is exactly a fresh start.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_drama.checks import ConfigError

Tensor = torch.Tensor
State = tuple[Tensor, ...]


class GRUBackbone(nn.Module):
    """`nn.GRU(d_model, d_model, n_layers)`; its top layer's hidden state is the output.

    The recurrence runs in fp32 (fp64 for an fp64 model) whatever the autocast dtype: a GRU has
    no long parallel contraction for bf16 to speed up, and its hidden state is what it remembers.
    Training windows with episode starts inside run one `nn.GRU` call per stretch between the
    time steps at which some row resets.

    Args:
        d_model: width of the input, hidden state and output.
        n_layers: stacked GRU layers.
        dropout: dropout between stacked layers (`nn.GRU`'s), 0 by default.
    """

    kind = "gru"

    def __init__(self, d_model: int, n_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"GRUBackbone: n_layers must be >= 1, got {n_layers}")
        self.d_model, self.n_layers = d_model, n_layers
        self.gru = nn.GRU(
            d_model, d_model, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )

    def _dtype(self) -> torch.dtype:
        return self.gru.weight_ih_l0.dtype

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        device = device if device is not None else self.gru.weight_ih_l0.device
        return (
            torch.zeros(
                batch_size, self.n_layers, self.d_model, dtype=self._dtype(), device=device
            ),
        )

    def _hidden(self, state: State | None, batch_size: int, device: torch.device) -> Tensor:
        """State -> nn.GRU's `h0` [n_layers, B, D]."""
        if state is None:
            return torch.zeros(
                self.n_layers, batch_size, self.d_model, dtype=self._dtype(), device=device
            )
        if len(state) != 1 or tuple(state[0].shape) != (batch_size, self.n_layers, self.d_model):
            shapes = [tuple(s.shape) for s in state]
            raise ValueError(
                f"GRUBackbone: state must be (h [{batch_size}, {self.n_layers}, {self.d_model}],), "
                f"got shapes {shapes}"
            )
        return state[0].to(self._dtype()).transpose(0, 1).contiguous()

    def forward(
        self, x: Tensor, state: State | None = None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: [B, L, d_model], reset: [B, L] bool -> (y [B, L, d_model], (h [B, layers, D],))."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"GRUBackbone: expected input [B, L, {self.d_model}], got {tuple(x.shape)}"
            )
        b, L, _ = x.shape
        if reset is not None and tuple(reset.shape) != (b, L):
            raise ValueError(
                f"GRUBackbone.forward: reset must have shape {(b, L)}, got {tuple(reset.shape)}"
            )
        h = self._hidden(state, b, x.device)
        x = x.to(self._dtype())
        with torch.autocast(x.device.type, enabled=False):
            if reset is None:
                y, h = self.gru(x, h)
                return y, (h.transpose(0, 1),)
            # Split the window where any row starts a new episode; zero those rows' state there.
            starts = [0, *torch.nonzero(reset[:, 1:].any(0)).flatten().add(1).tolist(), L]
            pieces = []
            for t0, t1 in zip(starts[:-1], starts[1:], strict=True):
                h = h * (~reset[:, t0]).to(h.dtype)[None, :, None]
                y, h = self.gru(x[:, t0:t1], h)
                pieces.append(y)
        return torch.cat(pieces, 1), (h.transpose(0, 1),)

    def step(self, x: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """x: [B, d_model], reset: [B] bool -> (y [B, d_model], state); O(1)."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"GRUBackbone.step: expected input [B, {self.d_model}], got {tuple(x.shape)}"
            )
        y, state = self(x[:, None], state, None if reset is None else reset[:, None])
        return y[:, 0], state
