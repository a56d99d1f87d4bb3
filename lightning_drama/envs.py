"""Environment factory: Atari100k (``ALE/<Game>-v5``) and Gymnasium image envs, discrete actions.

Every env made here returns ``obs: [64, 64, 3] uint8`` and reports two extra info keys on each step:

- ``info["life_loss"]``: a life was lost on this step (the episode goes on);
- ``info["train_terminated"]``: what the replay stores as ``terminated`` — the true termination, or
  also a life loss when ``life_loss_termination`` is on (Drama's choice for Atari).
"""

from __future__ import annotations

import importlib
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from lightning_drama.checks import ConfigError

OBS_SHAPE = (64, 64, 3)

SUPPORTED = (
    "supported env ids: 'ALE/<Game>-v5' (e.g. 'ALE/Pong-v5', Atari100k protocol), any registered "
    "Gymnasium id, or an importable 'package.module:ClassName', as long as observations are "
    "(H, W, 3) uint8 images and the action space is Discrete"
)


class LifeLossInfo(gym.Wrapper):
    """Adds ``info["life_loss"]`` (``info["lives"]`` dropped) and ``info["train_terminated"]``."""

    def __init__(self, env: gym.Env, life_loss_termination: bool = True):
        super().__init__(env)
        self.life_loss_termination = life_loss_termination
        self._lives: int | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._lives = info.get("lives")
        info["life_loss"] = False
        info["train_terminated"] = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives")
        life_loss = lives is not None and self._lives is not None and lives < self._lives
        self._lives = lives
        info["life_loss"] = bool(life_loss)
        info["train_terminated"] = bool(terminated or (life_loss and self.life_loss_termination))
        return obs, reward, terminated, truncated, info

    def get_state(self) -> dict[str, Any] | None:
        """Everything the env needs to continue exactly where it is, for a resumed run: the
        emulator (with its sticky-action RNG), the frame-pooling buffers and the life counter.
        Numbers and numpy arrays only (checkpoint-safe). None for envs other than Atari, whose
        state we cannot capture: a resumed run starts new episodes there."""
        if not isinstance(self.env, gym.wrappers.AtariPreprocessing):
            return None
        atari = self.env
        ale = atari.unwrapped.ale
        emulator = ale.cloneState(include_rng=True).serialize()
        return {
            "emulator": np.frombuffer(emulator, np.uint8).copy(),
            # [2, 210, 160, 3], the frames max-pooled into the next observation: both are written
            # again by a full step, but an episode that ends inside the frame skip reads them.
            "obs_buffer": np.stack(atari.obs_buffer),
            "lives": self._lives,
            "np_random": atari.unwrapped.np_random.bit_generator.state,
        }

    # Where a vector env puts each env's own state before calling `set_state()` (its `call`
    # passes the same arguments to every env).
    resume_state: dict[str, Any] | None = None

    def set_state(self, state: dict[str, Any] | None = None) -> None:
        """Continue from `get_state`'s result (default: `self.resume_state`); call after `reset`,
        which the env requires before anything else."""
        import ale_py

        state = self.resume_state if state is None else state  # arrays, or checkpoint tensors
        atari = self.env
        emulator = np.asarray(state["emulator"]).tobytes()  # saved as uint8
        atari.unwrapped.ale.restoreState(ale_py.ALEState(emulator))
        for buffer, saved in zip(atari.obs_buffer, state["obs_buffer"], strict=True):
            buffer[...] = saved
        self._lives = None if state["lives"] is None else int(state["lives"])
        atari.unwrapped.np_random.bit_generator.state = state["np_random"]


class ResizeObservation(gym.ObservationWrapper):
    """Resizes (H, W, 3) uint8 frames to 64x64 with area interpolation, as AtariPreprocessing."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, OBS_SHAPE, np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        if obs.shape[:2] == OBS_SHAPE[:2]:
            return obs
        return cv2.resize(obs, OBS_SHAPE[1::-1], interpolation=cv2.INTER_AREA)


def make_env(
    env_id: str,
    *,
    noop_max: int = 0,
    repeat_action_probability: float = 0.0,
    full_action_space: bool = False,
    max_num_frames_per_episode: int = 108_000,
    frame_skip: int = 4,
    life_loss_termination: bool = True,
    **kwargs: Any,
) -> gym.Env:
    """Build one environment with 64x64x3 uint8 observations and a Discrete action space.

    Args:
        env_id: ``"ALE/<Game>-v5"``, a registered Gymnasium id, or ``"package.module:ClassName"``.
        noop_max: ALE only: up to this many random no-ops after reset (0 = Atari100k/Drama protocol;
            30 for the other common protocol).
        repeat_action_probability: ALE only: sticky-action probability. Set explicitly because
            v5 defaults to 0.25; Atari100k uses 0.0.
        full_action_space: ALE only: all 18 actions instead of the game's minimal set.
        max_num_frames_per_episode: ALE only: episode cap in emulator frames (108,000 = 30 min).
        frame_skip: ALE only: agent step = this many frames, observation = max over the last two.
        life_loss_termination: store a life loss as ``terminated`` in the replay
            (``info["train_terminated"]``); the episode itself goes on.
        **kwargs: passed on to ``gym.make`` (or to the class for ``"package.module:ClassName"``).

    Raises:
        ValueError: unknown id or game, vector observations, or a non-discrete action space.
    """
    if env_id.startswith("ALE/"):
        env = _make_atari(
            env_id,
            noop_max=noop_max,
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_num_frames_per_episode,
            frame_skip=frame_skip,
            **kwargs,
        )
    else:
        env = _make_generic(env_id, **kwargs)
    return LifeLossInfo(env, life_loss_termination)


def _make_atari(
    env_id: str,
    *,
    noop_max: int,
    repeat_action_probability: float,
    full_action_space: bool,
    max_num_frames_per_episode: int,
    frame_skip: int,
    **kwargs: Any,
) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    try:
        env = gym.make(
            env_id,
            frameskip=1,  # AtariPreprocessing does the skipping (and the max over two frames)
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            max_num_frames_per_episode=max_num_frames_per_episode,
            **kwargs,
        )
    except gym.error.Error as e:
        raise ConfigError(f"unknown Atari env {env_id!r} ({e}); {SUPPORTED}") from e
    return gym.wrappers.AtariPreprocessing(
        env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=OBS_SHAPE[0],
        terminal_on_life_loss=False,  # life loss is reported in info, never ends the episode
        grayscale_obs=False,
    )


def _make_generic(env_id: str, **kwargs: Any) -> gym.Env:
    if ":" in env_id and "/" not in env_id.split(":")[0]:
        module_name, _, class_name = env_id.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import env class {env_id!r} ({e}); {SUPPORTED}") from e
        env = cls(**kwargs)
    else:
        try:
            env = gym.make(env_id, **kwargs)
        except gym.error.Error as e:
            raise ConfigError(f"unknown env id {env_id!r} ({e}); {SUPPORTED}") from e
    obs_space, act_space = env.observation_space, env.action_space
    if not (
        isinstance(obs_space, gym.spaces.Box)
        and len(obs_space.shape) == 3
        and obs_space.shape[2] == 3
        and obs_space.dtype == np.uint8
    ):
        env.close()
        raise ConfigError(
            f"env {env_id!r} has observation space {obs_space}, but Drama needs (H, W, 3) uint8 "
            f"image observations (vector observations are not supported); {SUPPORTED}"
        )
    if not isinstance(act_space, gym.spaces.Discrete):
        env.close()
        raise ConfigError(
            f"env {env_id!r} has action space {act_space}, but Drama needs a Discrete action "
            f"space (continuous actions are not supported); {SUPPORTED}"
        )
    return ResizeObservation(env)
