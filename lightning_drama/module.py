"""DramaModule: the LightningModule that trains Drama's world model and actor-critic.

Orchestration only; the math lives in `world_model.py`, `agent.py` and `optim.py`. One
`training_step` is one world-model update on a DFS window batch, then imagination from DFS starts
and one actor-critic update, then the slow-critic EMA. The environment steps between updates come
from the `EnvironmentLoop` callback this module installs (see `callbacks.py`).
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torchmetrics import CatMetric, MeanMetric

from lightning_drama import sync
from lightning_drama.agent import ActorCritic
from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.optim import LaProp, linear_warmup
from lightning_drama.policy import ACTING_MODES, make_policy, run_episodes
from lightning_drama.scores import game_from_env_id, human_normalized
from lightning_drama.ssm.backbones import BACKBONE_NAMES
from lightning_drama.world_model import WorldModel

EVALUATIONS_FILE = "evaluations.jsonl"  # in the run directory, one line per evaluation during fit
# Hyperparameters a checkpoint must share with the model it is loaded into.
_ARCHITECTURE_KEYS = ("num_actions", "world_model", "actor_critic")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_component_keys(
    world_model: dict[str, Any] | None, actor_critic: dict[str, Any] | None
) -> None:
    """Raises a ValueError for a key of `model.world_model` / `model.actor_critic` that the
    component does not take, naming a close match and the valid keys.

    These dicts are typed `dict[str, Any]`, so the parser cannot check their keys; the CLI calls
    this before the DataModule probes the environment.
    """
    # num_actions and state_dim come from the environment and the world model, not the config.
    for section, given, component in (
        ("model.world_model", world_model, WorldModel),
        ("model.actor_critic", actor_critic, ActorCritic),
    ):
        valid = [
            name
            for name in inspect.signature(component).parameters
            if name not in ("num_actions", "state_dim")
        ]
        annotations = inspect.signature(component).parameters
        for key, value in (given or {}).items():
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"{section} has no key {key!r}{hint}. Valid keys: {', '.join(valid)}"
                )
            _check_type(section, key, value, annotations[key].annotation)


def _check_type(section: str, key: str, value: Any, annotation: Any) -> None:
    """The scalar types of the components' arguments (their annotations are strings here); the
    components check ranges themselves, this only fails earlier, before the environment probe."""
    expected = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}.get(
        str(annotation)
    )
    if expected is None or value is None:
        return
    if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
        kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            str(annotation), "a string"
        )
        raise ConfigError(f"{section}.{key} must be {kind}, got {value!r}")


class TrainingDiverged(RuntimeError):
    """The losses or gradients stopped being usable (see `DramaModule.divergence_patience`)."""


class DramaModule(pl.LightningModule):
    """Drama: a Mamba-2 world model and an actor-critic trained in its imagination.

    Args:
        num_actions: size of the discrete action space (linked from `data.num_actions` by the CLI).
        world_model: keyword arguments of `lightning_drama.world_model.WorldModel` (sizes, loss
            scales); unset keys keep the paper's values (Drama XS).
        actor_critic: keyword arguments of `lightning_drama.agent.ActorCritic` (sizes, gamma,
            lambda, entropy, EMA decays); unset keys keep the paper's values.
        wm_lr: LaProp learning rate of the world model.
        ac_lr: LaProp learning rate of the actor and critic.
        eps: LaProp epsilon (the paper's 1e-20).
        betas: LaProp betas.
        weight_decay: decoupled, learning-rate-scaled weight decay of both optimisers (0: the
            reference's LaProp has none).
        warmup_updates: linear learning-rate warm-up, in updates.
        imagine_horizon: imagined steps per start (16).
        eval_greedy: evaluation episodes take the most likely action (the reference's eval.py)
            instead of sampling.
        acting: what the policy sees in the real environment. "reference" (the Drama code):
            [a prior sample of z_t, d_{t-1}] with d recomputed each step over the last
            `acting_context` (obs, action) pairs of the episode, and a random first action per
            episode; "posterior": [the posterior z_t of the current frame, d_{t-1}] from a
            recurrent state carried in O(1) per step. See `lightning_drama.policy`.
        acting_context: the window of `acting="reference"` (the reference's
            RealityContextLength, 16).
        divergence_patience: an update whose world-model or actor-critic gradient is not finite
            is skipped with a warning (as AMP's loss scaler does); after this many such updates
            in a row, or as many with an exactly zero world-model gradient (a dead model), the run
            stops with an error, leaving the checkpoints written before untouched.
        compile: `torch.compile` the world-model loss, one imagination step
            (`WorldModel.imagine_step`) and the actor's `act` for training (off: eager). The first
            updates then take the compile time. Evaluation and acting stay eager.
        compile_mode: `torch.compile`'s mode; None: "reduce-overhead" (CUDA graphs) on CUDA,
            "default" elsewhere.
    """

    def __init__(
        self,
        num_actions: int,
        world_model: dict[str, Any] | None = None,
        actor_critic: dict[str, Any] | None = None,
        wm_lr: float = 4e-5,
        ac_lr: float = 4e-5,
        eps: float = 1e-20,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_updates: int = 1000,
        imagine_horizon: int = 16,
        eval_greedy: bool = True,
        acting: str = "reference",
        acting_context: int = 16,
        divergence_patience: int = 20,
        compile: bool = False,  # noqa: A002 (the flag is --model.compile)
        compile_mode: str | None = None,
    ) -> None:
        super().__init__()
        check_float("model", "wm_lr", wm_lr, above=0.0)
        check_float("model", "ac_lr", ac_lr, above=0.0)
        check_float("model", "eps", eps, above=0.0)
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f"model.betas must be two numbers, got {betas!r}")
        for beta in betas:
            check_float("model", "betas", beta, minimum=0.0, below=1.0)
        check_float("model", "weight_decay", weight_decay, minimum=0.0)
        check_int("model", "warmup_updates", warmup_updates, 0)
        check_int("model", "imagine_horizon", imagine_horizon, 1)
        check_choice("model", "acting", acting, ACTING_MODES)
        check_int("model", "acting_context", acting_context, 1)
        check_int("model", "divergence_patience", divergence_patience, 1)
        if not isinstance(compile, bool):
            raise ConfigError(f"model.compile must be true or false, got {compile!r}")
        if compile_mode is not None:
            check_choice("model", "compile_mode", compile_mode, COMPILE_MODES)
        check_component_keys(world_model, actor_critic)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.world_model = WorldModel(num_actions, **(world_model or {}))
        self.actor_critic = ActorCritic(
            num_actions, state_dim=self.world_model.state_dim, **(actor_critic or {})
        )
        self.policy = make_policy(
            acting, self.world_model, self.actor_critic, False, acting_context
        )
        self.eval_policy = make_policy(
            acting, self.world_model, self.actor_critic, eval_greedy, acting_context
        )
        # Episode statistics are metrics so they aggregate over DDP ranks.
        self.episode_return = MeanMetric()
        self.episode_length = MeanMetric()
        self.eval_returns = CatMetric()
        self.eval_lengths = CatMetric()
        self.eval_cut = CatMetric()  # 1 for an episode stopped at data.eval_max_steps
        self.last_eval: dict[str, Any] | None = None
        self._log_dir: str | None = None  # the run directory during fit (on_fit_start)
        # Env steps this model was trained on (all processes), saved with it for evaluations.
        self.register_buffer("trained_env_steps", torch.zeros((), dtype=torch.long))
        self._grad_norms: dict[str, torch.Tensor] = {}
        # Kept on the device, read every `_health_check_every()` updates (see _watch_divergence):
        # [bad updates in a row now, most in a row since the last read, bad since the last read,
        #  the last bad one's flags: world model non-finite, actor-critic non-finite, dead world
        #  model (an exactly zero gradient)].
        self.register_buffer("_health", torch.zeros(6, dtype=torch.long), persistent=False)
        self._warned_streak = False  # this streak of bad updates was reported already
        self._compiled: dict[str, Any] | None = None  # built at the first update (compile=True)

    # ------------------------------------------------------------------------------ set-up

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy):
            # Each of the two backward passes per step reaches only one part of the model.
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def configure_callbacks(self) -> list[pl.Callback]:
        from lightning_drama.callbacks import EnvironmentLoop

        # A loop configured with the trainer's callbacks (its checkpoint interval) is kept.
        if any(isinstance(c, EnvironmentLoop) for c in self.trainer.callbacks):
            return []
        return [EnvironmentLoop()]

    def on_fit_start(self) -> None:
        # Trainer.log_dir is a collective under DDP: every rank asks here, rank 0 writes later.
        self._log_dir = self.trainer.log_dir if self.trainer.loggers else None
        self._warn_if_beyond_the_attention_window()

    def _warn_if_beyond_the_attention_window(self) -> None:
        """The Transformer attends to its last `max_length` steps; the reference sizes it to its
        longest sequence, so that nothing is cut. Say so when a config makes it shorter."""
        wm, datamodule = self.world_model, self.trainer.datamodule
        if wm.backbone_kind != "transformer" or datamodule is None:
            return
        hp = self.hparams
        longest = max(
            getattr(datamodule, "seq_len", 0),
            getattr(datamodule, "imagine_context", 0) + hp.imagine_horizon,
            hp.acting_context if hp.acting == "reference" else 0,
        )
        if longest > wm.backbone.max_length:
            rank_zero_warn(
                f"model.world_model.max_length is {wm.backbone.max_length} but sequences here are "
                f"up to {longest} steps long (data.seq_len, imagination's context + horizon, the "
                "acting context): the Transformer will attend only to the last "
                f"{wm.backbone.max_length} steps of them. Set --model.world_model.max_length "
                f"{longest} to attend to all of them, as the reference does."
            )

    def on_train_start(self) -> None:
        # A resumed run may change the learning rates (cli.CHANGEABLE_ON_RESUME); the optimiser
        # and scheduler states restored from the checkpoint still hold the old ones.
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        for opt, sched, lr in zip(
            self.trainer.optimizers,
            schedulers,
            (self.hparams.wm_lr, self.hparams.ac_lr),
            strict=True,
        ):
            old = sched.base_lrs[0]
            if old != lr:
                sched.base_lrs = [lr] * len(sched.base_lrs)
                for group in opt.param_groups:
                    group["initial_lr"] = lr
                    group["lr"] *= lr / old  # the warm-up's factor stays
                sched._last_lr = [group["lr"] for group in opt.param_groups]

    def configure_optimizers(self):
        hp = self.hparams
        wm_opt = LaProp(self.world_model.parameters(), hp.wm_lr, hp.betas, hp.eps, hp.weight_decay)
        ac_params = [p for p in self.actor_critic.parameters() if p.requires_grad]
        ac_opt = LaProp(ac_params, hp.ac_lr, hp.betas, hp.eps, hp.weight_decay)
        warmup = linear_warmup(hp.warmup_updates)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, warmup) for opt in (wm_opt, ac_opt)]
        return [wm_opt, ac_opt], [{"scheduler": s, "interval": "step"} for s in schedulers]

    # ---------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        wm_opt, ac_opt = self.optimizers()
        wm_sched, ac_sched = self.lr_schedulers()

        # No host sync here except on logging steps: a non-finite loss or gradient is caught by
        # its gradient norm, and the optimiser skips that step on the device (see
        # on_before_optimizer_step); imagination then starts from the unchanged world model.
        fns = self._training_functions()
        wm_loss, wm_parts = fns["wm_loss"](batch)
        wm_opt.zero_grad(set_to_none=True)
        self.manual_backward(wm_loss)
        wm_opt.step()  # clipping happens in on_before_optimizer_step, after AMP unscaling
        wm_sched.step()

        context = {key: value for key, value in batch.items() if key.startswith("start_")}
        imagined = self.world_model.imagine(
            context,
            fns["act"],
            self.hparams.imagine_horizon,
            reward_timing=self.actor_critic.reward_timing,
            step=fns["imagine_step"],
        )
        ac_loss, ac_stats = self.actor_critic.loss(imagined)
        ac_opt.zero_grad(set_to_none=True)
        self.manual_backward(ac_loss)
        ac_opt.step()
        ac_sched.step()
        self.actor_critic.update_slow_critic()
        self.trained_env_steps.fill_(self.env_steps)
        self._record_health()
        if (batch_idx + 1) % self._health_check_every() == 0:
            self._watch_divergence()

        self.log("wm", wm_loss.detach(), prog_bar=True, logger=False)
        self.log("ac", ac_loss.detach(), prog_bar=True, logger=False)
        if (batch_idx + 1) % self.trainer.log_every_n_steps == 0:
            metrics = {"train/wm/loss": wm_loss.detach()}
            metrics.update(
                {
                    f"train/wm/{k}": v
                    for k, v in wm_parts.items()
                    if torch.is_tensor(v) and v.dim() == 0
                }
            )
            metrics["train/ac/loss"] = ac_loss.detach()
            metrics.update({f"train/ac/{k}": v for k, v in ac_stats.items()})
            metrics.update({f"train/{k}_grad_norm": v for k, v in self._grad_norms.items()})
            metrics["train/lr"] = torch.tensor(wm_sched.get_last_lr()[0])
            # global_step counts optimiser steps (two per update) and survives a resume.
            metrics["train/updates"] = torch.tensor(float(self.global_step // 2))
            self.log_at_env_step(metrics)
            self.log_episode_statistics()

    def _training_functions(self) -> dict[str, Any]:
        """The world-model loss, the imagination step and the actor's `act` of an update: the
        eager methods, or (`compile=True`) their `torch.compile` d versions, built once."""
        if not self.hparams.compile:
            return {
                "wm_loss": self.world_model.loss,
                "imagine_step": None,
                "act": self.actor_critic.act,
            }
        if self._compiled is None:
            mode = self.hparams.compile_mode
            if mode is None:
                mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._compiled = {
                name: torch.compile(fn, mode=mode, dynamic=False)
                for name, fn in (
                    ("wm_loss", self.world_model.loss),
                    ("imagine_step", self.world_model.imagine_step),
                    ("act", self.actor_critic.act),
                )
            }
        return self._compiled

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after AMP unscaling (16-mixed unscales inside opt.step), so clip here.
        if optimizer is self.trainer.optimizers[0]:
            name, params, clip = "wm", self.world_model.parameters(), self.world_model.grad_clip
        else:
            name, params = "ac", self.actor_critic.parameters()
            clip = self.actor_critic.grad_clip
        params = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True).detach()
        self._grad_norms[name] = norm
        # A non-finite gradient: LaProp leaves parameters and state alone. On an accelerator that
        # is decided on the device (a masked step); on a CPU, where reading the norm is free, only
        # a bad step takes the masked path, which costs twice a plain step there.
        # Always set: AMP's scaler may skip a step itself and leave an older flag behind.
        bad = ~torch.isfinite(norm)
        masked = not sync.host_reads_are_free(norm.device) or bool(bad)
        optimizer.skip_next_step_if(bad if masked else None)

    def _health_check_every(self) -> int:
        """Updates between reads of the divergence counters: every update on a CPU (reading is
        free there), on the logging steps on an accelerator (a read waits for the device)."""
        if sync.host_reads_are_free(self.device):
            return 1
        return max(1, self.trainer.log_every_n_steps)

    def _record_health(self) -> None:
        """Count this update in `_health`, on the device (no host read)."""
        wm, ac = self._grad_norms["wm"], self._grad_norms["ac"]
        flags = torch.stack([~torch.isfinite(wm), ~torch.isfinite(ac), wm == 0]).long()
        bad = flags.amax()
        run, most, count = self._health[0], self._health[1], self._health[2]
        run = (run + 1) * bad
        self._health.copy_(
            torch.cat(
                [
                    torch.stack([run, torch.maximum(most, run), count + bad]),
                    torch.where(bad.bool(), flags, self._health[3:]),
                ]
            )  # fmt: skip
        )

    def _watch_divergence(self) -> None:
        """Read the counters: warn once per streak of updates whose step was skipped (a
        non-finite loss or gradient, as AMP's loss scaler does) or whose world-model gradient
        was exactly zero (a dead model); stop after `divergence_patience` of them in a row."""
        run, most, count, wm_bad, ac_bad, dead = self._health.tolist()
        self._health[1] = run
        self._health[2] = 0
        if count == 0:
            self._warned_streak = False
            return
        parts = " and ".join(
            name for name, flag in (("world-model", wm_bad), ("actor-critic", ac_bad)) if flag
        )
        what = f"non-finite {parts} losses or gradients" if parts else "a zero world-model gradient"
        if not self._warned_streak:
            rank_zero_warn(
                f"update at {self.env_steps:,} env steps: {what}"
                + ("; the step was skipped" if parts else "")
                + (f" ({count} such updates since the last check)" if count > 1 else "")
            )
        self._warned_streak = run > 0
        if most >= self.hparams.divergence_patience:
            hp = self.hparams
            raise TrainingDiverged(
                f"training diverged: {what} in {most} updates in a row (up to "
                f"{self.env_steps:,} env steps). The checkpoints written before are untouched. "
                f"Try lower learning rates (--model.wm_lr {hp.wm_lr:g}, --model.ac_lr "
                f"{hp.ac_lr:g} now)."
            )

    # ---------------------------------------------------------------------------- logging

    @property
    def env_steps(self) -> int:
        """Environment steps taken by all processes so far (the x-axis of every logged curve)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or datamodule.collector is None:
            return int(self.trained_env_steps)
        return int(datamodule.env_steps_all_processes)

    def log_at_env_step(self, metrics: dict[str, Any]) -> None:
        """Send scalars to every logger with env steps (not optimiser steps) as the x-axis."""
        if not self.trainer.is_global_zero:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=self.env_steps)
            logger.save()

    def record_episodes(self, episodes: list[dict[str, float]]) -> None:
        """Add finished training episodes (from the collector) to the episode metrics."""
        for episode in episodes:
            self.episode_return.update(torch.tensor(episode["return"]))
            self.episode_length.update(torch.tensor(float(episode["length"])))
            self.log("return", float(episode["return"]), prog_bar=True, logger=False)

    def log_episode_statistics(self) -> None:
        # Every rank takes part in the sync; a zero-weight update avoids "compute before update".
        for metric in (self.episode_return, self.episode_length):
            metric.update(torch.zeros((), device=self.device), weight=0.0)
        mean_return, mean_length = self.episode_return.compute(), self.episode_length.compute()
        self.episode_return.reset()
        self.episode_length.reset()
        if torch.isnan(mean_return):
            return  # no episode finished since the last log
        metrics = {"env/episode_return": mean_return, "env/episode_length": mean_length}
        game = self._game()
        if game is not None:
            metrics["env/human_normalized"] = human_normalized(game, float(mean_return))
        self.log_at_env_step(metrics)

    def _game(self) -> str | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        return game_from_env_id(datamodule.env_id) if datamodule is not None else None

    # -------------------------------------------------------------------------- evaluation

    def _evaluation_step(self, batch: torch.Tensor) -> None:
        """Play the evaluation episodes whose indices are in `batch` at once, each to its end
        (or `data.eval_max_steps`), one env per episode; episode i starts from seed
        `eval_seed + i`."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "make_eval_env"):
            raise RuntimeError("evaluation needs the DramaDataModule (it makes the eval envs)")
        indices = [int(i) for i in batch.reshape(-1)]
        seeds = [datamodule.eval_seed + i for i in indices]
        envs = [datamodule.make_eval_env() for _ in indices]
        # The sampled actions and latents come from the batch's own seed: evaluating leaves the
        # training RNG alone (a run trains the same whenever it evaluates) and is reproducible.
        try:
            with torch.no_grad(), torch.random.fork_rng(**_accelerator_rng(self.device)):
                torch.manual_seed(seeds[0])
                episodes = run_episodes(envs, self.eval_policy, seeds, datamodule.eval_max_steps)
        finally:
            for env in envs:
                env.close()
        for key, metric in (
            ("return", self.eval_returns),
            ("length", self.eval_lengths),
            ("cut", self.eval_cut),
        ):
            metric.update(torch.tensor([e[key] for e in episodes], device=self.device))

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch)

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation()

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation()

    def _finish_evaluation(self) -> None:
        returns = self.eval_returns.compute().float().cpu().reshape(-1)
        lengths = self.eval_lengths.compute().float().cpu().reshape(-1)
        cut = self.eval_cut.compute().float().cpu().reshape(-1)
        for metric in (self.eval_returns, self.eval_lengths, self.eval_cut):
            metric.reset()
        game = self._game()
        result: dict[str, Any] = {
            "returns": returns.tolist(),
            "lengths": lengths.tolist(),
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()) if len(returns) > 1 else 0.0,
            "length_mean": float(lengths.mean()),
            "game": game,
            "greedy": self.hparams.eval_greedy,
            "env_steps": self.env_steps,
            # Episodes stopped by data.eval_max_steps (Atari100k's 27,000-step cap is the
            # protocol's; a smaller one gives partial returns).
            "max_steps": self.trainer.datamodule.eval_max_steps,
            "episodes_cut": float(cut.sum()),
        }
        # A human-normalised score is a claim about whole episodes: none for cut ones.
        if game is not None and not result["episodes_cut"]:
            result["human_normalized"] = human_normalized(game, result["return_mean"])
        result["model"] = self.describe()
        self.last_eval = result
        metrics = {f"eval/{k}": v for k, v in result.items() if isinstance(v, float)}
        if self.trainer.state.fn == "fit":
            self.log_at_env_step(metrics)
            self._record_evaluation(result)
        else:
            # validate / test: the table is the result; also hand Lightning the numbers.
            for key, value in metrics.items():
                self.log(key, value, rank_zero_only=True)
        self.print("\n" + format_evaluation(result))  # below the progress bar, on rank 0

    def _record_evaluation(self, result: dict[str, Any]) -> None:
        """Append the evaluation to `<run dir>/evaluations.jsonl`, one JSON object per line: the
        machine-readable record `python -m lightning_drama.benchmark report` aggregates."""
        log_dir = self._log_dir  # set in on_fit_start, on every rank
        if not self.trainer.is_global_zero or log_dir is None or "://" in log_dir:
            return
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, EVALUATIONS_FILE), "a") as file:
            file.write(json.dumps(result) + "\n")
            file.flush()
            os.fsync(file.fileno())  # an evaluation is hours of work on a CPU: keep it

    def describe(self) -> str:
        """One line on which model this is: size, sequence model, acting."""
        hp, wm = self.hparams, self.world_model
        millions = wm.parameter_counts()["total"] / 1e6
        return (
            f"world model {millions:.2f} M parameters (d_model {wm.d_model}, "
            f"{wm.backbone.n_layers} {BACKBONE_NAMES[wm.backbone_kind]} layers, "
            f"{wm.stoch}x{wm.classes} latents), "
            f"acting {hp.acting}, trained on {int(self.trained_env_steps):,} env steps"
        )

    # ------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global RNG is what gets saved)
        checkpoint["rng"] = {  # plain types only: checkpoints load with weights_only=True
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            checkpoint["rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        for key in _ARCHITECTURE_KEYS:
            if key in saved and normalise_hparam(saved[key]) != normalise_hparam(
                self.hparams.get(key)
            ):
                raise ConfigError(
                    f"checkpoint does not fit this model: its model.{key} is {saved[key]!r}, the "
                    f"current config has {self.hparams.get(key)!r}. Use the config the checkpoint "
                    "was trained with (its run directory holds config.yaml) and the same game."
                )
        rng = checkpoint.get("rng")
        if rng is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _accelerator_rng(device: torch.device) -> dict[str, Any]:
    """`torch.random.fork_rng` arguments that also fork the RNG of `device`'s accelerator."""
    if device.type == "cuda":
        return {"devices": [device], "device_type": "cuda"}
    if device.type == "mps":
        return {"device_type": "mps"}  # its one device
    return {"devices": []}


def normalise_hparam(value: Any) -> Any:
    """Config values compare equal whether they came from YAML (lists) or Python (tuples)."""
    if isinstance(value, dict):
        return {k: normalise_hparam(v) for k, v in value.items() if v is not None} or None
    if isinstance(value, (list, tuple)):
        return [normalise_hparam(v) for v in value]
    return value


def format_evaluation(result: dict[str, Any]) -> str:
    """A plain-text table of an evaluation: one row per episode, then the summary."""
    mode = "greedy" if result["greedy"] else "sampled"
    lines = [
        f"Evaluation after {result['env_steps']:,} env steps ({mode} actions)",
        *([f"model: {result['model']}"] if result.get("model") else []),
        f"{'episode':>8} {'return':>10} {'length':>8}",
    ]
    for i, (ret, length) in enumerate(zip(result["returns"], result["lengths"], strict=True)):
        lines.append(f"{i:>8} {ret:>10.1f} {int(length):>8}")
    lines.append(f"{'mean':>8} {result['return_mean']:>10.1f} {result['length_mean']:>8.0f}")
    lines.append(f"{'std':>8} {result['return_std']:>10.1f}")
    if result.get("human_normalized") is not None:
        lines.append(
            f"human-normalised score ({result['game']}): {100 * result['human_normalized']:.1f} %"
        )
    if result.get("episodes_cut"):
        lines.append(
            f"{int(result['episodes_cut'])} of {len(result['returns'])} episodes reached "
            f"data.eval_max_steps ({result['max_steps']:,}) and were cut there: their returns "
            "are of partial episodes"
            + (", so no human-normalised score" if result.get("game") else "")
        )
    return "\n".join(lines)
