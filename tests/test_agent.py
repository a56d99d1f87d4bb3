"""ActorCritic: normaliser, returns, return scale, slow critic and the imagination update."""

import numpy as np
import pytest
import torch

from lightning_drama.agent import ActorCritic, RunningNorm
from lightning_drama.returns import lambda_returns, percentile_range


def toy_imagination(n: int = 512, horizon: int = 3, state_dim: int = 8, seed: int = 0):
    """2 actions, reward 1 for action 1 and 0 for action 0, nothing ever terminates."""
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 2, (n, horizon), generator=g)
    return {
        "states": torch.randn(n, horizon + 1, state_dim, generator=g),
        "actions": actions,
        "rewards": actions.float(),
        "cont": torch.ones(n, horizon),
    }


def test_running_norm_matches_numpy_and_freezes_in_eval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3, 2, (100, 4)), rng.normal(-1, 5, (37, 4))
    norm = RunningNorm(4)
    norm.update(torch.from_numpy(a).float())
    norm.update(torch.from_numpy(b).float()[None])  # any leading shape
    both = np.concatenate([a, b])
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), both.var(0), rtol=1e-5)
    assert norm.count.item() == 137
    x = torch.tensor([[1e6, -1e6, 3.0, 0.0]])
    y = norm(x)
    assert y[0, 0] == 10 and y[0, 1] == -10
    norm.eval()
    norm.update(torch.zeros(5, 4))
    assert norm.count.item() == 137
    assert {"mean", "var", "count"} <= set(norm.state_dict())


def test_initial_policy_is_almost_uniform_and_value_zero():
    torch.manual_seed(0)
    ac = ActorCritic(4, state_dim=8)
    s = torch.randn(64, 8)
    probs = ac.policy(s).probs
    torch.testing.assert_close(probs, torch.full_like(probs, 0.25), atol=1e-3, rtol=0)
    # Output layer orthogonal with gain 0.001 (the reference's layer_init): V is almost 0.
    assert ac.value(s).abs().max() < 1e-2
    a = ac.act(s)
    assert a.shape == (64,) and a.dtype == torch.int64 and a.max() < 4
    assert torch.equal(ac.act(s, greedy=True), ac.actor(s).argmax(-1))


def test_loss_uses_lambda_returns_and_updates_the_return_scale():
    torch.manual_seed(0)
    ac = ActorCritic(2, state_dim=8, critic_hidden=16, actor_hidden=16)
    im = toy_imagination(n=64, horizon=4)
    with torch.no_grad():  # the critic's values before the update
        value = ac.value(im["states"])
    loss, stats = ac.loss(im)
    returns = lambda_returns(im["rewards"], im["cont"], value, 0.985, 0.95)
    assert stats["return"].item() == pytest.approx(returns.mean().item(), rel=1e-5)
    expected_scale = 0.01 * percentile_range(returns)
    assert ac.return_scale.item() == pytest.approx(expected_scale.item(), rel=1e-5)
    _, _ = ac.loss(im)
    assert ac.return_scale.item() == pytest.approx(0.0199 * percentile_range(returns).item(), 1e-4)
    ac.eval()
    _, _ = ac.loss(im)  # eval: statistics are frozen
    assert ac.return_scale.item() == pytest.approx(0.0199 * percentile_range(returns).item(), 1e-4)
    assert torch.isfinite(loss) and set(stats) >= {"actor", "critic", "entropy", "return_scale"}


def test_one_update_raises_the_probability_of_the_higher_advantage_action():
    torch.manual_seed(0)
    ac = ActorCritic(2, state_dim=8, critic_hidden=32, actor_hidden=32)
    im = toy_imagination()
    opt = torch.optim.Adam(ac.parameters(), lr=1e-2)
    with torch.no_grad():
        before = ac.policy(im["states"]).probs[..., 1].mean()
    loss, _ = ac.loss(im)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = ac.policy(im["states"]).probs[..., 1].mean()
    assert after > before + 0.01, (before, after)
    # The gradient reached actor and critic but not the slow critic.
    assert all(p.grad is None for p in ac.slow_critic.parameters())


def test_slow_critic_is_an_ema_of_the_critic():
    torch.manual_seed(0)
    ac = ActorCritic(2, state_dim=8, critic_hidden=16)
    slow0 = [p.clone() for p in ac.slow_critic.parameters()]
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(1.0)
    ac.update_slow_critic()
    for s0, s, c in zip(slow0, ac.slow_critic.parameters(), ac.critic.parameters(), strict=True):
        torch.testing.assert_close(s, 0.98 * s0 + 0.02 * c)


def test_bf16_autocast_gives_finite_loss_and_gradients():
    torch.manual_seed(0)
    ac = ActorCritic(2, state_dim=8, critic_hidden=16, actor_hidden=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = ac.loss(toy_imagination(n=32))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in ac.parameters() if p.grad is not None)
