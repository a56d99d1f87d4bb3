"""Environment factory: Atari100k (``ALE/<Game>-v5``), MinAtar (``MinAtar/<Game>-v1``) and
Gymnasium image envs, discrete actions.

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
    "supported env ids: 'ALE/<Game>-v5' (e.g. 'ALE/Pong-v5', Atari100k protocol), "
    "'MinAtar/<Game>-v1' (e.g. 'MinAtar/Breakout-v1', needs the optional minatar package), any "
    "registered Gymnasium id, or an importable 'package.module:ClassName', as long as observations "
    "are (H, W, 3) uint8 images and the action space is Discrete"
)

# Id name -> MinAtar's module name (``minatar.environments.<module>``).
MINATAR_GAMES = {
    "Asterix": "asterix",
    "Breakout": "breakout",
    "Freeway": "freeway",
    "Seaquest": "seaquest",
    "SpaceInvaders": "space_invaders",
}

# [10, 3] uint8, the colour of each MinAtar channel (Seaquest has the most, 10): the Tableau 10
# colours, chosen to stay apart from each other and from the black background.
MINATAR_PALETTE = np.array(
    [
        [31, 119, 180],  # blue
        [255, 127, 14],  # orange
        [44, 160, 44],  # green
        [214, 39, 40],  # red
        [148, 103, 189],  # purple
        [140, 86, 75],  # brown
        [227, 119, 194],  # pink
        [127, 127, 127],  # grey
        [188, 189, 34],  # olive
        [23, 190, 207],  # cyan
    ],
    np.uint8,
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


class MinAtarEnv(gym.Env):
    """A MinAtar game as an RGB image env: the ``[10, 10, C]`` bool state drawn one colour per
    channel on black, upscaled to ``[image_size, image_size, 3] uint8`` by nearest neighbour.

    ``environment``: a ``minatar.Environment`` (sticky actions, difficulty ramp, its own RNG).
    ``action_set``: MinAtar action of each of our actions (the game's minimal set, or all 6).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, environment: Any, action_set: list[int], image_size: int = OBS_SHAPE[0]):
        self.game = environment
        self.action_set = list(action_set)
        self.render_mode = "rgb_array"
        height, width, channels = self.game.state_shape()
        self.action_space = gym.spaces.Discrete(len(self.action_set))
        self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        # [C], channel c draws as c + 1 so that the max over channels picks the highest one on
        # (MinAtar's own display rule) and 0 stays the background.
        self._channel_ids = np.arange(1, channels + 1, dtype=np.uint8)
        # [C + 1, 3], black first.
        self._palette = np.concatenate([np.zeros((1, 3), np.uint8), MINATAR_PALETTE[:channels]])
        # [S], the grid row (column) each pixel row (column) copies: cells are 6 or 7 px wide at
        # 64 and every pixel copies one cell, so blocks stay solid (no interpolation).
        self._rows = np.arange(image_size) * height // image_size
        self._cols = np.arange(image_size) * width // image_size

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            # MinAtar's RandomState (shared by the game and the sticky actions) takes 32-bit
            # seeds only; gymnasium's np_random turns any seed into one.
            self.game.seed(int(self.np_random.integers(2**32)))
        # Each episode starts with a no-op as the "previous" action, as in ALE: else a sticky
        # first step could repeat the last episode's last action, and a seeded episode would
        # depend on the one before it.
        self.game.last_action = 0
        self.game.reset()
        return self.render(), {}

    def step(self, action: int):
        reward, terminated = self.game.act(self.action_set[int(action)])
        return self.render(), float(reward), bool(terminated), False, {}

    def render(self) -> np.ndarray:
        """The current frame, ``[S, S, 3] uint8``."""
        state = self.game.state()  # [10, 10, C] bool
        cells = (state * self._channel_ids).max(axis=2)  # [10, 10], highest channel on + 1
        # `take` rather than fancy indexing: a few times faster on these small arrays.
        grid = self._palette.take(cells, axis=0)  # [10, 10, 3]
        return grid.take(self._rows, axis=0).take(self._cols, axis=1)  # [S, S, 3]


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
    image_size: int = OBS_SHAPE[0],
    **kwargs: Any,
) -> gym.Env:
    """Build one environment with 64x64x3 uint8 observations and a Discrete action space.

    Args:
        env_id: ``"ALE/<Game>-v5"``, ``"MinAtar/<Game>-v1"`` (the game's minimal action set;
            ``-v0``: all 6 actions; games: Asterix, Breakout, Freeway, Seaquest, SpaceInvaders),
            a registered Gymnasium id, or ``"package.module:ClassName"``.
        noop_max: ALE only: up to this many random no-ops after reset (0 = Atari100k/Drama protocol;
            30 for the other common protocol).
        repeat_action_probability: ALE only: sticky-action probability. Set explicitly because
            v5 defaults to 0.25; Atari100k uses 0.0.
        full_action_space: ALE only: all 18 actions instead of the game's minimal set.
        max_num_frames_per_episode: ALE only: episode cap in emulator frames (108,000 = 30 min).
        frame_skip: ALE only: agent step = this many frames, observation = max over the last two.
        life_loss_termination: store a life loss as ``terminated`` in the replay
            (``info["train_terminated"]``); the episode itself goes on. MinAtar has no lives.
        image_size: MinAtar only: side of the square frame the 10x10 grid is upscaled to. The
            replay stores 64x64 frames, so another size needs a world model built for it.
        **kwargs: passed on to ``gym.make`` (or to the class for ``"package.module:ClassName"``,
            or to ``minatar.Environment`` for MinAtar, e.g. ``sticky_action_prob=0.0``; its
            defaults are sticky actions with probability 0.1 and the difficulty ramp on).

    Raises:
        ValueError: unknown id or game, vector observations, a non-discrete action space, or a
            MinAtar id without the optional ``minatar`` package.
    """
    if env_id.startswith("MinAtar/"):
        env = _make_minatar(env_id, image_size=image_size, **kwargs)
    elif env_id.startswith("ALE/"):
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


def _make_minatar(env_id: str, *, image_size: int, **kwargs: Any) -> MinAtarEnv:
    game, _, version = env_id.removeprefix("MinAtar/").rpartition("-")
    if game not in MINATAR_GAMES or version not in ("v0", "v1"):
        raise ConfigError(
            f"unknown MinAtar env {env_id!r}: the games are {', '.join(MINATAR_GAMES)}, as "
            f"'MinAtar/<Game>-v1' (minimal action set) or 'MinAtar/<Game>-v0' (all 6 actions)"
        )
    if image_size < 10:
        raise ConfigError(f"image_size={image_size} is below MinAtar's 10x10 grid; use 64")
    try:
        # GPL-3.0, so an optional dependency, imported only when a MinAtar env is made.
        from minatar import Environment
    except ImportError as e:
        raise ConfigError(
            f"{env_id!r} needs the optional package minatar (GPL-3.0, so not installed with "
            f'lightning_drama): pip install minatar, or pip install -e ".[minatar]" ({e})'
        ) from e
    try:
        environment = Environment(MINATAR_GAMES[game], **kwargs)
    except TypeError as e:
        raise ConfigError(
            f"bad option for {env_id!r} ({e}); MinAtar takes sticky_action_prob and "
            "difficulty_ramping"
        ) from e
    if version == "v1":
        action_set = environment.minimal_action_set()
    else:
        action_set = list(range(environment.num_actions()))
    return MinAtarEnv(environment, action_set, image_size)


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
