"""Catch: a tiny pixel game for the learning test (a falling ball and a paddle, 64x64 RGB).

The screen is a 4 x 4 grid of 16-pixel cells. A ball starts in a random column of the top row and
falls one row per step; the paddle moves along the bottom row (0: stay, 1: left, 2: right). When
the ball reaches the bottom row the episode ends with +1 if the paddle is under it, else -1.
A random policy scores about -0.4 (measured in the learning test); a perfect one +1.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

GRID, CELL = 4, 16


class Catch(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Box(0, 255, (GRID * CELL, GRID * CELL, 3), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.render_mode = render_mode
        self.ball = np.zeros(2, np.int64)  # (row, column)
        self.paddle = 0

    def _frame(self) -> np.ndarray:
        frame = np.zeros((GRID * CELL, GRID * CELL, 3), np.uint8)
        r, c = self.ball
        frame[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = (255, 64, 64)
        bottom = (GRID - 1) * CELL
        frame[bottom:, self.paddle * CELL : (self.paddle + 1) * CELL, 1:] = 255
        return frame

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.ball[:] = (0, self.np_random.integers(GRID))
        self.paddle = int(self.np_random.integers(GRID))
        return self._frame(), {}

    def step(self, action):
        move = {0: 0, 1: -1, 2: 1}[int(action)]
        self.paddle = int(np.clip(self.paddle + move, 0, GRID - 1))
        self.ball[0] += 1
        terminated = bool(self.ball[0] == GRID - 1)
        reward = 0.0
        if terminated:
            reward = 1.0 if self.paddle == self.ball[1] else -1.0
        return self._frame(), reward, terminated, False, {}

    def render(self):
        return self._frame()


class BrokenCatch(Catch):
    """Catch whose construction always fails: a run of it fails on every try (benchmark tests)."""

    def __init__(self, render_mode: str | None = None):
        raise RuntimeError("BrokenCatch cannot be made (a simulated crash)")
