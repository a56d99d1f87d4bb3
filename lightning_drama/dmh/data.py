"""Learning histories for DM-H: every training task's episodes, played by a simple learning agent
(or, for the T-mazes, a noisy oracle) from its first (random) episode to its last (much better)
one, stored as Minari datasets.

    python -m lightning_drama.dmh.data --env darkroom --tasks 60 --episodes 1000 \\
        --out data/dmh/darkroom [--seed 0] [--algorithm q_learning|optimistic|noisy_oracle] \\
        [--runs R] [--epsilon-start E0] [--epsilon-end E1] \\
        [--size N] [--episode-length T] [--start center|random]   # grid worlds
        [--length K]                                               # T-mazes
    python -m lightning_drama.dmh.data --env passive_tmaze --episodes 200 --length 100 \\
        --out data/dmh/passive_tmaze    # --tasks 1: its one task, None (a side per episode)

``--size``, ``--episode-length`` and ``--start`` set the grid worlds' options of the same names
(``--start random``: a random start cell each episode; ``center``, the default, leaves the
envs' centre cell); ``--length`` sets the T-mazes' corridor. Each is refused on the other kind
of env. ``--runs R`` learns every training task R times with independent learners (seeds below),
each history its own dataset.

In-context RL (Algorithm Distillation, DM-H) learns to improve a policy from its context by
imitating the whole improvement of a source RL algorithm, so the source data must be learning
histories whose returns rise, not expert demonstrations. AD used A3C / DQN histories; we use a
tabular Q-learner (our choice: fast on a CPU, exactly reproducible, and enough for these tasks),
with one of two exploration rules:

- ``q_learning``: epsilon-greedy, epsilon falling linearly from 1 (the first episode is random)
  to 0.05 (the last); Q starts at 0. Returns rise slowly over the whole history on the 9 x 9
  rooms, but random walks rarely find far goals in the 40 x 40 ones, nor the end of a long
  T-maze corridor (where any one random step loses the episode).
- ``optimistic``: optimism in the face of uncertainty, the principle of UCB, by optimistic
  initial values: Q starts at an upper bound of any value (1 / (1 - gamma) for Darkroom, the
  number of rewards an episode can still give for Darkroom Hard (1) and Key-to-Door (2), 1 for
  the T-maze) and the agent acts greedily, so it tries every untried action until experience
  lowers its value: a systematic exploration. It finds every goal of the large rooms, improving
  over the whole history there, and solves the T-maze (in about 10 k episodes for a corridor of
  length k: every wrong step spoils an episode); on the 9 x 9 rooms it is near-optimal within
  ~100 episodes. (We tried UCB's count bonus, c / sqrt(N(s, a)) added to the target, on top: it
  only slowed learning, a lot in long T-mazes, so it is not used.)

For the T-mazes there is also ``noisy_oracle``: **an oracle with decreasing noise (the issue's
"oracle-with-noise" source), not a learner**. It walks east along the corridor and at the
junction (x = length) turns to the side its first observation showed (north, action 0, for +1;
south, action 1, for -1; from the wrong side cell the same action leads back, and at the goal
it keeps the agent there). With probability epsilon (linear from ``epsilon_start`` at the first
episode to ``epsilon_end`` at the last, as for ``q_learning``) **per episode** it takes one
uniformly random action somewhere along the corridor (each of its k corridor steps with
probability epsilon / k), and with probability epsilon a random action at the turn (and on any
later step), so the history's returns rise as the noise falls, whatever the corridor's length.
It learns nothing: its improvement is the schedule's. A random step in the corridor other than
east loses the episode (the walk has no spare step), and a random turn finds the goal side one
time in four, so an episode succeeds with probability about
``exp(-3 epsilon / 4) (1 - 3 epsilon / 4)``: about 0.12 at epsilon 1 and 0.93 at 0.05.
(Noise of epsilon on every step, our first version, left no successful episode at all for
k = 100: ``(1 - 3 epsilon / 4) ** (k + 1)``.) Its episodes are plain Python steps of
the env, about 200 k steps/s here (k = 10,000: 31 episodes/s).

``--algorithm`` defaults to ``DEFAULT_ALGORITHMS[env]``: ``q_learning`` for the 9 x 9 rooms,
``optimistic`` for the large rooms and "tmaze", ``noisy_oracle`` for "passive_tmaze" (the side
is drawn every episode, Ni et al.'s memory protocol; see `lightning_drama.dmh.envs`).
``noisy_oracle`` is refused on the grid worlds. Greedy ties are broken at random. The
learner's state is the observation plus what an agent with memory could know from its own
episode so far, never the task: in Darkroom Hard and Key-to-Door how many rewards it has had
this episode, and in the T-maze the side signal of its first observation. Hyperparameters are in
`LearnerSettings`.

Storage (our choice, to make the round trip and later sampling simple): one Minari dataset per
history, ``<out>/<env>-task-<NNNN>-v0/data/{main_data.hdf5, metadata.json}``, NNNN the task's
position in the training split (``<env>-task-<NNNN>-run-<RRR>-v0`` for runs 1, 2, ... of
``--runs``; see `dataset_id`); its episodes are the history in order. Run 0 of task NNNN is seeded
``[seed, NNNN]`` (as before runs existed), run R ``[seed, NNNN, R]``. Each dataset records its env
spec (the Gymnasium id and constructor arguments, the task included, so
``MinariDataset(data_dir).recover_environment()`` rebuilds the task) and, under the metadata key
``"dmh"``, the preset name, the task (JSON null for "passive_tmaze"), the env options, the
position, the run and how it was made (algorithm, seed, learner settings, runs and run, and the
split: ``split_tasks(env, tasks, seed)`` gives the held-out test tasks back). We write the Minari
format with ``minari.create_dataset_from_buffers`` rather than through ``minari.DataCollector``:
the collector's step buffer needs jax (``minari[create]``), while the buffers API writes the same
files from the arrays we already hold. ``MINARI_DATASETS_PATH`` points at ``--out`` only while
writing; nothing goes to the home directory, nothing is downloaded, and an ``--out`` that is not
empty is refused.

`load_histories(path)` reads them all back as `History` objects (by task, then run), exactly as
generated: per episode, int64 observations ``[T + 1, obs_dim]`` (the reset observation first) and
actions ``[T]``, float64 rewards and bool terminations and truncations ``[T]``, in order.

Sizes and times for the defaults (``--tasks 60 --episodes 1000 --seed 0``, the default
algorithm), measured with 4 tasks per preset (1 for the T-maze, which has 2) on this project's
shared 2-core CPU and scaled to 60 tasks (they vary little from task to task):

    preset               algorithm    steps / episode    disk       time
    darkroom             q_learning   20                 0.86 GB    3 min
    darkroom_hard        q_learning   20                 0.86 GB    3.5 min
    key_to_door          q_learning   33 (<= 50)         0.89 GB    3 min
    large_darkroom       optimistic   200                1.26 GB    6 min
    large_darkroom_hard  optimistic   200                1.26 GB    7 min
    large_key_to_door    optimistic   392 (<= 500)       1.6 GB     11 min
    tmaze, 1 task        optimistic   11 (k = 10)        14 MB      2.4 s
    passive_tmaze        noisy_oracle 101 (k = 100)      18 MB      1.6 s   (its 1 task, 1000
                                                                            episodes)

(``passive_tmaze`` at k = 10,000 with 100 episodes: 1,000,100 steps, 43 MB, 3.3 s; sizes grow
with ``--runs``, each run a full history.)

(300-450 episodes/s on the 9 x 9 rooms, 75-200 on the large ones, half of it writing.) Most of
the disk is HDF5 bookkeeping: Minari stores every episode as a group of five chunked datasets,
about 14 KB, while the arrays take 34 bytes a step. `load_histories` reads about 460
episodes/s, so a sampler should load once and keep the arrays in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from minari import MinariDataset, create_dataset_from_buffers
from minari.data_collector import EpisodeBuffer
from minari.dataset.minari_storage import MinariStorage

from lightning_drama.checks import ConfigError, check_choice, check_float, check_int
from lightning_drama.dmh.envs import (
    ENV_NAMES,
    PRESETS,
    TMAZE_MOVES,
    TMAZE_NAMES,
    Task,
    make_dmh_env,
    num_tasks,
    split_tasks,
)

# The tabular learners, and the T-mazes' oracle with decreasing noise (see the module docstring).
ALGORITHMS = ("q_learning", "optimistic", "noisy_oracle")
# The algorithms that only play the T-maze presets (`TMAZE_NAMES`).
TMAZE_ONLY_ALGORITHMS = ("noisy_oracle",)
# Per preset: the exploration that gives rising histories there (see the module docstring).
DEFAULT_ALGORITHMS = {
    "darkroom": "q_learning",
    "darkroom_hard": "q_learning",
    "key_to_door": "q_learning",
    "large_darkroom": "optimistic",
    "large_darkroom_hard": "optimistic",
    "large_key_to_door": "optimistic",
    "tmaze": "optimistic",
    "passive_tmaze": "noisy_oracle",
}
# `--start` of the command line: the grid worlds' start cell (their ``start`` option).
STARTS = ("center", "random")
METADATA_KEY = "dmh"


@dataclass(frozen=True)
class LearnerSettings:
    """The tabular learner's hyperparameters (our choices, checked by the returns they give:
    see the module docstring)."""

    # Q-learning step size; large because the envs are deterministic.
    learning_rate: float = 0.5
    # gamma: below 1 so that shorter paths to a reward are worth more.
    discount: float = 0.9
    # q_learning and noisy_oracle: epsilon at the first episode, falling linearly to
    # `epsilon_end` at the last (the chance that a step's action is uniformly random).
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05

    def __post_init__(self):
        where = "LearnerSettings"
        check_float(where, "learning_rate", self.learning_rate, above=0, maximum=1)
        check_float(where, "discount", self.discount, minimum=0, below=1)
        check_float(where, "epsilon_start", self.epsilon_start, minimum=0, maximum=1)
        check_float(where, "epsilon_end", self.epsilon_end, minimum=0, maximum=1)


# The per-episode arrays of a `History`, named as in Minari's episodes.
ARRAY_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


@dataclass
class History:
    """One task's learning history: its episodes in the order the learner played them.

    ``observations[e]: [T_e + 1, obs_dim] int64`` (the reset observation first),
    ``actions[e]: [T_e] int64``, ``rewards[e]: [T_e] float64``, ``terminations[e]`` and
    ``truncations[e]: [T_e] bool``; T_e varies only where episodes can terminate (Key-to-Door).
    """

    env: str  # a preset of `lightning_drama.dmh.envs.ENV_NAMES`
    task: Task
    env_kwargs: dict[str, Any]  # the env's options beyond the task (size, episode_length, ...)
    observations: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[np.ndarray] = field(default_factory=list)
    terminations: list[np.ndarray] = field(default_factory=list)
    truncations: list[np.ndarray] = field(default_factory=list)
    # How it was made: algorithm, seed, the split (n_train, split seed), the learner settings.
    generation: dict[str, Any] = field(default_factory=dict)

    @property
    def num_episodes(self) -> int:
        return len(self.actions)

    def returns(self) -> np.ndarray:
        """``[num_episodes] float64``, the undiscounted return of each episode."""
        return np.array([r.sum() for r in self.rewards], np.float64)


# ------------------------------------------------------------------------------ the learner


class _GridFeatures:
    """Learner state of the grid worlds: the cell and the rewards had this episode (capped)."""

    def __init__(self, size: int, phases: int):
        self.size, self.phases = size, phases
        self.n_states = phases * size * size

    def start(self, obs: np.ndarray) -> int:
        return 0

    def update(self, memory: int, obs: np.ndarray, reward: float) -> int:
        return min(memory + (reward > 0), self.phases - 1)

    def index(self, obs: np.ndarray, memory: int) -> int:
        return (memory * self.size + int(obs[0])) * self.size + int(obs[1])

    def max_value(self, discount: float) -> float:
        """An upper bound of any discounted return: a reward of 1 on every step (Darkroom) or
        at most one per remaining phase (Darkroom Hard: 1, Key-to-Door: 2)."""
        return 1 / (1 - discount) if self.phases == 1 else float(self.phases - 1)


class _TMazeFeatures:
    """Learner state of the T-maze: the cell and the side signal remembered from t = 0."""

    def __init__(self, length: int):
        self.length = length
        self.n_states = 2 * (length + 1) * 3

    def start(self, obs: np.ndarray) -> int:
        return int(obs[2] > 0)  # 1: north, 0: south

    def update(self, memory: int, obs: np.ndarray, reward: float) -> int:
        return memory

    def index(self, obs: np.ndarray, memory: int) -> int:
        return (memory * (self.length + 1) + int(obs[0])) * 3 + int(obs[1]) + 1

    def max_value(self, discount: float) -> float:
        return 1.0  # the goal reward; every other reward is <= 0


def _features(name: str, env: Any) -> _GridFeatures | _TMazeFeatures:
    kind = PRESETS[name].task_kind
    if kind in ("side", "random_side"):
        return _TMazeFeatures(env.length)
    # Phases a memory-based agent can tell apart: Darkroom's reward repeats (1 phase), Darkroom
    # Hard's comes once (before / after), Key-to-Door's twice (no key / key / door reached).
    phases = 3 if kind == "key_door" else 2 if env.hard else 1
    return _GridFeatures(env.size, phases)


def _greedy(scores: np.ndarray, rng: np.random.Generator) -> int:
    best = np.flatnonzero(scores == scores.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def _check_algorithm(where: str, label: str, name: str, algorithm: str | None) -> str:
    """``algorithm`` (None: the preset's default), one of `ALGORITHMS` that plays ``name``."""
    algorithm = DEFAULT_ALGORITHMS[name] if algorithm is None else algorithm
    algorithm = check_choice(where, label, algorithm, ALGORITHMS)
    if algorithm in TMAZE_ONLY_ALGORITHMS and name not in TMAZE_NAMES:
        raise ConfigError(
            f"{where + '.' if where else ''}{label} {algorithm!r} plays the T-maze presets "
            f"({', '.join(TMAZE_NAMES)}), not {name!r}"
        )
    return algorithm


def _epsilon(settings: LearnerSettings, episode: int, episodes: int) -> float:
    """Epsilon of episode ``episode`` of ``episodes``: linear from start (first) to end (last)."""
    progress = episode / max(episodes - 1, 1)  # 0 at the first episode, 1 at the last
    return (1 - progress) * settings.epsilon_start + progress * settings.epsilon_end


# The T-maze's actions (`lightning_drama.dmh.envs.TMAZE_MOVES`: north, south, west, east).
T_NORTH, T_SOUTH, T_EAST = (TMAZE_MOVES.index(move) for move in ((0, 1), (0, -1), (1, 0)))


def _play_noisy_oracle(
    env: Any, history: History, episodes: int, rng: np.random.Generator, settings: LearnerSettings
) -> None:
    """Append ``episodes`` episodes of the noisy oracle on the T-maze ``env`` to ``history``
    (see `learn_task`)."""
    length, steps = env.unwrapped.length, env.unwrapped.episode_length
    n_actions = int(env.action_space.n)
    seed = int(rng.integers(2**31))
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)  # seeded once, as `learn_task`
        epsilon = _epsilon(settings, episode, episodes)
        # The episode's noise, drawn at once: which steps act at random, and with what action.
        # epsilon / length on each corridor step (about epsilon random steps per walk, whatever
        # its length), epsilon on the turn and after it.
        rate = np.where(np.arange(steps) < length, epsilon / length, epsilon)
        noisy = (rng.random(steps) < rate).tolist()
        random_actions = rng.integers(n_actions, size=steps).tolist()
        turn = T_NORTH if obs[2] > 0 else T_SOUTH  # the side signal, seen only at t = 0
        observations = np.empty((steps + 1, len(obs)), np.int64)
        actions = np.empty(steps, np.int64)
        rewards = np.empty(steps, np.float64)
        terminations = np.zeros(steps, bool)
        truncations = np.zeros(steps, bool)
        observations[0] = obs
        x, y = int(obs[0]), int(obs[1])
        t = 0
        done = False
        while not done:
            if t == steps:
                raise RuntimeError(f"a T-maze episode ran past its {steps} steps")
            if noisy[t]:
                action = random_actions[t]
            elif y == 0 and x < length:
                action = T_EAST  # along the corridor
            else:
                action = turn  # into the goal side at the junction (or back to it, or stay)
            obs, reward, terminated, truncated, _ = env.step(action)
            x, y = int(obs[0]), int(obs[1])
            observations[t + 1] = obs
            actions[t], rewards[t] = action, reward
            terminations[t], truncations[t] = terminated, truncated
            t += 1
            done = terminated or truncated
        history.observations.append(observations[: t + 1])
        history.actions.append(actions[:t])
        history.rewards.append(rewards[:t])
        history.terminations.append(terminations[:t])
        history.truncations.append(truncations[:t])


def learn_task(
    name: str,
    task: Task,
    episodes: int,
    rng: np.random.Generator,
    algorithm: str | None = None,
    settings: LearnerSettings = LearnerSettings(),
    env_kwargs: dict[str, Any] | None = None,
) -> History:
    """Play ``episodes`` episodes of preset ``name`` on ``task`` with a tabular learner that
    starts from scratch (``algorithm``: "q_learning", "optimistic", or None for the preset's
    default), or on a T-maze with "noisy_oracle" (an oracle with decreasing noise, not a
    learner: see the module docstring), and return them all, in order, as a `History`."""
    name = check_choice("learn_task", "env", name, ENV_NAMES)
    algorithm = _check_algorithm("learn_task", "algorithm", name, algorithm)
    episodes = check_int("learn_task", "episodes", episodes, minimum=1)
    env_kwargs = dict(env_kwargs or {})
    env = make_dmh_env(name, task, **env_kwargs)
    if algorithm == "noisy_oracle":
        history = History(name, task, env_kwargs)
        _play_noisy_oracle(env, history, episodes, rng, settings)
        env.close()
        return history
    features = _features(name, env.unwrapped)
    n_actions = env.action_space.n
    # [S, A]; "optimistic" starts where no action's value can be higher.
    initial_value = features.max_value(settings.discount) if algorithm == "optimistic" else 0.0
    q = np.full((features.n_states, n_actions), initial_value)
    history = History(name, task, env_kwargs)
    seed = int(rng.integers(2**31))
    for episode in range(episodes):
        # Seeded once: later resets continue the env's RNG (only random starts and the T-maze's
        # random side use it), so the whole history follows from `rng`.
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        epsilon = _epsilon(settings, episode, episodes)
        memory = features.start(obs)
        state = features.index(obs, memory)
        observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
        done = False
        while not done:
            if algorithm == "q_learning" and rng.random() < epsilon:
                action = int(rng.integers(n_actions))
            else:
                action = _greedy(q[state], rng)
            obs, reward, terminated, truncated, _ = env.step(action)
            memory = features.update(memory, obs, reward)
            next_state = features.index(obs, memory)
            # Truncation is a time limit, not an end of the task: bootstrap through it.
            target = reward + (0.0 if terminated else settings.discount * q[next_state].max())
            q[state, action] += settings.learning_rate * (target - q[state, action])
            state = next_state
            done = terminated or truncated
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
        history.observations.append(np.array(observations, np.int64))
        history.actions.append(np.array(actions, np.int64))
        history.rewards.append(np.array(rewards, np.float64))
        history.terminations.append(np.array(terminations, bool))
        history.truncations.append(np.array(truncations, bool))
    env.close()
    return history


# ------------------------------------------------------------------------------ Minari storage


def _jsonable(value: Any) -> Any:
    """Tuples (tasks, cells) as lists, for JSON."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _task_from_json(name: str, value: Any) -> Task:
    kind = PRESETS[name].task_kind
    if kind == "random_side":
        if value is not None:
            raise ConfigError(f"a {name} history's task must be None (null), got {value!r}")
        return None
    if kind == "side":
        return int(value)
    if kind == "goal":
        return int(value[0]), int(value[1])
    return tuple((int(cell[0]), int(cell[1])) for cell in value)


def _kwargs_from_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Options back from JSON: a fixed ``start`` cell is a tuple again."""
    start = kwargs.get("start")
    if isinstance(start, list):
        kwargs = {**kwargs, "start": tuple(start)}
    return kwargs


@contextlib.contextmanager
def _minari_root(path: Path) -> Iterator[None]:
    """Minari places new datasets under ``$MINARI_DATASETS_PATH``: point it at ``path`` while
    writing (never the home directory) and restore it after."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def dataset_id(name: str, position: int, run: int = 0) -> str:
    """The Minari id of history ``run`` (0, 1, ...: ``--runs``) of the ``position``-th training
    task: ``<name>-task-<NNNN>-v0`` for run 0 (as before runs existed) and
    ``<name>-task-<NNNN>-run-<RRR>-v0`` for the others, so every id is unique."""
    if run == 0:
        return f"{name}-task-{position:04d}-v0"
    return f"{name}-task-{position:04d}-run-{run:03d}-v0"


def save_history(history: History, out: str | Path, position: int, run: int = 0) -> Path:
    """Write ``history`` (run ``run`` of the ``position``-th training task) as one Minari dataset
    under ``out``; returns its data directory."""
    out = Path(out).resolve()  # Minari joins a relative root to it a second time
    buffers = [
        EpisodeBuffer(
            id=e,
            observations=history.observations[e],
            actions=history.actions[e],
            rewards=history.rewards[e],
            terminations=history.terminations[e],
            truncations=history.truncations[e],
        )
        for e in range(history.num_episodes)
    ]
    env = make_dmh_env(history.env, history.task, **history.env_kwargs)
    ident = dataset_id(history.env, position, run)
    with _minari_root(out), warnings.catch_warnings():
        # Minari warns about the fields it would like for published datasets (an e-mail, a
        # versioned code link): ours are local.
        warnings.simplefilter("ignore", UserWarning)
        dataset = create_dataset_from_buffers(
            ident,
            buffers,
            env=env,
            eval_env=env.spec,
            algorithm_name=history.generation.get("algorithm", "unknown"),
            author="lightning_drama",
            code_permalink="lightning_drama/dmh/data.py",
            description=f"DM-H learning history of {history.env} task {history.task} run {run}",
            jpeg_encoding=False,
        )
    env.close()
    dataset.storage.update_metadata(
        {
            METADATA_KEY: {
                "env": history.env,
                "task": _jsonable(history.task),
                "env_kwargs": _jsonable(history.env_kwargs),
                "position": position,
                "run": run,
                "generation": history.generation,
            }
        }
    )
    return out / ident / "data"


def load_histories(path: str | Path) -> list[History]:
    """Every learning history under ``path`` (as `generate` wrote it), in training-split order
    (a task's runs together, by run), with the arrays exactly as generated."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ConfigError(f"no learning histories at {str(path)!r}: not a directory")
    found = []
    for data_dir in sorted(path.glob("*/data")):
        metadata = MinariStorage.read_raw_metadata(data_dir)
        if METADATA_KEY in metadata:
            meta = metadata[METADATA_KEY]
            found.append(((meta["position"], meta.get("run", 0)), data_dir, meta))
    if not found:
        raise ConfigError(
            f"no learning histories under {str(path)!r}; make them with "
            "python -m lightning_drama.dmh.data --env ... --out ..."
        )
    histories = []
    for _, data_dir, meta in sorted(found, key=lambda item: item[0]):
        name = meta["env"]
        history = History(
            name,
            _task_from_json(name, meta["task"]),
            _kwargs_from_json(meta["env_kwargs"]),
            generation=meta["generation"],
        )
        dataset = MinariDataset(data_dir)
        for episode in dataset.storage.get_episodes(range(dataset.total_episodes)):
            for key in ARRAY_FIELDS:
                getattr(history, key).append(episode[key])
        histories.append(history)
    return histories


# ------------------------------------------------------------------------------ generation


def _directory_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def generate(
    name: str,
    tasks: int,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    algorithm: str | None = None,
    settings: LearnerSettings = LearnerSettings(),
    env_kwargs: dict[str, Any] | None = None,
    log=print,
    runs: int = 1,
) -> list[History]:
    """Learn the first ``tasks`` tasks of ``split_tasks(name, tasks, seed)`` for ``episodes``
    episodes each, ``runs`` times (independent learners, seeded ``[seed, position]`` for run 0
    and ``[seed, position, run]`` for the others), write one Minari dataset per history under
    ``out`` and return the histories (task by task, a task's runs together). Checks every
    argument before writing anything. "passive_tmaze" takes ``tasks=1``, its one task None."""
    name = check_choice("", "--env", name, ENV_NAMES)
    algorithm = _check_algorithm("", "--algorithm", name, algorithm)
    episodes = check_int("", "--episodes", episodes, minimum=1)
    seed = check_int("", "--seed", seed, minimum=0)
    runs = check_int("", "--runs", runs, minimum=1)
    env_kwargs = dict(env_kwargs or {})
    available = num_tasks(name, **env_kwargs)
    tasks = check_int("", "--tasks", tasks, minimum=1)
    if PRESETS[name].task_kind == "random_side":
        if tasks != 1:
            raise ConfigError(
                f"--tasks must be 1 for {name}, got {tasks}: its one task is None (the goal side "
                "is drawn every episode); use --runs for more histories"
            )
    elif tasks >= available:
        raise ConfigError(
            f"--tasks must be below {name}'s {available} tasks (the rest are held out for "
            f"testing), got {tasks}"
        )
    train, _ = split_tasks(name, tasks, seed, n_test=1, **env_kwargs)
    make_dmh_env(name, train[0], **env_kwargs).close()  # checks the options before any work
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {str(out)!r} exists and is not an empty directory; choose a new one or "
            "remove it (datasets are never overwritten)"
        )
    out.mkdir(parents=True, exist_ok=True)
    generation = {
        "algorithm": algorithm,
        "seed": seed,
        "split": {"n_train": tasks, "seed": seed},
        "learner": asdict(settings),
        "runs": runs,
    }
    histories = []
    start, steps = time.perf_counter(), 0
    for position, task in enumerate(train):
        for run in range(runs):
            task_start = time.perf_counter()
            rng = np.random.default_rng([seed, position] if run == 0 else [seed, position, run])
            history = learn_task(name, task, episodes, rng, algorithm, settings, env_kwargs)
            history.generation = {**generation, "run": run}
            save_history(history, out, position, run)
            histories.append(history)
            steps += sum(len(a) for a in history.actions)
            returns = history.returns()
            head = returns[: min(10, len(returns))].mean()
            tail = returns[-min(10, len(returns)) :].mean()
            label = "random side" if task is None else task
            log(
                f"task {position + 1}/{len(train)} {label}"
                + (f" run {run + 1}/{runs}" if runs > 1 else "")
                + f": mean return of the first 10 episodes {head:.2f}, of the last 10 {tail:.2f} "
                f"({episodes / (time.perf_counter() - task_start):.0f} episodes/s)"
            )
    seconds = time.perf_counter() - start
    count = len(histories)
    log(
        f"wrote {count} learning histor{'y' if count == 1 else 'ies'} "
        f"({count * episodes} episodes, "
        f"{steps} steps) to {out} in {seconds:.1f} s: {_directory_megabytes(out):.1f} MB"
    )
    return histories


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_drama.dmh.data",
        description="Generate DM-H learning histories (one Minari dataset per training task).",
        allow_abbrev=False,
    )
    parser.add_argument("--env", required=True, help=f"one of {', '.join(ENV_NAMES)}")
    parser.add_argument(
        "--tasks", type=int, help="training tasks (default 60; passive_tmaze: 1, its only task)"
    )
    parser.add_argument("--episodes", type=int, default=1000, help="per task (default 1000)")
    parser.add_argument("--out", required=True, help="a new directory for the datasets")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the task split and the learners (default 0)"
    )
    parser.add_argument(
        "--algorithm",
        help=f"{', '.join(ALGORITHMS)} (default: noisy_oracle for passive_tmaze, optimistic for "
        "the large rooms and tmaze, q_learning for the others; noisy_oracle: T-mazes only)",
    )
    for flag, default in (("--epsilon-start", "1"), ("--epsilon-end", "0.05")):
        parser.add_argument(
            flag,
            type=float,
            help=f"q_learning and noisy_oracle: epsilon at the {flag[10:]} of a history "
            f"(default {default}; linear in between)",
        )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="independent learning histories per training task, each its own dataset (default 1)",
    )
    parser.add_argument(
        "--length", type=int, help="tmaze and passive_tmaze only: corridor length k (default 10)"
    )
    parser.add_argument(
        "--size", type=int, help="grid worlds only: the room's side (default 9, large ones 40)"
    )
    parser.add_argument(
        "--episode-length",
        type=int,
        help="grid worlds only: steps per episode (default 20, 50 Key-to-Door, 10x large)",
    )
    parser.add_argument(
        "--start",
        help="grid worlds only: the start cell, 'center' (default) or 'random' (per episode)",
    )
    return parser


def env_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The env options the command line sets (only those given), each checked against the
    preset it applies to: ``--length`` the T-mazes, ``--size``, ``--episode-length`` and
    ``--start`` the grid worlds."""
    name = check_choice("", "--env", args.env, ENV_NAMES)
    tmaze = name in TMAZE_NAMES
    env_kwargs: dict[str, Any] = {}
    if args.length is not None:
        if not tmaze:
            raise ConfigError(
                f"--length is the T-maze's corridor ({', '.join(TMAZE_NAMES)}); --env is "
                f"{name!r} (its options: --size, --episode-length, --start)"
            )
        env_kwargs["length"] = args.length
    for flag, key, value in (
        ("--size", "size", args.size),
        ("--episode-length", "episode_length", args.episode_length),
        ("--start", "start", args.start),
    ):
        if value is not None and tmaze:
            raise ConfigError(
                f"{flag} is a grid-world option; --env is {name!r}, a T-maze (its option: "
                "--length, and an episode is length + 1 steps)"
            )
        if value is None:
            continue
        if key == "start":
            value = check_choice("", "--start", value, STARTS)
            if value == "center":
                continue  # the envs' default: the centre cell
        env_kwargs[key] = value
    return env_kwargs


def settings_from_args(args: argparse.Namespace) -> LearnerSettings:
    """The learner settings the command line sets: ``--epsilon-start`` and ``--epsilon-end``,
    refused for an algorithm without epsilon (optimistic acts greedily)."""
    epsilons = {
        key: value
        for key, value in (("epsilon_start", args.epsilon_start), ("epsilon_end", args.epsilon_end))
        if value is not None
    }
    if epsilons:
        algorithm = _check_algorithm("", "--algorithm", args.env, args.algorithm)
        if algorithm == "optimistic":
            raise ConfigError(
                "--epsilon-start and --epsilon-end set the random actions of q_learning and "
                "noisy_oracle; optimistic acts greedily (its exploration is its initial values)"
            )
    return LearnerSettings(**epsilons)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        env_kwargs = env_kwargs_from_args(args)  # checks --env first
        tasks = args.tasks
        if tasks is None:
            tasks = 1 if PRESETS[args.env].task_kind == "random_side" else 60
        generate(
            args.env,
            tasks,
            args.episodes,
            args.out,
            seed=args.seed,
            algorithm=args.algorithm,
            settings=settings_from_args(args),
            env_kwargs=env_kwargs,
            log=lambda line: print(line, flush=True),
            runs=args.runs,
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
