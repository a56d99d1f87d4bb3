"""Decision Mamba-Hybrid (DM-H; Huang et al., NeurIPS 2024): offline in-context RL learned from
learning histories, the trajectories of an RL agent improving on many tasks.

- `envs.py`: the tasks (Darkroom, Darkroom Hard, Dark Key-to-Door, their large variants and the
  T-mazes: sides as tasks, or Ni et al.'s side drawn per episode), their task lists and
  train/test splits;
- `data.py`: the learning-history generator (`python -m lightning_drama.dmh.data`) and
  `load_histories`, one Minari dataset per task;
- `model.py`: the DM-H network (`DecisionMambaHybrid`, `DMHConfig`), its loss and the
  valuable sub-goal targets (`valuable_subgoals`);
- `datamodule.py`: training contexts (`make_context`: n episodes sorted by return, rtg relabelled
  to the last one's return) and `DMHDataModule`, which streams random contexts in batches
  (and, for `test`, the held-out task indices);
- `baselines.py`: the paper's baselines on the same batches: Algorithm Distillation
  (`AlgorithmDistillation`, a Transformer over the cross-episode history; with a Mamba-2, the
  paper's "DM") and the Decision Transformer (`DecisionTransformer`), with their play loops;
- `module.py`: `DMHModule` (``algorithm``: dmh, ad, dm, dt), training (AdamW) and in-context
  evaluation on held-out tasks;
- `__main__.py`: the command line, ``python -m lightning_drama.dmh fit|test --config
  configs/dmh/darkroom.yaml``.
"""
