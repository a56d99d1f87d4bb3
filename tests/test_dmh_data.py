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
    T_EAST,
    T_NORTH,
    T_SOUTH,
    History,
    LearnerSettings,
    dataset_id,
    generate,
    learn_task,
    load_histories,
    main,
    save_history,
)
from lightning_drama.dmh.envs import split_tasks

NO_NOISE = LearnerSettings(epsilon_start=0.0, epsilon_end=0.0)

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


# ------------------------------------------------------------------------------ the T-mazes


@pytest.mark.parametrize("length", [5, 50])
def test_noisy_oracle_without_noise_always_succeeds(length):
    history = learn_task(
        "passive_tmaze", None, 20, np.random.default_rng(0), settings=NO_NOISE,
        env_kwargs={"length": length},
    )  # fmt: skip
    assert history.task is None and (history.returns() == 1.0).all()
    sides = [int(obs[0, 2]) for obs in history.observations]
    assert set(sides) == {1, -1}  # a fresh side every episode
    for side, obs, actions in zip(sides, history.observations, history.actions, strict=True):
        assert obs.shape == (length + 2, 3) and obs[-1].tolist() == [length, side, 0]
        turn = T_NORTH if side == 1 else T_SOUTH
        assert actions.tolist() == [T_EAST] * length + [turn]
    # T-maze action numbering: 0 north, 1 south, 3 east.
    assert (T_NORTH, T_SOUTH, T_EAST) == (0, 1, 3)


@pytest.mark.parametrize(
    ("name", "task", "length"), [("passive_tmaze", None, 5), ("tmaze", -1, 5),
                                 ("passive_tmaze", None, 100)],
)  # fmt: skip
def test_noisy_oracle_history_improves(name, task, length):
    history = learn_task(name, task, 100, np.random.default_rng(0), "noisy_oracle",
                         env_kwargs={"length": length})  # fmt: skip
    returns = history.returns()
    # Seed 0, epsilon 1 -> 0.05: measured successes 25-30 % of the first 20 episodes (epsilon
    # 1 -> 0.8 there), 85-90 % of the last 20, whatever the corridor's length.
    assert returns[-20:].mean() > returns[:20].mean() + 0.5, returns
    assert (returns[-20:] == 1).mean() >= 0.75 and (returns[:20] == 1).mean() <= 0.4
    assert {len(a) for a in history.actions} == {length + 1}


def test_noisy_oracle_is_seeded_and_t_maze_only():
    def make(seed):
        return learn_task("passive_tmaze", None, 10, np.random.default_rng(seed),
                          env_kwargs={"length": 8})  # fmt: skip

    assert_same(make(1), make(1))
    assert any((a != b).any() for a, b in zip(make(1).actions, make(2).actions, strict=True))
    with pytest.raises(ConfigError, match="'noisy_oracle' plays the T-maze presets"):
        learn_task("darkroom", (0, 0), 1, np.random.default_rng(0), "noisy_oracle")


def test_noisy_oracle_is_fast_in_a_long_corridor():
    history = learn_task(
        "passive_tmaze", None, 2, np.random.default_rng(0), settings=NO_NOISE,
        env_kwargs={"length": 10_000},
    )  # fmt: skip
    assert (history.returns() == 1.0).all() and history.observations[0].shape == (10_002, 3)


def test_passive_tmaze_round_trip_is_exact(tmp_path):
    history = learn_task("passive_tmaze", None, 30, np.random.default_rng(0),
                         env_kwargs={"length": 6})  # fmt: skip
    history.generation = {"algorithm": "noisy_oracle"}
    assert 0 < (history.returns() == 1).sum() < 30 and -1 / 6 in np.concatenate(history.rewards)
    data_dir = save_history(history, tmp_path, 0)
    (loaded,) = load_histories(tmp_path)
    assert loaded.task is None
    assert_same(loaded, history)
    metadata = json.loads((data_dir / "metadata.json").read_text())
    assert metadata["dmh"]["task"] is None and metadata["dmh"]["env"] == "passive_tmaze"
    env = MinariDataset(data_dir).recover_environment()
    assert env.unwrapped.goal_side is None and env.unwrapped.length == 6


def test_cli_passive_tmaze(tmp_path, capsys):
    out = tmp_path / "passive"
    argv = ["--env", "passive_tmaze", "--tasks", "1", "--episodes", "20", "--length", "100"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "task 1/1 random side" in capsys.readouterr().out
    (history,) = load_histories(out)
    assert (history.env, history.task, history.env_kwargs) == (
        "passive_tmaze",
        None,
        {"length": 100},
    )
    assert history.generation["algorithm"] == "noisy_oracle" and history.num_episodes == 20
    assert history.generation["split"] == {"n_train": 1, "seed": 0}
    assert {len(a) for a in history.actions} == {101}
    # --tasks defaults to 1 there; the epsilon flags set the noise (none: every episode wins).
    out = tmp_path / "exact"
    argv = ["--env", "passive_tmaze", "--episodes", "4", "--length", "7"]
    assert main([*argv, "--epsilon-start", "0", "--epsilon-end", "0", "--out", str(out)]) == 0
    (history,) = load_histories(out)
    assert (history.returns() == 1).all()
    assert history.generation["learner"]["epsilon_start"] == 0.0


# ------------------------------------------------------------------------------ runs, options


def test_dataset_ids_are_unique_per_run():
    assert dataset_id("darkroom", 3) == "darkroom-task-0003-v0" == dataset_id("darkroom", 3, 0)
    assert dataset_id("darkroom", 3, 2) == "darkroom-task-0003-run-002-v0"
    ids = {dataset_id("tmaze", p, r) for p in range(3) for r in range(3)}
    assert len(ids) == 9


def test_runs_give_independent_histories_per_task(tmp_path):
    from lightning_drama.dmh.datamodule import DMHDataModule

    out = tmp_path / "runs"
    assert main(["--env", "passive_tmaze", "--episodes", "6", "--length", "4", "--runs", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert names == ["passive_tmaze-task-0000-run-001-v0", "passive_tmaze-task-0000-v0"]
    first, second = load_histories(out)
    assert first.generation["run"] == 0 and second.generation["run"] == 1
    assert first.generation["runs"] == second.generation["runs"] == 2
    assert any(
        a.shape != b.shape or (a != b).any()
        for a, b in zip(first.observations, second.observations, strict=True)
    )
    # The datamodule lists every history; the test task stays the one task None.
    datamodule = DMHDataModule(str(out), episodes_per_context=2, c=5, batch_size=3)
    datamodule.setup("fit")
    assert len(datamodule.histories) == 2 and datamodule.test_tasks == [None]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["states"].shape == (3, 10, 3)
    # Grid worlds: each task's runs together, run 0 seeded as without --runs.
    histories = generate("darkroom", 2, 3, tmp_path / "grid", runs=2, log=lambda _: None)
    loaded = load_histories(tmp_path / "grid")
    assert [h.task for h in loaded] == [t for t in split_tasks("darkroom", 2)[0] for _ in range(2)]
    for got, made in zip(loaded, histories, strict=True):
        assert_same(got, made)
    alone = learn_task("darkroom", histories[0].task, 3, np.random.default_rng([0, 0]))
    alone.generation = loaded[0].generation
    assert_same(loaded[0], alone)


def test_cli_grid_options(tmp_path):
    out = tmp_path / "grid"
    argv = ["--env", "darkroom", "--tasks", "1", "--episodes", "6", "--size", "5"]
    assert main([*argv, "--episode-length", "7", "--start", "random", "--out", str(out)]) == 0
    (history,) = load_histories(out)
    assert history.env_kwargs == {"size": 5, "episode_length": 7, "start": "random"}
    assert history.task == split_tasks("darkroom", 1, size=5)[0][0]
    assert {obs.shape for obs in history.observations} == {(8, 2)}
    assert all((obs >= 0).all() and (obs < 5).all() for obs in history.observations)
    assert len({tuple(obs[0]) for obs in history.observations}) > 1  # random starts
    # --start center is the envs' default: no option recorded, every episode at the centre.
    out = tmp_path / "center"
    assert main([*argv, "--start", "center", "--out", str(out)]) == 0
    (history,) = load_histories(out)
    assert history.env_kwargs == {"size": 5}
    assert {tuple(obs[0]) for obs in history.observations} == {(2, 2)}


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
        (["--env", "passive_tmaze", "--tasks", "2"], "--tasks must be 1 for passive_tmaze"),
        (["--env", "passive_tmaze", "--length", "0"], "length must be >= 1"),
        (["--env", "key_to_door", "--length", "5"], "--length is the T-maze's corridor"),
        (["--env", "tmaze", "--size", "5"], "--size is a grid-world option"),
        (["--env", "passive_tmaze", "--episode-length", "9"], "--episode-length is a grid-world"),
        (["--env", "tmaze", "--start", "random"], "--start is a grid-world option"),
        (["--env", "darkroom", "--start", "corner"], "--start must be one of 'center', 'random'"),
        (["--env", "darkroom", "--size", "1"], "size must be >= 2"),
        (["--env", "darkroom", "--episode-length", "0"], "episode_length must be >= 1"),
        (["--env", "darkroom", "--algorithm", "noisy_oracle"], "plays the T-maze presets"),
        (["--env", "darkroom", "--runs", "0"], "--runs must be >= 1"),
        (["--env", "tmaze", "--epsilon-end", "0"], "optimistic acts greedily"),
        (["--env", "passive_tmaze", "--epsilon-end", "2"], "epsilon_end must be <= 1"),
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


def test_cli_with_a_relative_out_directory(tmp_path, monkeypatch):
    """``--out data/dmh/...`` as README writes it: Minari must not join the relative root
    twice, and the histories load back from the same relative path."""
    monkeypatch.chdir(tmp_path)
    argv = ["--env", "darkroom", "--tasks", "2", "--episodes", "3", "--size", "3"]
    assert main([*argv, "--out", "data/dmh/rel"]) == 0
    histories = load_histories("data/dmh/rel")
    assert len(histories) == 2 and all(h.num_episodes == 3 for h in histories)
