"""policy.py: the reference's acting (prior sample over a 16-step window, random first action),
the posterior alternative, and evaluation episodes played at once."""

import numpy as np
import pytest
import torch

from lightning_drama.agent import ActorCritic
from lightning_drama.policy import (
    DramaPolicy,
    ReferencePolicy,
    make_policy,
    run_episode,
    run_episodes,
)
from tests.catch_env import Catch
from tests.test_world_model import mode_sample, small_model, synthetic_batch


def recording_actor(model, num_actions: int = 3):
    """An ActorCritic whose `act` records the policy inputs it was given."""
    ac = ActorCritic(num_actions, state_dim=model.state_dim, actor_hidden=16, critic_hidden=16)
    seen = []
    act = ac.act

    def recorded(features, greedy=False):
        seen.append(features.clone())
        return act(features, greedy)

    ac.act = recorded
    return ac, seen


def test_reference_acting_sees_a_fresh_forward_over_the_last_16_pairs():
    # Two envs whose episodes start at different steps; 24 steps, so windows are first short,
    # then full (16) and sliding. Mode sampling makes every latent deterministic.
    model = small_model()
    mode_sample(model)
    ac, seen = recording_actor(model)
    policy = ReferencePolicy(model, ac, context=16)
    frames = synthetic_batch(2, 24)["obs"]  # [2, 24, 64, 64, 3]
    starts = [[0], [0, 5]]  # env 1 starts a second episode at step 5
    state, taken = None, []
    for t in range(24):
        is_first = torch.tensor([t in s for s in starts])
        a, state = policy(frames[:, t], is_first, state)
        taken.append(a)
    taken = torch.stack(taken, 1)  # [2, 24]

    model.eval()
    calls = iter(seen)
    for t in range(24):
        begun = [max(s for s in env_starts if s <= t) for env_starts in starts]
        acting = [t > s for s in begun]  # at an episode's first step the action is random
        if not any(acting):
            continue
        got = next(calls)
        rows = [i for i in range(2) if acting[i]]
        assert got.shape[0] == len(rows)
        for row, i in enumerate(rows):
            lo = max(begun[i], t - 16)
            with torch.no_grad():
                z = model.sample(model.encode(frames[i : i + 1, lo:t]))
                d, _ = model.backbone(model.sequence_input(z, taken[i : i + 1, lo:t]))
                d = d[:, -1]
                expected = torch.cat([model.sample(model.prior_logits(d)), d], -1)
            torch.testing.assert_close(got[row : row + 1], expected, atol=2e-5, rtol=2e-5)
    assert next(calls, None) is None  # one actor call per step with an acting row


def test_reference_acting_takes_a_uniform_first_action_whatever_the_actor_prefers():
    model = small_model()
    ac = ActorCritic(3, state_dim=model.state_dim, actor_hidden=16, critic_hidden=16)
    with torch.no_grad():
        ac.actor.out.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # the actor always says 0
    policy = ReferencePolicy(model, ac, greedy=True)
    obs = torch.zeros(3000, 64, 64, 3, dtype=torch.uint8)
    torch.manual_seed(0)
    first, state = policy(obs, torch.ones(3000, dtype=torch.bool))
    counts = np.bincount(first.numpy(), minlength=3)
    # chi-square with 2 degrees of freedom: 13.8 is its 0.1 % quantile
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 13.8, counts
    second, _ = policy(obs[:10], torch.zeros(10, dtype=torch.bool), tuple(s[:10] for s in state))
    assert torch.all(second == 0)  # from the second step on, the actor decides


def test_posterior_acting_looks_at_the_current_frame():
    model = small_model()
    ac, seen = recording_actor(model)
    policy = make_policy("posterior", model, ac)
    assert isinstance(policy, DramaPolicy)
    obs = synthetic_batch(1, 2)["obs"][:, 0]
    policy(obs, torch.ones(1, dtype=torch.bool))
    assert len(seen) == 1  # acts at the first step already, on [z_0, 0]
    assert torch.all(seen[0][:, model.latent_dim :] == 0)
    with pytest.raises(ValueError, match="acting"):
        make_policy("prior", model, ac)


def test_a_reference_state_survives_a_checkpoint_round_trip():
    # The collector checkpoints the policy state: on the CPU it must continue exactly.
    model = small_model()
    ac = ActorCritic(3, state_dim=model.state_dim, actor_hidden=16, critic_hidden=16)
    policy = ReferencePolicy(model, ac, context=4)
    frames = synthetic_batch(2, 8)["obs"]
    state = None
    for t in range(6):
        _, state = policy(frames[:, t], torch.tensor([t == 0, t == 0]), state)
    restored = tuple(torch.from_numpy(s.numpy().copy()) for s in state)
    torch.manual_seed(3)
    a1, s1 = policy(frames[:, 6], torch.zeros(2, dtype=torch.bool), state)
    torch.manual_seed(3)
    a2, s2 = policy(frames[:, 6], torch.zeros(2, dtype=torch.bool), restored)
    torch.testing.assert_close(a1, a2)
    for x, y in zip(s1, s2, strict=True):
        torch.testing.assert_close(x, y)
    assert state[2].tolist() == [4, 4]  # the window holds 4 pairs once 4 steps were taken


class _GreedyCatcher:
    """A deterministic policy for Catch: move towards the ball's column (no state)."""

    def __call__(self, obs, is_first, state=None):
        actions = []
        for frame in obs.numpy():
            cells = frame[::16, ::16, :]  # Catch renders 4 x 4 cells of 16 pixels
            ball = np.argwhere(cells[:3, :, 0] > 0)
            paddle = np.argwhere(cells[3, :, 1] > 0)
            diff = ball[0][1] - paddle[0][0]
            actions.append(0 if diff == 0 else (1 if diff < 0 else 2))  # stay, left, right
        return torch.tensor(actions), state


def test_episodes_played_at_once_equal_episodes_played_alone():
    policy = _GreedyCatcher()
    seeds = [3, 4, 5, 6, 7]
    together = run_episodes([Catch() for _ in seeds], policy, seeds, max_steps=100)
    alone = [run_episode(Catch(), policy, seed, max_steps=100) for seed in seeds]
    assert together == alone
    assert all(e["cut"] == 0.0 for e in together)  # every episode ran to its end
    assert [e["return"] for e in together] == [1.0] * 5  # the catcher always catches


def test_an_evaluation_of_n_episodes_runs_n_complete_episodes_with_model_policies():
    model = small_model()
    ac = ActorCritic(3, state_dim=model.state_dim, actor_hidden=16, critic_hidden=16)
    for acting in ("reference", "posterior"):
        policy = make_policy(acting, model, ac, greedy=True, context=4)
        episodes = run_episodes([Catch() for _ in range(7)], policy, list(range(7)), 100)
        assert len(episodes) == 7
        assert all(e["cut"] == 0.0 and e["length"] == 3.0 for e in episodes)  # Catch: 3 steps
        assert all(e["return"] in (-1.0, 1.0) for e in episodes)


def test_rows_dropped_from_a_policy_state_keep_their_own_recurrent_state():
    # A finished episode leaves the batch; the others must keep exactly their state.
    from lightning_drama.policy import _select_rows

    model = small_model()
    mode_sample(model)
    ac = ActorCritic(3, state_dim=model.state_dim, actor_hidden=16, critic_hidden=16)
    frames = synthetic_batch(3, 4)["obs"]
    for acting in ("reference", "posterior"):
        policy = make_policy(acting, model, ac, greedy=True, context=4)
        state = None
        for t in range(3):
            _, state = policy(frames[:, t], torch.full((3,), t == 0), state)
        kept = _select_rows(state, torch.tensor([0, 2]))
        a_all, _ = policy(frames[:, 3], torch.zeros(3, dtype=torch.bool), state)
        a_kept, _ = policy(frames[[0, 2], 3], torch.zeros(2, dtype=torch.bool), kept)
        torch.testing.assert_close(a_kept, a_all[[0, 2]])
