"""Live data for Drama: replay buffer with DFS, environment collector and the DataModule."""

from lightning_drama.data.collector import Collector, Policy
from lightning_drama.data.datamodule import DeferredBatch, DramaDataModule, ReplayStream
from lightning_drama.data.replay import ReplayBuffer

__all__ = [
    "Collector",
    "DeferredBatch",
    "DramaDataModule",
    "Policy",
    "ReplayBuffer",
    "ReplayStream",
]
