from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch

from lightning_drama.data.collector import Collector
from lightning_drama.data.datamodule import _checkpoint_safe
from lightning_drama.data.replay import ReplayBuffer
from lightning_drama.envs import make_env


class CountingEnv(gym.Env):
    """obs = seed-dependent offset + step; reward = action; a life lost every 2 steps."""

    def __init__(self, episode_length: int = 3, lives: int | None = None):
        self.observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.episode_length = episode_length
        self.start_lives = lives

    def _info(self):
        return {} if self.start_lives is None else {"lives": self.start_lives - self.t // 2}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.offset = int(self.np_random.integers(0, 200))
        self.t = 0
        return np.full((64, 64, 3), self.offset, np.uint8), self._info()

    def step(self, action):
        self.t += 1
        obs = np.full((64, 64, 3), self.offset + self.t, np.uint8)
        return obs, float(action), self.t >= self.episode_length, False, self._info()


def make_collector(num_envs=1, capacity=20, seed=0, **env_options):
    env_fn = partial(make_env, f"{__name__}:CountingEnv", **env_options)
    replay = ReplayBuffer(capacity, num_streams=num_envs)
    return Collector([env_fn] * num_envs, replay, seed=seed), replay


def test_rows_follow_the_replay_convention():
    collector, replay = make_collector()
    episodes = collector.collect(7)
    data = {key: value[:7] for key, value in replay.data.items()}
    frame = data["obs"][:, 0, 0, 0].astype(int)
    # episode = reset frame + 2 steps; the terminal frame is not stored, the next reset frame is
    assert data["is_first"].tolist() == [True, False, False, True, False, False, True]
    assert data["terminated"].tolist() == [False, False, True, False, False, True, False]
    assert not data["truncated"].any()
    assert (frame[[1, 2, 4, 5]] == frame[[0, 1, 3, 4]] + 1).all()
    np.testing.assert_array_equal(data["reward"], data["action"].astype(np.float32))
    assert [e["length"] for e in episodes] == [3, 3]
    assert [e["return"] for e in episodes] == [data["action"][0:3].sum(), data["action"][3:6].sum()]
    assert collector.env_steps == 7 and collector.episodes == 2
    assert collector.last_return == episodes[-1]["return"]
    assert collector.is_first.tolist() == [False]  # row 6 was a reset frame, the next is not


def test_policy_gets_obs_is_first_and_its_state_back():
    calls = []

    def policy(obs, is_first, state):
        assert obs.dtype == torch.uint8 and obs.shape == (2, 64, 64, 3)
        assert is_first.dtype == torch.bool and is_first.shape == (2,)
        calls.append((is_first.tolist(), state))
        return torch.tensor([1, 2]), len(calls)

    collector, replay = make_collector(num_envs=2)
    collector.collect(3, policy)  # 2 vector steps
    collector.collect(2, policy)  # one more: state and flags carried over between calls
    assert collector.env_steps == 6
    assert calls == [([True, True], None), ([False, False], 1), ([False, False], 2)]
    collector.collect(2, policy)  # episodes of 3 steps ended on the previous step
    assert calls[-1] == ([True, True], 3)
    assert replay.data["action"][[0, 10]].tolist() == [1, 2]  # stream i starts at row 10 i


def test_env_i_is_seeded_with_seed_plus_i():
    collector, replay = make_collector(num_envs=2, seed=7)
    collector.collect(2)
    for i in range(2):
        env = make_env(f"{__name__}:CountingEnv")
        obs, _ = env.reset(seed=7 + i)
        np.testing.assert_array_equal(replay.data["obs"][10 * i], obs)


@pytest.mark.parametrize("num_envs", [1, 2])  # plain env / Gymnasium vector env
def test_life_loss_is_stored_as_termination_when_asked(num_envs):
    for life_loss_termination, expected in [(True, [1, 3, 4]), (False, [4])]:
        collector, replay = make_collector(
            num_envs, episode_length=5, lives=3, life_loss_termination=life_loss_termination
        )
        collector.collect(6 * num_envs)
        for row in range(0, 10 * num_envs, 10):
            assert np.flatnonzero(replay.data["terminated"][row : row + 6]).tolist() == expected
            assert np.flatnonzero(replay.data["is_first"][row : row + 6]).tolist() == [0, 5]
        assert collector.episodes == num_envs


def test_state_dict_restores_counters_and_random_actions():
    collector, replay = make_collector(seed=3)
    collector.collect(10)
    state = collector.state_dict()
    collector.collect(5)
    expected = replay.data["action"][10:15].copy()

    resumed, resumed_replay = make_collector(seed=3)
    resumed.load_state_dict(state)
    assert (resumed.env_steps, resumed.episodes) == (10, 3)
    assert resumed.last_return == state["last_return"]
    resumed.collect(5)
    np.testing.assert_array_equal(resumed_replay.data["action"][:5], expected)
    assert resumed_replay.data["is_first"][0]  # a resumed run starts new episodes


def counting_policy(obs, is_first, state):
    """Actions from a recurrent counter: a resumed run must hand the policy its saved state."""
    count = torch.zeros(obs.shape[0], dtype=torch.long) if state is None else state
    count = torch.where(is_first, torch.zeros_like(count), count) + 1
    return count % 4, count


@pytest.mark.parametrize("num_envs,asynchronous", [(1, False), (2, False), (2, True)])
def test_resume_continues_running_atari_episodes(tmp_path, num_envs, asynchronous):
    def make(seed):
        env_fn = partial(make_env, "ALE/Breakout-v5", repeat_action_probability=0.25)
        replay = ReplayBuffer(400 * num_envs, num_streams=num_envs)
        collector = Collector([env_fn] * num_envs, replay, seed=seed, asynchronous=asynchronous)
        return collector, replay

    collector, replay = make(seed=5)
    collector.collect(150 * num_envs, counting_policy)
    torch.save(_checkpoint_safe(collector.state_dict()), tmp_path / "collector.pt")
    collector.collect(200 * num_envs, counting_policy)

    resumed, resumed_replay = make(seed=99)  # the envs' own seeds do not matter any more
    resumed.load_state_dict(torch.load(tmp_path / "collector.pt", weights_only=True))
    assert "running" in resumed.state_dict()  # a checkpoint taken before the next step keeps it
    resumed.collect(200 * num_envs, counting_policy)
    for stream in range(num_envs):
        new = slice(stream * 400, stream * 400 + 200)  # the resumed run's rows
        old = slice(stream * 400 + 150, stream * 400 + 350)  # the same steps, uninterrupted
        for key in ("obs", "action", "reward", "terminated", "is_first"):
            np.testing.assert_array_equal(resumed_replay.data[key][new], replay.data[key][old])
        assert not resumed_replay.data["is_first"][new][0]  # the episode went on
    assert resumed.episodes == collector.episodes and resumed.env_steps == collector.env_steps
    collector.close()
    resumed.close()
