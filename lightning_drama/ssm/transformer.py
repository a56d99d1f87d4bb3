"""The reference Drama's Transformer baseline (its STORM-style `StochasticTransformerKVCache`).

As in the reference: the input passes `Linear(D, D, bias=False) -> LayerNorm` (the second half of
its stem; the world model holds the first half), absolute positions are added (learned, one per
position up to `max_length`), then `LayerNorm(eps=1e-6)`, then post-norm blocks:

    x = LayerNorm(x + dropout(fc(attention(x))))          8 heads, no biases, dropout on weights
    x = LayerNorm(x + dropout(w_2(relu(w_1(x)))))         hidden width 2 D

Two things the reference does not do, so that this model honours the sequence-model contract:
- Episode boundaries: a step attends only to steps of its own episode (`reset` starts one), and
  its position counts from the episode's start, so a reset equals a fresh start.
- A bounded key/value cache for `step`: the state holds the keys and values of the last
  `max_length - 1` steps of every layer and the number of steps since the episode start. A step
  attends to itself and those, so `step` costs O(max_length), never more. The reference's
  cache grows without bound; within `max_length` steps of an episode start (the training window,
  imagination's context + horizon, the acting context) the two are the same. Beyond it, every
  step attends to the last `max_length` steps of the layer below (a sliding window; through n
  layers a step still depends on up to n * (max_length - 1) steps back) at the last learned
  position, and the parallel `forward` applies the same window, so the two calls agree at every
  length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError

Tensor = torch.Tensor
State = tuple[Tensor, ...]

POSITIONALS = ("learned", "sinusoidal")


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The fixed encoding of "Attention is all you need": [length, dim], sin on even channels."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.float()


class TransformerBlock(nn.Module):
    """Post-norm self-attention and feed-forward block (the reference's `AttentionBlockKVCache`).

    `forward(x [B, Lq, D], past_k, past_v [B, P, H, D/H], visible [B, Lq, P+Lq] bool)` returns
    the block output and the keys and values of all P + Lq positions.
    """

    def __init__(self, d_model: int, num_heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.w_q = nn.Linear(d_model, d_model, bias=False)
        self.w_k = nn.Linear(d_model, d_model, bias=False)
        self.w_v = nn.Linear(d_model, d_model, bias=False)
        self.fc = nn.Linear(d_model, d_model, bias=False)
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w_1 = nn.Linear(d_model, hidden)
        self.w_2 = nn.Linear(hidden, d_model)
        self.ffn_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, past_k: Tensor, past_v: Tensor, visible: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, lq, d = x.shape
        heads = (b, lq, self.num_heads, self.head_dim)
        q = self.w_q(x).view(heads)
        k = torch.cat([past_k.to(x.dtype), self.w_k(x).view(heads)], 1)  # [B, P+Lq, H, hd]
        v = torch.cat([past_v.to(x.dtype), self.w_v(x).view(heads)], 1)
        q, k = (
            q.to(torch.promote_types(q.dtype, k.dtype)),
            k.to(torch.promote_types(q.dtype, k.dtype)),
        )
        scores = torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(self.head_dim), k)
        # The reference fills -1e9 (under bf16); the dtype's lowest value also fits fp16.
        scores = scores.masked_fill(~visible[:, None], torch.finfo(scores.dtype).min)
        weights = self.dropout(F.softmax(scores, dim=-1))
        out = torch.einsum("bhqk,bkhd->bqhd", weights.to(v.dtype), v).reshape(b, lq, d)
        x = self.attn_norm(x + self.dropout(self.fc(out)))
        x = self.ffn_norm(x + self.dropout(self.w_2(F.relu(self.w_1(x)))))
        return x, k, v


class TransformerBackbone(nn.Module):
    """Causal Transformer with per-episode attention and a bounded key/value cache.

    Args:
        d_model: width of the stream (512 in Drama XS).
        n_layers: blocks (2, the reference's `NumLayers`).
        num_heads: attention heads (8); d_model must be divisible by it.
        max_length: attention window and number of positions (the reference uses its longest
            sequence: the 128-step training window).
        dropout: on the attention weights, the attention output and the feed-forward output (0.1).
        positional: "learned" (the reference's `nn.Embedding` per position) or "sinusoidal"
            (fixed; no parameters, for long sequences).
        ffn_mult: feed-forward hidden width = ffn_mult * d_model (2).

    State: `(steps [B] int64, k_0, v_0, k_1, v_1, ...)` with `k_i, v_i: [B, max_length-1, heads,
    d_model/heads]`, oldest first; only the last `min(steps, max_length-1)` entries are attended.
    """

    kind = "transformer"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        num_heads: int = 8,
        max_length: int = 128,
        dropout: float = 0.1,
        positional: str = "learned",
        ffn_mult: int = 2,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"TransformerBackbone: n_layers must be >= 1, got {n_layers}")
        if num_heads < 1 or d_model % num_heads:
            raise ConfigError(
                f"TransformerBackbone: d_model {d_model} must be divisible by num_heads {num_heads}"
            )
        if max_length < 1:
            raise ConfigError(f"TransformerBackbone: max_length must be >= 1, got {max_length}")
        if positional not in POSITIONALS:
            raise ConfigError(
                f"TransformerBackbone: positional must be one of {POSITIONALS}, got {positional!r}"
            )
        self.d_model, self.n_layers, self.num_heads = d_model, n_layers, num_heads
        self.max_length, self.positional = max_length, positional
        self.in_proj = nn.Linear(d_model, d_model, bias=False)
        self.in_norm = nn.LayerNorm(d_model)
        if positional == "learned":
            self.position = nn.Embedding(max_length, d_model)
        else:
            self.register_buffer(
                "sinusoid", sinusoidal_positions(max_length, d_model), persistent=False
            )
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, ffn_mult * d_model, dropout)
            for _ in range(n_layers)
        )

    def _positions(self, index: Tensor) -> Tensor:
        """index: [B, L] int64 in [0, max_length) -> [B, L, d_model]."""
        if self.positional == "learned":
            return self.position(index)
        return self.sinusoid[index]

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        weight = self.in_proj.weight
        device = device if device is not None else weight.device
        cache = (batch_size, self.max_length - 1, self.num_heads, self.d_model // self.num_heads)
        steps = torch.zeros(batch_size, dtype=torch.int64, device=device)
        kv = [
            torch.zeros(cache, dtype=weight.dtype, device=device) for _ in range(2 * self.n_layers)
        ]
        return (steps, *kv)

    def _check_state(self, state: State, batch_size: int) -> None:
        if len(state) != 1 + 2 * self.n_layers:
            raise ValueError(
                f"TransformerBackbone: state must hold {1 + 2 * self.n_layers} tensors (steps, "
                f"then keys and values per layer), got {len(state)}"
            )
        for s in state:
            if s.shape[0] != batch_size:
                raise ValueError(
                    f"TransformerBackbone: state batch {s.shape[0]} != input batch {batch_size}"
                )

    def forward(
        self, x: Tensor, state: State | None = None, reset: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: [B, L, d_model], reset: [B, L] bool -> (y [B, L, d_model], state)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"TransformerBackbone: expected input [B, L, {self.d_model}], got {tuple(x.shape)}"
            )
        b, L, _ = x.shape
        if reset is not None and tuple(reset.shape) != (b, L):
            raise ValueError(
                f"TransformerBackbone.forward: reset must have shape {(b, L)}, "
                f"got {tuple(reset.shape)}"
            )
        window, device = self.max_length, x.device
        time = torch.arange(L, device=device)
        if state is None:  # nothing before the window: no cache to attend to
            past = 0
            steps0 = torch.zeros(b, dtype=torch.int64, device=device)
            caches = [x.new_zeros(b, 0, self.num_heads, self.d_model // self.num_heads)] * (
                2 * self.n_layers
            )
        else:
            self._check_state(state, b)
            past, steps0, caches = window - 1, state[0], list(state[1:])
        # steps[b, t]: steps since the episode start at or before t (carried over from the state).
        if reset is None:
            steps = steps0[:, None] + time
        else:
            last_start = torch.where(reset, time, -1).cummax(1).values  # [B, L]
            steps = torch.where(last_start >= 0, time - last_start, steps0[:, None] + time)
        # Query t sees key t - lag for lag in [0, min(steps, window - 1)]: itself, its episode's
        # earlier steps, at most window - 1 back (the cache holds exactly window - 1).
        lag = time[:, None].int() - torch.arange(-past, L, device=device, dtype=torch.int32)
        reach = steps.clamp(max=window - 1)  # [B, L]
        visible = (lag >= 0) & (lag <= reach[:, :, None])  # [B, L, past + L]

        h = self.in_norm(self.in_proj(x))
        h = self.norm(h + self._positions(reach).to(h.dtype))
        # The next call's cache: the last window - 1 keys and values, those of earlier episodes
        # zeroed (never attended; zero so that equal histories give equal states).
        cache_lag = torch.arange(window - 2, -1, -1, device=device)  # oldest slot first
        keep = (cache_lag <= steps[:, -1:])[:, :, None, None]  # [B, window - 1, 1, 1]
        new_caches = []
        for i, block in enumerate(self.blocks):
            h, k, v = block(h, caches[2 * i], caches[2 * i + 1], visible)
            new_caches.extend(self._keep_last(t, window - 1) * keep.to(t.dtype) for t in (k, v))
        out_dtype = torch.promote_types(self.in_proj.weight.dtype, torch.float32)
        return h.to(out_dtype), (steps[:, -1] + 1, *new_caches)

    @staticmethod
    def _keep_last(t: Tensor, n: int) -> Tensor:
        """The last n positions of [B, P, ...], zero-padded in front when P < n."""
        if t.shape[1] < n:
            t = torch.cat([t.new_zeros(t.shape[0], n - t.shape[1], *t.shape[2:]), t], 1)
        return t[:, t.shape[1] - n :]

    def step(self, x: Tensor, state: State, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """x: [B, d_model], reset: [B] bool -> (y [B, d_model], state); O(max_length)."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"TransformerBackbone.step: expected input [B, {self.d_model}], "
                f"got {tuple(x.shape)}"
            )
        y, state = self(x[:, None], state, None if reset is None else reset[:, None])
        return y[:, 0], state
