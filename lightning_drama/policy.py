"""Acting in a real environment: what the actor sees, in the reference's way or ours.

Both policies have the collector's interface `policy(obs [N, H, W, 3] uint8, is_first [N] bool,
state) -> (actions [N] int64 on the CPU, state)`; the caller carries `state` (a tuple of
batch-first tensors, `None` at the start), so rows can be selected by indexing and a checkpoint
holds them.

- `ReferencePolicy` (`model.acting: reference`, the default) does what the Drama code does
  (train.py, RealityContextLength 16): the policy state is [a prior sample of z_t, d_{t-1}], with
  d_{t-1} recomputed every step by re-running the world model over the last 16 (obs, action)
  pairs of the episode, and the first action of every episode taken uniformly at random. The
  current frame is never looked at.
- `DramaPolicy` (`model.acting: posterior`) acts on the posterior z_t of the current frame and
  d_{t-1} from a recurrent state carried from step to step: O(1) per step, nothing re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from lightning_drama.agent import ActorCritic
from lightning_drama.world_model import WorldModel

ACTING_MODES = ("reference", "posterior")


class _Acting:
    """What both policies hold: the world model, the actor-critic and greedy or sampled actions."""

    def __init__(self, world_model: WorldModel, actor_critic: ActorCritic, greedy: bool = False):
        self.world_model = world_model
        self.actor_critic = actor_critic
        self.greedy = greedy

    def _on_model_device(
        self, obs: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
        device = self.world_model.prior.weight.device
        return obs.to(device), is_first.to(device), device


class DramaPolicy(_Acting):
    """Acting on the posterior of the current frame, O(1) per step (`acting: posterior`).

    The policy input is [posterior z_t of the current frame, d_{t-1}]. The recurrent state
    `(world-model state, previous action)` is carried by the caller, so nothing is re-encoded.

    Args:
        world_model: the trained `WorldModel`.
        actor_critic: the trained `ActorCritic`.
        greedy: take the most likely action instead of sampling.
    """

    @torch.no_grad()
    def __call__(
        self, obs: torch.Tensor, is_first: torch.Tensor, state: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """obs: [N, H, W, 3] uint8; is_first: [N] bool -> (actions [N] int64 on CPU, state)."""
        obs, is_first, device = self._on_model_device(obs, is_first)
        if state is None or len(state) != 2:  # none yet, or another policy's
            wm_state, prev_action = None, torch.zeros(obs.shape[0], dtype=torch.long, device=device)
        else:  # a state restored from a checkpoint arrives on the CPU
            wm_state, prev_action = _to_device(state, device)
        features, wm_state = self.world_model.observe(obs, prev_action, is_first, wm_state)
        action = self.actor_critic.act(features, greedy=self.greedy)
        return action.cpu(), (wm_state, action)


class ReferencePolicy(_Acting):
    """Acting as the reference code does (`acting: reference`).

    At step t of an episode (t >= 1) the world model is run afresh over the last `context`
    (obs, action) pairs o_{t-K}..o_{t-1} (K = min(t, context)); the actor sees
    [z_t ~ prior(d_{t-1}), d_{t-1}]. At t = 0 the action is uniform over the actions. The state
    is `(frames [N, K, H, W, 3] uint8, actions [N, K] int64, filled [N] int64)`: each row's
    window, right-aligned, and how many of its pairs belong to the running episode.

    Cost per env step: `context` frames encoded and a `context`-step forward, instead of one
    frame and one step for `DramaPolicy`.

    Args:
        world_model: the trained `WorldModel`.
        actor_critic: the trained `ActorCritic`.
        greedy: take the most likely action instead of sampling (the first action of an episode
            stays random, as in the reference's evaluation).
        context: the window K (the reference's RealityContextLength, 16).
    """

    def __init__(
        self,
        world_model: WorldModel,
        actor_critic: ActorCritic,
        greedy: bool = False,
        context: int = 16,
    ):
        if context < 1:
            raise ValueError(f"acting_context must be >= 1, got {context}")
        super().__init__(world_model, actor_critic, greedy)
        self.context = context

    @torch.no_grad()
    def __call__(
        self, obs: torch.Tensor, is_first: torch.Tensor, state: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """obs: [N, H, W, 3] uint8; is_first: [N] bool -> (actions [N] int64 on CPU, state)."""
        obs, is_first, device = self._on_model_device(obs, is_first)
        n, k = obs.shape[0], self.context
        if state is None or len(state) != 3 or state[0].shape[1:] != (k, *obs.shape[1:]):
            # none yet (or another policy's): every row starts without context, as the
            # reference's does after the warm-up
            frames = torch.zeros(n, k, *obs.shape[1:], dtype=torch.uint8, device=device)
            actions = torch.zeros(n, k, dtype=torch.long, device=device)
            filled = torch.zeros(n, dtype=torch.long, device=device)
        else:  # a state restored from a checkpoint arrives on the CPU
            frames, actions, filled = _to_device(state, device)
        filled = torch.where(is_first, 0, filled)  # a new episode forgets the old one's frames

        action = torch.randint(
            self.world_model.num_actions, (n,), device=device
        )  # an episode's first action
        acting = filled > 0
        if acting.any():
            rows = acting.nonzero().squeeze(1)
            # Left-padded windows: the sequence model resets at each row's first real pair.
            first = torch.arange(k, device=device)[None] == (k - filled[rows])[:, None]
            features = self.world_model.observe_context(frames[rows], actions[rows], first)
            action[rows] = self.actor_critic.act(features, greedy=self.greedy)

        frames = torch.cat([frames[:, 1:], obs[:, None]], 1)
        actions = torch.cat([actions[:, 1:], action[:, None]], 1)
        filled = (filled + 1).clamp(max=k)
        return action.cpu(), (frames, actions, filled)


def make_policy(
    acting: str,
    world_model: WorldModel,
    actor_critic: ActorCritic,
    greedy: bool = False,
    context: int = 16,
) -> DramaPolicy | ReferencePolicy:
    """The policy of acting mode `acting` ("reference" or "posterior", see the module docstring)."""
    if acting == "reference":
        return ReferencePolicy(world_model, actor_critic, greedy, context)
    if acting == "posterior":
        return DramaPolicy(world_model, actor_critic, greedy)
    raise ValueError(f"unknown acting {acting!r}; choose one of {ACTING_MODES}")


def _map_tensors(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`fn` applied to every tensor of a nested (tuple / list) policy state."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_tensors(s, fn) for s in state)
    return state


def _to_device(state: Any, device: torch.device) -> Any:
    """The state's tensors on `device` (no copy where they already are)."""
    return _map_tensors(state, lambda t: t.to(device))


def _select_rows(state: Any, rows: torch.Tensor) -> Any:
    """The rows `rows` of every batch-first tensor in a nested policy state."""
    return _map_tensors(state, lambda t: t[rows.to(t.device)])


Policy = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


def run_episodes(
    envs: Sequence[Any], policy: Policy, seeds: Sequence[int], max_steps: int
) -> list[dict[str, float]]:
    """Play one episode in each of `envs` at once, with one batched `policy` call per step.

    Env i is reset with `seeds[i]`; an episode ends at a real termination or truncation (a life
    loss does not end it) or after `max_steps` env steps, and its env is then left alone while the
    others go on. Returns per env its episode's `return`, `length` and whether it was `cut` at
    `max_steps` before it ended.
    """
    if len(envs) != len(seeds):
        raise ValueError(f"{len(envs)} envs but {len(seeds)} seeds")
    obs = [np.asarray(env.reset(seed=int(seed))[0]) for env, seed in zip(envs, seeds, strict=True)]
    n = len(envs)
    total, length = np.zeros(n), np.zeros(n, np.int64)
    ended = np.zeros(n, bool)
    running = list(range(n))
    state, is_first = None, torch.ones(n, dtype=torch.bool)
    for _ in range(max_steps):
        batch = torch.from_numpy(np.stack([obs[i] for i in running]))
        actions, state = policy(batch, is_first, state)
        finished = []
        for row, i in enumerate(running):
            obs[i], reward, terminated, truncated, _ = envs[i].step(int(actions[row]))
            total[i] += float(reward)
            length[i] += 1
            if terminated or truncated:
                ended[i] = True
                finished.append(row)
        if finished:
            keep = torch.tensor([row not in finished for row in range(len(running))])
            running = [i for row, i in enumerate(running) if keep[row]]
            if not running:
                break
            state = _select_rows(state, keep.nonzero().squeeze(1))
        is_first = torch.zeros(len(running), dtype=torch.bool)
    return [
        {"return": float(total[i]), "length": float(length[i]), "cut": float(not ended[i])}
        for i in range(n)
    ]


def run_episode(env: Any, policy: Policy, seed: int, max_steps: int) -> dict[str, float]:
    """Play one episode of a Gymnasium env with `policy` (see `run_episodes`)."""
    return run_episodes([env], policy, [seed], max_steps)[0]
