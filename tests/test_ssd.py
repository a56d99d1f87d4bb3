"""The chunked SSD scan against the sequential recurrence (lightning_drama/ssm/ssd.py)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_drama.ssm import segsum_exp, ssd, ssd_reference, ssd_scan, ssd_step


def make_inputs(b=2, L=16, H=4, P=3, G=1, N=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(b, L, H, generator=g, dtype=dtype) - 1.0)
    A = -(torch.rand(H, generator=g, dtype=dtype) * 3.0 + 0.1)
    B = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    C = torch.randn(b, L, G, N, generator=g, dtype=dtype)
    return x, dt, A, B, C


CASES = list(itertools.product([1, 7, 64, 130], [16, 64], [1, 2], [False, True], [False, True]))

# ssd_scan has two forms of the within-chunk part (see lightning_drama/ssm/ssd.py); each test that
# uses this fixture runs once per form. A bound of -1 forces the segment-sum form; an unbounded
# one forces the factored form (fp64 has the range for these inputs).
FORMS = {"factored": float("inf"), "segsum": -1.0}


@pytest.fixture(params=list(FORMS))
def form(request, monkeypatch):
    monkeypatch.setattr(ssd, "FACTORED_MAX_EXPONENT", FORMS[request.param])
    return request.param


@pytest.mark.parametrize("L,chunk,G,with_state,with_reset", CASES)
def test_scan_matches_reference_fp64(L, chunk, G, with_state, with_reset, form):
    x, dt, A, B, C = make_inputs(b=3, L=L, H=4, P=3, G=G, N=5, seed=L + chunk + G)
    g = torch.Generator().manual_seed(1)
    h0 = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64) if with_state else None
    D = torch.randn(4, generator=g, dtype=torch.float64) if with_state else None
    reset = (torch.rand(3, L, generator=g) < 0.1) if with_reset else None
    if with_reset and L > 1:
        reset[0, L // 2] = True  # at least one boundary inside the window
    y, final = ssd_scan(x, dt, A, B, C, chunk, D=D, initial_state=h0, reset=reset)
    y_ref, final_ref = ssd_reference(x, dt, A, B, C, D=D, initial_state=h0, reset=reset)
    assert y.shape == (3, L, 4, 3) and final.shape == (3, 4, 3, 5)
    assert (y - y_ref).abs().max() < 1e-10
    assert (final - final_ref).abs().max() < 1e-10


@pytest.mark.parametrize("through", ["y", "final", "both"])
@pytest.mark.parametrize("L,chunk,G,with_state,with_reset", CASES)
def test_gradients_match_reference_fp64(L, chunk, G, with_state, with_reset, through, form):
    # The factored form has a hand-written backward pass (ssd_factored.py): every input's
    # gradient must equal autograd's through the sequential loop, whichever output is used.
    x, dt, A, B, C = make_inputs(b=3, L=L, H=4, P=3, G=G, N=5, seed=L + chunk + G)
    g = torch.Generator().manual_seed(2)
    D = torch.randn(4, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64)
    reset = (torch.rand(3, L, generator=g) < 0.2) if with_reset else None
    grad_y = torch.randn(3, L, 4, 3, generator=g, dtype=torch.float64)
    grad_final = torch.randn(3, 4, 3, 5, generator=g, dtype=torch.float64)
    grads = []
    for fn in (ssd_scan, ssd_reference):
        inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
        extra = [D.clone().requires_grad_(), h0.clone().requires_grad_()] if with_state else []
        y, final = fn(*inputs, chunk, *extra[:1], *extra[1:], reset=reset)
        loss = (y * grad_y).sum() if through != "final" else 0.0
        loss = loss + (final * grad_final).sum() if through != "y" else loss
        loss.backward()
        grads.append([t.grad for t in inputs + extra])
    for got, want in zip(*grads, strict=True):
        if want is None:  # e.g. D does not reach the final state
            assert got is None or got.abs().max() == 0
        else:
            assert (got - want).abs().max() < 1e-10


def test_backward_inside_autocast_stays_fp32():
    # A loss.backward() called inside an autocast region must not run the scan's
    # hand-written backward in bf16.
    x, dt, A, B, C = make_inputs(b=2, L=40, H=4, P=8, G=1, N=4, dtype=torch.float32, seed=9)
    grads = []
    for autocast in (False, True):
        inputs = [t.clone().requires_grad_() for t in (x, dt, B, C)]
        y, _ = ssd_scan(inputs[0], inputs[1], A, inputs[2], inputs[3], chunk_size=16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y.square().sum().backward()
        grads.append([t.grad for t in inputs])
    for a, b in zip(*grads, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("L", [7, 130])
def test_scan_fp32_relative_error(L, form):
    if form == "factored":  # in fp32 the factored form runs within its default bound only
        ssd.FACTORED_MAX_EXPONENT = 60.0
    x, dt, A, B, C = make_inputs(b=2, L=L, H=4, P=8, G=2, N=16, seed=3)
    reset = torch.zeros(2, L, dtype=torch.bool)
    reset[1, L // 3] = True
    y_ref, f_ref = ssd_reference(x, dt, A, B, C, D=torch.ones(4, dtype=torch.float64), reset=reset)
    args = [t.float() for t in (x, dt, A, B, C)]
    y, f = ssd_scan(*args, chunk_size=32, D=torch.ones(4), reset=reset)
    assert y.dtype == torch.float32
    rel = (y.double() - y_ref).norm() / y_ref.norm()
    assert rel < 1e-4
    assert (f.double() - f_ref).norm() / f_ref.norm() < 1e-4


def test_hand_computed_scalar_case():
    # H = P = N = G = 1, A = -1, dt = ln 2 so exp(dt A) = 1/2; B = C = 1, x = [1, 2, 3]:
    # h = [ln2, ln2/2 + 2 ln2, 1.25 ln2 + 3 ln2] = ln2 * [1, 2.5, 4.25].
    ln2 = torch.log(torch.tensor(2.0, dtype=torch.float64))
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    dt = torch.full((1, 3, 1), ln2.item(), dtype=torch.float64)
    A = torch.tensor([-1.0], dtype=torch.float64)
    ones = torch.ones(1, 3, 1, 1, dtype=torch.float64)
    y, h = ssd_scan(x, dt, A, ones, ones, chunk_size=2)
    expected = ln2 * torch.tensor([1.0, 2.5, 4.25], dtype=torch.float64)
    torch.testing.assert_close(y.flatten(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(h.flatten(), expected[-1:], rtol=0, atol=1e-12)
    # A reset at t=2 forgets the first two steps: h_2 = 3 ln2.
    y, h = ssd_scan(x, dt, A, ones, ones, chunk_size=2, reset=torch.tensor([[False, False, True]]))
    torch.testing.assert_close(y.flatten()[2], 3 * ln2, rtol=0, atol=1e-12)


def test_reset_equals_fresh_start(form):
    x, dt, A, B, C = make_inputs(b=2, L=50, G=2, seed=5)
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    reset = torch.zeros(2, 50, dtype=torch.bool)
    reset[:, 23] = True
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=16, initial_state=h0, reset=reset)
    y_fresh, final_fresh = ssd_scan(*(t[:, 23:] for t in (x, dt)), A, B[:, 23:], C[:, 23:], 16)
    assert (y[:, 23:] - y_fresh).abs().max() < 1e-12
    assert (final - final_fresh).abs().max() < 1e-12


def test_state_carried_across_calls_and_steps():
    x, dt, A, B, C = make_inputs(b=2, L=40, G=2, seed=6)
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=16)
    y1, h = ssd_scan(x[:, :25], dt[:, :25], A, B[:, :25], C[:, :25], 16)
    y2, h2 = ssd_scan(x[:, 25:], dt[:, 25:], A, B[:, 25:], C[:, 25:], 16, initial_state=h)
    assert (torch.cat([y1, y2], 1) - y).abs().max() < 1e-12
    assert (h2 - final).abs().max() < 1e-12
    ys = []
    h = torch.zeros_like(final)
    for t in range(40):
        yt, h = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], h)
        ys.append(yt)
    assert (torch.stack(ys, 1) - y).abs().max() < 1e-12


def test_segsum_exp_small():
    a = torch.tensor([0.5, -1.0, -2.0], dtype=torch.float64)
    M = segsum_exp(a)
    expected = torch.tensor(
        [[1.0, 0.0, 0.0], [torch.e**-1.0, 1.0, 0.0], [torch.e**-3.0, torch.e**-2.0, 1.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(M, expected)
    M = segsum_exp(a, reset=torch.tensor([False, False, True]))
    expected[2, :2] = 0.0
    torch.testing.assert_close(M, expected)


def test_gradcheck_tiny(form):
    x, dt, A, B, C = make_inputs(b=1, L=5, H=2, P=2, G=1, N=2, seed=7)
    h0 = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    reset = torch.tensor([[False, False, False, True, False]])
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, h0)]

    def f(x, dt, A, B, C, h0):
        return ssd_scan(x, dt, A, B, C, chunk_size=2, D=A, initial_state=h0, reset=reset)

    assert torch.autograd.gradcheck(f, inputs)


def test_bf16_autocast_keeps_fp32_internals():
    x, dt, A, B, C = make_inputs(b=2, L=33, H=4, P=8, G=1, N=4, dtype=torch.float32, seed=8)
    params = [t.clone().requires_grad_() for t in (x, B, C)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, final = ssd_scan(params[0].bfloat16(), dt, A, params[1], params[2], chunk_size=16)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    y.float().pow(2).mean().backward()
    assert torch.isfinite(y.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in params)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: {**a, "x": a["x"][0]}, "x must be"),
        (lambda a: {**a, "dt": a["dt"][:, :-1]}, "dt must be"),
        (lambda a: {**a, "A": a["A"][:-1]}, "A must be"),
        (lambda a: {**a, "B": a["B"][:, :, :, :-1]}, "B and C"),
        (lambda a: {**a, "B": a["B"].repeat(1, 1, 3, 1), "C": a["C"].repeat(1, 1, 3, 1)}, "groups"),
        (lambda a: {**a, "reset": torch.zeros(2, 3, dtype=torch.bool)}, "reset must be"),
        (lambda a: {**a, "initial_state": torch.zeros(2, 4, 3, 4)}, "initial_state"),
    ],
)
def test_bad_shapes_raise_value_error(change, match):
    x, dt, A, B, C = make_inputs(b=2, L=8, H=4, P=3, G=1, N=5)
    args = change({"x": x, "dt": dt, "A": A, "B": B, "C": C})
    with pytest.raises(ValueError, match=match):
        ssd_scan(**args)


def test_forms_are_chosen_by_the_decay_bound(monkeypatch):
    calls = []
    for name in ("_ssd_chunked_factored", "_ssd_chunked_segsum"):
        original = getattr(ssd, name)
        monkeypatch.setattr(ssd, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    x, dt, A, B, C = make_inputs(b=2, L=32, H=4, P=3, seed=7)
    ssd_scan(x, dt.clamp(max=0.5), A.clamp(min=-3.0), B, C, chunk_size=16)  # span <= 24
    assert calls == ["_ssd_chunked_factored"]
    calls.clear()
    ssd_scan(x, dt + 1.0, A - 10.0, B, C, chunk_size=16)  # a chunk decays by more than e^-160
    assert calls == ["_ssd_chunked_segsum"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strong_decay_stays_exact(dtype):
    # Decays of up to e^-60 per step: far outside the factored form's range, so the segment-sum
    # form takes over; no overflow, and the result is still the recurrence.
    x, dt, A, B, C = make_inputs(b=2, L=70, H=4, P=3, G=2, seed=11)
    dt, A = dt + 2.0, A * 10.0
    reset = torch.zeros(2, 70, dtype=torch.bool)
    reset[0, 33] = True
    y_ref, f_ref = ssd_reference(x, dt, A, B, C, reset=reset)
    y, f = ssd_scan(*(t.to(dtype) for t in (x, dt, A, B, C)), chunk_size=32, reset=reset)
    assert torch.isfinite(y).all() and torch.isfinite(f).all()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert (y.double() - y_ref).norm() / y_ref.norm() < tol
    assert (f.double() - f_ref).norm() / f_ref.norm() < tol


def strong_decay_inputs(total: float, with_reset: bool, seed: int = 0):
    """fp32 inputs in Mamba-2's initial ranges (A in [-16, -1], dt log-uniform in [1e-3, 1e-1])
    where head 0, A = -16 and dt ~ 0.1, decays by about e^-total over each chunk of 64 steps."""
    g = torch.Generator().manual_seed(seed)
    b, L, H, P, G, N = 2, 128, 4, 8, 2, 8
    x = torch.randn(b, L, H, P, generator=g)
    dt = torch.empty(b, L, H).uniform_(math.log(1e-3), math.log(1e-1), generator=g).exp()
    dt[..., 0] = total / (64 * 16) * (1 + 0.1 * (torch.rand(b, L, generator=g) - 0.5))
    A = torch.tensor([-16.0, -1.0, -4.0, -12.0])
    B = torch.randn(b, L, G, N, generator=g)
    C = torch.randn(b, L, G, N, generator=g)
    D = torch.randn(H, generator=g)
    h0 = torch.randn(b, H, P, N, generator=g)
    reset = None
    if with_reset:  # inside a chunk, at a chunk's first and last step; chunks without any
        reset = torch.zeros(b, L, dtype=torch.bool)
        reset[0, [20, 64, 127]] = True
        reset[1, 90] = True
    grad_y = torch.randn(b, L, H, P, generator=g)
    grad_final = torch.randn(b, H, P, N, generator=g)
    return (x, dt, A, B, C, D, h0), reset, grad_y, grad_final


def scan_gradients(fn, inputs, reset, grad_y, grad_final, dtype):
    """y, final and the gradients of every input of `fn` (ssd_scan or ssd_reference) in dtype."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    x, dt, A, B, C, D, h0 = leaves
    y, final = fn(x, dt, A, B, C, 64, D=D, initial_state=h0, reset=reset)
    ((y * grad_y.to(dtype)).sum() + (final * grad_final.to(dtype)).sum()).backward()
    return [y.detach(), final.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("with_reset", [False, True])
@pytest.mark.parametrize("total", range(60, 131, 10))
def test_fp32_gradients_stay_finite_at_strong_decay(total, with_reset, monkeypatch):
    # Regression: with a chunk decaying by more than about e^-89 (here one head with A = -16
    # and dt ~ 0.1 at chunk 64, both inside Mamba-2's initial ranges) the factored form's
    # backward pass formed exp(cs_t - cs_s) above the causal diagonal, up to e^120: inf in fp32,
    # then NaN when multiplied by the mask, which reached the gradients of B and C (and from
    # there in_proj and the convolution). The sweep crosses the switch to the segment-sum form.
    calls = []
    factored = ssd._ssd_chunked_factored
    monkeypatch.setattr(ssd, "_ssd_chunked_factored", lambda *a: calls.append(1) or factored(*a))
    inputs, reset, grad_y, grad_final = strong_decay_inputs(total, with_reset)
    got = scan_gradients(ssd_scan, inputs, reset, grad_y, grad_final, torch.float32)
    if total != 120:  # 120: either form, by the dt drawn
        assert bool(calls) == (total <= 110)
    want = scan_gradients(ssd_reference, inputs, reset, grad_y, grad_final, torch.float64)
    names = ["y", "final", "x", "dt", "A", "B", "C", "D", "initial_state"]
    # Relative errors measured at these inputs, worst over the sweep, the reset cases and seeds
    # 0-8: up to 7e-7 (final state), 6e-7 (dt) and 1.2e-6 (A, from head 0), the others 4e-7;
    # with every chunk forced through the segment-sum form, 4.5e-7 (A) and 2.4e-7.
    for name, a, w in zip(names, got, want, strict=True):
        assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
        assert relative_error(a, w) < 3e-6, name
    # Head 0's dt alone, whose gradient through the log-decays is largely cancelling terms and
    # loses more in the factored form: up to 2e-6 (the segment-sum form: 1.6e-7).
    assert relative_error(got[3][..., 0], want[3][..., 0]) < 6e-6


def relative_error(a: torch.Tensor, want: torch.Tensor) -> float:
    return ((a.double() - want).norm() / want.norm()).item()


def test_long_sequences_run_in_segments(monkeypatch, form):
    # Segments of 32 steps (chunk 16) with the state carried equal one pass; resets and
    # padding included, gradients too.
    monkeypatch.setattr(ssd, "SEGMENT_LENGTH", 32)
    x, dt, A, B, C = make_inputs(b=2, L=101, H=4, P=3, G=2, seed=13)
    reset = torch.zeros(2, 101, dtype=torch.bool)
    reset[1, [31, 32, 70]] = True
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, dt, B, C)]
    y, f = ssd_scan(*args[:2], A, *args[2:], 16, initial_state=h0, reset=reset)
    y_ref, f_ref = ssd_reference(x, dt, A, B, C, initial_state=h0, reset=reset)
    assert (y - y_ref).abs().max() < 1e-10 and (f - f_ref).abs().max() < 1e-10
    (y.square().sum() + f.sum()).backward()
    ref_args = [t.clone().requires_grad_() for t in (x, dt, B, C)]
    y_ref, f_ref = ssd_reference(*ref_args[:2], A, *ref_args[2:], initial_state=h0, reset=reset)
    (y_ref.square().sum() + f_ref.sum()).backward()
    for a, r in zip(args, ref_args, strict=True):
        assert (a.grad - r.grad).abs().max() < 1e-9


def test_empty_sequence_passes_the_state_through():
    x, dt, A, B, C = make_inputs(b=2, L=0)
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    y, f = ssd_scan(x, dt, A, B, C, initial_state=h0)
    assert y.shape == (2, 0, 4, 3) and torch.equal(f, h0)
