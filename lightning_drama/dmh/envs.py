"""The DM-H tasks as Gymnasium envs: Darkroom, Darkroom Hard, Dark Key-to-Door, their large
variants, and the passive T-maze; their task lists and train/test splits.

A task (the goal cell, the key and door cells, the T-maze's goal side) is a constructor argument,
so one env is one task and a learning history is the episodes of one env. The observation never
shows the task: an agent infers it from rewards (the grid worlds) or must remember it (the T-maze).
`info` may carry task-derived values for analysis (``has_key``, ``goal_side``); agents must not
read it.

The grid worlds (after Algorithm Distillation, Laskin et al. 2022, arXiv 2210.14215, Appendix;
we read its environment text as quoted by public reimplementations, not the PDF itself):

- a ``size`` x ``size`` room of cells ``(x, y)``, ``0 <= x, y < size``, x growing east and y north;
- observation: the agent's cell, ``[x, y]`` as ``Box(0, size - 1, (2,), int64)`` (integer
  coordinates, so data round-trips exactly; a model may embed or rescale them);
- 5 actions: 0 stay, 1 north (y + 1), 2 south (y - 1), 3 west (x - 1), 4 east (x + 1); a move
  into a wall leaves the agent where it is (AD: "one step left, right, up, down, and no-op");
- start: the centre cell ``(size // 2, size // 2)`` by default (AD: "the agent resets at the
  center of the map"); ``start=(x, y)`` fixes another cell and ``start="random"`` draws one per
  episode from the env's seeded RNG;
- rewards are judged on the cell the agent is on after its move (the "stay" action included);
- an episode ends by truncation after ``episode_length`` steps; only Key-to-Door terminates.

`Darkroom`: reward 1 on every step that ends on the goal (AD: "r = 1 every time the goal is
reached"); ``hard=True`` (Darkroom Hard) gives it only the first time in an episode. AD's Dark Room
Hard is 17 x 17; our "darkroom_hard" keeps 9 x 9 (pass ``size=17`` for AD's). `DarkKeyToDoor`:
+1 the first time the agent reaches the key, then +1 the first time it reaches the door holding
the key; the door without the key gives nothing (each reward once, as in AD). We found no
statement in AD of whether the door ends the episode: ours terminates there
(``terminated=True``), as the widely used CORL ``toymeta`` DarkKeyToDoor does, so a good agent's
episodes are shorter than ``episode_length``. Key and door must differ.

The large variants are 40 x 40 rooms with 10x longer episodes (200 steps for Darkroom, 500 for
Key-to-Door), with the same rules: our setting for DM-H's large grid worlds, not checked
against the DM-H paper's text.

`PassiveTMaze` after Ni et al. 2023 ("When do transformers shine in RL? Decoupling memory from
credit assignment", NeurIPS; their code `twni2016/Memory-RL`, ``envs/tmaze.py`` and
``configs/envs/tmaze_passive.py``, read for the definition):

- cells: a corridor ``(x, 0)`` for ``0 <= x <= length`` (the oracle at x = 0, where the agent
  starts, the junction at x = length) and the two goal candidates ``(length, +1)`` (north) and
  ``(length, -1)`` (south); a move off these cells leaves the agent where it is;
- 4 actions: 0 north, 1 south, 2 west, 3 east (our darkroom's moves without "stay"; Ni orders
  them east, north, west, south);
- observation ``[x, y, signal]`` as int64: ``signal`` is the goal side (+1 north, -1 south) in
  the first observation only (the oracle, t = 0) and 0 afterwards;
- an episode is ``length + 1`` steps and terminates after the last one, where the reward is 1 if
  the agent stands on the goal side and 0 otherwise (a wrong side is not punished, as in Ni);
  on every earlier step t (1-based, after the move) the agent pays ``-1 / length`` if it lags
  behind the optimal east walk, ``x_t < t`` (Ni's ``penalty = -1 / length``, so the lag can cost
  at most -1 in all). The optimal return is therefore exactly 1.
- One difference from Ni (our choice, for a 3-d observation): Ni's *passive* maze hides the
  position in the corridor (a 2-d "ambiguous position" observation); ours shows ``x`` and ``y``
  (the layout of Ni's non-ambiguous variant, ``[x, y, goal]``). The side must still be
  remembered from t = 0.
- ``goal_side`` is a task (+1 or -1, so a learning history infers it from rewards, like the grid
  worlds) or ``None``: a side drawn per episode from the seeded RNG, Ni's protocol, which tests
  memory within an episode.

Two presets use this env:

- ``"tmaze"``: the task is the side, fixed for a whole history (tasks ``[1, -1]``). A held-out
  task is "the other side", so it tests task inference across episodes, not memory.
- ``"passive_tmaze"``: Ni et al.'s memory protocol, the one behind DM-H's T-maze claim (success
  up to corridor length k = 20,000): ``goal_side=None``, the side is drawn **every episode** from
  the env's seeded RNG and shown only at t = 0, so the agent must remember it for ``length``
  steps. Its task list is the single task ``None`` ("random side"): `num_tasks` is 1 and
  ``split_tasks("passive_tmaze", 1, seed)`` is ``([None], [None])``. Nothing is held out at the
  task level there; what a test run has not seen is every episode's fresh side (and the test
  envs' seeds).

`make_dmh_env(name, task, **kwargs)` builds the named presets (`ENV_NAMES`) through Gymnasium's
registry (ids in `ENV_IDS`), so each env has a spec that records its task; `all_tasks`,
`num_tasks`, `task_at` and `split_tasks` enumerate and split the tasks of a preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from lightning_drama.checks import ConfigError, check_choice, check_int

Cell = tuple[int, int]
# Darkroom: the goal cell; Key-to-Door: (key, door); "tmaze": the goal side, +1 or -1;
# "passive_tmaze": None (the side is drawn per episode).
Task = Cell | tuple[Cell, Cell] | int | None

# (dx, dy) of the grid worlds' actions 0..4: stay, north, south, west, east.
GRID_MOVES = ((0, 0), (0, 1), (0, -1), (-1, 0), (1, 0))
# (dx, dy) of the T-maze's actions 0..3: north, south, west, east.
TMAZE_MOVES = ((0, 1), (0, -1), (-1, 0), (1, 0))


def _cell(where: str, name: str, value: Any, size: int) -> Cell:
    """A cell ``(x, y)`` of a ``size`` x ``size`` room, from any pair of integers."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ConfigError(f"{where}.{name} must be a cell (x, y), got {value!r}")
    if len(value) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{where}.{name} must be a cell (x, y) of two integers, got {value!r}")
    x, y = int(value[0]), int(value[1])
    if not (0 <= x < size and 0 <= y < size):
        raise ConfigError(
            f"{where}.{name} must lie in the {size} x {size} room (0 <= x, y < {size}), "
            f"got {(x, y)}"
        )
    return x, y


class _DarkGrid(gym.Env):
    """What the grid worlds share: the room, the moves, the start cell and the step counter."""

    metadata = {"render_modes": []}

    def __init__(self, where: str, size: int, episode_length: int, start: Cell | str | None):
        self.size = check_int(where, "size", size, minimum=2)
        self.episode_length = check_int(where, "episode_length", episode_length, minimum=1)
        if start is None:
            start = (self.size // 2, self.size // 2)
        self.start = start if start == "random" else _cell(where, "start", start, self.size)
        self.observation_space = gym.spaces.Box(0, self.size - 1, (2,), np.int64)
        self.action_space = gym.spaces.Discrete(len(GRID_MOVES))
        self._x = self._y = self._t = 0

    def _reset_agent(self, seed: int | None) -> np.ndarray:
        super().reset(seed=seed)
        if self.start == "random":
            self._x, self._y = (int(v) for v in self.np_random.integers(0, self.size, 2))
        else:
            self._x, self._y = self.start
        self._t = 0
        return self._observation()

    def _move(self, action: Any) -> Cell:
        """Moves the agent (walls stop it), counts the step, returns the new cell."""
        dx, dy = GRID_MOVES[_action_index(action, len(GRID_MOVES))]
        self._x = min(max(self._x + dx, 0), self.size - 1)
        self._y = min(max(self._y + dy, 0), self.size - 1)
        self._t += 1
        return self._x, self._y

    def _observation(self) -> np.ndarray:
        return np.array([self._x, self._y], np.int64)

    @property
    def position(self) -> Cell:
        """The agent's cell (also its observation)."""
        return self._x, self._y


def _action_index(action: Any, n: int) -> int:
    index = int(action)
    if not 0 <= index < n:
        raise ValueError(f"action must be in 0..{n - 1}, got {action!r}")
    return index


class Darkroom(_DarkGrid):
    """Find an unseen goal cell: reward 1 on each step that ends on it (``hard``: the first
    time only). Truncated after ``episode_length`` steps. See the module docstring."""

    def __init__(
        self,
        goal: Cell,
        size: int = 9,
        episode_length: int = 20,
        hard: bool = False,
        start: Cell | str | None = None,
    ):
        super().__init__("Darkroom", size, episode_length, start)
        self.goal = _cell("Darkroom", "goal", goal, self.size)
        self.hard = bool(hard)
        self._goal_reached = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._goal_reached = False
        return self._reset_agent(seed), {}

    def step(self, action):
        on_goal = self._move(action) == self.goal
        reward = 1.0 if on_goal and not (self.hard and self._goal_reached) else 0.0
        self._goal_reached |= on_goal
        return self._observation(), reward, False, self._t >= self.episode_length, {}


class DarkKeyToDoor(_DarkGrid):
    """Find an unseen key (+1, once), then an unseen door (+1, once, ends the episode); the door
    without the key gives nothing. Truncated after ``episode_length`` steps otherwise."""

    def __init__(
        self,
        key: Cell,
        door: Cell,
        size: int = 9,
        episode_length: int = 50,
        start: Cell | str | None = None,
    ):
        super().__init__("DarkKeyToDoor", size, episode_length, start)
        self.key = _cell("DarkKeyToDoor", "key", key, self.size)
        self.door = _cell("DarkKeyToDoor", "door", door, self.size)
        if self.key == self.door:
            raise ConfigError(f"DarkKeyToDoor: key and door must be different cells, both {key}")
        self.has_key = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.has_key = False
        return self._reset_agent(seed), {"has_key": False}

    def step(self, action):
        cell = self._move(action)
        reward, terminated = 0.0, False
        if not self.has_key and cell == self.key:
            self.has_key, reward = True, 1.0
        elif self.has_key and cell == self.door:
            reward, terminated = 1.0, True
        truncated = not terminated and self._t >= self.episode_length
        return self._observation(), reward, terminated, truncated, {"has_key": self.has_key}


class PassiveTMaze(gym.Env):
    """Ni et al.'s passive T-maze: walk a corridor of ``length`` cells east, then turn to the goal
    side shown only in the first observation. ``length + 1`` steps; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, goal_side: int | None, length: int = 10):
        self.length = check_int("PassiveTMaze", "length", length, minimum=1)
        if goal_side is not None and (
            isinstance(goal_side, bool)
            or not isinstance(goal_side, (int, np.integer))
            or goal_side not in (-1, 1)
        ):
            raise ConfigError(
                f"PassiveTMaze.goal_side must be +1 (north), -1 (south) or None (drawn per "
                f"episode), got {goal_side!r}"
            )
        self.goal_side = None if goal_side is None else int(goal_side)
        self.episode_length = self.length + 1
        self.penalty = -1.0 / self.length
        self.observation_space = gym.spaces.Box(
            np.array([0, -1, -1]), np.array([self.length, 1, 1]), (3,), np.int64
        )
        self.action_space = gym.spaces.Discrete(len(TMAZE_MOVES))
        self._x = self._y = self._t = 0
        self._side = 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._side = self.goal_side
        if self._side is None:
            self._side = 1 if self.np_random.integers(2) else -1
        self._x = self._y = self._t = 0
        return np.array([0, 0, self._side], np.int64), {"goal_side": self._side}

    def step(self, action):
        dx, dy = TMAZE_MOVES[_action_index(action, len(TMAZE_MOVES))]
        x, y = self._x + dx, self._y + dy
        in_corridor = y == 0 and 0 <= x <= self.length
        at_goal_candidate = x == self.length and abs(y) == 1
        if in_corridor or at_goal_candidate:
            self._x, self._y = x, y
        self._t += 1
        terminated = self._t >= self.episode_length
        if terminated:
            reward = 1.0 if self._y == self._side else 0.0
        else:
            reward = self.penalty if self._x < self._t else 0.0
        obs = np.array([self._x, self._y, 0], np.int64)
        return obs, reward, terminated, False, {"goal_side": self._side}


# --------------------------------------------------------------------------- presets and tasks


@dataclass(frozen=True)
class EnvPreset:
    """A named env: its registered Gymnasium id, how its task is passed and its defaults."""

    env_id: str
    # "goal" (a cell), "key_door" (two cells), "side" (+1 / -1) or "random_side" (None: the
    # side is drawn per episode, so the preset has the one task None)
    task_kind: str
    defaults: dict[str, Any] = field(default_factory=dict)


DARKROOM_ID = "lightning_drama/Darkroom-v0"
KEY_TO_DOOR_ID = "lightning_drama/DarkKeyToDoor-v0"
TMAZE_ID = "lightning_drama/PassiveTMaze-v0"

PRESETS: dict[str, EnvPreset] = {
    "darkroom": EnvPreset(DARKROOM_ID, "goal", {"size": 9, "episode_length": 20}),
    "darkroom_hard": EnvPreset(
        DARKROOM_ID, "goal", {"size": 9, "episode_length": 20, "hard": True}
    ),
    "key_to_door": EnvPreset(KEY_TO_DOOR_ID, "key_door", {"size": 9, "episode_length": 50}),
    "large_darkroom": EnvPreset(DARKROOM_ID, "goal", {"size": 40, "episode_length": 200}),
    "large_darkroom_hard": EnvPreset(
        DARKROOM_ID, "goal", {"size": 40, "episode_length": 200, "hard": True}
    ),
    "large_key_to_door": EnvPreset(KEY_TO_DOOR_ID, "key_door", {"size": 40, "episode_length": 500}),
    "tmaze": EnvPreset(TMAZE_ID, "side", {"length": 10}),
    "passive_tmaze": EnvPreset(TMAZE_ID, "random_side", {"length": 10}),
}
# The presets on the T-maze (the others are grid worlds).
TMAZE_NAMES = tuple(name for name, preset in PRESETS.items() if preset.env_id == TMAZE_ID)
ENV_NAMES = tuple(PRESETS)
ENV_IDS = (DARKROOM_ID, KEY_TO_DOOR_ID, TMAZE_ID)

for _env_id, _class in zip(ENV_IDS, (Darkroom, DarkKeyToDoor, PassiveTMaze), strict=True):
    if _env_id not in gym.registry:
        gym.register(_env_id, entry_point=f"{__name__}:{_class.__name__}")


def env_settings(name: str, **kwargs: Any) -> dict[str, Any]:
    """The constructor options of preset ``name``: its defaults, updated by ``kwargs``."""
    preset = PRESETS[check_choice("dmh", "env", name, ENV_NAMES)]
    return {**preset.defaults, **kwargs}


def task_kwargs(name: str, task: Task | None) -> dict[str, Any]:
    """The constructor arguments that set ``task`` on preset ``name``'s env."""
    kind = PRESETS[check_choice("dmh", "env", name, ENV_NAMES)].task_kind
    if kind == "goal":
        return {"goal": task}
    if kind == "key_door":
        if isinstance(task, (str, bytes)) or not isinstance(task, Sequence) or len(task) != 2:
            raise ConfigError(f"a {name} task is a pair of cells (key, door), got {task!r}")
        return {"key": task[0], "door": task[1]}
    if kind == "random_side" and task is not None:
        raise ConfigError(
            f"the {name} env draws its goal side every episode: its only task is None, "
            f"got {task!r} (a fixed side is the 'tmaze' preset)"
        )
    return {"goal_side": task}


def make_dmh_env(name: str, task: Task | None, **kwargs: Any) -> gym.Env:
    """Build preset ``name`` (one of `ENV_NAMES`) on ``task`` (a goal cell, a (key, door) pair,
    a "tmaze" side, or None for "passive_tmaze") with Gymnasium's ``gym.make``; ``kwargs``
    override the preset's options (e.g. ``start="random"``, ``length=100`` for the T-maze). The
    env's spec records the task (``goal_side=None`` for "passive_tmaze")."""
    settings = env_settings(name, **kwargs)
    try:
        return gym.make(PRESETS[name].env_id, **task_kwargs(name, task), **settings)
    except TypeError as error:
        raise ConfigError(f"bad option for the {name} env: {error}") from error


def num_tasks(name: str, **kwargs: Any) -> int:
    """How many tasks preset ``name`` has: every goal cell (81 on 9 x 9), every ordered (key,
    door) pair of distinct cells (81 * 80 = 6480), the two "tmaze" sides, or the one task None of
    "passive_tmaze"."""
    preset = PRESETS[check_choice("dmh", "env", name, ENV_NAMES)]
    if preset.task_kind == "side":
        return 2
    if preset.task_kind == "random_side":
        return 1
    cells = check_int(name, "size", env_settings(name, **kwargs)["size"], minimum=2) ** 2
    return cells if preset.task_kind == "goal" else cells * (cells - 1)


def task_at(name: str, index: int, **kwargs: Any) -> Task:
    """Task number ``index`` of preset ``name`` in `all_tasks` order, without listing them all
    (the large Key-to-Door has 2.6 million)."""
    count = num_tasks(name, **kwargs)
    index = check_int(name, "task index", int(index), minimum=0, maximum=count - 1)
    kind = PRESETS[name].task_kind
    if kind == "side":
        return (1, -1)[index]
    if kind == "random_side":
        return None
    size = env_settings(name, **kwargs)["size"]
    if kind == "goal":
        return divmod(index, size)
    key, rest = divmod(index, size * size - 1)
    door = rest if rest < key else rest + 1  # the door skips the key's cell
    return divmod(key, size), divmod(door, size)


def all_tasks(name: str, **kwargs: Any) -> list[Task]:
    """Every task of preset ``name``: goal cells ``(x, y)`` in x-major order, (key, door) pairs
    in key-major order, the "tmaze" sides ``[1, -1]``, or ``[None]`` for "passive_tmaze"."""
    return [task_at(name, i, **kwargs) for i in range(num_tasks(name, **kwargs))]


def _is_one(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == 1


def split_tasks(
    name: str, n_train: int, seed: int = 0, n_test: int | None = None, **kwargs: Any
) -> tuple[list[Task], list[Task]]:
    """Disjoint train and test tasks of preset ``name``, drawn by a ``seed``-ed permutation of
    all tasks: ``n_train`` for training and ``n_test`` (default: all the others) for testing.
    The same arguments always give the same split, so a dataset only needs to record them.

    "passive_tmaze" has the one task None (a side drawn per episode): its only split is
    ``n_train=1`` and ``n_test`` None or 1, giving ``([None], [None])``. Nothing is held out at
    the task level; what is unseen at test time is each episode's fresh side (and the test envs'
    seeds). The ``seed`` is checked but changes nothing."""
    if PRESETS[check_choice("dmh", "env", name, ENV_NAMES)].task_kind == "random_side":
        if not _is_one(n_train):
            raise ConfigError(
                f"{name}.n_train must be 1, got {n_train!r}: {name} has the one task None (its "
                "goal side is drawn every episode), used for training and testing alike"
            )
        if n_test is not None and not _is_one(n_test):
            raise ConfigError(
                f"{name}.n_test must be 1 or None, got {n_test!r}: {name} has the one task None "
                "(play more test episodes for more sides)"
            )
        check_int(name, "seed", seed, minimum=0)
        return [None], [None]
    count = num_tasks(name, **kwargs)
    n_train = check_int(name, "n_train", n_train, minimum=1, maximum=count - 1)
    rest = count - n_train
    n_test = rest if n_test is None else check_int(name, "n_test", n_test, 1, rest)
    seed = check_int(name, "seed", seed, minimum=0)
    order = np.random.default_rng(seed).permutation(count)
    train = [task_at(name, i, **kwargs) for i in order[:n_train]]
    test = [task_at(name, i, **kwargs) for i in order[n_train : n_train + n_test]]
    return train, test
