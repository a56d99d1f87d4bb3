"""One switch over the sequence models: Mamba-2 (Drama's), Mamba-1, a causal Transformer and a GRU.

Every backbone built here has the same contract (see the package docstring) and the attributes
`kind`, `d_model` and `n_layers`, so the world model, imagination and acting never ask which one
they hold. `build_backbone` takes the union of the backbones' options and passes each backbone the
ones it understands; the others are ignored, so one config can switch backbones with one key.
"""

from __future__ import annotations

from torch import nn

from lightning_drama.checks import ConfigError

BACKBONES = ("mamba2", "mamba", "transformer", "gru")
BACKBONE_NAMES = {
    "mamba2": "Mamba-2",
    "mamba": "Mamba-1",
    "transformer": "Transformer",
    "gru": "GRU",
}

# Dropout on the residual branches when none is given: the reference Drama has none in its Mamba
# blocks; its Transformer baseline has 0.1 (attention weights, attention output, feed-forward).
DEFAULT_DROPOUT = {"mamba2": 0.0, "mamba": 0.0, "transformer": 0.1, "gru": 0.0}


def build_backbone(
    kind: str,
    d_model: int,
    n_layers: int,
    *,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    headdim: int = 64,
    ngroups: int = 1,
    chunk_size: int = 64,
    dt_rank: int | str = "auto",
    num_heads: int = 8,
    max_length: int = 128,
    positional: str = "learned",
    dropout: float | None = None,
    norm_eps: float = 1e-5,
    force_torch: bool = False,
) -> nn.Module:
    """A sequence model by name.

    Args:
        kind: "mamba2" (Drama), "mamba" (Mamba-1), "transformer" (the reference's baseline) or
            "gru".
        d_model: width of the input and output. n_layers: number of blocks / GRU layers.
        d_state, d_conv, expand: SSM state size, causal conv width, inner-width factor (Mamba-1/2).
        headdim, ngroups, chunk_size: Mamba-2 head size, B/C groups and SSD chunk length (Mamba-1's
            scan keeps its own tuned chunk, `selective_scan.DEFAULT_CHUNK_SIZE`).
        dt_rank: Mamba-1's rank of the step-size projection ("auto": ceil(d_model / 16)).
        num_heads: Transformer heads.
        max_length: Transformer attention window and number of learned positions (the reference
            uses its longest sequence, the training window).
        positional: Transformer positions, "learned" (the reference) or "sinusoidal".
        dropout: residual-branch dropout; None = the reference's for that backbone (0.1 for the
            Transformer, 0 for the others).
        norm_eps: epsilon of the RMSNorms of the Mamba stacks.
        force_torch: Mamba-1/2 never use the fused `mamba-ssm` CUDA kernels.
    """
    if kind not in BACKBONES:
        raise ConfigError(f"unknown backbone {kind!r}; choose one of {', '.join(BACKBONES)}")
    if dropout is None:
        dropout = DEFAULT_DROPOUT[kind]
    if kind == "mamba2":
        from lightning_drama.ssm.mamba2 import Mamba2Backbone

        return Mamba2Backbone(
            d_model, n_layers, d_state=d_state, d_conv=d_conv, expand=expand, headdim=headdim,
            ngroups=ngroups, chunk_size=chunk_size, dropout=dropout, force_torch=force_torch,
            norm_eps=norm_eps,
        )  # fmt: skip
    if kind == "mamba":
        from lightning_drama.ssm.mamba1 import MambaBackbone

        return MambaBackbone(
            d_model, n_layers, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
            dropout=dropout, force_torch=force_torch, norm_eps=norm_eps,
        )  # fmt: skip
    if kind == "transformer":
        from lightning_drama.ssm.transformer import TransformerBackbone

        return TransformerBackbone(
            d_model, n_layers, num_heads=num_heads, max_length=max_length, dropout=dropout,
            positional=positional,
        )  # fmt: skip
    from lightning_drama.ssm.gru import GRUBackbone

    return GRUBackbone(d_model, n_layers, dropout=dropout)
