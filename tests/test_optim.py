"""LaProp and the linear warm-up of lightning_drama.optim."""

import math

import pytest
import torch

from lightning_drama.optim import LaProp, linear_warmup


def test_laprop_first_two_steps_hand_computed():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.0
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = LaProp([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    g1 = torch.tensor([0.5, -4.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 2.0], dtype=torch.float64)

    p.grad = g1.clone()
    opt.step()
    # Step 1: v = (1-b2) g1^2, v_hat = g1^2, m = (1-b1) lr g1 / (|g1| + eps), n = (1-b1) lr:
    # p -= lr * m / n = lr * g1 / (|g1| + eps).
    p1 = torch.tensor([1.0, -2.0], dtype=torch.float64) - lr * g1 / (g1.abs() + eps)
    torch.testing.assert_close(p.detach(), p1)

    p.grad = g2.clone()
    opt.step()
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    v2_hat = v2 / (1 - b2**2)
    m1 = (1 - b1) * lr * g1 / (g1.abs() + eps)
    m2 = b1 * m1 + (1 - b1) * lr * g2 / (v2_hat.sqrt() + eps)
    n2 = b1 * (1 - b1) * lr + (1 - b1) * lr
    p2 = p1 - lr * m2 / n2
    torch.testing.assert_close(p.detach(), p2)
    # Numbers for the first coordinate, by hand: v2_hat = (0.000999*0.25 + 0.001) / 0.001999
    assert v2_hat[0].item() == pytest.approx((0.999 * 0.001 * 0.25 + 0.001) / 0.001999)


def test_laprop_decoupled_weight_decay_and_defaults():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    opt = LaProp([p], weight_decay=0.5, lr=0.1)
    p.grad = torch.tensor([3.0])
    opt.step()
    # p <- p * (1 - lr * wd) - lr * sign(g)
    torch.testing.assert_close(p.detach(), torch.tensor([2.0 * (1 - 0.05) - 0.1]))
    defaults = LaProp([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert defaults == dict(lr=4e-5, betas=(0.9, 0.999), eps=1e-20, weight_decay=1e-4)
    with pytest.raises(ValueError):
        LaProp([p], lr=-1.0)


def test_laprop_skips_parameters_without_grad_and_minimises():
    torch.manual_seed(0)
    frozen = torch.nn.Parameter(torch.ones(3))
    w = torch.nn.Parameter(torch.randn(3))
    opt = LaProp([w, frozen], lr=0.05, weight_decay=0.0)
    for _ in range(300):
        opt.zero_grad()
        ((w - torch.tensor([1.0, -2.0, 3.0])) ** 2).sum().backward()
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0, 3.0]), atol=0.1, rtol=0)
    assert torch.equal(frozen.detach(), torch.ones(3))


def test_linear_warmup_with_lambda_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = LaProp([p], lr=4e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup(1000))
    lrs = []
    for _ in range(1002):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(4e-5 / 1000)
    assert lrs[499] == pytest.approx(4e-5 * 0.5)
    assert lrs[999] == pytest.approx(4e-5) and lrs[1001] == pytest.approx(4e-5)
    assert linear_warmup(0)(0) == 1.0


def test_laprop_bias_correction_follows_a_changing_lr():
    # With a constant gradient every step moves by exactly the current lr (sign of the gradient).
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = LaProp([p], lr=1.0, eps=0.0, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup(4))
    for k in range(6):
        before = p.detach().clone()
        lr = opt.param_groups[0]["lr"]
        p.grad = torch.full((1,), 2.0, dtype=torch.float64)
        opt.step()
        sched.step()
        assert (before - p.detach()).item() == pytest.approx(lr), k
    assert math.isclose(opt.param_groups[0]["lr"], 1.0)
