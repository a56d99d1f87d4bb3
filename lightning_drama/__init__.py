"""Drama: a model-based RL agent with a Mamba-2 world model, in PyTorch Lightning."""

__version__ = "0.1.0"

from lightning_drama.quiet import silence

silence()
