"""Callbacks: the environment loop between updates and the env-step budget."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class EnvironmentLoop(pl.Callback):
    """Steps the live environment(s) before every training step and ends the run on budget.

    Before each update the DataModule's collector takes `data.env_steps_per_update` steps with
    the module's policy (posterior of the current frame + the carried recurrent state). After each
    update the run stops once `data.total_env_steps` env steps were taken by all processes
    together; `trainer.max_steps` is not used for this, since with two optimisers
    `global_step` counts optimiser steps, not updates.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = self._datamodule(trainer)
        now = datamodule.env_steps_all_processes
        if datamodule.budget_reached:  # e.g. a finished run resumed with the same budget
            rank_zero_info(
                f"The budget of {datamodule.total_env_steps:,} env steps is reached already "
                f"({now:,}): nothing to train. Raise --data.total_env_steps to go on."
            )
            trainer.should_stop = True
            return
        rank_zero_info(
            f"Training until {datamodule.total_env_steps:,} env steps "
            f"(now {now:,}, {datamodule.env_steps_per_update} per update per process)"
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        datamodule = self._datamodule(trainer)
        self._count_to_budget(trainer, datamodule, batch_idx)
        with trainer.precision_plugin.forward_context():
            episodes = datamodule.collect(pl_module.policy)
        pl_module.record_episodes(episodes)
        pl_module.log("env_steps", float(pl_module.env_steps), prog_bar=True, logger=False)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        datamodule = self._datamodule(trainer)
        if datamodule.budget_reached:
            trainer.should_stop = True
            self._save_last(trainer)

    @staticmethod
    def _count_to_budget(trainer: pl.Trainer, datamodule: Any, batch_idx: int) -> None:
        """Give the (tqdm) progress bar of the endless replay stream the number of updates to
        the budget, so that it shows how far the run is and when it will end."""
        callback = trainer.progress_bar_callback
        if not isinstance(callback, TQDMProgressBar):  # e.g. Rich's: left as Lightning shows it
            return
        bar = callback.train_progress_bar if callback.is_enabled else None
        if bar is None or getattr(bar, "total", 0) is not None:
            return
        per_update = datamodule.env_steps_per_update * trainer.world_size
        left = datamodule.total_env_steps - datamodule.env_steps_all_processes
        bar.total = batch_idx + max(1, math.ceil(left / per_update))
        # Resumed within the epoch: the updates before it were not done in this process, so they
        # must not count into the rate and the estimate of the time left.
        bar.initial = bar.n = batch_idx
        bar.set_description(f"Epoch {trainer.current_epoch}")

    @staticmethod
    def _save_last(trainer: pl.Trainer) -> None:
        """ModelCheckpoint(save_last=True) only refreshes last.ckpt together with a periodic save,
        so the final state of a budget-ended run is written here."""
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last:
            return
        if callback.dirpath is None:
            return
        path = os.path.join(
            callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION
        )
        # Should ModelCheckpoint save "last" once more (at the end of training, when it saved
        # nothing in this run), it writes this same file rather than a last-v1.ckpt beside it.
        # Set before saving, as ModelCheckpoint does: the path is part of its state.
        callback.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "collect"):
            raise RuntimeError(
                "DramaModule trains on live environments: pass a DramaDataModule to trainer.fit "
                "(python main.py fit --config configs/atari.yaml sets one up)"
            )
        return datamodule
