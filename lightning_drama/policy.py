"""Acting in a real environment: the world model's posterior plus the actor, O(1) per step."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lightning_drama.agent import ActorCritic
from lightning_drama.world_model import WorldModel


class DramaPolicy:
    """The collector's policy: `policy(obs, is_first, state) -> (actions, state)`.

    The policy input is [posterior z_t of the current frame, d_{t-1}] (the reference code acts
    on a prior sample and never looks at the current frame). The recurrent state
    `(world-model state, previous action)` is carried by the caller, so nothing is re-encoded.

    Args:
        world_model: the trained `WorldModel`.
        actor_critic: the trained `ActorCritic`.
        greedy: take the most likely action instead of sampling.
    """

    def __init__(self, world_model: WorldModel, actor_critic: ActorCritic, greedy: bool = False):
        self.world_model = world_model
        self.actor_critic = actor_critic
        self.greedy = greedy

    @torch.no_grad()
    def __call__(
        self, obs: torch.Tensor, is_first: torch.Tensor, state: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """obs: [N, H, W, 3] uint8; is_first: [N] bool -> (actions [N] int64 on CPU, state)."""
        device = self.world_model.prior.weight.device
        obs, is_first = obs.to(device), is_first.to(device)
        if state is None:
            wm_state, prev_action = None, torch.zeros(obs.shape[0], dtype=torch.long, device=device)
        else:  # a state restored from a checkpoint arrives on the CPU
            wm_state, prev_action = _to_device(state, device)
        features, wm_state = self.world_model.observe(obs, prev_action, is_first, wm_state)
        action = self.actor_critic.act(features, greedy=self.greedy)
        return action.cpu(), (wm_state, action)


def _to_device(state: Any, device: torch.device) -> Any:
    """Tensors in nested tuples / lists moved to `device` (no copy where they already are)."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, (tuple, list)):
        return type(state)(_to_device(s, device) for s in state)
    return state


def run_episode(env: Any, policy: DramaPolicy, seed: int, max_steps: int) -> dict[str, float]:
    """Play one episode of a Gymnasium env with `policy`; returns its `return`, `length` and
    whether it was `cut` at `max_steps` before it ended.

    The episode ends at a real termination or truncation (a life loss does not end it) or after
    `max_steps` env steps.
    """
    obs, _ = env.reset(seed=seed)
    state, is_first, total, length, ended = None, True, 0.0, 0, False
    for length in range(1, max_steps + 1):  # noqa: B007 - length is the result
        action, state = policy(
            torch.from_numpy(np.asarray(obs))[None], torch.tensor([is_first]), state
        )
        obs, reward, terminated, truncated, _ = env.step(int(action[0]))
        total += float(reward)
        is_first = False
        if terminated or truncated:
            ended = True
            break
    return {"return": total, "length": float(length), "cut": float(not ended)}
