"""The pure math of lightning_drama.distributions and lightning_drama.returns."""

import math

import numpy as np
import pytest
import torch

from lightning_drama.distributions import (
    categorical_kl,
    kl_free_bits,
    masked_mean,
    sample_straight_through,
    symexp,
    symlog,
    symlog_bins,
    twohot_decode,
    twohot_encode,
    twohot_loss,
    twohot_mean,
    unimix_logits,
)
from lightning_drama.returns import lambda_returns, percentile_range


def test_symlog_exact_values_and_inverse():
    x = torch.tensor([-(math.e - 1), 0.0, math.e**2 - 1])
    torch.testing.assert_close(symlog(x), torch.tensor([-1.0, 0.0, 2.0]))
    y = torch.tensor([-1e6, -3.5, -1e-3, 0.0, 1e-3, 0.7, 1e5], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(y)), y)
    torch.testing.assert_close(symlog(symexp(y.clamp(-30, 30))), y.clamp(-30, 30))


def test_symlog_bins_are_the_papers():
    bins = symlog_bins()
    assert bins.shape == (255,)
    assert bins[0] == -20 and bins[-1] == 20 and bins[127] == 0


def test_twohot_encode_hand_computed():
    bins = torch.tensor([-1.0, 0.0, 1.0, 3.0])
    w = twohot_encode(torch.tensor([0.25, 2.5, -5.0, 3.0, 0.0]), bins)
    expected = torch.tensor(
        [
            [0.0, 0.75, 0.25, 0.0],
            [0.0, 0.0, 0.25, 0.75],
            [1.0, 0.0, 0.0, 0.0],  # clamped to the lowest bin
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(w, expected)


def test_twohot_roundtrip():
    bins = symlog_bins()
    x = torch.tensor([-1234.5, -10.0, -0.3, 0.0, 0.01, 1.0, 7.25, 2e4])
    w = twohot_encode(symlog(x), bins)
    assert torch.all((w > 0).sum(-1) <= 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(8))
    torch.testing.assert_close(symexp(twohot_decode(w, bins)), x, rtol=1e-4, atol=1e-5)
    # A head whose softmax is exactly the two-hot predicts x; its loss is the two-hot's entropy.
    logits = torch.log(w.clamp(min=1e-30))
    torch.testing.assert_close(twohot_mean(logits, bins), x, rtol=1e-4, atol=1e-5)
    entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(-1)
    torch.testing.assert_close(twohot_loss(logits, x, bins), entropy, atol=1e-4, rtol=1e-4)


def test_unimix_floor_and_normalisation():
    logits = torch.tensor([[100.0, 0.0, -100.0, 0.0]])
    p = unimix_logits(logits, 0.01).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(1))
    assert p.min() >= 0.01 / 4 - 1e-7
    torch.testing.assert_close(p[0, 0], torch.tensor(0.99 + 0.0025), atol=1e-6, rtol=0)


def test_straight_through_sample_is_one_hot_with_probability_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0]]).repeat(20000, 1).requires_grad_()
    z = sample_straight_through(logits)
    assert torch.all(z.detach().sum(-1) == 1) and set(z.detach().unique().tolist()) == {0.0, 1.0}
    freq = z.detach().mean(0)
    torch.testing.assert_close(freq, torch.softmax(logits[0].detach(), -1), atol=0.01, rtol=0)
    (z[:, 0]).sum().backward()  # d z_0 / d logits = d softmax_0 / d logits
    p = torch.softmax(logits[0].detach(), -1)
    expected = p[0] * (torch.eye(3)[0] - p)
    torch.testing.assert_close(logits.grad[0], expected)


def test_categorical_kl_matches_torch_distributions():
    torch.manual_seed(0)
    p, q = torch.randn(5, 4, 3), torch.randn(5, 4, 3)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    ).sum(-1)
    torch.testing.assert_close(categorical_kl(p, q), expected)


def test_free_bits_clip_the_masked_mean():
    kl = torch.tensor([[0.5, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    loss, raw = kl_free_bits(kl, 1.0, mask)
    assert raw.item() == pytest.approx(1.75) and loss.item() == pytest.approx(1.75)
    loss, raw = kl_free_bits(torch.tensor([0.5, 0.7]), 1.0)
    assert raw.item() == pytest.approx(0.6) and loss.item() == 1.0
    assert masked_mean(kl, torch.zeros_like(mask)).item() == 0.0


def test_lambda_returns_hand_computed_three_steps():
    # bootstrap="next": the one-step target uses V(s_{k+1}) (DreamerV3; our alternative).
    gamma, lam = 0.5, 0.5
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    cont = torch.tensor([[1.0, 0.0, 1.0]])  # the second action ends the episode
    value = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    # G_3 = 40
    # G_2 = 3 + 0.5 * 1 * (0.5 * 40 + 0.5 * 40) = 23
    # G_1 = 2 + 0.5 * 0 * (...) = 2
    # G_0 = 1 + 0.5 * 1 * (0.5 * 20 + 0.5 * 2) = 6.5
    expected = torch.tensor([[6.5, 2.0, 23.0]])
    returns = lambda_returns(reward, cont, value, gamma, lam, bootstrap="next")
    torch.testing.assert_close(returns, expected)
    # lam = 1: discounted Monte-Carlo return bootstrapped at the end; lam = 0: one-step TD targets.
    mc = lambda_returns(reward, torch.ones(1, 3), value, 0.5, 1.0, bootstrap="next")
    torch.testing.assert_close(mc, torch.tensor([[1 + 1 + 0.75 + 5.0, 2 + 1.5 + 10.0, 3 + 20.0]]))
    td = lambda_returns(reward, torch.ones(1, 3), value, 0.5, 0.0, bootstrap="next")
    torch.testing.assert_close(td, torch.tensor([[11.0, 17.0, 23.0]]))
    with pytest.raises(ValueError):
        lambda_returns(reward, cont, value[:, :3])


def test_lambda_returns_reference_bootstrap_hand_computed_three_steps():
    # The reference's calc_lambda_return: the one-step target uses V(s_k), the value of the state
    # the step starts in. Same inputs as above:
    #   G_3 = 40
    #   G_2 = 3 + 0.5 * 1 * (0.5 * 30 + 0.5 * 40) = 20.5
    #   G_1 = 2 + 0.5 * 0 * (...) = 2
    #   G_0 = 1 + 0.5 * 1 * (0.5 * 10 + 0.5 * 2) = 4
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    cont = torch.tensor([[1.0, 0.0, 1.0]])
    value = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    expected = torch.tensor([[4.0, 2.0, 20.5]])
    torch.testing.assert_close(lambda_returns(reward, cont, value, 0.5, 0.5), expected)
    ref = lambda_returns(reward, cont, value, 0.5, 0.5, bootstrap="reference")
    torch.testing.assert_close(ref, expected)  # the default
    # lam = 0: r_k + gamma * V(s_k); lam = 1: the same Monte-Carlo return as "next".
    td = lambda_returns(reward, torch.ones(1, 3), value, 0.5, 0.0)
    torch.testing.assert_close(td, torch.tensor([[6.0, 12.0, 18.0]]))
    mc = lambda_returns(reward, torch.ones(1, 3), value, 0.5, 1.0)
    torch.testing.assert_close(mc, torch.tensor([[1 + 1 + 0.75 + 5.0, 2 + 1.5 + 10.0, 3 + 20.0]]))
    with pytest.raises(ValueError, match="bootstrap"):
        lambda_returns(reward, cont, value, bootstrap="previous")


def test_percentile_range_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 15)).astype(np.float32) * 3 + 1
    expected = np.percentile(x, 95) - np.percentile(x, 5)
    assert percentile_range(torch.from_numpy(x)).item() == pytest.approx(expected, rel=1e-5)
    lo, hi = 0.1, 0.7
    expected = np.quantile(x, hi) - np.quantile(x, lo)
    assert percentile_range(torch.from_numpy(x), lo, hi).item() == pytest.approx(expected, rel=1e-5)
