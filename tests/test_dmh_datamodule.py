"""DM-H contexts: a hand-made history gives the values worked out by hand (sorting, relabelled
returns-to-go, masks, sub-goals, left padding); the DataModule streams seeded batches that the
model trains on, and refuses bad values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_drama.checks import ConfigError
from lightning_drama.dmh.data import History, generate
from lightning_drama.dmh.datamodule import (
    CONTEXT_KEYS,
    DMHDataModule,
    collate_contexts,
    make_context,
)
from lightning_drama.dmh.model import BATCH_KEYS, DecisionMambaHybrid, DMHConfig, valuable_subgoals


def hand_history() -> History:
    """3 episodes of returns 2, 1, 3 and lengths 3, 2, 3."""
    obs = [
        [[0, 0], [0, 1], [1, 1], [2, 1]],
        [[0, 0], [1, 0], [1, 1]],
        [[0, 0], [0, 1], [0, 2], [1, 2]],
    ]
    actions = [[1, 2, 3], [4, 0], [0, 1, 2]]
    rewards = [[0.0, 1.0, 1.0], [1.0, 0.0], [1.0, 1.0, 1.0]]
    return History(
        "darkroom",
        (0, 0),
        {},
        observations=[np.array(o, np.int64) for o in obs],
        actions=[np.array(a, np.int64) for a in actions],
        rewards=[np.array(r, np.float64) for r in rewards],
        terminations=[np.zeros(len(a), bool) for a in actions],
        truncations=[np.arange(len(a)) == len(a) - 1 for a in actions],
    )


def test_make_context_by_hand():
    history = hand_history()
    context = make_context(history, [2, 0, 1], c=4)  # 8 steps: no padding
    assert set(context) == set(CONTEXT_KEYS)
    # Sorted by ascending return: episode 1 (1), episode 0 (2), episode 2 (3).
    assert context["states"].tolist() == [
        [0, 0], [1, 0], [0, 0], [0, 1], [1, 1], [0, 0], [0, 1], [0, 2],
    ]  # fmt: skip
    assert context["actions"].tolist() == [4, 0, 1, 2, 3, 0, 1, 2]
    assert context["rewards"].tolist() == [1, 0, 0, 1, 1, 1, 1, 1]
    # Relabelled to R_last = 3, minus the rewards earlier in the same episode.
    assert context["rtg"].tolist() == [3, 2, 3, 3, 2, 3, 2, 1]
    assert context["dones"].tolist() == [0, 1, 0, 0, 1, 0, 0, 1]
    assert context["timesteps"].tolist() == [0, 1, 0, 1, 2, 0, 1, 2]
    assert context["loss_mask"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert not context["pad"].any()
    # Sub-goals by hand (the earliest state of best mean reward since the step; the final
    # observation can be a goal), and equal to valuable_subgoals of each episode.
    assert context["subgoals"].tolist() == [
        [1, 0], [1, 1], [2, 1], [1, 1], [2, 1], [0, 1], [0, 2], [1, 2],
    ]  # fmt: skip
    expected = np.concatenate(
        [valuable_subgoals(history.observations[e], history.rewards[e]).numpy() for e in (1, 0, 2)]
    )
    assert (context["subgoals"] == expected).all()
    assert context["states"].dtype == np.int64 and context["rtg"].dtype == np.float64
    # The given order does not matter; ties keep the given order (stable sort).
    same = make_context(history, [1, 2, 0], c=4)
    assert all((same[k] == context[k]).all() for k in CONTEXT_KEYS)


def test_make_context_left_pads_with_neutral_steps():
    history = hand_history()
    plain = make_context(history, [0, 1, 2], c=4)
    padded = make_context(history, [0, 1, 2], c=3)  # 8 steps -> 9: one step in front
    assert len(padded["actions"]) == 9
    assert padded["pad"].tolist() == [1] + [0] * 8
    assert padded["rtg"][0] == 3 and padded["loss_mask"][0] == 0 and padded["dones"][0] == 0
    assert (padded["states"][0] == 0).all() and padded["timesteps"][0] == 0
    assert all((padded[k][1:] == plain[k]).all() for k in CONTEXT_KEYS)
    longer = make_context(history, [0, 1, 2], c=4, length=12)
    assert longer["pad"].sum() == 4 and (longer["rtg"][:4] == 3).all()
    assert longer["loss_mask"].tolist() == [0] * 9 + [1] * 3
    one = make_context(history, [1], c=2)  # a single episode is its own target
    assert one["rtg"].tolist() == [1, 0] and one["loss_mask"].all()


def test_ragged_contexts_are_left_padded_to_the_longest():
    history = hand_history()
    batch = collate_contexts(
        [make_context(history, [1], c=4), make_context(history, [0, 1, 2], c=4)], 4
    )
    assert batch["actions"].shape == (2, 8) and batch["subgoals"].shape == (2, 8, 2)
    assert batch["pad"].tolist() == [[True] * 6 + [False] * 2, [False] * 8]
    assert batch["rtg"][0].tolist() == [1] * 6 + [1, 0] and batch["pad"].dtype == torch.bool
    assert batch["loss_mask"][0].tolist() == [0] * 6 + [1, 1]


@pytest.mark.parametrize(
    ("indices", "kwargs", "message"),
    [
        ([], {"c": 4}, "episode_indices is empty"),
        ([0, 3], {"c": 4}, "outside the history's 3 episodes"),
        ([-1], {"c": 4}, "outside the history's 3 episodes"),
        ([0], {"c": 0}, "c must be >= 1"),
        ([0, 1, 2], {"c": 4, "length": 6}, "multiple of c = 4"),
        ([0, 1, 2], {"c": 2, "length": 6}, "at least the episodes' 8 steps"),
    ],
)
def test_make_context_refuses_bad_values(indices, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_context(hand_history(), indices, **kwargs)


@pytest.fixture(scope="module")
def darkroom_dir(tmp_path_factory):
    """2 darkroom tasks x 20 episodes (20 steps each), written to disk."""
    out = tmp_path_factory.mktemp("dmh_dm") / "darkroom"
    generate("darkroom", 2, 20, out, seed=0, log=lambda line: None)
    return str(out)


def first_batches(data_dir: str, count: int = 2, **kwargs) -> list[dict[str, torch.Tensor]]:
    dm = DMHDataModule(data_dir, **kwargs)
    dm.setup("fit")
    iterator = iter(dm.train_dataloader())
    return [next(iterator) for _ in range(count)]


def test_batches_feed_the_model(darkroom_dir):
    dm = DMHDataModule(darkroom_dir, episodes_per_context=4, c=5, batch_size=3, seed=1)
    dm.setup("fit")
    histories = dm.histories
    dm.setup("fit")  # loaded once
    assert dm.histories is histories and len(histories) == 2 and dm.state_dim == 2
    batch = next(iter(dm.train_dataloader()))
    B, L = 3, 4 * 20
    assert set(BATCH_KEYS) <= set(batch)
    for key in ("actions", "rewards", "rtg", "dones", "timesteps", "loss_mask", "pad"):
        assert batch[key].shape == (B, L), key
    assert batch["states"].shape == batch["subgoals"].shape == (B, L, 2)
    assert batch["actions"].dtype == batch["timesteps"].dtype == torch.int64
    assert batch["states"].dtype == batch["rtg"].dtype == torch.float32
    assert not batch["pad"].any()  # 4 x 20 steps, c = 5: no padding
    assert (batch["loss_mask"].sum(1) == 20).all() and (batch["loss_mask"][:, -20:] == 1).all()
    assert (batch["dones"].sum(1) == 4).all()
    returns = batch["rewards"].reshape(B, 4, 20).sum(-1)
    assert (returns.diff(dim=1) >= 0).all()  # ascending returns
    assert (batch["rtg"][:, ::20] == returns[:, -1:]).all()  # each episode starts at R_last
    torch.manual_seed(0)
    model = DecisionMambaHybrid(
        DMHConfig(
            state_dim=2, num_actions=5, c=5, mamba_d_model=16, mamba_layers=1, mamba_d_state=8,
            mamba_headdim=8, mamba_chunk_size=16, gpt_d_model=16, gpt_layers=1, gpt_heads=2,
            max_timestep=32, dropout=0.0, state_scale=0.25,
        )
    )  # fmt: skip
    loss, parts = model.loss(batch)
    assert torch.isfinite(loss) and loss > 0 and set(parts) == {"loss", "loss_action", "loss_goal"}
    loss.backward()


def test_same_seed_same_batches(darkroom_dir):
    kwargs = dict(episodes_per_context=3, c=5, batch_size=2)
    first = first_batches(darkroom_dir, seed=4, **kwargs)
    again = first_batches(darkroom_dir, seed=4, **kwargs)
    other = first_batches(darkroom_dir, seed=5, **kwargs)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in CONTEXT_KEYS)
    assert not torch.equal(first[0]["actions"], first[1]["actions"])
    assert any(
        not torch.equal(a["actions"], b["actions"]) for a, b in zip(first, other, strict=True)
    )
    # A new pass over the stream draws on instead of repeating its first batches.
    dm = DMHDataModule(darkroom_dir, seed=4, **kwargs)
    loader = dm.train_dataloader()
    assert torch.equal(next(iter(loader))["actions"], first[0]["actions"])
    assert not torch.equal(next(iter(loader))["actions"], first[0]["actions"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"episodes_per_context": 0}, "episodes_per_context must be >= 1"),
        ({"c": 0}, "c must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"num_workers": -1}, "num_workers must be >= 0"),
        ({"episodes_per_context": 2.5}, "must be an integer"),
        ({"episodes_per_context": 3, "min_episodes_per_context": 4}, "must be <= 3"),
        ({"min_episodes_per_context": 0}, "min_episodes_per_context must be >= 1"),
    ],
)
def test_datamodule_refuses_bad_values(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DMHDataModule(str(tmp_path), **kwargs)


def test_datamodule_refuses_missing_or_short_data(tmp_path, darkroom_dir):
    with pytest.raises(ConfigError, match="no learning histories"):
        DMHDataModule(str(tmp_path)).setup("fit")  # an empty directory
    with pytest.raises(ConfigError, match="exceeds the 20 episodes"):
        DMHDataModule(darkroom_dir, episodes_per_context=21).setup("fit")


def test_contexts_of_varying_size(darkroom_dir):
    """``min_episodes_per_context`` draws each context's number of episodes in [min, max]; the
    loss still marks one whole episode, the context's last."""
    batches = first_batches(darkroom_dir, count=20, episodes_per_context=3, c=5, batch_size=4,
                            seed=0, min_episodes_per_context=1)  # fmt: skip
    sizes = []
    for batch in batches:
        real = ~batch["pad"]
        assert int(real.sum(1).max()) == batch["pad"].shape[1]  # padded to the longest only
        sizes += (real.sum(1) // 20).tolist()
        assert (batch["loss_mask"].sum(1) == 20).all()
        assert batch["loss_mask"][:, -20:].all()
        assert not (batch["pad"] & (batch["loss_mask"] > 0)).any()
    assert set(sizes) == {1, 2, 3}
    # The default keeps every context at episodes_per_context.
    fixed = first_batches(darkroom_dir, count=3, episodes_per_context=3, c=5, batch_size=4)
    assert all(not batch["pad"].any() and batch["pad"].shape[1] == 60 for batch in fixed)


def test_episode_blocks_pad_each_episode_to_a_block():
    """``episode_blocks``: every episode starts at a multiple of c, padded at its end with
    neutral steps (pad 1, loss 0, reward 0, timesteps counting on)."""
    history = hand_history()  # lengths 3, 2, 3; returns 2, 1, 3
    context = make_context(history, [0, 1, 2], c=4, episode_blocks=True)
    assert len(context["actions"]) == 12
    # Sorted by return: episode 1 (2 steps + 2 pad), 0 (3 + 1), 2 (3 + 1).
    assert context["pad"].tolist() == [0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert context["timesteps"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
    assert context["dones"].tolist() == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert context["rewards"].tolist() == [1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0]
    assert context["loss_mask"].tolist() == [0] * 8 + [1, 1, 1, 0]
    assert context["rtg"].tolist() == [3, 2, 2, 2, 3, 3, 2, 1, 3, 2, 1, 0]
    assert (context["states"][context["pad"]] == 0).all()
    # Each episode's first state is a block start (what DM-H's Mamba reads).
    assert context["states"][::4].tolist() == [[0, 0], [0, 0], [0, 0]]
    flat = make_context(history, [0, 1, 2], c=4)
    real = ~context["pad"]
    assert all((context[k][real] == flat[k]).all() for k in CONTEXT_KEYS if k != "pad")
    # Multiples of c need no padding.
    assert not make_context(history, [1], c=2, episode_blocks=True)["pad"].any()
