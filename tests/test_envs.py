import gymnasium as gym
import numpy as np
import pytest
import torch

from lightning_drama.data.datamodule import _checkpoint_safe
from lightning_drama.envs import make_env


class TinyImageEnv(gym.Env):
    """Test env: obs [32, 48, 3] filled with offset + step, 3 actions, 5-step episodes."""

    def __init__(self, episode_length: int = 5, lives: int | None = None):
        self.observation_space = gym.spaces.Box(0, 255, (32, 48, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.episode_length = episode_length
        self.start_lives = lives
        self.t = 0

    def _info(self):
        if self.start_lives is None:
            return {}
        return {"lives": self.start_lives - self.t // 2}  # a life lost every 2 steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.offset = int(self.np_random.integers(0, 100))  # depends on the seed
        self.t = 0
        return np.full((32, 48, 3), self.offset, np.uint8), self._info()

    def step(self, action):
        self.t += 1
        obs = np.full((32, 48, 3), self.offset + self.t, np.uint8)
        return obs, float(action), self.t >= self.episode_length, False, self._info()


class ContinuousImageEnv(TinyImageEnv):
    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def test_pong_follows_atari100k_protocol():
    env = make_env("ALE/Pong-v5")
    obs, _ = env.reset(seed=0)
    ale = env.unwrapped.ale
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.action_space.n == 6
    assert ale.getFloat("repeat_action_probability") == 0.0
    assert ale.getInt("max_num_frames_per_episode") == 108_000
    assert ale.getEpisodeFrameNumber() == 0  # noop_max=0: no random no-ops
    for step in range(1, 6):
        obs, _, _, _, info = env.step(0)
        assert ale.getEpisodeFrameNumber() == 4 * step
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        assert info["life_loss"] is False
    env.close()


def test_atari_options_for_the_other_protocol():
    env = make_env(
        "ALE/Pong-v5", repeat_action_probability=0.25, full_action_space=True, noop_max=30
    )
    env.reset(seed=1)
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert env.action_space.n == 18
    assert 1 <= ale.getEpisodeFrameNumber() <= 30  # 1..30 single-frame no-ops after reset
    env.close()


@pytest.mark.parametrize("life_loss_termination", [True, False])
def test_breakout_reports_life_loss_and_goes_on(life_loss_termination):
    env = make_env("ALE/Breakout-v5", life_loss_termination=life_loss_termination)
    _, info = env.reset(seed=0)
    lives = info["lives"]
    assert lives == 5
    rng = np.random.default_rng(0)
    losses = 0
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        assert info["life_loss"] == (info["lives"] < lives)
        if info["life_loss"]:
            losses += 1
            if info["lives"] > 0:
                assert not terminated  # the episode goes on after a life loss
            assert info["train_terminated"] is (life_loss_termination or terminated)
        else:
            assert info["train_terminated"] is terminated
        lives = info["lives"]
        if terminated or truncated:
            break
    assert terminated and losses == 5
    env.close()


def test_generic_image_env_is_resized():
    for env_id in (f"{__name__}:TinyImageEnv", "TinyImageForTests-v0"):
        if env_id.endswith("v0"):
            gym.register(env_id, entry_point=TinyImageEnv)
        env = make_env(env_id)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        first = int(obs[0, 0, 0])
        obs, reward, terminated, _, info = env.step(2)
        assert int(obs[0, 0, 0]) == first + 1  # a constant frame stays constant when resized
        assert reward == 2.0 and not terminated and info["life_loss"] is False
        assert env.observation_space.shape == (64, 64, 3)
        env.close()
    gym.registry.pop("TinyImageForTests-v0")


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("ALE/NotAGame-v5", "unknown Atari env"),
        ("NoSuchEnv-v0", "unknown env id"),
        ("no_such_module:Env", "cannot import"),
        ("CartPole-v1", "vector observations are not supported"),
        (f"{__name__}:ContinuousImageEnv", "continuous actions are not supported"),
    ],
)
def test_unsupported_envs_fail_with_a_clear_message(env_id, message):
    with pytest.raises(ValueError, match=message) as error:
        make_env(env_id)
    assert "supported env ids" in str(error.value)


def _play(env, actions):
    steps = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(int(action))
        steps.append((obs.copy(), reward, terminated, truncated, info["train_terminated"]))
        if terminated or truncated:
            env.reset()
    return steps


def test_atari_state_continues_exactly_through_a_checkpoint(tmp_path):
    # Sticky actions and no-op starts on, so both RNGs must come back; Breakout loses lives and
    # ends episodes on the way.
    env = make_env("ALE/Breakout-v5", repeat_action_probability=0.25, noop_max=30)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    _play(env, rng.integers(0, 4, 150))
    state = env.get_state()
    torch.save(_checkpoint_safe(state), tmp_path / "state.pt")
    actions = rng.integers(0, 4, 300)
    expected = _play(env, actions)

    resumed = make_env("ALE/Breakout-v5", repeat_action_probability=0.25, noop_max=30)
    resumed.reset(seed=123)  # any seed: the state replaces it
    resumed.set_state(torch.load(tmp_path / "state.pt", weights_only=True))
    got = _play(resumed, actions)
    assert sum(step[4] for step in expected) > 0  # lives were lost on the way
    assert sum(step[2] for step in expected) > 0  # and an episode ended (no-op reset)
    for (obs, *rest), (want_obs, *want_rest) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(obs, want_obs)
        assert rest == want_rest


def test_generic_envs_have_no_state_to_save():
    env = make_env(f"{__name__}:TinyImageEnv")
    env.reset(seed=0)
    assert env.get_state() is None
