"""The Decision Mamba-Hybrid network (DM-H; Huang et al., NeurIPS 2024, "Decision Mamba:
Reinforcement Learning via Hybrid Selective Sequence Modeling") and its loss.

A context is n trajectories of one task, sorted by ascending return, flattened into L steps
(L a multiple of ``c``). Two sequence models share the work:

- the **Mamba stream** (long-term memory, `lightning_drama.ssm` backbone, "mamba2" by default)
  reads the whole context at one block of 4 tokens every ``c`` steps and emits one sub-goal z per
  block through a Gaussian head (``Linear -> (mean, log-variance)``, ``z = mean + std * eps``);
- the **GPT** (short-term memory, a causal Transformer with a ReLU MLP) reads one block, the z of
  that block then the block's steps as (state, action, reward) tokens, and predicts each step's
  action at its state token.

Blocks are the consecutive chunks ``[k c, (k + 1) c)`` of the flat context, whatever the episode
boundaries (a block may straddle two episodes when lengths are not multiples of ``c``; the GPT's
timestep embeddings and the Mamba's done token show the boundary).

Mamba tokens of block k, in this order (t0 = k c, the block's first step):

    rtg[t0], state[t0], sum(rewards[t0 : t0 + c]), done_k = max(dones[t0 : t0 + c])

``z_k`` is read from the Mamba output at the state token of block k, so it depends on the first
two tokens of every block <= k and the last two of every block < k only: the actions, rewards,
dones, later states and later returns-to-go of block k (and after) cannot reach it. We feed four
separate tokens (as the paper does) rather than one concatenated token, each kind through its own
encoder (rtg and reward sum: ``Linear(1, d)``; state: ``Linear(state_dim, d)``; done: a learned
``Embedding(2, d)``), so the four kinds are distinct (each encoder's bias or embedding row acts
as a token-type embedding) and z can be read after the state token without seeing the block's
outcome. The Mamba never sees actions; it sees their effects through states and rewards.

GPT tokens of block k (3 c - 1 of them; the last action and reward predict nothing and are
dropped):

    z_k, s_t0, a_t0, r_t0, s_t0+1, a_t0+1, r_t0+1, ..., s_t0+c-1

each plus a learned embedding of its environment timestep (``timesteps``, the step within the
episode; z_k takes its block's first timestep) and, inside the backbone, a learned position
within the block. The action logits of step t0 + j are read at the token of s_t0+j, so they
depend on z_k, states t0..t0+j, and actions and rewards t0..t0+j-1: nothing later in the block,
and nothing from other blocks except through z_k. The GPT is `TransformerBackbone` (post-norm
blocks, ReLU MLP of width ``gpt_ffn_mult * d``, learned positions over the 3 c - 1 tokens).

**Valuable sub-goals** (training only). For block k, the target state ``s_g`` of its first state
(see `valuable_subgoals`) goes through a frozen random linear map ``f: state_dim -> z_dim``
(``goal_map``, ``requires_grad=False``, kept in the state dict) and replaces z_k in a second GPT
pass. Loss = CE(actions | z) + ``subgoal_weight`` (0.5) * CE(actions | f(s_g)), both masked by
``loss_mask`` (1 on the context's last, highest-return trajectory). The returns-to-go in the
batch are expected already relabelled by the data pipeline (each trajectory's rtg counted down
from the last trajectory's return); the model only reads ``rtg`` at block starts.

States enter as floats times ``state_scale``; returns-to-go and reward sums times
``return_scale``; per-step rewards in the GPT times ``reward_scale`` (our knobs, 1 by default).

In-context acting (evaluation): `initial_state` gives the Mamba memory; at a block start
`subgoal(memory, rtg, obs)` returns z and the memory after the block's (rtg, state) tokens; at
each step `act_logits(z, states, actions, rewards, timesteps)` gives the action logits of the
block's latest state; at the block's end `close_block(memory, reward_sum, done)` feeds its last
two tokens. The Mamba calls are the backbone's `step` with the carried state, so acting
reproduces the parallel `forward` exactly (tested in fp64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.ssm.backbones import build_backbone
from lightning_drama.ssm.transformer import TransformerBackbone

Tensor = torch.Tensor
State = tuple[Tensor, ...]

BATCH_KEYS = (
    "states",
    "actions",
    "rewards",
    "rtg",
    "dones",
    "timesteps",
    "loss_mask",
    "subgoals",
)
# Mamba tokens per block: rtg, state, reward sum, done; z is read at the state token.
TOKENS_PER_BLOCK = 4
STATE_TOKEN = 1
# Tie tolerance of `valuable_subgoals`: mean rewards this close count as equal.
TIE_TOLERANCE = 1e-9


def valuable_subgoals(states: Tensor | np.ndarray, rewards: Tensor | np.ndarray) -> Tensor:
    """The valuable sub-goal of every step of one trajectory.

    Index convention: ``rewards[t]`` is the reward of the action taken at ``states[t]``, received
    on the way from ``states[t]`` to ``states[t + 1]`` (as in `History`). The rewards collected
    between ``states[i]`` and ``states[j]`` (j > i) are thus ``rewards[i : j]``, which is the
    paper's "r_{i+1} .. r_j" in its convention where r_j is received on reaching s_j. Step i's
    goal is ``states[j*]`` with

        j* = argmax_{i < j <= N - 1} mean(rewards[i : j]),   N = len(states),

    the state after which the mean reward since ``states[i]`` is highest. Ties (means within
    `TIE_TOLERANCE`) go to the earliest j, the nearest state that achieves the best rate; so a
    stretch without rewards points to the next state.

    ``states`` may be ``[T + 1, d]``, the episode's observations with the final one (as
    `History.observations[e]`; recommended: a reward on the last step, like Key-to-Door's door,
    then makes the final state a goal), or ``[T, d]``, the states the actions were taken in.
    The last step, i = T - 1, gets the final observation ``states[T]`` in the first case (its
    only later state) and itself, ``states[T - 1]``, in the second (no later state is known).

    Returns a float64 tensor ``[T, d]`` (step i's target in row i).
    """
    states = torch.as_tensor(states)
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if rewards.dim() != 1 or states.dim() != 2:
        raise ValueError(
            f"valuable_subgoals: expected states [T(+1), d] and rewards [T], got "
            f"{tuple(states.shape)} and {tuple(rewards.shape)}"
        )
    T, N = rewards.shape[0], states.shape[0]
    if N not in (T, T + 1):
        raise ValueError(
            f"valuable_subgoals: states must have T or T + 1 = {T + 1} rows for {T} rewards, "
            f"got {N}"
        )
    states = states.to(torch.float64)
    if T == 0:
        return states[:0]
    cum = F.pad(torch.cumsum(rewards, 0), (1, 0))  # cum[j] = sum(rewards[:j])
    i = torch.arange(T)[:, None]
    j = torch.arange(N)[None, :]
    valid = j > i  # [T, N]
    means = (cum[j.clamp(max=T)] - cum[i]) / (j - i).clamp(min=1)
    means = torch.where(valid, means, torch.tensor(-torch.inf, dtype=torch.float64))
    best = means.max(1, keepdim=True).values
    # The earliest j within the tolerance of the best mean; rows without a later state (only
    # i = T - 1 when N = T) fall back to j = i.
    near_best = valid & (means >= best - TIE_TOLERANCE)
    first = torch.where(near_best, j, N).min(1).values
    goal = torch.where(first < N, first, torch.arange(T))
    return states[goal]


def action_loss(logits: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of ``logits [B, L, A]`` for ``actions [B, L]``, averaged over the steps
    where ``mask [B, L]`` is nonzero (weighted by it); 0 when the mask is empty."""
    ce = F.cross_entropy(logits.flatten(0, 1), actions.flatten().long(), reduction="none")
    mask = mask.flatten().to(ce.dtype)
    return (ce * mask).sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class DMHConfig:
    """DM-H hyperparameters; the defaults are the paper's where it gives them.

    Args:
        state_dim: observation size (2 for the grid worlds' (x, y), 3 for the T-maze).
        num_actions: discrete actions (5 in the grid worlds, 4 in the T-maze).
        c: steps per block, one sub-goal each (paper: 5 for the small grids and the T-maze, 20
            for the large grids).
        mamba_kind: the Mamba stream's backbone, "mamba2" or "mamba" (Mamba-1).
        mamba_d_model, mamba_layers, mamba_expand, mamba_d_conv: paper 128, 2, 2, 4.
        mamba_d_state, mamba_headdim, mamba_chunk_size: SSM state size, Mamba-2 head width and
            SSD chunk (our defaults: 16, 64, 64; the paper does not give them).
        gpt_d_model, gpt_layers: paper 128, 3.
        gpt_heads: attention heads (our choice, 4; the paper does not give it).
        gpt_ffn_mult: the GPT's ReLU MLP width as a multiple of ``gpt_d_model`` (GPT's 4).
        dropout: in both models (paper 0.1): the Mamba's residual branches, the GPT's attention
            weights, attention output and MLP output.
        z_dim: sub-goal size; None = ``state_dim`` (the paper's).
        max_timestep: size of the GPT's timestep table; larger timesteps use the last entry.
        state_scale, return_scale, reward_scale: input scales of states, of returns-to-go and
            block reward sums (Mamba), and of per-step rewards (GPT).
        subgoal_weight: weight of the valuable-sub-goal pass in the loss (paper 0.5).
        logvar_min, logvar_max: clamp of the Gaussian head's log-variance (our choice, for a
            finite, bounded std).
    """

    state_dim: int
    num_actions: int
    c: int = 5
    mamba_kind: str = "mamba2"
    mamba_d_model: int = 128
    mamba_layers: int = 2
    mamba_expand: int = 2
    mamba_d_conv: int = 4
    mamba_d_state: int = 16
    mamba_headdim: int = 64
    mamba_chunk_size: int = 64
    gpt_d_model: int = 128
    gpt_layers: int = 3
    gpt_heads: int = 4
    gpt_ffn_mult: int = 4
    dropout: float = 0.1
    z_dim: int | None = None
    max_timestep: int = 1024
    state_scale: float = 1.0
    return_scale: float = 1.0
    reward_scale: float = 1.0
    subgoal_weight: float = 0.5
    logvar_min: float = -10.0
    logvar_max: float = 2.0

    def __post_init__(self) -> None:
        w = "DMHConfig"
        for name in (
            "state_dim", "num_actions", "c", "mamba_d_model", "mamba_layers", "mamba_expand",
            "mamba_d_conv", "mamba_d_state", "mamba_headdim", "mamba_chunk_size", "gpt_d_model",
            "gpt_layers", "gpt_heads", "gpt_ffn_mult", "max_timestep",
        ):  # fmt: skip
            check_int(w, name, getattr(self, name), minimum=1)
        if self.z_dim is not None:
            check_int(w, "z_dim", self.z_dim, minimum=1)
        check_choice(w, "mamba_kind", self.mamba_kind, ("mamba2", "mamba"))
        check_float(w, "dropout", self.dropout, minimum=0, below=1)
        for name in ("state_scale", "return_scale", "reward_scale"):
            check_float(w, name, getattr(self, name), above=0)
        check_float(w, "subgoal_weight", self.subgoal_weight, minimum=0)
        check_float(w, "logvar_min", self.logvar_min)
        check_float(w, "logvar_max", self.logvar_max, above=self.logvar_min)
        if self.gpt_d_model % self.gpt_heads:
            raise ConfigError(
                f"{w}: gpt_d_model {self.gpt_d_model} must be divisible by gpt_heads "
                f"{self.gpt_heads}"
            )

    @property
    def goal_dim(self) -> int:
        """The sub-goal size z_dim (``state_dim`` unless set)."""
        return self.state_dim if self.z_dim is None else self.z_dim


class DecisionMambaHybrid(nn.Module):
    """DM-H: a Mamba stream that emits one sub-goal per block of ``c`` steps and a GPT that
    acts inside the block (see the module docstring for the tokens and the causality).

    Built from a `DMHConfig` or its fields as keywords:
    ``DecisionMambaHybrid(state_dim=2, num_actions=5, c=5)``.
    """

    def __init__(self, config: DMHConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = DMHConfig(**kwargs)
        elif kwargs:
            raise TypeError("DecisionMambaHybrid: pass a DMHConfig or keywords, not both")
        self.config = cfg = config
        dm, dg, zd = cfg.mamba_d_model, cfg.gpt_d_model, cfg.goal_dim

        # Mamba stream: one encoder per token kind.
        self.mamba_rtg = nn.Linear(1, dm)
        self.mamba_state = nn.Linear(cfg.state_dim, dm)
        self.mamba_reward = nn.Linear(1, dm)
        self.mamba_done = nn.Embedding(2, dm)
        self.mamba = build_backbone(
            cfg.mamba_kind, dm, cfg.mamba_layers, d_state=cfg.mamba_d_state,
            d_conv=cfg.mamba_d_conv, expand=cfg.mamba_expand, headdim=cfg.mamba_headdim,
            chunk_size=cfg.mamba_chunk_size, dropout=cfg.dropout,
        )  # fmt: skip
        self.z_head = nn.Linear(dm, 2 * zd)  # -> (mean, log-variance)

        # The frozen map f of valuable sub-goals into z's space.
        self.goal_map = nn.Linear(cfg.state_dim, zd)
        self.goal_map.requires_grad_(False)

        # GPT: token encoders, timestep table, backbone, action head.
        self.gpt_z = nn.Linear(zd, dg)
        self.gpt_state = nn.Linear(cfg.state_dim, dg)
        self.gpt_action = nn.Embedding(cfg.num_actions, dg)
        self.gpt_reward = nn.Linear(1, dg)
        self.gpt_timestep = nn.Embedding(cfg.max_timestep, dg)
        self.gpt = TransformerBackbone(
            dg, cfg.gpt_layers, num_heads=cfg.gpt_heads, max_length=self.gpt_length,
            dropout=cfg.dropout, positional="learned", ffn_mult=cfg.gpt_ffn_mult,
        )  # fmt: skip
        self.action_head = nn.Linear(dg, cfg.num_actions)

    # ------------------------------------------------------------------------------- helpers

    @property
    def gpt_length(self) -> int:
        """Tokens of one block in the GPT: z, then (s, a, r) per step without the last a, r."""
        return 3 * self.config.c - 1

    @property
    def dtype(self) -> torch.dtype:
        return self.mamba_state.weight.dtype

    def _float(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return x.to(self.dtype) * scale

    def _gaussian(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.z_head(h).chunk(2, dim=-1)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def _mamba_tokens(
        self, rtg: Tensor, states: Tensor, reward_sum: Tensor, done: Tensor
    ) -> Tensor:
        """Per block ``[..., K]`` inputs -> tokens ``[..., K, 4, d]`` (rtg, state, sum, done)."""
        cfg = self.config
        return torch.stack(
            [
                self.mamba_rtg(self._float(rtg, cfg.return_scale)[..., None]),
                self.mamba_state(self._float(states, cfg.state_scale)),
                self.mamba_reward(self._float(reward_sum, cfg.return_scale)[..., None]),
                self.mamba_done(done.long().clamp(0, 1)),
            ],
            dim=-2,
        )

    def _gpt_tokens(
        self, z: Tensor, states: Tensor, actions: Tensor, rewards: Tensor, timesteps: Tensor
    ) -> Tensor:
        """One block per row: z ``[N, z]``, states ``[N, c, d]``, actions, rewards, timesteps
        ``[N, c]`` -> tokens ``[N, 3 c - 1, D]``."""
        cfg = self.config
        time = self.gpt_timestep(timesteps.long().clamp(0, cfg.max_timestep - 1))  # [N, c, D]
        steps = torch.stack(
            [
                self.gpt_state(self._float(states, cfg.state_scale)),
                self.gpt_action(actions.long()),
                self.gpt_reward(self._float(rewards, cfg.reward_scale)[..., None]),
            ],
            dim=2,
        )  # [N, c, 3, D]
        steps = (steps + time[:, :, None]).flatten(1, 2)  # [N, 3 c, D]
        first = self.gpt_z(self._float(z)) + time[:, 0]
        return torch.cat([first[:, None], steps[:, :-2]], dim=1)

    def _gpt_logits(self, tokens: Tensor) -> Tensor:
        """GPT tokens ``[N, n, D]`` (a prefix of a block) -> logits at its state tokens."""
        h, _ = self.gpt(tokens)
        return self.action_head(h[:, 1::3])

    def _blocks(self, x: Tensor) -> Tensor:
        """``[B, L, ...]`` -> ``[B, K, c, ...]``."""
        c = self.config.c
        if x.shape[1] % c:
            raise ValueError(
                f"DecisionMambaHybrid: context length {x.shape[1]} is not a multiple of c = {c}"
            )
        return x.reshape(x.shape[0], x.shape[1] // c, c, *x.shape[2:])

    # ---------------------------------------------------------------------------- the stream

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The Mamba memory before any context (the backbone's zeros)."""
        return self.mamba.initial_state(batch_size, device)

    def encode_blocks(
        self,
        states: Tensor,
        rtg: Tensor,
        rewards: Tensor,
        dones: Tensor,
        memory: State | None = None,
        pad: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, State]:
        """The Mamba stream over whole blocks, in parallel, from ``memory`` (None: empty).

        ``states [B, L, d]``, ``rtg, rewards, dones [B, L]``, L a multiple of c. Returns the
        Gaussian of each block's sub-goal, ``mean, logvar [B, K, z_dim]``, and the memory after
        all 4 K tokens, from which a later call continues exactly.

        ``pad [B, L]`` (optional, bool): left padding. The Mamba starts afresh (its ``reset``) at
        the first block that holds a real step, so whole blocks of padding in front (a short
        context batched with longer ones) leave the real blocks exactly as without them, as in
        the evaluation, whose memory starts empty.
        """
        blocks = self._blocks(states)
        tokens = self._mamba_tokens(
            self._blocks(rtg)[:, :, 0],
            blocks[:, :, 0],
            self._blocks(rewards).to(self.dtype).sum(2),
            self._blocks(dones.long()).amax(2),
        )  # [B, K, 4, D]
        reset = None
        if pad is not None:
            real = ~self._blocks(pad.bool()).all(2)  # [B, K]: blocks with a real step
            first = real & (real.long().cumsum(1) == 1)
            reset = F.pad(first[:, :, None], (0, TOKENS_PER_BLOCK - 1)).flatten(1)  # [B, 4 K]
        h, memory = self.mamba(tokens.flatten(1, 2), memory, reset)
        h = h.reshape(tokens.shape)[:, :, STATE_TOKEN]
        mean, logvar = self._gaussian(h.to(self.dtype))
        return mean, logvar, memory

    def subgoal(
        self, memory: State, rtg: Tensor, state: Tensor, sample: bool = False
    ) -> tuple[Tensor, State]:
        """At a block start: feed its (rtg ``[B]``, state ``[B, d]``) tokens to the Mamba with
        `step` from ``memory``; returns the block's sub-goal z ``[B, z_dim]`` (the mean, or a
        draw when ``sample``) and the memory after the state token."""
        tokens = self._mamba_tokens(
            rtg, state, rtg.new_zeros(rtg.shape), rtg.new_zeros(rtg.shape, dtype=torch.long)
        )
        _, memory = self.mamba.step(tokens[:, 0], memory)
        h, memory = self.mamba.step(tokens[:, STATE_TOKEN], memory)
        mean, logvar = self._gaussian(h.to(self.dtype))
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        return z, memory

    def close_block(self, memory: State, reward_sum: Tensor, done: Tensor) -> State:
        """At a block end: feed its reward sum ``[B]`` and done flag ``[B]`` (1 if an episode
        ended in the block) to the Mamba with `step`; returns the memory for the next block."""
        tokens = self._mamba_tokens(
            reward_sum, reward_sum.new_zeros(*reward_sum.shape, self.config.state_dim),
            reward_sum, done,
        )  # fmt: skip
        _, memory = self.mamba.step(tokens[:, 2], memory)
        _, memory = self.mamba.step(tokens[:, 3], memory)
        return memory

    def act_logits(
        self, z: Tensor, states: Tensor, actions: Tensor, rewards: Tensor, timesteps: Tensor
    ) -> Tensor:
        """Action logits ``[B, A]`` of the block's latest state, j + 1 steps into the block:
        ``z [B, z_dim]``, ``states [B, j + 1, d]`` and ``timesteps [B, j + 1]`` of the block so
        far, ``actions, rewards [B, j]`` taken in it. The GPT re-reads the block's 3 j + 2
        tokens (at most 3 c - 1: cheap), so the logits equal those of `forward`."""
        b, n = states.shape[:2]
        c = self.config.c
        if not 1 <= n <= c or actions.shape[1] != n - 1 or rewards.shape[1] != n - 1:
            raise ValueError(
                f"act_logits: need 1..{c} states and one action and reward fewer, got "
                f"{n} states, {actions.shape[1]} actions, {rewards.shape[1]} rewards"
            )
        pad = c - n + 1  # the padded entries come after the state read; causality drops them
        actions = F.pad(actions.long(), (0, pad))
        rewards = F.pad(rewards.to(self.dtype), (0, pad))
        states = F.pad(states.to(self.dtype), (0, 0, 0, c - n))
        timesteps = F.pad(timesteps.long(), (0, c - n))
        tokens = self._gpt_tokens(z, states, actions, rewards, timesteps)[:, : 3 * n - 1]
        return self._gpt_logits(tokens)[:, -1]

    # ------------------------------------------------------------------------------ training

    def forward(self, batch: dict[str, Tensor], sample: bool | None = None) -> dict[str, Tensor]:
        """Both passes and the loss on a batch of contexts.

        ``batch``: ``states [B, L, d]`` (raw observations), ``actions [B, L]`` (int),
        ``rewards [B, L]``, ``rtg [B, L]`` (relabelled; read at block starts), ``dones [B, L]``
        (1 at an episode's last step), ``timesteps [B, L]`` (step within the episode),
        ``loss_mask [B, L]`` (1 on the last trajectory), ``subgoals [B, L, d]`` (each step's
        `valuable_subgoals` target; read at block starts); L a multiple of c; optionally
        ``pad [B, L]`` (left padding: the Mamba starts at the first real block, `encode_blocks`).
        ``sample``: draw z (default: in training mode) or use the mean.

        Returns ``logits`` and ``goal_logits [B, L, A]`` (with Mamba's z and with f(s_g)),
        ``z, z_mean, z_logvar, goal_z [B, K, z_dim]``, and the losses ``loss_action``,
        ``loss_goal`` and ``loss`` = loss_action + subgoal_weight * loss_goal.
        """
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"DecisionMambaHybrid.forward: batch lacks {', '.join(missing)}")
        cfg = self.config
        sample = self.training if sample is None else sample
        states = batch["states"]
        b = states.shape[0]
        mean, logvar, _ = self.encode_blocks(
            states, batch["rtg"], batch["rewards"], batch["dones"], pad=batch.get("pad")
        )
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean
        goal_z = self.goal_map(
            self._float(self._blocks(batch["subgoals"])[:, :, 0], cfg.state_scale)
        )
        K = z.shape[1]
        tokens = self._gpt_tokens(
            torch.cat([z, goal_z]).flatten(0, 1),
            self._blocks(states).flatten(0, 1).repeat(2, 1, 1),
            self._blocks(batch["actions"]).flatten(0, 1).repeat(2, 1),
            self._blocks(batch["rewards"]).flatten(0, 1).repeat(2, 1),
            self._blocks(batch["timesteps"]).flatten(0, 1).repeat(2, 1),
        )  # [2 B K, 3 c - 1, D]
        logits, goal_logits = self._gpt_logits(tokens).reshape(2, b, K * cfg.c, -1)
        mask = batch["loss_mask"]
        loss_action = action_loss(logits, batch["actions"], mask)
        loss_goal = action_loss(goal_logits, batch["actions"], mask)
        return {
            "logits": logits,
            "goal_logits": goal_logits,
            "z": z,
            "z_mean": mean,
            "z_logvar": logvar,
            "goal_z": goal_z,
            "loss_action": loss_action,
            "loss_goal": loss_goal,
            "loss": loss_action + cfg.subgoal_weight * loss_goal,
        }

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """(total loss, {"loss", "loss_action", "loss_goal"} as floats for logging)."""
        out = self(batch)
        parts = {k: float(out[k].detach()) for k in ("loss", "loss_action", "loss_goal")}
        return out["loss"], parts
