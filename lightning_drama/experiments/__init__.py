"""Experiments outside RL training: one command each, writing their tables and plots to a folder.

- `python -m lightning_drama.experiments.gridworld`: the paper's long-sequence grid world
  (Fig. 3): next-token accuracy, time and memory of Mamba-2, Mamba-1, a Transformer and a GRU
  against sequence length.
"""
