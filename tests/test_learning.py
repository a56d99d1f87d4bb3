"""The agent learns: Drama trained briefly on a tiny pixel game beats a random policy clearly.

Catch (tests/catch_env.py): a ball falls down a 4 x 4 grid of 16-pixel cells, the paddle must be
under it when it lands (+1, else -1). A few minutes of CPU training with a tiny model.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
from catch_env import Catch
from lightning.pytorch.loggers import CSVLogger

from lightning_drama.data import DramaDataModule
from lightning_drama.module import DramaModule

ENV_ID = "catch_env:Catch"
TINY_MODEL = dict(
    wm_lr=1e-3,
    ac_lr=1e-3,
    warmup_updates=10,
    imagine_horizon=8,
    world_model=dict(
        encoder_channels=[8, 8, 16, 16, 16], stoch=8, classes=8, d_model=64, n_layers=1,
        d_state=8, headdim=32, chunk_size=16, head_hidden=64, num_bins=63, dropout=0.0,
    ),
    actor_critic=dict(
        actor_hidden=64, actor_layers=2, critic_hidden=64, critic_layers=2, num_bins=63,
        entropy_coef=1e-2,
    ),
)  # fmt: skip


def random_policy_return(episodes: int, seed: int) -> float:
    env, rng, total = Catch(), np.random.default_rng(seed), 0.0
    for i in range(episodes):
        env.reset(seed=seed + i)
        done = False
        while not done:
            _, reward, done, _, _ = env.step(int(rng.integers(3)))
            total += reward
    return total / episodes


@pytest.mark.slow
def test_drama_learns_catch(tmp_path):
    pl.seed_everything(0)
    datamodule = DramaDataModule(
        ENV_ID, capacity=5000, warmup_steps=256, total_env_steps=1000, batch_size=8, seq_len=16,
        imagine_batch=64, imagine_context=2, replay_dir="memory", eval_episodes=50,
        eval_max_steps=10,
    )  # fmt: skip
    model = DramaModule(datamodule.num_actions, **TINY_MODEL)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=-1,
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=100_000,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
    )
    trainer.fit(model, datamodule=datamodule)
    assert datamodule.env_steps == 1000

    trainer.test(model, datamodule=datamodule)
    trained = model.last_eval["return_mean"]
    random = random_policy_return(episodes=2000, seed=1)
    print(f"catch: trained agent {trained:+.2f}, random policy {random:+.2f}")
    assert -0.6 < random < -0.2  # the game is what we think it is
    assert trained > random + 0.6, (trained, random)
