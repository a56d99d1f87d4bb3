"""The DM-H learning-history generator: histories improve, the Minari round trip is exact, and
the command line runs end to end and refuses bad values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from minari import MinariDataset

from lightning_drama.checks import ConfigError
from lightning_drama.dmh.data import (
    ARRAY_FIELDS,
    History,
    LearnerSettings,
    generate,
    learn_task,
    load_histories,
    main,
    save_history,
)
from lightning_drama.dmh.envs import split_tasks

# The stated margin: over 60 episodes (epsilon from 1 down to 0.05) each darkroom history's mean
# return over its last 10 episodes beats that over its first 10 by at least this much (seed 0:
# 0.9 -> 14.7 and 0.6 -> 9.4; an optimal agent gets 13 to 20, a random one about 0.5).
MARGIN = 5.0


@pytest.fixture(scope="module")
def darkroom(tmp_path_factory):
    """2 darkroom tasks x 60 episodes, written to disk: (histories as generated, directory)."""
    out = tmp_path_factory.mktemp("dmh") / "darkroom"
    lines = []
    histories = generate("darkroom", 2, 60, out, seed=0, log=lines.append)
    assert len(lines) == 3 and lines[0].startswith("task 1/2") and "episodes/s" in lines[0]
    assert lines[-1].startswith("wrote 2 learning histories (120 episodes") and "MB" in lines[-1]
    return histories, out


def assert_same(loaded: History, made: History) -> None:
    assert (loaded.env, loaded.task, loaded.env_kwargs) == (made.env, made.task, made.env_kwargs)
    assert loaded.generation == made.generation
    for name in ARRAY_FIELDS:
        got, want = getattr(loaded, name), getattr(made, name)
        assert len(got) == len(want) == made.num_episodes
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all(), name


def test_histories_improve(darkroom):
    histories, _ = darkroom
    assert [h.task for h in histories] == split_tasks("darkroom", 2, seed=0)[0]
    for history in histories:
        returns = history.returns()
        assert returns.shape == (60,)
        assert returns[-10:].mean() >= returns[:10].mean() + MARGIN, returns


def test_history_arrays(darkroom):
    history = darkroom[0][0]
    assert history.num_episodes == 60
    for e in range(60):
        obs, actions = history.observations[e], history.actions[e]
        assert obs.shape == (21, 2) and obs.dtype == np.int64 and actions.shape == (20,)
        assert history.truncations[e].tolist() == [False] * 19 + [True]
        assert not history.terminations[e].any() and history.rewards[e].dtype == np.float64


def test_minari_round_trip_is_exact(darkroom):
    histories, out = darkroom
    loaded = load_histories(out)
    assert len(loaded) == 2
    for got, made in zip(loaded, histories, strict=True):
        assert_same(got, made)
    metadata = json.loads((out / "darkroom-task-0001-v0/data/metadata.json").read_text())
    assert metadata["total_episodes"] == 60 and metadata["dmh"]["task"] == list(histories[1].task)
    assert metadata["dmh"]["generation"]["split"] == {"n_train": 2, "seed": 0}


def test_dataset_rebuilds_its_task_env(darkroom):
    histories, out = darkroom
    dataset = MinariDataset(out / "darkroom-task-0000-v0" / "data")
    env = dataset.recover_environment()
    assert env.unwrapped.goal == histories[0].task and env.unwrapped.size == 9
    # Replaying an episode's actions reproduces its observations and rewards.
    episode = dataset[59]
    obs, _ = env.reset(seed=0)
    observations, rewards = [obs], []
    for action in episode.actions:
        obs, reward, *_ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    assert (np.array(observations) == episode.observations).all()
    assert rewards == episode.rewards.tolist()


@pytest.mark.parametrize(
    ("name", "task", "kwargs"),
    [("key_to_door", ((3, 4), (5, 5)), {}), ("tmaze", -1, {"length": 4})],
)
def test_round_trip_of_terminating_episodes(tmp_path, name, task, kwargs):
    """Key-to-Door episodes end early at the door (ragged lengths); the T-maze's rewards are
    fractions (-1/4): both come back exactly."""
    history = learn_task(name, task, 40, np.random.default_rng(0), env_kwargs=kwargs)
    history.generation = {"algorithm": "q_learning"}
    save_history(history, tmp_path, 0)
    (loaded,) = load_histories(tmp_path)
    assert_same(loaded, history)
    lengths = {len(a) for a in history.actions}
    if name == "key_to_door":
        assert len(lengths) > 1 and any(t.any() for t in history.terminations)
    else:
        assert lengths == {5} and -0.25 in np.concatenate(history.rewards)


def test_generation_is_seeded():
    first = learn_task("darkroom", (1, 7), 15, np.random.default_rng(3))
    second = learn_task("darkroom", (1, 7), 15, np.random.default_rng(3))
    assert_same(first, second)
    other = learn_task("darkroom", (1, 7), 15, np.random.default_rng(4))
    assert any(
        (a.shape != b.shape) or (a != b).any()
        for a, b in zip(first.actions, other.actions, strict=True)
    )


def test_optimistic_learner_solves_the_tmaze():
    history = learn_task(
        "tmaze", 1, 60, np.random.default_rng(0), "optimistic", env_kwargs={"length": 4}
    )
    returns = history.returns()
    assert returns[:10].mean() < 0 and (returns[-10:] == 1).all()
    # Its Q table starts optimistic; q_learning's at 0 is much slower here.
    slow = learn_task(
        "tmaze", 1, 60, np.random.default_rng(0), "q_learning", env_kwargs={"length": 4}
    )
    assert slow.returns()[-10:].mean() < 1


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "histories"
    argv = ["--env", "tmaze", "--length", "3", "--tasks", "1", "--episodes", "5"]
    assert main([*argv, "--out", str(out), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "task 1/1" in printed and "episodes/s" in printed and "MB" in printed
    (history,) = load_histories(out)
    assert history.env == "tmaze" and history.env_kwargs == {"length": 3}
    assert history.num_episodes == 5 and history.generation["algorithm"] == "optimistic"
    assert history.task == split_tasks("tmaze", 1, seed=2)[0][0]
    # An --out that is not empty is refused: datasets are never overwritten.
    assert main([*argv, "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--env", "darkroom", "--tasks", "0"], "--tasks must be >= 1"),
        (["--env", "darkroom", "--tasks", "81"], "below darkroom's 81 tasks"),
        (["--env", "tmaze", "--tasks", "2"], "below tmaze's 2 tasks"),
        (["--env", "darkroom", "--episodes", "0"], "--episodes must be >= 1"),
        (["--env", "darkroom", "--seed", "-1"], "--seed must be >= 0"),
        (["--env", "dark"], "--env must be one of 'darkroom'"),
        (["--env", "darkroom", "--algorithm", "ppo"], "--algorithm must be one of"),
        (["--env", "darkroom", "--length", "5"], "--length is the T-maze's corridor"),
        (["--env", "tmaze", "--length", "0", "--tasks", "1"], "length must be >= 1"),
    ],
)
def test_cli_refuses_bad_values(tmp_path, capsys, arguments, message):
    out = tmp_path / "never"
    assert main([*arguments, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not out.exists()


def test_load_refuses_a_directory_without_histories(tmp_path):
    with pytest.raises(ConfigError, match="no learning histories"):
        load_histories(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        load_histories(tmp_path / "missing")


def test_learner_settings_are_checked():
    with pytest.raises(ConfigError, match="discount must be < 1"):
        LearnerSettings(discount=1.0)
    with pytest.raises(ConfigError, match="algorithm must be one of"):
        learn_task("darkroom", (0, 0), 1, np.random.default_rng(0), "sarsa")
