"""lightning_drama.scores: the Atari100k reference table, normalisation and aggregates."""

import numpy as np
import pytest
import torch

from lightning_drama.scores import ATARI_SCORES, aggregate, game_from_env_id, human_normalized


def test_table_has_the_26_atari100k_games():
    assert len(ATARI_SCORES) == 26
    assert ATARI_SCORES["Pong"] == (-21.0, 15.0)
    assert ATARI_SCORES["UpNDown"] == (533.0, 11693.0)
    assert all(human > random for random, human in ATARI_SCORES.values())


@pytest.mark.parametrize(
    ("env_id", "game"),
    [
        ("ALE/Breakout-v5", "Breakout"),
        ("BreakoutNoFrameskip-v4", "Breakout"),
        ("BreakoutDeterministic-v4", "Breakout"),
        ("Breakout", "Breakout"),
        ("ALE/UpNDown-v5", "UpNDown"),
        ("ALE/Pong-ram-v5", "Pong"),
        ("MsPacmanNoFrameskip-v4", "MsPacman"),
        ("ALE/Tennis-v5", None),  # Atari, but no reference scores: None, so never normalised
        ("CartPole-v1", None),
        ("my.module:Catch", None),
        ("MiniGrid-Empty-5x5-v0", None),
        ("", None),
    ],
)
def test_game_from_env_id(env_id, game):
    assert game_from_env_id(env_id) == game


def test_human_normalized_hand_computed():
    assert human_normalized("Pong", -21) == 0.0
    assert human_normalized("Pong", 15) == 1.0
    assert human_normalized("Pong", -3) == 0.5  # 18 / 36
    assert human_normalized("Breakout", 9) == 0.25  # (9 - 2) / 28
    assert human_normalized("Boxing", -6) == -0.5


def test_human_normalized_unknown_game_lists_the_known_ones():
    with pytest.raises(ValueError, match="Tennis.*known games: Alien, Amidar.*UpNDown"):
        human_normalized("Tennis", 1.0)
    with pytest.raises(ValueError, match="game_from_env_id"):
        human_normalized("ALE/Pong-v5", 1.0)


def test_aggregate_hand_computed():
    # n = 8, sorted [-5, 0, 1, 2, 3, 4, 5, 30]: mean 40 / 8; median (2 + 3) / 2;
    # IQM drops 2 from each end -> mean of [1, 2, 3, 4].
    scores = [30.0, 0.0, 4.0, 1.0, 3.0, -5.0, 5.0, 2.0]
    assert aggregate(scores) == {"mean": 5.0, "median": 2.5, "iqm": 2.5}
    # n = 5: drop 1 from each end -> IQM over [1, 2, 3] = 2.
    assert aggregate([3.0, 100.0, 1.0, 2.0, -50.0]) == {"mean": 11.2, "median": 2.0, "iqm": 2.0}
    # n < 4: nothing dropped.
    assert aggregate([1.0, 2.0, 6.0]) == {"mean": 3.0, "median": 2.0, "iqm": 3.0}
    assert aggregate([0.5]) == {"mean": 0.5, "median": 0.5, "iqm": 0.5}


def test_aggregate_empty_raises():
    with pytest.raises(ValueError, match="non-empty"):
        aggregate([])


def test_the_evaluation_table_says_when_episodes_were_cut():
    from lightning_drama.module import format_evaluation

    result = {
        "returns": [-21.0, -20.0],
        "lengths": [200.0, 150.0],
        "return_mean": -20.5,
        "return_std": 0.7,
        "length_mean": 175.0,
        "game": "Pong",
        "greedy": False,
        "env_steps": 340,
        "max_steps": 200,
        "episodes_cut": 1.0,
        "model": "world model 0.13 M parameters",
    }
    table = format_evaluation(result)
    assert table.splitlines()[0] == "Evaluation after 340 env steps (sampled actions)"
    assert table.splitlines()[1] == "model: world model 0.13 M parameters"
    assert table.splitlines()[-1] == (
        "1 of 2 episodes reached data.eval_max_steps (200) and were cut there: their returns "
        "are of partial episodes, so no human-normalised score"
    )
    whole = format_evaluation({**result, "episodes_cut": 0.0, "human_normalized": 0.01})
    assert "cut" not in whole and whole.splitlines()[-1] == "human-normalised score (Pong): 1.0 %"


def test_cut_episodes_get_no_human_normalised_score(tmp_path, monkeypatch):
    # The module computes the score only from whole episodes.
    import torch

    from lightning_drama.module import DramaModule

    module = DramaModule(6, world_model={"d_model": 32, "headdim": 16, "stoch": 4, "classes": 4})
    datamodule = type("DM", (), {"env_id": "ALE/Pong-v5", "eval_max_steps": 200})()
    trainer = type("T", (), {"datamodule": datamodule, "state": type("S", (), {"fn": "test"})(),
                             "is_global_zero": True, "progress_bar_callback": None})()  # fmt: skip
    monkeypatch.setattr(DramaModule, "trainer", property(lambda self: trainer))
    monkeypatch.setattr(DramaModule, "log", lambda self, *a, **k: None)
    for cut in (1.0, 0.0):
        module.eval_returns.update(torch.tensor([-3.0]))
        module.eval_lengths.update(torch.tensor([200.0]))
        module.eval_cut.update(torch.tensor([cut]))
        module._finish_evaluation()
        assert ("human_normalized" in module.last_eval) == (cut == 0.0)
    assert module.last_eval["human_normalized"] == 0.5  # (-3 + 21) / 36


class _EndsAfter:
    """An env whose episode terminates after `steps` steps (reward 1 each)."""

    def __init__(self, steps: int):
        self.steps, self.t = steps, 0

    def reset(self, seed=None):
        self.t = 0
        return np.zeros((2, 2, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.zeros((2, 2, 3), np.uint8), 1.0, self.t == self.steps, False, {}


def test_run_episode_says_whether_the_cap_cut_the_episode():
    from lightning_drama.policy import run_episode

    def policy(obs, is_first, state):
        return torch.zeros(1, dtype=torch.long), state

    ended = run_episode(_EndsAfter(5), policy, seed=0, max_steps=5)  # ends on the last step
    assert ended == {"return": 5.0, "length": 5.0, "cut": 0.0}
    cut = run_episode(_EndsAfter(9), policy, seed=0, max_steps=5)
    assert cut == {"return": 5.0, "length": 5.0, "cut": 1.0}
