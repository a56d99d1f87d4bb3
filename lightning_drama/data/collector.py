"""Environment collector: steps the env(s) with a policy and writes every step to the replay.

The policy interface (the training module passes one in; ``None`` = uniform random, the warm-up)::

    policy(obs: [N, 64, 64, 3] uint8 tensor, is_first: [N] bool tensor, state)
        -> (actions: [N] int64 tensor, state)

``state`` is ``None`` at the start; the policy resets the rows where ``is_first``. The collector
keeps the current observation, ``is_first`` flags and policy state between calls, so training can
interleave ``collect`` calls with updates, and its ``state_dict`` carries them together with the
envs' own states (Atari), so that a resumed run continues the running episodes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lightning_drama.data.replay import ReplayBuffer

Policy = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


class Collector:
    """Steps ``len(env_fns)`` environments (one Gymnasium vector env) and fills ``replay``.

    Args:
        env_fns: one constructor per env, e.g. ``partial(make_env, "ALE/Pong-v5")``.
        replay: buffer with one stream per env.
        seed: env i is reset with seed + i; random warm-up actions use an RNG seeded with it too.
        asynchronous: step the envs in subprocesses (``AsyncVectorEnv``) instead of in turn.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        replay: ReplayBuffer,
        seed: int = 0,
        asynchronous: bool = False,
    ):
        if replay.num_streams != len(env_fns):
            raise ValueError(f"replay has {replay.num_streams} streams for {len(env_fns)} envs")
        if len(env_fns) == 1 and not asynchronous:
            self.envs = _SingleEnv(env_fns[0]())  # skips the vector env's per-step bookkeeping
        else:
            vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
            # SAME_STEP: a finished env is reset inside the same step(), so every step is a real one
            self.envs = _VectorEnv(
                vector_cls(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            )
        self.num_envs = len(env_fns)
        self.num_actions = int(self.envs.action_space.n)
        self.replay = replay
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0  # total env steps over all envs
        self.episodes = 0  # finished episodes over all envs
        self.last_return = float("nan")  # return of the most recently finished episode
        self.obs: np.ndarray | None = None  # [N, 64, 64, 3] uint8, current observation
        self.is_first = np.ones(self.num_envs, bool)  # [N]
        self.policy_state: Any = None
        self._episode_return = np.zeros(self.num_envs, np.float64)
        self._episode_length = np.zeros(self.num_envs, np.int64)
        self._resume: dict[str, Any] | None = None  # running episodes to continue (load_state_dict)

    def reset(self) -> None:
        """Start new episodes in all envs (done automatically on the first ``collect``)."""
        # after a resume, env_steps > 0 gives fresh but reproducible seeds
        self.obs = self.envs.reset(seed=self.seed + self.env_steps)
        self.is_first[:] = True
        self.policy_state = None
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0

    @torch.no_grad()
    def collect(self, num_steps: int, policy: Policy | None = None) -> list[dict[str, float]]:
        """Take at least ``num_steps`` env steps in total (a multiple of ``num_envs``).

        Returns one ``{"return", "length", "env"}`` dict per episode finished during the call.
        """
        if self.obs is None:
            self._start()
        finished = []
        for _ in range(-(-num_steps // self.num_envs)):
            if policy is None:
                actions = self.rng.integers(0, self.num_actions, self.num_envs)
            else:
                obs, is_first = torch.from_numpy(self.obs), torch.from_numpy(self.is_first)
                actions, self.policy_state = policy(obs, is_first, self.policy_state)
                actions = actions.cpu().numpy().astype(np.int64)
            next_obs, reward, terminated, truncated, train_terminated = self.envs.step(actions)
            done = terminated | truncated
            self.replay.add(self.obs, actions, reward, train_terminated, truncated, self.is_first)

            self._episode_return += reward
            self._episode_length += 1
            if done.any():
                for i in np.flatnonzero(done):
                    episode = {
                        "return": float(self._episode_return[i]),
                        "length": int(self._episode_length[i]),
                        "env": int(i),
                    }
                    finished.append(episode)
                    self.last_return = episode["return"]
                self.episodes += int(done.sum())
                self._episode_return[done] = 0.0
                self._episode_length[done] = 0
            self.env_steps += self.num_envs
            self.obs = next_obs  # for finished envs this is already the reset observation
            self.is_first = done
        return finished

    def state_dict(self) -> dict[str, Any]:
        """Counters and RNG, and where the envs support it (Atari) the running episodes: the envs'
        own states, the current observation, episode counters and the policy's recurrent state.
        Without those (other envs) a resumed run starts new episodes."""
        state = {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "last_return": self.last_return,
            "rng": self.rng.bit_generator.state,
        }
        env_states = None if self.obs is None else self.envs.get_states()
        if env_states is not None and all(s is not None for s in env_states):
            state["running"] = {  # copies: collecting goes on updating some of these in place
                "envs": env_states,
                "obs": self.obs.copy(),
                "is_first": self.is_first.copy(),
                "episode_return": self._episode_return.copy(),
                "episode_length": self._episode_length.copy(),
                "policy_state": self.policy_state,
            }
        elif self._resume is not None:  # saved again before the first collect after a resume
            state["running"] = self._resume
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps = state["env_steps"]
        self.episodes = state["episodes"]
        self.last_return = state["last_return"]
        self.rng.bit_generator.state = state["rng"]
        self.obs = None  # the next collect continues the saved episodes, or starts new ones
        self._resume = state.get("running")

    def _start(self) -> None:
        """Before the first step: continue the episodes of a loaded state, else reset."""
        self.reset()
        running, self._resume = self._resume, None
        if running is None:
            return
        self.envs.set_states(running["envs"])
        # In place, into the arrays reset() made (the values may be tensors from a checkpoint).
        self.obs[:] = running["obs"]
        self.is_first[:] = running["is_first"]
        self._episode_return[:] = running["episode_return"]
        self._episode_length[:] = running["episode_length"]
        self.policy_state = running["policy_state"]

    def close(self) -> None:
        self.envs.close()


class _VectorEnv:
    """A Gymnasium vector env (SAME_STEP autoreset) that also returns the stored terminations."""

    def __init__(self, envs: gym.vector.VectorEnv):
        self.envs = envs
        self.action_space = envs.single_action_space

    def reset(self, seed: int) -> np.ndarray:
        return self.envs.reset(seed=seed)[0]

    def get_states(self) -> list[Any]:
        try:
            return list(self.envs.call("get_state"))
        except AttributeError:  # envs not made by make_env
            return [None] * self.envs.num_envs

    def set_states(self, states: list[Any]) -> None:
        self.envs.set_attr("resume_state", list(states))  # each env its own state
        self.envs.call("set_state")

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """-> next obs (reset obs where done), reward, terminated, truncated, train_terminated."""
        obs, reward, terminated, truncated, info = self.envs.step(actions)
        done = terminated | truncated
        # for finished envs this step's info sits in final_info (info holds the reset's)
        train_terminated = np.where(
            info.get("_train_terminated", False), info.get("train_terminated", False), False
        )
        final = info.get("final_info", {})
        if "train_terminated" in final:
            mask = done & final["_train_terminated"]
            train_terminated = np.where(mask, final["train_terminated"], train_terminated)
        # a real termination is always stored as one
        return obs, reward, terminated, truncated, train_terminated.astype(bool) | terminated

    def close(self) -> None:
        self.envs.close()


class _SingleEnv:
    """One env with the same batched interface as :class:`_VectorEnv`."""

    def __init__(self, env: gym.Env):
        self.env = env
        self.action_space = env.action_space

    def reset(self, seed: int) -> np.ndarray:
        return self.env.reset(seed=seed)[0][None]

    def get_states(self) -> list[Any]:
        get_state = getattr(self.env, "get_state", None)
        return [None if get_state is None else get_state()]

    def set_states(self, states: list[Any]) -> None:
        self.env.set_state(states[0])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, reward, terminated, truncated, info = self.env.step(int(actions[0]))
        train_terminated = info.get("train_terminated", False) or terminated
        if terminated or truncated:
            obs, _ = self.env.reset()
        return (
            obs[None],
            np.array([reward], np.float32),
            np.array([terminated]),
            np.array([truncated]),
            np.array([train_terminated]),
        )

    def close(self) -> None:
        self.env.close()
