"""The baselines of the DM-H paper: Algorithm Distillation (and its Mamba "DM" variant) and the
Decision Transformer, with their play loops.

Both models read the batch dict of `lightning_drama.dmh.datamodule` (the keys of
`DecisionMambaHybrid.forward`, plus ``pad``), so one data pipeline trains all three models; each
reads only the keys it needs. Logits and losses use `action_loss`, as DM-H does.

**Algorithm Distillation** (AD; Laskin et al. 2022, "In-context Reinforcement Learning with
Algorithm Distillation", arXiv 2210.14215): a causal sequence model over the whole
cross-episode context, **one token per step**. The token of step t embeds

    s_t,  a_{t-1},  r_{t-1},  done_{t-1}

the state the action is taken in, with the previous step's action, reward and whether the
previous step ended an episode (so ``done_{t-1} = 1`` says s_t is an episode's first state). At
the context's first step (and at the first step after left padding) there is no previous step:
a "none" action (an extra embedding row, index ``num_actions``), reward 0 and done 1. The token
is the **sum of separate encoders**: ``Linear(state_dim, d)`` for the state,
``Embedding(num_actions + 1, d)`` for the previous action, ``Linear(1, d)`` for the previous
reward and ``Embedding(2, d)`` for done. A sum of these is exactly one linear map of the
concatenated features (state, one-hot previous action, reward, one-hot done) plus a bias, i.e.
the usual "embed the (a, r, s) tuple as one token"; separate modules just keep the parts
readable and let the action table have its "none" row. One token per step (not three) makes a
window of ``max_length`` tokens cover ``max_length`` steps. The action logits of step t are read
at step t's token, so they depend on steps <= t's states and on actions, rewards and dones
before t only: the causal backbone guarantees it (tested). AD's loss is on every step of the
context (``loss_on="all"``; padding excluded); ``"last"`` scores only ``loss_mask`` (the last
episode), like DM-H.

The backbone is `build_backbone`'s: "transformer" is AD (our `TransformerBackbone`: post-norm
blocks, ReLU MLP of width ``ffn_mult * d``, learned positions, a window of ``max_length`` steps;
with no ``reset`` it attends across episode boundaries, which AD needs), and "mamba2" is, as we
read the DM-H paper, its "DM" baseline: the same in-context model with a Mamba-2 stack in place
of the Transformer ("mamba" and "gru" are accepted too). Acting (`AlgorithmDistillation.act_step`)
feeds one token at a time through the backbone's ``step``: the Transformer's bounded key/value
cache (O(window) per step) or the Mamba's recurrent state (O(1) per step). The parallel
``forward`` and the per-step calls give the same logits (tested in fp64; for the Transformer at
every length, since ``forward`` slides the same window once the context outgrows it).

Ours rather than AD's: the done flag in the token and the "none" first action (AD's text gives
neither); training contexts of whole episodes (`make_context` with ``order="history"`` keeps the
history's order, AD's; AD samples windows that need not start at an episode start); the
Transformer's details above (AD used a GPT); the input scales ``state_scale``, ``reward_scale``.
Left padding (``pad``) is made neutral with the backbone's ``reset`` at the first real step:
the real steps then neither see the padding nor shift their positions.

**Decision Transformer** (DT; Chen et al. 2021, "Decision Transformer: Reinforcement Learning
via Sequence Modeling", NeurIPS): a return-conditioned policy **within one episode**. Tokens per
step, in this order,

    rtg_t, s_t, a_t

each from its own encoder (``Linear(1, d)``, ``Linear(state_dim, d)``, ``Embedding(num_actions,
d)``) plus a learned embedding of the step's ``timesteps`` (its index in the episode; one
timestep is three tokens, as in DT). A causal `TransformerBackbone` reads the last ``K =
context_steps`` steps (3 K tokens); step t's action logits are read at the token of s_t, so they
depend on rtg and states up to t and actions before t. For the T-maze, K must be at least the
episode length, or the first observation (the only one showing the goal side) leaves the window.
Acting (`DecisionTransformer.act_logits`) re-reads the last K steps at every step, as standard
DT does, so a step costs attention over up to 3 K tokens: the growing cost the DM-H paper
compares against.

Training uses ``rtg``, ``states``, ``actions``, ``timesteps`` and ``pad``: contexts of one
episode (``episodes_per_context=1``, where ``rtg`` is the episode's own return-to-go), loss on
every non-padding step (DT's; ``loss_mask`` is not read). A context longer than K steps trains
on its **last K steps** only (the logits cover just those): they are what acting reads at the
episode's last step, and left padding beyond K is cut this way instead of failing. A new episode
(``timesteps == 0``) or the first step after padding restarts the Transformer's attention and
positions (its ``reset``), so a context of several episodes trains on each separately, and the
padding is neutral; but ``rtg`` must then be each episode's own return-to-go, which the data
module's relabelling gives only with one episode per context.

Ours rather than DT's: DT removed GPT-2's positional embeddings and kept only the timestep
embedding; our backbone also adds a learned position within the window (its tokens' index);
the post-norm ReLU blocks of `TransformerBackbone`; the scales ``return_scale`` and
``state_scale``.

**Play loops.** `play_ad_in_context` and `play_dt` have the signature of
`lightning_drama.dmh.module.play_in_context` and its conventions: one env per task, all tasks
stepped together as a batch, env i reset with ``seed + i`` at its first episode (and without a
seed after), each episode's wall time. AD keeps one memory per task across all its episodes
(in-context RL; ``target_return`` is accepted for the common signature and unused); DT starts
every episode afresh with rtg = ``target_return`` minus the rewards received so far in it.
``greedy=False`` samples actions from a generator seeded with ``seed`` (so sampled runs repeat
too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.dmh.envs import Task, make_dmh_env
from lightning_drama.dmh.model import action_loss
from lightning_drama.ssm.backbones import BACKBONES, build_backbone
from lightning_drama.ssm.transformer import TransformerBackbone

Tensor = torch.Tensor
State = tuple[Tensor, ...]

# The batch keys each baseline reads (``pad`` too, when there is one).
AD_KEYS = ("states", "actions", "rewards", "dones", "loss_mask")
DT_KEYS = ("states", "actions", "rtg", "timesteps")
LOSS_ON = ("all", "last")
# DT's tokens per step: rtg, state, action; the action is predicted at the state token.
DT_TOKENS = 3
DT_STATE_TOKEN = 1


def _missing(batch: dict[str, Tensor], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{where}: batch lacks {', '.join(missing)}")


def _pad_flags(batch: dict[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    """(pad [B, L] bool, first [B, L] bool): the padding flags (all False without ``pad``) and
    the first real step of each row (step 0, or the first step after left padding)."""
    pad = batch.get("pad")
    pad = torch.zeros(like.shape[:2], dtype=torch.bool, device=like.device) if pad is None else pad
    pad = pad.bool()
    first = torch.zeros_like(pad)
    first[:, 0] = True
    first[:, 1:] = pad[:, :-1] & ~pad[:, 1:]
    return pad, first


# ----------------------------------------------------------------------- Algorithm Distillation


@dataclass(frozen=True)
class ADConfig:
    """Algorithm Distillation hyperparameters (the sizes are DM-H's GPT's where not AD's).

    Args:
        state_dim: observation size (2 for the grid worlds, 3 for the T-maze).
        num_actions: discrete actions (5 in the grid worlds, 4 in the T-maze).
        backbone: the sequence model, one of `BACKBONES`: "transformer" (AD) or "mamba2" (the
            DM-H paper's "DM"); "mamba" and "gru" also work.
        d_model, layers: width and depth of the backbone (128, 3).
        heads: Transformer attention heads (4; d_model must be divisible by it).
        dropout: the backbone's (Transformer: attention weights, attention output and MLP
            output; Mamba: residual branches).
        max_length: the Transformer's window in steps (one token per step) and its number of
            learned positions; longer contexts slide the window. Unused by the others.
        mamba_d_state, mamba_headdim, mamba_expand, mamba_d_conv, mamba_chunk_size: the Mamba's
            SSM state size, Mamba-2 head width, inner-width factor, conv width and SSD chunk.
        ffn_mult: the Transformer's ReLU MLP width as a multiple of d_model (GPT's 4, as in
            DM-H's GPT).
        state_scale, reward_scale: input scales of states and of the previous rewards.
        loss_on: "all" (every non-padding step: AD's loss) or "last" (the batch's
            ``loss_mask``, the last episode, like DM-H).
    """

    state_dim: int
    num_actions: int
    backbone: str = "transformer"
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    dropout: float = 0.1
    max_length: int = 1024
    mamba_d_state: int = 16
    mamba_headdim: int = 64
    mamba_expand: int = 2
    mamba_d_conv: int = 4
    mamba_chunk_size: int = 64
    ffn_mult: int = 4
    state_scale: float = 1.0
    reward_scale: float = 1.0
    loss_on: str = "all"

    def __post_init__(self) -> None:
        w = "ADConfig"
        for name in (
            "state_dim", "num_actions", "d_model", "layers", "heads", "max_length",
            "mamba_d_state", "mamba_headdim", "mamba_expand", "mamba_d_conv", "mamba_chunk_size",
            "ffn_mult",
        ):  # fmt: skip
            check_int(w, name, getattr(self, name), minimum=1)
        check_choice(w, "backbone", self.backbone, BACKBONES)
        check_choice(w, "loss_on", self.loss_on, LOSS_ON)
        check_float(w, "dropout", self.dropout, minimum=0, below=1)
        for name in ("state_scale", "reward_scale"):
            check_float(w, name, getattr(self, name), above=0)
        if self.backbone == "transformer" and self.d_model % self.heads:
            raise ConfigError(
                f"{w}: d_model {self.d_model} must be divisible by heads {self.heads}"
            )
        if self.backbone == "mamba2" and (self.mamba_expand * self.d_model) % self.mamba_headdim:
            raise ConfigError(
                f"{w}: mamba_expand * d_model = {self.mamba_expand * self.d_model} must be "
                f"divisible by mamba_headdim {self.mamba_headdim}"
            )


class AlgorithmDistillation(nn.Module):
    """AD: a causal sequence model over the cross-episode context, one token per step (see the
    module docstring for the token, the causality and the acting API).

    Built from an `ADConfig` or its fields as keywords:
    ``AlgorithmDistillation(state_dim=2, num_actions=5, backbone="mamba2")``.
    """

    def __init__(self, config: ADConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = ADConfig(**kwargs)
        elif kwargs:
            raise TypeError("AlgorithmDistillation: pass an ADConfig or keywords, not both")
        self.config = cfg = config
        d = cfg.d_model
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Embedding(cfg.num_actions + 1, d)  # the last row: "none"
        self.embed_reward = nn.Linear(1, d)
        self.embed_done = nn.Embedding(2, d)
        if cfg.backbone == "transformer":
            self.backbone = TransformerBackbone(
                d, cfg.layers, num_heads=cfg.heads, max_length=cfg.max_length,
                dropout=cfg.dropout, positional="learned", ffn_mult=cfg.ffn_mult,
            )  # fmt: skip
        else:
            self.backbone = build_backbone(
                cfg.backbone, d, cfg.layers, d_state=cfg.mamba_d_state, d_conv=cfg.mamba_d_conv,
                expand=cfg.mamba_expand, headdim=cfg.mamba_headdim,
                chunk_size=cfg.mamba_chunk_size, dropout=cfg.dropout,
            )  # fmt: skip
        self.head = nn.Linear(d, cfg.num_actions)

    @property
    def none_action(self) -> int:
        """The previous-action index of a context's first step (no previous step)."""
        return self.config.num_actions

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_state.weight.dtype

    def _tokens(
        self, states: Tensor, prev_actions: Tensor, prev_rewards: Tensor, prev_dones: Tensor
    ) -> Tensor:
        """``states [..., d]``, the others ``[...]`` -> tokens ``[..., D]`` (the encoders' sum)."""
        cfg = self.config
        return (
            self.embed_state(states.to(self.dtype) * cfg.state_scale)
            + self.embed_action(prev_actions.long())
            + self.embed_reward((prev_rewards.to(self.dtype) * cfg.reward_scale)[..., None])
            + self.embed_done(prev_dones.long().clamp(0, 1))
        )

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The memory before any step: the backbone's empty state (a Transformer's empty key /
        value cache, a Mamba's zeros)."""
        return self.backbone.initial_state(batch_size, device)

    def act_step(
        self,
        memory: State,
        state: Tensor,
        prev_action: Tensor,
        prev_reward: Tensor,
        prev_done: Tensor,
    ) -> tuple[Tensor, State]:
        """One step of acting: ``state [B, d]`` (the observation to act in), ``prev_action [B]``
        long (`none_action` at the context's first step), ``prev_reward [B]``, ``prev_done [B]``
        bool (True at the first step and after an episode's last step). Returns the action
        logits ``[B, A]`` and the memory after this step's token, through the backbone's
        ``step`` (O(window) or O(1)), equal to `forward`'s logits for the same context."""
        token = self._tokens(state, prev_action, prev_reward, prev_done)
        h, memory = self.backbone.step(token, memory)
        return self.head(h.to(self.dtype)), memory

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logits of every step and the loss on a batch of contexts.

        ``batch``: ``states [B, L, d]``, ``actions [B, L]`` (int), ``rewards [B, L]``,
        ``dones [B, L]`` (1 at an episode's last step), ``loss_mask [B, L]`` (read with
        ``loss_on="last"``) and optionally ``pad [B, L]`` (1 on left padding). Other keys are
        ignored. Returns ``logits [B, L, A]`` and ``loss``.
        """
        _missing(batch, AD_KEYS, "AlgorithmDistillation.forward")
        actions = batch["actions"].long()
        pad, first = _pad_flags(batch, actions)
        prev_actions = torch.where(first, self.none_action, F.pad(actions[:, :-1], (1, 0)))
        rewards = batch["rewards"].to(self.dtype)
        prev_rewards = torch.where(first, 0.0, F.pad(rewards[:, :-1], (1, 0))).to(self.dtype)
        prev_dones = first | F.pad(batch["dones"][:, :-1].bool(), (1, 0))
        tokens = self._tokens(batch["states"], prev_actions, prev_rewards, prev_dones)
        # A reset at the first real step hides the padding before it (and restarts positions).
        reset = first if bool(first[:, 1:].any()) else None
        h, _ = self.backbone(tokens, None, reset)
        logits = self.head(h.to(self.dtype))
        mask = ~pad if self.config.loss_on == "all" else batch["loss_mask"].bool() & ~pad
        return {"logits": logits, "loss": action_loss(logits, actions, mask)}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(loss, {"loss": float}) for logging."""
        out = self(batch)
        return out["loss"], {"loss": float(out["loss"].detach())}


# ------------------------------------------------------------------------ Decision Transformer


@dataclass(frozen=True)
class DTConfig:
    """Decision Transformer hyperparameters.

    Args:
        state_dim: observation size. num_actions: discrete actions.
        context_steps: K, the steps the Transformer reads (3 K tokens); for the T-maze at least
            the episode length (``length + 1``). DT's benchmarks used a few tens of steps.
        d_model, layers, heads: Transformer width, depth and heads (128, 3, 4).
        ffn_mult: the ReLU MLP width as a multiple of d_model (GPT's 4).
        dropout: attention weights, attention output and MLP output (DT's 0.1).
        max_timestep: size of the timestep table; larger timesteps use the last entry.
        return_scale, state_scale: input scales of the returns-to-go and the states.
    """

    state_dim: int
    num_actions: int
    context_steps: int = 1024
    d_model: int = 128
    layers: int = 3
    heads: int = 4
    ffn_mult: int = 4
    dropout: float = 0.1
    max_timestep: int = 1024
    return_scale: float = 1.0
    state_scale: float = 1.0

    def __post_init__(self) -> None:
        w = "DTConfig"
        for name in (
            "state_dim", "num_actions", "context_steps", "d_model", "layers", "heads", "ffn_mult",
            "max_timestep",
        ):  # fmt: skip
            check_int(w, name, getattr(self, name), minimum=1)
        check_float(w, "dropout", self.dropout, minimum=0, below=1)
        for name in ("return_scale", "state_scale"):
            check_float(w, name, getattr(self, name), above=0)
        if self.d_model % self.heads:
            raise ConfigError(
                f"{w}: d_model {self.d_model} must be divisible by heads {self.heads}"
            )


class DecisionTransformer(nn.Module):
    """DT: (rtg, state, action) tokens of one episode's last K steps in a causal Transformer,
    each step's action predicted at its state token (see the module docstring).

    Built from a `DTConfig` or its fields as keywords:
    ``DecisionTransformer(state_dim=3, num_actions=4, context_steps=16)``.
    """

    def __init__(self, config: DTConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = DTConfig(**kwargs)
        elif kwargs:
            raise TypeError("DecisionTransformer: pass a DTConfig or keywords, not both")
        self.config = cfg = config
        d = cfg.d_model
        self.embed_rtg = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Embedding(cfg.num_actions, d)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.transformer = TransformerBackbone(
            d, cfg.layers, num_heads=cfg.heads, max_length=DT_TOKENS * cfg.context_steps,
            dropout=cfg.dropout, positional="learned", ffn_mult=cfg.ffn_mult,
        )  # fmt: skip
        self.head = nn.Linear(d, cfg.num_actions)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_state.weight.dtype

    def _tokens(self, rtg: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor) -> Tensor:
        """``rtg, actions, timesteps [B, n]``, ``states [B, n, d]`` -> tokens ``[B, 3 n, D]``
        (rtg, state, action per step, each plus its timestep's embedding)."""
        cfg = self.config
        time = self.embed_timestep(timesteps.long().clamp(0, cfg.max_timestep - 1))
        tokens = torch.stack(
            [
                self.embed_rtg((rtg.to(self.dtype) * cfg.return_scale)[..., None]),
                self.embed_state(states.to(self.dtype) * cfg.state_scale),
                self.embed_action(actions.long()),
            ],
            dim=2,
        )  # [B, n, 3, D]
        return (tokens + time[:, :, None]).flatten(1, 2)

    def _logits(self, tokens: Tensor, start: Tensor) -> Tensor:
        """Tokens ``[B, m, D]`` of n <= K steps (m = 3 n, or 3 n - 1 without the last action);
        ``start [B, n]`` bool marks the steps that restart attention and positions (a new
        episode, the first real step) -> logits at the n state tokens ``[B, n, A]``."""
        reset = None
        if bool(start[:, 1:].any()):
            reset = F.pad(start[:, :, None], (0, DT_TOKENS - 1)).flatten(1)  # at rtg tokens
            reset = reset[:, : tokens.shape[1]]
        h, _ = self.transformer(tokens, None, reset)
        return self.head(h[:, DT_STATE_TOKEN::DT_TOKENS].to(self.dtype))

    @staticmethod
    def _starts(timesteps: Tensor, first: Tensor) -> Tensor:
        """The steps that restart attention: episode starts (timestep 0) and ``first``."""
        return first | (timesteps == 0)

    def act_logits(self, rtg: Tensor, states: Tensor, actions: Tensor, timesteps: Tensor) -> Tensor:
        """Action logits ``[B, A]`` of the episode's latest state: ``rtg [B, n]``,
        ``states [B, n, d]``, ``timesteps [B, n]`` of the episode so far, ``actions [B, n - 1]``
        taken in it. Reads the last min(n, K) steps again (3 min(n, K) - 1 tokens), so the
        logits equal `forward`'s for the same steps."""
        n = states.shape[1]
        if n < 1 or rtg.shape[1] != n or timesteps.shape[1] != n or actions.shape[1] != n - 1:
            raise ValueError(
                f"DecisionTransformer.act_logits: need n >= 1 rtg, states and timesteps and "
                f"n - 1 actions, got {rtg.shape[1]} rtg, {n} states, {timesteps.shape[1]} "
                f"timesteps, {actions.shape[1]} actions"
            )
        k = self.config.context_steps
        if n > k:
            rtg, states, timesteps = rtg[:, n - k :], states[:, n - k :], timesteps[:, n - k :]
            actions = actions[:, n - k :]
        # The current step's action is not known: its token (a placeholder) is dropped.
        tokens = self._tokens(rtg, states, F.pad(actions.long(), (0, 1)), timesteps)[:, :-1]
        first = torch.zeros_like(timesteps, dtype=torch.bool)
        first[:, 0] = True
        return self._logits(tokens, self._starts(timesteps, first))[:, -1]

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Logits and loss on a batch of one-episode contexts.

        ``batch``: ``rtg [B, L]`` (the episode's own return-to-go), ``states [B, L, d]``,
        ``actions [B, L]`` (int), ``timesteps [B, L]``, optionally ``pad [B, L]``. When L > K,
        only the last K steps are read (see the module docstring). Returns ``logits [B, L', A]``
        for the last L' = min(L, K) steps and ``loss`` over their non-padding steps.
        """
        _missing(batch, DT_KEYS, "DecisionTransformer.forward")
        actions = batch["actions"].long()
        pad, first = _pad_flags(batch, actions)
        keys = {
            "rtg": batch["rtg"], "states": batch["states"], "actions": actions,
            "timesteps": batch["timesteps"], "pad": pad, "first": first,
        }  # fmt: skip
        length, k = actions.shape[1], self.config.context_steps
        if length > k:
            keys = {key: value[:, length - k :] for key, value in keys.items()}
            keys["first"][:, 0] = True
        tokens = self._tokens(keys["rtg"], keys["states"], keys["actions"], keys["timesteps"])
        logits = self._logits(tokens, self._starts(keys["timesteps"], keys["first"]))
        return {"logits": logits, "loss": action_loss(logits, keys["actions"], ~keys["pad"])}

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(loss, {"loss": float}) for logging."""
        out = self(batch)
        return out["loss"], {"loss": float(out["loss"].detach())}


# ------------------------------------------------------------------------------- play loops


def _choose(logits: Tensor, greedy: bool, generator: torch.Generator) -> Tensor:
    """Actions ``[B]``: the argmax, or a draw from ``generator``."""
    if greedy:
        return logits.argmax(-1)
    probs = F.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def play_ad_in_context(
    model: AlgorithmDistillation,
    env: str,
    tasks: list[Task],
    episodes: int,
    target_return: float,
    greedy: bool = True,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Play ``episodes`` consecutive episodes of each task in ``tasks`` (in parallel, one env per
    task) with AD, carrying one memory per task across all its episodes (created once).
    ``target_return`` is unused (AD reads no return); it is accepted for the common signature.

    Returns ``returns [len(tasks), episodes]`` and ``seconds [len(tasks), episodes]``, each
    episode's wall time (the tasks run together, so a step's time is shared by the batch).
    """
    env_kwargs = env_kwargs or {}
    device = next(model.parameters()).device
    generator = _generator(device, seed)
    b = len(tasks)
    envs = [make_dmh_env(env, task, **env_kwargs) for task in tasks]
    returns = np.zeros((b, episodes))
    seconds = np.zeros((b, episodes))
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    episode = np.zeros(b, np.int64)
    prev_action = np.full(b, model.none_action, np.int64)
    prev_reward = np.zeros(b)
    prev_done = np.ones(b, bool)
    started = np.full(b, time.perf_counter())
    memory = model.initial_state(b, device)  # once per task, for all its episodes
    while (episode < episodes).any():
        logits, memory = model.act_step(
            memory,
            torch.tensor(obs, device=device),
            torch.tensor(prev_action, device=device),
            torch.tensor(prev_reward, device=device),
            torch.tensor(prev_done, device=device),
        )
        action = _choose(logits, greedy, generator).cpu().numpy()
        for i, e in enumerate(envs):
            if episode[i] >= episodes:
                continue  # finished: its memory row is stepped with stale inputs, never read
            next_obs, reward, terminated, truncated, _ = e.step(int(action[i]))
            returns[i, episode[i]] += reward
            prev_action[i], prev_reward[i] = action[i], reward
            prev_done[i] = terminated or truncated
            if prev_done[i]:
                now = time.perf_counter()
                seconds[i, episode[i]] = now - started[i]
                started[i] = now
                episode[i] += 1
                if episode[i] < episodes:
                    next_obs = e.reset()[0]
            obs[i] = next_obs
    for e in envs:
        e.close()
    return returns, seconds


@torch.no_grad()
def play_dt(
    model: DecisionTransformer,
    env: str,
    tasks: list[Task],
    episodes: int,
    target_return: float,
    greedy: bool = True,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Play ``episodes`` episodes of each task in ``tasks`` (in parallel, one env per task) with
    DT. Every episode starts afresh (DT has no memory across episodes) with rtg =
    ``target_return``, lowered by each reward received; each step re-reads the episode's last
    K steps (`DecisionTransformer.act_logits`). Tasks whose episodes have as many steps so far
    are acted for in one call (all of them, with fixed-length episodes).

    Returns ``returns [len(tasks), episodes]`` and ``seconds [len(tasks), episodes]`` as
    `play_ad_in_context` does.
    """
    env_kwargs = env_kwargs or {}
    device = next(model.parameters()).device
    generator = _generator(device, seed)
    b = len(tasks)
    envs = [make_dmh_env(env, task, **env_kwargs) for task in tasks]
    returns = np.zeros((b, episodes))
    seconds = np.zeros((b, episodes))
    first_obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    episode = np.zeros(b, np.int64)
    # The current episode of each task so far: rtg and states of every step, actions taken.
    rtgs = [[float(target_return)] for _ in range(b)]
    states = [[np.array(o)] for o in first_obs]
    actions: list[list[int]] = [[] for _ in range(b)]
    started = np.full(b, time.perf_counter())
    while (episode < episodes).any():
        active = np.flatnonzero(episode < episodes)
        chosen = {}
        for n in sorted({len(states[i]) for i in active}):
            group = [int(i) for i in active if len(states[i]) == n]
            k = min(n, model.config.context_steps)  # the steps act_logits reads
            logits = model.act_logits(
                torch.tensor([rtgs[i][n - k :] for i in group], device=device),
                torch.tensor(
                    np.stack([np.stack(states[i][n - k :]) for i in group]), device=device
                ),
                torch.tensor(
                    [actions[i][n - k :] for i in group], dtype=torch.long, device=device
                ).reshape(len(group), k - 1),
                torch.arange(n - k, n, device=device).expand(len(group), k),
            )
            chosen.update(zip(group, _choose(logits, greedy, generator).tolist(), strict=True))
        for i in active:
            e = envs[i]
            next_obs, reward, terminated, truncated, _ = e.step(chosen[i])
            returns[i, episode[i]] += reward
            if terminated or truncated:
                now = time.perf_counter()
                seconds[i, episode[i]] = now - started[i]
                started[i] = now
                episode[i] += 1
                if episode[i] < episodes:
                    rtgs[i], states[i], actions[i] = [float(target_return)], [e.reset()[0]], []
            else:
                rtgs[i].append(rtgs[i][-1] - reward)
                states[i].append(np.array(next_obs))
                actions[i].append(chosen[i])
    for e in envs:
        e.close()
    return returns, seconds
