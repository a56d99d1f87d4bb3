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
    assert defaults == dict(lr=4e-5, betas=(0.9, 0.999), eps=1e-20, weight_decay=1e-4, foreach=True)
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


def _params(dtype=torch.float64) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 2), ()]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _run(opt: LaProp, params, grads_per_step, lrs) -> None:
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()
        opt.step()


def _grads(params, steps: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [
        [
            None if (k == 2 and i == 1) else torch.randn(p.shape, generator=gen, dtype=p.dtype)
            for i, p in enumerate(params)
        ]
        for k in range(steps)
    ]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_step_equals_the_per_tensor_loop(weight_decay):
    """Several tensors, a changing lr (warm-up), a parameter without gradient in one step."""
    a, b = _params(), _params()
    grads, lrs = _grads(a, 6), [0.01 * (k + 1) for k in range(6)]
    _run(LaProp(a, betas=(0.8, 0.9), eps=1e-8, weight_decay=weight_decay), a, grads, lrs)
    reference = LaProp(b, betas=(0.8, 0.9), eps=1e-8, weight_decay=weight_decay, foreach=False)
    _run(reference, b, grads, lrs)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


def test_a_skipped_step_changes_nothing_and_needs_no_host_read():
    """skip_next_step_if(flag): with NaN / inf gradients, parameters and every state tensor
    stay as they were (also on the very first step); the following steps match a run that never
    saw the skipped one."""
    a, b = _params(), _params()
    opt_a, opt_b = LaProp(a, lr=0.05, weight_decay=0.1), LaProp(b, lr=0.05, weight_decay=0.1)
    grads = _grads(a, 4)
    poisoned = [torch.full_like(p, float("nan")) for p in a]
    poisoned[0][0, 0] = float("inf")
    for p, g in zip(a, poisoned, strict=True):  # step 1 skipped, before any state exists
        p.grad = g
    before = [p.detach().clone() for p in a]
    opt_a.skip_next_step_if(torch.tensor(True))
    opt_a.step()
    assert all(torch.equal(p, q) for p, q in zip(a, before, strict=True))
    for state in opt_a.state.values():
        assert state["step"] == 0 and state["exp_avg_lr"] == 0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    _run(opt_a, a, grads[:2], [0.05] * 2)
    _run(opt_b, b, grads[:2], [0.05] * 2)
    for p, g in zip(a, poisoned, strict=True):  # a skip between steps
        p.grad = g
    snapshot = {k: v.clone() for s in opt_a.state.values() for k, v in s.items()}
    opt_a.skip_next_step_if(torch.tensor(True))
    opt_a.step()
    assert {k: v for s in opt_a.state.values() for k, v in s.items()}.keys() == snapshot.keys()
    opt_a.skip_next_step_if(torch.tensor(False))  # a false flag: an ordinary step
    _run(opt_a, a, grads[2:], [0.05] * 2)
    _run(opt_b, b, grads[2:], [0.05] * 2)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


def test_the_per_tensor_loop_honours_the_skip_flag_too():
    (p,) = _params()[:1]
    opt = LaProp([p], foreach=False)
    p.grad = torch.full_like(p, float("nan"))
    before = p.detach().clone()
    opt.skip_next_step_if(torch.tensor(True))
    opt.step()
    assert torch.equal(p, before)


def test_state_dict_round_trip_and_older_checkpoints_continue_identically():
    """State saved by this LaProp, and state in the older layout (a Python int step and float
    n_t), both resume to the same parameters as an uninterrupted run."""
    straight, resumed, old = _params(), _params(), _params()
    grads, lrs = _grads(straight, 6), [0.02] * 6
    _run(LaProp(straight), straight, grads, lrs)
    first = LaProp(resumed)
    _run(first, resumed, grads[:3], lrs[:3])
    saved = first.state_dict()
    legacy = {
        "state": {
            k: {
                "exp_avg": v["exp_avg"].clone(),  # load_state_dict keeps the tensors it is given
                "exp_avg_sq": v["exp_avg_sq"].clone(),
                "step": int(v["step"]),
                "exp_avg_lr": float(v["exp_avg_lr"]),
            }
            for k, v in saved["state"].items()
        },
        "param_groups": [
            {k: v for k, v in g.items() if k != "foreach"} for g in saved["param_groups"]
        ],
    }
    for p, q in zip(old, resumed, strict=True):
        p.data.copy_(q.data)
    second, third = LaProp(resumed), LaProp(old)
    second.load_state_dict(saved)
    third.load_state_dict(legacy)
    _run(second, resumed, grads[3:], lrs[3:])
    _run(third, old, grads[3:], lrs[3:])
    for x, y, z in zip(straight, resumed, old, strict=True):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, z, rtol=1e-14, atol=1e-15)
