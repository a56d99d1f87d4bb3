import importlib.util
import sys

import numpy as np
import pytest

from lightning_drama.checks import ConfigError
from lightning_drama.envs import MINATAR_GAMES, MINATAR_PALETTE, make_env

needs_minatar = pytest.mark.skipif(
    importlib.util.find_spec("minatar") is None, reason="optional minatar not installed"
)


def play(env, seed: int, steps: int = 200):
    """`steps` random actions from `reset(seed=seed)`, resetting (unseeded) at episode ends."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames, rewards, terminations = [obs], [], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        frames.append(obs)
        rewards.append(reward)
        terminations.append(terminated)
        if terminated or truncated:
            frames.append(env.reset()[0])
    return np.stack(frames), rewards, terminations


@needs_minatar
@pytest.mark.parametrize("game", list(MINATAR_GAMES))
def test_frames_are_64x64_rgb_in_the_palette(game):
    env = make_env(f"MinAtar/{game}-v1")
    channels = env.unwrapped.game.state_shape()[2]
    assert env.observation_space.shape == (64, 64, 3)
    frames, _, _ = play(env, seed=0, steps=50)
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    packed = np.array([1 << 16, 1 << 8, 1])  # an RGB colour as one int, for a fast `unique`
    allowed = {0} | set((MINATAR_PALETTE[:channels] @ packed).tolist())
    seen = set(np.unique(frames.reshape(-1, 3) @ packed).tolist())
    assert seen <= allowed
    assert len(seen) >= 3  # background and at least two kinds of object
    env.close()


def test_palette_is_distinct_on_black():
    colours = {tuple(colour) for colour in MINATAR_PALETTE.tolist()}
    assert len(colours) == len(MINATAR_PALETTE) == 10  # Seaquest's 10 channels
    assert (0, 0, 0) not in colours


@needs_minatar
@pytest.mark.parametrize("image_size", [64, 84])
def test_upscaling_is_nearest_neighbour(image_size):
    env = make_env("MinAtar/Seaquest-v1", image_size=image_size)
    env.reset(seed=1)
    for _ in range(30):
        obs, *_ = env.step(int(env.action_space.sample()))
    state = env.unwrapped.game.state()  # [10, 10, 10] bool
    # The highest channel on wins a cell, as in MinAtar's own display.
    grid = np.zeros((10, 10, 3), np.uint8)
    for y, x, channel in zip(*np.nonzero(state), strict=True):  # channels in increasing order
        grid[y, x] = MINATAR_PALETTE[channel]
    cell = np.arange(image_size) * 10 // image_size  # [S], the cell each pixel copies
    assert obs.shape == (image_size, image_size, 3)
    np.testing.assert_array_equal(obs, grid[cell][:, cell])
    env.close()


def test_cells_are_6_or_7_pixels_wide_at_64():
    cell = np.arange(64) * 10 // 64
    assert np.bincount(cell).tolist() == [7, 6, 7, 6, 6, 7, 6, 7, 6, 6]


@needs_minatar
@pytest.mark.parametrize("sticky_action_prob", [0.1, 0.5])  # MinAtar's default, and often
def test_seeded_episodes_repeat_sticky_actions_included(sticky_action_prob):
    a = make_env("MinAtar/Breakout-v1", sticky_action_prob=sticky_action_prob)
    b = make_env("MinAtar/Breakout-v1", sticky_action_prob=sticky_action_prob)
    frames, rewards, terminations = play(a, seed=7)
    assert any(terminations)  # the run crosses an unseeded reset
    for env in (b, a):  # a fresh env, and the same env after another history
        again = play(env, seed=7)
        np.testing.assert_array_equal(again[0], frames)
        assert again[1:] == (rewards, terminations)
    other, _, _ = play(b, seed=8)
    assert other.shape != frames.shape or not np.array_equal(other, frames)
    a.close()
    b.close()


@needs_minatar
def test_minatar_options_reach_the_environment():
    default = make_env("MinAtar/Asterix-v1").unwrapped.game
    assert default.sticky_action_prob == pytest.approx(0.1) and default.env.ramping is True
    env = make_env("MinAtar/Asterix-v1", sticky_action_prob=0.0, difficulty_ramping=False)
    assert env.unwrapped.game.sticky_action_prob == 0.0
    assert env.unwrapped.game.env.ramping is False
    with pytest.raises(ConfigError, match="sticky_action_prob"):
        make_env("MinAtar/Asterix-v1", frame_skip_please=4)


@needs_minatar
@pytest.mark.parametrize("game", list(MINATAR_GAMES))
def test_v1_is_the_minimal_action_set_v0_all_six(game):
    from minatar import Environment

    minimal = Environment(MINATAR_GAMES[game]).minimal_action_set()
    assert make_env(f"MinAtar/{game}-v1").action_space.n == len(minimal)
    assert make_env(f"MinAtar/{game}-v0").action_space.n == 6


@needs_minatar
def test_breakout_episode_terminates_without_life_losses():
    env = make_env("MinAtar/Breakout-v1")
    _, info = env.reset(seed=0)
    assert info["life_loss"] is False and info["train_terminated"] is False
    assert env.get_state() is None  # a resumed run starts new episodes
    rng = np.random.default_rng(0)
    for _ in range(5000):
        _, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        assert isinstance(reward, float) and truncated is False
        assert info["life_loss"] is False
        assert info["train_terminated"] is terminated
        if terminated:
            break
    assert terminated
    env.close()


def test_missing_minatar_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "minatar", None)  # import minatar now fails
    with pytest.raises(ConfigError, match=r"pip install minatar") as error:
        make_env("MinAtar/Breakout-v1")
    assert "GPL-3.0" in str(error.value) and "optional" in str(error.value)


@pytest.mark.parametrize("env_id", ["MinAtar/Pong-v1", "MinAtar/Breakout-v5", "MinAtar/Breakout"])
def test_unknown_minatar_env_lists_the_games(env_id):
    with pytest.raises(ConfigError, match="Asterix, Breakout, Freeway, Seaquest, SpaceInvaders"):
        make_env(env_id)


def test_image_size_below_the_grid_is_rejected():
    with pytest.raises(ConfigError, match="10x10"):
        make_env("MinAtar/Breakout-v1", image_size=8)
