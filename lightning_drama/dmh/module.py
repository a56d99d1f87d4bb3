"""`DMHModule`: DM-H training and in-context evaluation as a `LightningModule`, and the same for
the paper's baselines (``algorithm``: "dmh", "ad" Algorithm Distillation with a Transformer, "dm"
AD with Mamba-2, "dt" Decision Transformer; see `lightning_drama.dmh.baselines`), so that all four
train on the same contexts and are judged by the same evaluation.

Training: `DecisionMambaHybrid.loss` on the `DMHDataModule` contexts, AdamW (the paper's lr 1e-4,
weight decay 1e-4) with an optional linear warm-up. The paper's gradient clip (0.25) is the
Trainer's ``gradient_clip_val`` (set in ``configs/dmh/*.yaml``), not done here.

Evaluation (`test_step`): in-context RL on held-out tasks, no gradient updates. Each batch is
indices into the datamodule's ``test_tasks``; every task gets its own env and plays
``eval_episodes`` consecutive episodes with **one** Mamba memory, created once per task
(`DecisionMambaHybrid.initial_state`) and carried across the episodes, so the context grows with
every episode, as in training (the episodes of a context follow each other). The flat step
stream is cut in blocks of ``c`` steps whatever the episode boundaries, as in training: at each
block start `subgoal(memory, rtg, obs)` gives z, the GPT acts for c steps (`act_logits`, greedy
or sampled), and `close_block(memory, reward sum, done)` feeds the block's outcome. rtg at a
block start is ``target_return`` minus the rewards of the current episode so far.

``target_return`` default (None): the env's highest return over all its tasks, `max_return`
(Darkroom: ``episode_length``, a goal at the start cell; Darkroom Hard 1; Key-to-Door 2; the
T-maze 1). It is an upper bound that does not depend on the task, so it tells the agent nothing
about the goal (a per-task optimal return would leak its distance from the start).

The result is the in-context learning curve: the mean return at each episode index over the test
tasks, logged (``test/return_first``, ``test/return_last``, ``test/return_mean``,
``test/seconds_per_episode``), printed as a table and written to ``<log_dir>/in_context.csv``
(``episode, mean_return, std_return, ci95, n_tasks``; ci95 is the half-width of a normal 95 %
interval of the mean over the test tasks, 1.96 std / sqrt(n); NaN for one task).
"""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.dmh.envs import ENV_NAMES, PRESETS, Task, env_settings, make_dmh_env, task_at
from lightning_drama.dmh.model import DecisionMambaHybrid, DMHConfig

CSV_NAME = "in_context.csv"
# `DMHModule.algorithm`: DM-H and the paper's baselines, on the same data and evaluation.
ALGORITHMS = ("dmh", "ad", "dm", "dt")
ALGORITHM_NAMES = {
    "dmh": "DM-H",
    "ad": "AD (Transformer)",
    "dm": "DM (AD with Mamba-2)",
    "dt": "Decision Transformer",
}


def env_dims(env: str, **env_kwargs: Any) -> tuple[int, int]:
    """(state_dim, num_actions) of preset ``env``, read from one of its envs."""
    made = make_dmh_env(env, task_at(env, 0, **env_kwargs), **env_kwargs)
    try:
        return int(made.observation_space.shape[0]), int(made.action_space.n)
    finally:
        made.close()


def max_return(env: str, **env_kwargs: Any) -> float:
    """The highest return any task of preset ``env`` allows (the default target return)."""
    settings = env_settings(env, **env_kwargs)
    kind = PRESETS[env].task_kind
    if kind == "goal":
        return 1.0 if settings.get("hard") else float(settings["episode_length"])
    return 2.0 if kind == "key_door" else 1.0


@torch.no_grad()
def play_in_context(
    model: DecisionMambaHybrid,
    env: str,
    tasks: list[Task],
    episodes: int,
    target_return: float,
    greedy: bool = True,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    episode_blocks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Play ``episodes`` consecutive episodes of each task in ``tasks`` (in parallel, one env per
    task), carrying one Mamba memory per task across its episodes (see the module docstring).
    With ``episode_blocks`` (as the training contexts were made, `make_context`), every episode
    starts a block: an env whose episode ends inside a block feeds the training's neutral
    padding steps (state 0, action 0, reward 0, timesteps counting on) until the block ends.

    Returns ``returns [len(tasks), episodes]`` and ``seconds [len(tasks), episodes]``, each
    episode's wall time (the tasks run together, so a step's time is shared by the batch).
    """
    env_kwargs = env_kwargs or {}
    c = model.config.c
    device = next(model.parameters()).device
    b = len(tasks)
    envs = [make_dmh_env(env, task, **env_kwargs) for task in tasks]
    returns = np.zeros((b, episodes))
    seconds = np.zeros((b, episodes))
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    episode = np.zeros(b, np.int64)  # index of each task's current episode
    t = np.zeros(b, np.int64)  # step within the episode
    started = np.full(b, time.perf_counter())
    memory = model.initial_state(b, device)  # once per task, for all its episodes
    waiting = np.zeros(b, bool)  # episode_blocks: the episode ended, padding to the block's end
    while (episode < episodes).any():
        waiting[:] = False
        active = episode < episodes
        rtg = torch.tensor(target_return - returns[np.arange(b), episode.clip(max=episodes - 1)])
        z, memory = model.subgoal(
            memory, rtg.to(device), torch.as_tensor(obs, device=device), sample=not greedy
        )
        states, actions, rewards, timesteps = [], [], [], []
        block_done = np.zeros(b, bool)
        empty = torch.zeros(b, 0, device=device)
        for j in range(c):
            # a copy, as obs changes; a waiting env shows the padding's zero state
            states.append(torch.tensor(np.where(waiting[:, None], 0, obs), device=device))
            timesteps.append(torch.tensor(t, device=device))
            logits = model.act_logits(
                z,
                torch.stack(states, 1),
                torch.stack(actions, 1) if actions else empty.long(),
                torch.stack(rewards, 1) if rewards else empty,
                torch.stack(timesteps, 1),
            )
            if greedy:
                action = logits.argmax(-1)
            else:
                action = torch.distributions.Categorical(logits=logits.float()).sample()
            action = torch.where(torch.as_tensor(waiting, device=device), 0, action)
            step_rewards = np.zeros(b)
            for i, e in enumerate(envs):
                if waiting[i]:
                    t[i] += 1  # a padding step: timesteps count on, as in training
                    continue
                if not active[i]:
                    continue  # finished: its stream is padded with no-ops, never read
                next_obs, reward, terminated, truncated, _ = e.step(int(action[i]))
                returns[i, episode[i]] += reward
                step_rewards[i] = reward
                t[i] += 1
                if terminated or truncated:
                    now = time.perf_counter()
                    seconds[i, episode[i]] = now - started[i]
                    started[i] = now
                    block_done[i] = True
                    episode[i] += 1
                    active[i] = episode[i] < episodes
                    next_obs = e.reset()[0] if active[i] else next_obs
                    waiting[i] = episode_blocks and j < c - 1
                    if not waiting[i]:
                        t[i] = 0
                obs[i] = next_obs
            actions.append(action.long())
            rewards.append(torch.as_tensor(step_rewards, dtype=torch.float32, device=device))
        t[waiting] = 0  # the next episode starts at the next block
        reward_sum = torch.stack(rewards, 1).sum(1)
        memory = model.close_block(memory, reward_sum, torch.as_tensor(block_done, device=device))
    for e in envs:
        e.close()
    return returns, seconds


def build_network(
    algorithm: str, state_dim: int, num_actions: int, c: int, fields: dict[str, Any]
) -> tuple[torch.nn.Module, Any]:
    """The network of ``algorithm`` (`ALGORITHMS`) built from its config ``fields``, and the
    function that plays it in context (the signature of `play_in_context`)."""
    from lightning_drama.dmh import baselines

    where = f"DMHModule.model ({ALGORITHM_NAMES[algorithm]})"
    fields = dict(fields)
    if algorithm == "dm" and fields.setdefault("backbone", "mamba2") != "mamba2":
        raise ConfigError(f"{where}: algorithm 'dm' is AD with backbone 'mamba2'; use 'ad'")
    try:
        if algorithm == "dmh":
            config = DMHConfig(state_dim=state_dim, num_actions=num_actions, c=c, **fields)
            return DecisionMambaHybrid(config), play_in_context
        if algorithm == "dt":
            config = baselines.DTConfig(state_dim=state_dim, num_actions=num_actions, **fields)
            return baselines.DecisionTransformer(config), baselines.play_dt
        config = baselines.ADConfig(state_dim=state_dim, num_actions=num_actions, **fields)
        return baselines.AlgorithmDistillation(config), baselines.play_ad_in_context
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


class DMHModule(pl.LightningModule):
    """DM-H training (`DecisionMambaHybrid.loss`) and in-context evaluation (`test_step`).

    Args:
        env: the preset (`ENV_NAMES`) the histories come from; gives ``state_dim`` and
            ``num_actions`` and the evaluation envs.
        env_kwargs: the env's options beyond the preset (e.g. the T-maze's ``length``).
        c: steps per block (linked from ``data.c`` by the CLI).
        model: further `DMHConfig` fields (``mamba_d_model``, ``gpt_layers``, ...).
        lr, weight_decay: AdamW's (paper: 1e-4 and 1e-4).
        warmup_steps: linear learning-rate warm-up over this many optimiser steps (0: none).
        eval_episodes: consecutive episodes per test task (paper-style curve; default 20).
        target_return: the return-to-go each test episode starts from; None = `max_return`.
        greedy: act with the argmax action (else sample) and the sub-goal's mean (else a draw).
        eval_seed: seeds the test envs' resets (task i: ``eval_seed + i``).
        algorithm: the network (`ALGORITHMS`): "dmh" (`DecisionMambaHybrid`; ``model`` holds
            `DMHConfig` fields), "ad" or "dm" (`AlgorithmDistillation` with a Transformer or a
            Mamba-2; `ADConfig` fields; AD's evaluation carries one memory per task across the
            episodes, `play_ad_in_context`), "dt" (`DecisionTransformer`, `DTConfig` fields;
            every episode starts afresh, `play_dt`). ``c`` is DM-H's only.
        episode_blocks: every episode starts a block of c steps, in training (linked from
            ``data.episode_blocks`` by the CLI) and in the evaluation (`play_in_context`); DM-H
            only (the baselines read no blocks and refuse it).
    """

    def __init__(
        self,
        env: str = "darkroom",
        env_kwargs: dict[str, Any] | None = None,
        c: int = 5,
        model: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        eval_episodes: int = 20,
        target_return: float | None = None,
        greedy: bool = True,
        eval_seed: int = 0,
        algorithm: str = "dmh",
        episode_blocks: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        where = "DMHModule"
        if env not in ENV_NAMES:
            raise ConfigError(f"{where}.env must be one of {', '.join(ENV_NAMES)}, got {env!r}")
        self.env = env
        self.env_kwargs = dict(env_kwargs or {})
        model = dict(model or {})
        for key in ("state_dim", "num_actions", "c"):
            if key in model:
                raise ConfigError(f"{where}.model.{key} is set from env / c; do not give it")
        self.algorithm = check_choice(where, "algorithm", algorithm, ALGORITHMS)
        state_dim, num_actions = env_dims(env, **self.env_kwargs)
        self.net, self._play = build_network(self.algorithm, state_dim, num_actions, c, model)
        self.episode_blocks = bool(episode_blocks)
        if self.episode_blocks and self.algorithm != "dmh":
            raise ConfigError(
                f"{where}: episode_blocks pads episodes to DM-H's blocks; {algorithm!r} reads no "
                "blocks (set data.episode_blocks false)"
            )
        self.lr = check_float(where, "lr", lr, above=0)
        self.weight_decay = check_float(where, "weight_decay", weight_decay, minimum=0)
        self.warmup_steps = check_int(where, "warmup_steps", warmup_steps, minimum=0)
        self.eval_episodes = check_int(where, "eval_episodes", eval_episodes, minimum=1)
        if target_return is None:
            target_return = max_return(env, **self.env_kwargs)
        self.target_return = check_float(where, "target_return", target_return)
        self.greedy = bool(greedy)
        self.eval_seed = check_int(where, "eval_seed", eval_seed, minimum=0)
        self._returns: list[np.ndarray] = []
        self._seconds: list[np.ndarray] = []
        self.in_context_curve: list[dict[str, float]] = []

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The CLI links ``c`` and ``episode_blocks`` from the data config, also for ``test
        --ckpt_path``: refuse values other than those the checkpoint was trained with, which
        would evaluate it unlike its training."""
        saved = checkpoint.get("hyper_parameters", {})
        for key, value in (("c", self.hparams.c), ("episode_blocks", self.episode_blocks)):
            if key in saved and saved[key] != value:
                trained = str(saved[key]).lower()  # as the command line writes it
                raise ConfigError(
                    f"DMHModule: the checkpoint was trained with {key} {trained} but the config "
                    f"gives {str(value).lower()}; pass --data.{key} {trained}"
                )

    # ------------------------------------------------------------------------------ training

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        n = getattr(datamodule, "episodes_per_context", 1)
        if self.algorithm == "dt" and n > 1:
            raise ConfigError(
                f"DMHModule: the Decision Transformer reads each episode's own return-to-go, which "
                f"the contexts give with one episode only, not {n} (their rtg counts down from "
                "the last episode's return); pass --data.episodes_per_context 1 "
                "--data.min_episodes_per_context null"
            )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.net.loss(batch)
        b = batch["actions"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=True, batch_size=b)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_steps:
            return optimizer
        warmup = self.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ---------------------------------------------------------------------------- evaluation

    def _test_tasks(self) -> list[Task]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "test_tasks"):
            raise ConfigError("DMHModule.test_step needs a DMHDataModule (its test_tasks)")
        histories = datamodule.histories
        if histories and histories[0].env != self.env:
            raise ConfigError(
                f"DMHModule.env is {self.env!r} but the histories are {histories[0].env!r}"
            )
        return datamodule.test_tasks

    def on_test_epoch_start(self) -> None:
        self._returns, self._seconds = [], []

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        all_tasks = self._test_tasks()
        indices = [int(i) for i in batch]
        returns, seconds = self._play(
            self.net,
            self.env,
            [all_tasks[i] for i in indices],
            self.eval_episodes,
            self.target_return,
            greedy=self.greedy,
            seed=self.eval_seed + indices[0],
            env_kwargs=self.env_kwargs,
            **({"episode_blocks": True} if self.episode_blocks else {}),
        )
        self._returns.append(returns)
        self._seconds.append(seconds)

    def on_test_epoch_end(self) -> None:
        if not self._returns:
            return
        returns = np.concatenate(self._returns)  # [tasks, episodes]
        seconds = np.concatenate(self._seconds)
        n = returns.shape[0]
        mean, std = returns.mean(0), returns.std(0)
        # normal 95 % interval of the mean over tasks (none from one task)
        half_width = 1.96 * std / math.sqrt(n) if n > 1 else np.full_like(std, np.nan)
        self.in_context_curve = [
            {"episode": e, "mean_return": float(m), "std_return": float(s),
             "ci95": float(h), "n_tasks": n}
            for e, (m, s, h) in enumerate(zip(mean, std, half_width, strict=True))
        ]  # fmt: skip
        per_episode = float(seconds.mean())
        self.log_dict(
            {
                "test/return_first": float(mean[0]),
                "test/return_last": float(mean[-1]),
                "test/return_mean": float(mean.mean()),
                "test/seconds_per_episode": per_episode,
            }
        )
        lines = [
            f"{ALGORITHM_NAMES[self.algorithm]}: in-context returns over {n} test tasks "
            f"(target return {self.target_return:g})",
            f"{'episode':>8} {'mean':>9} {'std':>9} {'95% CI':>9}",
        ]
        lines += [
            f"{r['episode']:>8d} {r['mean_return']:>9.3f} {r['std_return']:>9.3f} {r['ci95']:>9.3f}"
            for r in self.in_context_curve
        ]
        lines.append(f"{per_episode:.3f} s per episode")
        rank_zero_info("\n".join(lines))
        log_dir = self.trainer.log_dir or self.trainer.default_root_dir
        if self.trainer.is_global_zero and log_dir:
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, CSV_NAME), "w", newline="") as file:
                writer = csv.DictWriter(file, list(self.in_context_curve[0]))
                writer.writeheader()
                writer.writerows(self.in_context_curve)
        if not all(math.isfinite(r["mean_return"]) for r in self.in_context_curve):
            raise RuntimeError("DMHModule: non-finite evaluation returns")
