"""Sequence mixers with no RL knowledge: the SSD scan, the Mamba-2 layer and its backbone.

Every sequence model here offers `forward(x, state=None, reset=None)`, `step(x, state, reset=None)`
and `initial_state(batch_size, device=None)`, so the world model never knows which one it holds.
"""

from lightning_drama.ssm.kernels import kernels_available
from lightning_drama.ssm.mamba2 import Mamba2, Mamba2Backbone
from lightning_drama.ssm.norm import GatedRMSNorm, RMSNorm
from lightning_drama.ssm.ssd import segsum_exp, ssd_reference, ssd_scan, ssd_step

__all__ = [
    "GatedRMSNorm",
    "Mamba2",
    "Mamba2Backbone",
    "RMSNorm",
    "kernels_available",
    "segsum_exp",
    "ssd_reference",
    "ssd_scan",
    "ssd_step",
]
