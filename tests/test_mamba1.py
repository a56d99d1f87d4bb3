"""The Mamba-1 selective scan, layer and backbone (ssm/selective_scan.py and ssm/mamba1.py).

The chunked scan (with its hand-written backward pass) against the sequential loop in fp64, then
the sequence-model contract of `MambaBackbone`, as tests/test_mamba2.py checks it for Mamba-2.
"""

import importlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_drama.checks import ConfigError
from lightning_drama.ssm import kernels
from lightning_drama.ssm.backbones import build_backbone
from lightning_drama.ssm.mamba1 import Mamba, MambaBackbone
from lightning_drama.ssm.mamba2 import Mamba2Backbone
from lightning_drama.ssm.selective_scan import (
    selective_scan,
    selective_scan_reference,
    selective_scan_step,
)

# The module (the package's attribute of that name is the function).
scan_module = importlib.import_module("lightning_drama.ssm.selective_scan")
F64 = torch.float64


def scan_inputs(b=3, L=16, d=5, n=4, dtype=F64, seed=0, delta_shift=-1.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, L, d, generator=g, dtype=dtype)
    delta = torch.randn(b, L, d, generator=g, dtype=dtype) + delta_shift  # softplus'd or not
    A = -torch.empty(d, n, dtype=dtype).uniform_(0.1, 3.0, generator=g)
    B = torch.randn(b, L, n, generator=g, dtype=dtype)
    C = torch.randn(b, L, n, generator=g, dtype=dtype)
    extras = {
        "D": torch.randn(d, generator=g, dtype=dtype),
        "z": torch.randn(b, L, d, generator=g, dtype=dtype),
        "delta_bias": torch.randn(d, generator=g, dtype=dtype) * 0.5,
        "initial_state": torch.randn(b, d, n, generator=g, dtype=dtype),
    }
    return [u, delta, A, B, C], extras


def make_resets(b, L, seed):
    """Random resets plus one at t=0 and several in row 0."""
    g = torch.Generator().manual_seed(seed)
    reset = torch.rand(b, L, generator=g) < 0.15
    reset[0, 0] = True
    reset[0, L // 3 :: max(1, L // 4)] = True
    return reset


def max_diff(a, b):
    if isinstance(a, tuple):
        return max(max_diff(u, v) for u, v in zip(a, b, strict=True))
    return (a - b).abs().max().item()


# (L, chunk): chunks that divide L, that do not, one longer than L, L = 1, chunks of one step.
LENGTHS = [(1, 4), (7, 4), (16, 4), (33, 8), (13, 1), (9, 64)]
OPTIONS = list(itertools.product([False, True], repeat=4))  # D+z, bias+softplus, state, reset


@pytest.mark.parametrize("with_dz,with_bias,with_state,with_reset", OPTIONS)
@pytest.mark.parametrize("L,chunk", LENGTHS)
def test_scan_and_gradients_match_reference_fp64(
    L, chunk, with_dz, with_bias, with_state, with_reset
):
    """Outputs, final state and the gradients of every input (the backward pass is written by
    hand) against autograd through the sequential loop."""
    inputs, extras = scan_inputs(L=L, seed=L + chunk)
    kwargs = {}
    if with_dz:
        kwargs.update(D=extras["D"], z=extras["z"])
    if with_bias:
        kwargs.update(delta_bias=extras["delta_bias"], delta_softplus=True)
    else:
        inputs[1] = F.softplus(inputs[1])  # positive steps
    if with_state:
        kwargs.update(initial_state=extras["initial_state"])
    reset = make_resets(3, L, seed=L) if with_reset else None
    g = torch.Generator().manual_seed(1)
    grad_y = torch.randn(3, L, 5, generator=g, dtype=F64)
    grad_state = torch.randn(3, 5, 4, generator=g, dtype=F64)
    results = []
    for fn in (selective_scan, selective_scan_reference):
        ins = [t.clone().requires_grad_() for t in inputs]
        kw = {k: v.clone().requires_grad_() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        y, state = fn(*ins, **kw, reset=reset, chunk_size=chunk)
        ((y * grad_y).sum() + (state * grad_state).sum()).backward()
        grads = [t.grad for t in ins] + [v.grad for v in kw.values() if torch.is_tensor(v)]
        results.append((y, state, grads))
    (y, state, grads), (y_ref, state_ref, grads_ref) = results
    assert y.shape == (3, L, 5) and state.shape == (3, 5, 4)
    assert y.dtype == state.dtype == F64
    assert max_diff(y, y_ref) < 1e-10
    assert max_diff(state, state_ref) < 1e-10
    for got, want in zip(grads, grads_ref, strict=True):
        assert max_diff(got, want) < 1e-10


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("L,chunk", [(13, 4), (6, 8)])
def test_scan_in_batch_tiles_matches_reference(L, chunk, rows, monkeypatch):
    """A workspace too small for the whole batch: the scan runs on tiles of `rows` batch rows
    (3 rows: the last tile is shorter when rows = 2)."""
    T = min(chunk, L)
    monkeypatch.setattr(scan_module, "WORKSPACE_BYTES", rows * T * 5 * 4 * 8)
    assert scan_module._tiles(3, L, chunk, 5, 4, 8)[0] == rows
    inputs, extras = scan_inputs(L=L, seed=L + rows)
    reset = make_resets(3, L, seed=rows)
    g = torch.Generator().manual_seed(2)
    grad_y = torch.randn(3, L, 5, generator=g, dtype=F64)
    grad_state = torch.randn(3, 5, 4, generator=g, dtype=F64)
    results = []
    for fn in (selective_scan, selective_scan_reference):
        ins = [t.clone().requires_grad_() for t in [*inputs, extras["initial_state"]]]
        y, state = fn(
            *ins[:5], initial_state=ins[5], reset=reset, delta_softplus=True, chunk_size=chunk
        )
        ((y * grad_y).sum() + (state * grad_state).sum()).backward()
        results.append([y, state] + [t.grad for t in ins])
    for got, want in zip(*results, strict=True):
        assert max_diff(got, want) < 1e-10


def test_scan_hand_computed():
    """d = n = 1, L = 3, a decay of exactly 1/2 per step (delta = ln 2, A = -1)."""
    ln2 = math.log(2.0)
    u = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=F64)
    delta = torch.full((1, 3, 1), ln2, dtype=F64)
    A = torch.tensor([[-1.0]], dtype=F64)
    B = torch.tensor([[[1.0], [1.0], [2.0]]], dtype=F64)
    C = torch.tensor([[[1.0], [2.0], [1.0]]], dtype=F64)
    D = torch.tensor([0.5], dtype=F64)
    h0 = torch.tensor([[[4.0]]], dtype=F64)
    # h_t = h_{t-1} / 2 + ln2 * u_t B_t: inputs ln2 * (1, 2, 6)
    h = [2 + ln2, 1 + 2.5 * ln2, 0.5 + 7.25 * ln2]
    y, last = selective_scan(u, delta, A, B, C, D=D, initial_state=h0, chunk_size=2)
    want = torch.tensor([h[0] + 0.5, 2 * h[1] + 1.0, h[2] + 1.5], dtype=F64)
    assert torch.allclose(y.flatten(), want, atol=1e-14, rtol=0)
    assert abs(last.item() - h[2]) < 1e-14
    # A reset at t = 2: h_2 = 6 ln2, nothing of the past.
    reset = torch.tensor([[False, False, True]])
    y, last = selective_scan(u, delta, A, B, C, D=D, initial_state=h0, reset=reset)
    assert abs(y[0, 2, 0].item() - (6 * ln2 + 1.5)) < 1e-14
    assert abs(last.item() - 6 * ln2) < 1e-14
    # The gate: y * silu(z).
    z = torch.full((1, 3, 1), 2.0, dtype=F64)
    y_gated, _ = selective_scan(u, delta, A, B, C, D=D, z=z, initial_state=h0)
    assert torch.allclose(y_gated.flatten(), want * F.silu(torch.tensor(2.0, dtype=F64)))


def test_scan_steps_match_scan():
    inputs, extras = scan_inputs(L=11, seed=3)
    u, delta, A, B, C = inputs
    reset = make_resets(3, 11, seed=3)
    kw = dict(D=extras["D"], delta_bias=extras["delta_bias"], delta_softplus=True)
    y, last = selective_scan(
        u, delta, A, B, C, z=extras["z"], initial_state=extras["initial_state"], reset=reset,
        chunk_size=4, **kw,
    )  # fmt: skip
    state, ys = extras["initial_state"], []
    for t in range(11):
        state = state * (~reset[:, t]).to(F64)[:, None, None]
        y_t, state = selective_scan_step(
            u[:, t], delta[:, t], A, B[:, t], C[:, t], state, z=extras["z"][:, t], **kw
        )
        ys.append(y_t)
    assert max_diff(torch.stack(ys, 1), y) < 1e-12
    assert max_diff(state, last) < 1e-12


def test_scan_strong_decay_fp32_flushes_and_stays_accurate():
    """Decays far below fp32's range: products of decays are flushed to 0 instead of computed on
    subnormal numbers; outputs and gradients still match the fp64 loop."""
    inputs, extras = scan_inputs(b=2, L=40, d=6, n=5, seed=5, delta_shift=4.0)
    inputs[2] = inputs[2] * 20  # A down to -60: delta * A reaches the hundreds
    delta = F.softplus(inputs[1])
    assert scan_module._flush_floor(delta.float(), inputs[2].float(), 8) > 0
    assert (delta[..., None] * inputs[2]).min() < -100
    results = []
    for dtype in (torch.float32, F64):
        ins = [t.to(dtype).requires_grad_() for t in inputs]
        h0 = extras["initial_state"].to(dtype)
        fn = selective_scan if dtype == torch.float32 else selective_scan_reference
        y, state = fn(*ins, delta_softplus=True, initial_state=h0, chunk_size=8)
        (y.sum() + state.sum()).backward()
        results.append([y, state] + [t.grad for t in ins])
    for got, want in zip(*results, strict=True):
        assert torch.isfinite(got).all()
        assert max_diff(got.double(), want) < 1e-4 * max(1.0, want.abs().max().item())


def test_flush_floor_is_skipped_for_mamba_initial_values():
    # dt in [1e-3, 0.1] and A in [-16, -1] (S4D-real): no product of 64 decays underflows.
    delta = torch.full((1, 4, 3), 0.1)
    A = -torch.arange(1.0, 17.0).repeat(3, 1)
    assert scan_module._flush_floor(delta, A, 16) == 0.0
    assert scan_module._flush_floor(delta * 100, A, 16) > 0


def test_scan_empty_sequence_passes_state_through():
    inputs, extras = scan_inputs(L=0)
    y, state = selective_scan(*inputs, initial_state=extras["initial_state"])
    assert y.shape == (3, 0, 5) and torch.equal(state, extras["initial_state"])
    y, state = selective_scan(*inputs)
    assert state.shape == (3, 5, 4) and not state.any()


def test_scan_bf16_autocast_keeps_fp32_state():
    inputs, extras = scan_inputs(L=20, dtype=torch.float32)
    inputs = [t.requires_grad_() for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = inputs[0].to(torch.bfloat16)
        y, state = selective_scan(u, *inputs[1:], delta_softplus=True, chunk_size=8)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    (y.float().sum() + state.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_scan_gradcheck_tiny():
    inputs, extras = scan_inputs(b=2, L=5, d=2, n=3, seed=9)
    reset = torch.tensor([[False, False, True, False, False], [True, False, False, False, True]])
    ins = [t.requires_grad_() for t in inputs + [extras["initial_state"]]]

    def run(u, delta, A, B, C, h0):
        return selective_scan(
            u, delta, A, B, C, initial_state=h0, reset=reset, delta_softplus=True, chunk_size=2
        )

    assert torch.autograd.gradcheck(run, tuple(ins))


def test_scan_bad_inputs():
    inputs, extras = scan_inputs()
    u, delta, A, B, C = inputs
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(u[0], delta, A, B, C)
    with pytest.raises(ValueError, match="delta must be"):
        selective_scan(u, delta[:, 1:], A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A.T, B, C)
    with pytest.raises(ValueError, match="B and C"):
        selective_scan(u, delta, A, B, C[..., 1:])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, delta, A, B, C, D=extras["D"][1:])
    with pytest.raises(ValueError, match="z must be"):
        selective_scan(u, delta, A, B, C, z=extras["z"][:, 1:])
    with pytest.raises(ValueError, match="initial_state must be"):
        selective_scan(u, delta, A, B, C, initial_state=extras["initial_state"][:, :, 1:])
    with pytest.raises(ValueError, match="reset must be"):
        selective_scan(u, delta, A, B, C, reset=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)


# --- the layer and the backbone ---------------------------------------------------------------


def make_backbone(**kw):
    torch.manual_seed(0)
    args = dict(d_model=32, n_layers=2, d_state=8, chunk_size=4)
    args.update(kw)
    return MambaBackbone(**args).double().eval()


def run_steps(model, x, state, reset=None):
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if reset is None else reset[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("prefix", [1, 2, 5, 20])
def test_forward_equals_prefix_then_steps_and_split_forwards(prefix):
    model = make_backbone()
    x = torch.randn(3, 29, 32, dtype=F64)
    y, state = model(x)
    y1, s1 = model(x[:, :prefix])  # prefixes shorter than the conv kernel (4) included
    y2, s2 = run_steps(model, x[:, prefix:], s1)
    assert max_diff(torch.cat([y1, y2], 1), y) < 1e-10
    assert max_diff(s2, state) < 1e-10
    y3, s3 = model(x[:, prefix:], s1)
    assert max_diff(torch.cat([y1, y3], 1), y) < 1e-10
    assert max_diff(s3, state) < 1e-10


def test_steps_from_initial_state_equal_forward():
    model = make_backbone()
    x = torch.randn(2, 12, 32, dtype=F64)
    y, state = model(x)
    y_steps, s_steps = run_steps(model, x, model.initial_state(2))
    assert max_diff(y_steps, y) < 1e-10 and max_diff(s_steps, state) < 1e-10


def test_reset_cuts_history_including_conv_window():
    model = make_backbone()
    x = torch.randn(2, 30, 32, dtype=F64)
    reset = torch.zeros(2, 30, dtype=torch.bool)
    reset[0, 11] = reset[1, 11] = True
    reset[1, 4] = reset[1, 6] = True
    _, warm = model(torch.randn(2, 9, 32, dtype=F64))  # a non-zero incoming state
    y, state = model(x, warm, reset)
    y_fresh, state_fresh = model(x[:, 11:])
    assert max_diff(y[:, 11:], y_fresh) < 1e-10
    assert max_diff(state, state_fresh) < 1e-10
    # Row 1 between its resets at 6 and 11 is a fresh run of x[1, 6:11].
    y_mid, _ = model(x[1:, 6:11])
    assert max_diff(y[1:, 6:11], y_mid) < 1e-10
    # The output just after the reset differs from running without it (the conv would leak).
    y_leak, _ = model(x, warm)
    assert max_diff(y_leak[:, 11:14], y_fresh[:, :3]) > 1e-3
    # Step-by-step with the same resets gives the same outputs.
    y_steps, s_steps = run_steps(model, x, warm, reset)
    assert max_diff(y_steps, y) < 1e-10 and max_diff(s_steps, state) < 1e-10


def test_reset_at_start_discards_incoming_state():
    model = make_backbone()
    x = torch.randn(2, 10, 32, dtype=F64)
    _, warm = model(torch.randn(2, 7, 32, dtype=F64))
    reset = torch.zeros(2, 10, dtype=torch.bool)
    reset[:, 0] = True
    y, state = model(x, warm, reset)
    y_fresh, state_fresh = model(x)
    assert max_diff(y, y_fresh) < 1e-10 and max_diff(state, state_fresh) < 1e-10


def test_reset_at_end_of_forward_does_not_leak_into_next_call():
    model = make_backbone()
    x = torch.randn(2, 20, 32, dtype=F64)
    reset = torch.zeros(2, 20, dtype=torch.bool)
    reset[:, 9] = True  # the last position of the first call
    y_full, _ = model(x, reset=reset)
    y1, s1 = model(x[:, :10], reset=reset[:, :10])
    y2, _ = model(x[:, 10:], s1)
    assert max_diff(torch.cat([y1, y2], 1), y_full) < 1e-10


@pytest.mark.parametrize(
    "conv_bias,bias,dt_init", [(False, True, "constant"), (True, True, "random")]
)
def test_mixer_options_keep_the_contract(conv_bias, bias, dt_init):
    torch.manual_seed(0)
    layer = Mamba(16, d_state=4, conv_bias=conv_bias, bias=bias, dt_init=dt_init, chunk_size=3)
    layer = layer.double()
    assert (layer.conv_bias is not None) == conv_bias and (layer.in_proj.bias is not None) == bias
    x = torch.randn(2, 9, 16, dtype=F64)
    y, state = layer(x)
    y1, s1 = layer(x[:, :2])
    ys = [y1]
    for t in range(2, 9):
        y_t, s1 = layer.step(x[:, t], s1)
        ys.append(y_t[:, None])
    assert max_diff(torch.cat(ys, 1), y) < 1e-10 and max_diff(s1, state) < 1e-10


def test_state_shapes_dtypes_and_row_selection():
    model = make_backbone()
    x = torch.randn(4, 10, 32, dtype=F64)
    _, state = model(x)
    init = model.initial_state(4)
    assert len(state) == len(init) == 4
    for s, s0 in zip(state, init, strict=True):
        assert s.shape == s0.shape and s.dtype == s0.dtype == F64 and not s0.any()
    assert state[0].shape == (4, 3, 64) and state[1].shape == (4, 64, 8)
    fp32 = MambaBackbone(32, 1, d_state=8).initial_state(2)
    assert [s.dtype for s in fp32] == [torch.float32, torch.float32]
    idx = torch.tensor([2, 0, 2])
    y_sel, _ = model.step(x[idx, -1], tuple(s[idx] for s in state))
    y_all, _ = model.step(x[:, -1], state)
    assert max_diff(y_sel, y_all[idx]) < 1e-12


def test_gradients_finite_and_nonzero_for_all_parameters():
    model = make_backbone().train()
    x = torch.randn(2, 14, 32, dtype=F64, requires_grad=True)
    reset = torch.zeros(2, 14, dtype=torch.bool)
    reset[1, 6] = True
    _, warm = model(torch.randn(2, 5, 32, dtype=F64))
    y, state = model(x, tuple(s.detach() for s in warm), reset)
    (y.pow(2).mean() + sum(s.pow(2).mean() for s in state)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_gradcheck_backbone_tiny():
    model = make_backbone(d_model=8, n_layers=1, d_state=2, chunk_size=2)
    x = torch.randn(1, 5, 8, dtype=F64, requires_grad=True)
    reset = torch.tensor([[False, False, True, False, False]])
    assert torch.autograd.gradcheck(lambda x: model(x, reset=reset)[0], (x,))


def test_bf16_autocast_finite_outputs_and_grads():
    torch.manual_seed(0)
    model = MambaBackbone(32, 2, d_state=8, chunk_size=8, dropout=0.1)
    x = torch.randn(2, 40, 32, requires_grad=True)
    reset = torch.zeros(2, 40, dtype=torch.bool)
    reset[0, 17] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x, reset=reset)
        y_step, state_step = model.step(x[:, -1], state)
    assert y.dtype == torch.float32 and y_step.dtype == torch.float32
    assert state[1].dtype == state_step[1].dtype == torch.float32
    (y.pow(2).mean() + y_step.pow(2).mean()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_initialisation():
    torch.manual_seed(0)
    layer = Mamba(d_model=40, d_state=6, dt_min=2e-3, dt_max=5e-2)
    assert layer.d_inner == 80 and layer.dt_rank == math.ceil(40 / 16) == 3
    assert layer.x_proj.weight.shape == (3 + 2 * 6, 80) and layer.dt_proj.weight.shape == (80, 3)
    assert layer.A_log.shape == (80, 6)
    assert torch.allclose(layer.A_log, torch.log(torch.arange(1.0, 7.0)).expand(80, 6))
    dt = F.softplus(layer.dt_proj.bias)
    assert ((dt >= 2e-3 * (1 - 1e-5)) & (dt <= 5e-2 * (1 + 1e-5))).all()
    assert dt.max() / dt.min() > 5  # spread log-uniformly, not constant
    bound = 3**-0.5
    assert layer.dt_proj.weight.abs().max() <= bound and layer.dt_proj.weight.std() > bound / 4
    assert torch.equal(layer.D, torch.ones(80))
    assert layer.conv_weight.shape == (80, 4) and layer.conv_weight.abs().max() <= 0.5
    constant = Mamba(d_model=40, dt_rank=5, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(constant.dt_proj.weight, torch.full((80, 5), 2.0 * 5**-0.5))
    # The floor: dt never below dt_init_floor.
    floored = Mamba(d_model=16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    assert torch.allclose(F.softplus(floored.dt_proj.bias), torch.full((32,), 1e-4))


def test_backbone_attributes_out_proj_scaling_and_parameter_count():
    model = make_backbone()
    assert (model.kind, model.d_model, model.n_layers) == ("mamba", 32, 2)
    assert Mamba2Backbone.kind == "mamba2"
    torch.manual_seed(0)
    one = MambaBackbone(32, 1).mixers[0].out_proj.weight
    torch.manual_seed(0)
    four = MambaBackbone(32, 4).mixers[0].out_proj.weight
    assert torch.allclose(four, one / 2)
    # d_model 512, 2 layers, d_state 16, expand 2, dt_rank 32, per layer: in_proj 512*2048,
    # conv 1024*4 + 1024, x_proj 1024*64, dt_proj 32*1024 + 1024, A_log 1024*16, D 1024,
    # out_proj 1024*512, norm 512; plus the final norm.
    per_layer = 512 * 2048 + 5 * 1024 + 1024 * 64 + 33 * 1024 + 16 * 1024 + 1024 + 1024 * 512 + 512
    assert sum(p.numel() for p in MambaBackbone(512, 2).parameters()) == 2 * per_layer + 512
    built = build_backbone("mamba", 32, 2, d_state=8, dt_rank=3)
    assert isinstance(built, MambaBackbone) and built.kind == "mamba"
    assert built.mixers[0].dt_rank == 3 and built.mixers[0].d_state == 8


def test_fused_kernels_are_not_used_on_cpu():
    x = torch.randn(1, 3, 8)
    assert not kernels.use_fused_selective_scan(x, None, None, force_torch=False)


def test_bad_configuration_and_inputs():
    for kwargs, match in [
        (dict(n_layers=0), "n_layers must be >= 1"),
        (dict(dt_rank=0), "dt_rank must be"),
        (dict(dt_rank="big"), "dt_rank must be"),
        (dict(d_conv=0), "d_conv must be >= 1"),
        (dict(d_state=0), "d_state must be >= 1"),
        (dict(expand=0), "expand must be >= 1"),
        (dict(chunk_size=0), "chunk_size must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            MambaBackbone(**{"d_model": 32, "n_layers": 1, **kwargs})
    with pytest.raises(ConfigError, match="dt_init"):
        Mamba(16, dt_init="zeros")
    with pytest.raises(ConfigError, match="dt_min <= dt_max"):
        Mamba(16, dt_min=0.2, dt_max=0.1)
    model = make_backbone()
    with pytest.raises(ValueError, match=r"MambaBackbone: expected input \[B, L, 32\]"):
        model(torch.randn(2, 5, 31, dtype=F64))
    with pytest.raises(ValueError, match="reset must have shape"):
        model(torch.randn(2, 5, 32, dtype=F64), reset=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="state must hold 4 tensors"):
        model.step(torch.randn(2, 32, dtype=F64), model.initial_state(2)[:2])
    with pytest.raises(ValueError, match="state batch 3 != input batch 2"):
        model.step(torch.randn(2, 32, dtype=F64), model.initial_state(3))
    with pytest.raises(ValueError, match=r"MambaBackbone.step: expected input \[B, 32\]"):
        model.step(torch.randn(2, 1, 32, dtype=F64), model.initial_state(2))
    with pytest.raises(ValueError, match="Mamba.step: reset must have shape"):
        model.step(torch.randn(2, 32, dtype=F64), model.initial_state(2), torch.zeros(3).bool())
    layer = model.mixers[0]
    with pytest.raises(ValueError, match=r"Mamba: expected input \[B, L, 32\]"):
        layer(torch.randn(2, 32, dtype=F64))
