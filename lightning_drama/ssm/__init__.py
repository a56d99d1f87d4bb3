"""Sequence models with no RL knowledge: Mamba-2 (SSD scan), Mamba-1 (selective scan), the
reference's Transformer baseline and a GRU, behind one switch (`build_backbone`).

Every sequence model here offers `forward(x, state=None, reset=None)`, `step(x, state, reset=None)`
and `initial_state(batch_size, device=None)`, so the world model never knows which one it holds.
(Mamba-1's scan functions stay in `lightning_drama.ssm.selective_scan`: exporting the function
here would hide the module of the same name.)
"""

from lightning_drama.ssm.backbones import BACKBONES, build_backbone
from lightning_drama.ssm.gru import GRUBackbone
from lightning_drama.ssm.kernels import kernels_available
from lightning_drama.ssm.mamba1 import Mamba, MambaBackbone
from lightning_drama.ssm.mamba2 import Mamba2, Mamba2Backbone
from lightning_drama.ssm.norm import GatedRMSNorm, RMSNorm
from lightning_drama.ssm.ssd import segsum_exp, ssd_reference, ssd_scan, ssd_step
from lightning_drama.ssm.transformer import TransformerBackbone

__all__ = [
    "BACKBONES",
    "GRUBackbone",
    "GatedRMSNorm",
    "Mamba",
    "Mamba2",
    "Mamba2Backbone",
    "MambaBackbone",
    "RMSNorm",
    "TransformerBackbone",
    "build_backbone",
    "kernels_available",
    "segsum_exp",
    "ssd_reference",
    "ssd_scan",
    "ssd_step",
]
