"""The DM-H envs: rewards, episode ends and observations on scripted action sequences, seeding,
vectorisation, and the task lists and splits."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from lightning_drama.checks import ConfigError
from lightning_drama.dmh import envs
from lightning_drama.dmh.envs import (
    DarkKeyToDoor,
    Darkroom,
    PassiveTMaze,
    all_tasks,
    make_dmh_env,
    num_tasks,
    split_tasks,
    task_at,
)

STAY, NORTH, SOUTH, WEST, EAST = range(5)  # the grid worlds' actions
T_NORTH, T_SOUTH, T_WEST, T_EAST = range(4)  # the T-maze's


def play(env: gym.Env, actions, seed: int | None = 0):
    """Reset, then step through ``actions`` (stopping at the episode's end): the observations
    [T + 1, ...], rewards, terminations and truncations as arrays."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, terminations, truncations = [obs], [], [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    return (
        np.array(observations),
        np.array(rewards),
        np.array(terminations),
        np.array(truncations),
    )


# ------------------------------------------------------------------------------ Darkroom


def test_darkroom_moves_start_and_walls():
    env = Darkroom(goal=(0, 0))
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [4, 4] and obs.dtype == np.int64 and info == {}
    assert env.observation_space.contains(obs) and env.action_space.n == 5
    moves = [STAY, NORTH, SOUTH, SOUTH, WEST, EAST, EAST]
    observations, *_ = play(env, moves)
    assert observations.tolist() == [[4, 4], [4, 4], [4, 5], [4, 4], [4, 3], [3, 3], [4, 3], [5, 3]]
    # Walls: four steps east from x = 6 end at the last column, x = 8.
    env = Darkroom(goal=(0, 0), start=(6, 0))
    observations, *_ = play(env, [EAST] * 4 + [SOUTH])
    assert observations[:, 0].tolist() == [6, 7, 8, 8, 8, 8] and observations[-1, 1] == 0


def test_darkroom_reward_on_every_step_on_the_goal():
    env = Darkroom(goal=(6, 4))
    # Reach the goal at step 2, stay two steps, leave, come back.
    actions = [EAST, EAST, STAY, STAY, EAST, WEST, NORTH]
    _, rewards, terminations, truncations = play(env, actions)
    assert rewards.tolist() == [0, 1, 1, 1, 0, 1, 0]
    assert not terminations.any() and not truncations.any()


def test_darkroom_hard_rewards_only_the_first_arrival():
    env = Darkroom(goal=(6, 4), hard=True)
    _, rewards, *_ = play(env, [EAST, EAST, STAY, EAST, WEST, STAY])
    assert rewards.tolist() == [0, 1, 0, 0, 0, 0]
    # ... in each episode.
    _, rewards, *_ = play(env, [EAST, EAST, STAY])
    assert rewards.tolist() == [0, 1, 0]


@pytest.mark.parametrize("hard", [False, True])
def test_darkroom_truncates_after_episode_length(hard):
    env = Darkroom(goal=(4, 4), hard=hard)  # the start cell: staying earns on every step
    _, rewards, terminations, truncations = play(env, [STAY] * 30)
    assert len(rewards) == 20
    assert truncations.tolist() == [False] * 19 + [True] and not terminations.any()
    assert rewards.sum() == (1 if hard else 20)


# ------------------------------------------------------------------------------ Key-to-Door


def test_key_then_door():
    env = DarkKeyToDoor(key=(5, 4), door=(5, 6))
    obs, info = env.reset(seed=0)
    assert info == {"has_key": False}
    # The key at step 1, the key again (nothing), the door at step 5 ends the episode.
    _, rewards, terminations, truncations = play(env, [EAST, WEST, EAST, NORTH, NORTH, NORTH])
    assert rewards.tolist() == [1, 0, 0, 0, 1]
    assert terminations.tolist() == [False] * 4 + [True] and not truncations.any()


def test_door_before_key_gives_nothing():
    env = DarkKeyToDoor(key=(4, 2), door=(4, 6))
    # The door (twice: steps 2 and 4) first, then the key (step 8), then the door (step 12).
    actions = [NORTH, NORTH, SOUTH, NORTH] + [SOUTH] * 4 + [NORTH] * 4
    _, rewards, terminations, _ = play(env, actions)
    assert rewards.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert terminations[-1] and len(rewards) == 12


def test_key_to_door_truncates_after_episode_length():
    env = DarkKeyToDoor(key=(0, 0), door=(8, 8))
    _, rewards, terminations, truncations = play(env, [STAY] * 60)
    assert len(rewards) == 50 and truncations[-1] and not truncations[:-1].any()
    assert not terminations.any() and rewards.sum() == 0
    with pytest.raises(ConfigError, match="different"):
        DarkKeyToDoor(key=(1, 1), door=(1, 1))


# ------------------------------------------------------------------------------ large variants


@pytest.mark.parametrize(
    ("name", "size", "length"),
    [
        ("darkroom", 9, 20),
        ("darkroom_hard", 9, 20),
        ("key_to_door", 9, 50),
        ("large_darkroom", 40, 200),
        ("large_darkroom_hard", 40, 200),
        ("large_key_to_door", 40, 500),
    ],
)
def test_presets_sizes_and_lengths(name, size, length):
    task = task_at(name, 0)
    env = make_dmh_env(name, task)
    assert env.unwrapped.size == size
    assert env.observation_space.high.tolist() == [size - 1, size - 1]
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [size // 2, size // 2]
    # Walking west from the centre never reaches task 0's cells on the bottom row (y = 0).
    _, _, _, truncations = play(env, [WEST] * (length + 5))
    assert len(truncations) == length and truncations[-1]
    if "darkroom" in name:
        assert env.unwrapped.hard == ("hard" in name)


# ------------------------------------------------------------------------------ T-maze


def test_tmaze_optimal_walk_and_sides():
    for side, turn in ((1, T_NORTH), (-1, T_SOUTH)):
        env = PassiveTMaze(goal_side=side, length=4)
        observations, rewards, terminations, truncations = play(env, [T_EAST] * 4 + [turn])
        assert observations.tolist() == [
            [0, 0, side], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [4, side, 0],
        ]  # fmt: skip
        assert rewards.tolist() == [0, 0, 0, 0, 1]
        assert terminations.tolist() == [False] * 4 + [True] and not truncations.any()
        # The wrong side: no reward, no punishment.
        wrong = T_SOUTH if turn == T_NORTH else T_NORTH
        _, rewards, terminations, _ = play(env, [T_EAST] * 4 + [wrong])
        assert rewards.tolist() == [0, 0, 0, 0, 0] and terminations[-1]


def test_tmaze_lag_penalty():
    env = PassiveTMaze(goal_side=1, length=4)
    # A slow walk: a step north in the corridor (a wall, so no move) at t = 2; then it lags.
    observations, rewards, *_ = play(env, [T_EAST, T_NORTH, T_EAST, T_EAST, T_EAST])
    assert observations[:, 0].tolist() == [0, 1, 1, 2, 3, 4]
    assert rewards == pytest.approx([0, -0.25, -0.25, -0.25, 0])  # at x = 4, y = 0: no goal
    # Walking west at the oracle (a wall) and never east: -1 / length on each of the 4 steps.
    _, rewards, *_ = play(env, [T_WEST] * 5)
    assert rewards[:4] == pytest.approx([-0.25] * 4) and rewards.sum() == pytest.approx(-1.0)


def test_tmaze_side_shown_only_at_the_start():
    sequences = []
    for side in (1, -1):
        env = PassiveTMaze(goal_side=side, length=6)
        actions = [T_EAST, T_WEST, T_EAST, T_EAST, T_NORTH, T_EAST, T_EAST]
        observations, *_ = play(env, actions)
        assert observations[0, 2] == side and (observations[1:, 2] == 0).all()
        sequences.append(observations)
    assert (sequences[0][1:] == sequences[1][1:]).all()


def test_tmaze_random_side_is_seeded():
    env = PassiveTMaze(goal_side=None, length=3)
    sides = [env.reset(seed=s)[0][2] for s in range(20)]
    assert set(sides) == {1, -1}
    assert sides == [env.reset(seed=s)[0][2] for s in range(20)]
    env.reset(seed=3)
    assert env.reset(seed=3)[1]["goal_side"] == sides[3]


def passive_sides(env: gym.Env, seed: int, episodes: int = 30) -> list[int]:
    """The side signals of ``episodes`` episodes after one seeded reset (as a history plays)."""
    sides = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed if episode == 0 else None)
        assert obs.tolist()[:2] == [0, 0] and obs[2] == info["goal_side"]
        sides.append(int(obs[2]))
    return sides


def test_passive_tmaze_preset_draws_a_side_every_episode():
    env = make_dmh_env("passive_tmaze", None)
    assert env.unwrapped.goal_side is None and env.unwrapped.length == 10  # the default
    assert env.spec.id == envs.TMAZE_ID and env.spec.kwargs == {"goal_side": None, "length": 10}
    env = make_dmh_env("passive_tmaze", None, length=3)
    sides = passive_sides(env, seed=5)
    assert set(sides) == {1, -1}  # varies across the episodes of one seeded run
    assert passive_sides(env, seed=5) == sides  # the same seed repeats them
    assert passive_sides(make_dmh_env("passive_tmaze", None, length=3), seed=5) == sides
    assert passive_sides(env, seed=6) != sides
    # The optimal walk, turning to the side the first observation shows, always earns 1.
    for _ in range(6):
        first, _ = env.reset()
        turn = T_NORTH if first[2] == 1 else T_SOUTH
        steps = [env.step(action) for action in [T_EAST] * 3 + [turn]]
        assert [step[1] for step in steps] == [0, 0, 0, 1]
        assert [step[2] for step in steps] == [False] * 3 + [True]
        assert [step[0].tolist() for step in steps] == [
            [1, 0, 0],
            [2, 0, 0],
            [3, 0, 0],
            [3, first[2], 0],
        ]


def test_passive_tmaze_spec_rebuilds_the_random_side_env():
    env = make_dmh_env("passive_tmaze", None, length=20000)
    rebuilt = gym.make(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    assert rebuilt.unwrapped.goal_side is None and rebuilt.unwrapped.length == 20000
    assert rebuilt.unwrapped.episode_length == 20001


def test_passive_tmaze_has_the_one_task_none():
    assert num_tasks("passive_tmaze") == 1 == num_tasks("passive_tmaze", length=100)
    assert task_at("passive_tmaze", 0) is None and all_tasks("passive_tmaze") == [None]
    with pytest.raises(ConfigError, match="task index must be <= 0"):
        task_at("passive_tmaze", 1)
    with pytest.raises(ConfigError, match="only task is None"):
        make_dmh_env("passive_tmaze", 1)
    # "tmaze" keeps its two fixed sides.
    assert all_tasks("tmaze") == [1, -1] and make_dmh_env("tmaze", -1).unwrapped.goal_side == -1


@pytest.mark.parametrize("seed", [0, 7])
def test_passive_tmaze_split_holds_nothing_out(seed):
    for n_test in (None, 1):
        assert split_tasks("passive_tmaze", 1, seed, n_test) == ([None], [None])
    assert split_tasks("passive_tmaze", 1, seed, length=50) == ([None], [None])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2,), "n_train must be 1, got 2: passive_tmaze has the one task None"),
        ((0,), "n_train must be 1, got 0"),
        ((True,), "n_train must be 1, got True"),
        ((1, 0, 2), "n_test must be 1 or None, got 2"),
        ((1, -1), "seed must be >= 0"),
    ],
)
def test_passive_tmaze_split_refuses_other_sizes(args, message):
    with pytest.raises(ConfigError, match=message):
        split_tasks("passive_tmaze", *args)


# ------------------------------------------------------------------------------ hidden tasks


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("darkroom", (0, 0), (8, 3)),
        ("darkroom_hard", (0, 0), (8, 3)),
        ("key_to_door", ((0, 0), (1, 0)), ((7, 7), (2, 8))),
        ("tmaze", 1, -1),
    ],
)
def test_observations_do_not_show_the_task(name, first, second):
    rng = np.random.default_rng(0)
    actions = rng.integers(make_dmh_env(name, first).action_space.n, size=60)
    (obs_a, *_), (obs_b, *_) = (play(make_dmh_env(name, t), actions) for t in (first, second))
    if name == "tmaze":  # the oracle at t = 0 is the one place the side shows
        obs_a, obs_b = obs_a[1:], obs_b[1:]
    assert obs_a.shape == obs_b.shape and (obs_a == obs_b).all()


# ------------------------------------------------------------------------------ seeding, vectors


@pytest.mark.parametrize(
    ("name", "task", "kwargs"),
    [
        ("darkroom", (2, 2), {"start": "random"}),
        ("tmaze", None, {"length": 5}),
        ("passive_tmaze", None, {"length": 5}),
    ],
)
def test_same_seed_same_episode(name, task, kwargs):
    actions = np.random.default_rng(1).integers(4, size=30)
    runs = [play(make_dmh_env(name, task, **kwargs), actions, seed=s) for s in (7, 7, 8, 9, 10)]
    for first, second in zip(runs[0], runs[1], strict=True):
        assert (first == second).all()
    starts = {tuple(run[0][0]) for run in runs[2:] + runs[:1]}
    assert len(starts) > 1  # other seeds give other starts (sides)


def test_sync_vector_env():
    goals = [(0, 0), (4, 4), (8, 8)]
    vector = gym.vector.SyncVectorEnv([lambda g=g: make_dmh_env("darkroom", g) for g in goals])
    obs, _ = vector.reset(seed=0)
    assert obs.shape == (3, 2) and (obs == 4).all()
    total = np.zeros(3)
    for _ in range(20):
        obs, reward, terminated, truncated, _ = vector.step(np.array([SOUTH, STAY, EAST]))
        total += reward
    assert total.tolist() == [0, 20, 0] and truncated.all() and not terminated.any()
    vector.close()


# ------------------------------------------------------------------------------ tasks


def test_task_lists():
    goals = all_tasks("darkroom")
    assert len(goals) == 81 == num_tasks("darkroom") and len(set(goals)) == 81
    assert goals[:2] == [(0, 0), (0, 1)] and goals[-1] == (8, 8)
    pairs = all_tasks("key_to_door")
    assert len(pairs) == 81 * 80 == len(set(pairs)) and all(k != d for k, d in pairs)
    assert all_tasks("tmaze") == [1, -1]
    assert num_tasks("large_darkroom") == 1600 and num_tasks("large_key_to_door") == 1600 * 1599
    # task_at agrees with the full list, here and far into the large Key-to-Door.
    assert [task_at("key_to_door", i) for i in (0, 79, 80, 6479)] == [
        pairs[0], pairs[79], pairs[80], pairs[6479],
    ]  # fmt: skip
    assert task_at("large_key_to_door", 1599 * 1599 + 5) == ((39, 39), (0, 5))


@pytest.mark.parametrize(
    ("name", "n_train"), [("darkroom", 60), ("key_to_door", 100), ("tmaze", 1)]
)
def test_split_disjoint_covering_and_seeded(name, n_train):
    train, test = split_tasks(name, n_train, seed=0)
    assert len(train) == n_train and not set(train) & set(test)
    assert sorted(train + test) == sorted(all_tasks(name))
    assert split_tasks(name, n_train, seed=0) == (train, test)
    assert split_tasks(name, n_train, seed=1)[0] != train or name == "tmaze"
    few_train, few_test = split_tasks(name, n_train, seed=0, n_test=1)
    assert few_train == train and few_test == test[:1]


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="n_train must be <= 80"):
        split_tasks("darkroom", 81)
    with pytest.raises(ConfigError, match="must be one of"):
        make_dmh_env("dark_room", (0, 0))
    with pytest.raises(ConfigError, match="9 x 9 room"):
        make_dmh_env("darkroom", (9, 0))
    with pytest.raises(ConfigError, match="goal_side"):
        make_dmh_env("tmaze", 0)
    with pytest.raises(ConfigError, match="bad option"):
        make_dmh_env("darkroom", (0, 0), colour="red")
    with pytest.raises(ConfigError, match="episode_length must be >= 1"):
        make_dmh_env("darkroom", (0, 0), episode_length=0)


def test_registered_ids_rebuild_the_task():
    env = make_dmh_env("key_to_door", ((1, 2), (3, 4)))
    assert env.spec.id == envs.KEY_TO_DOOR_ID
    rebuilt = gym.make(env.spec)
    assert (rebuilt.unwrapped.key, rebuilt.unwrapped.door) == ((1, 2), (3, 4))
