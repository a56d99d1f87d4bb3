"""The sequence-model contract, for every backbone behind `model.world_model.backbone`
(lightning_drama/ssm/backbones.py, transformer.py, gru.py; Mamba-1's own tests: test_mamba1.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_drama.checks import ConfigError
from lightning_drama.ssm.backbones import BACKBONES, build_backbone
from lightning_drama.ssm.transformer import TransformerBackbone, sinusoidal_positions

D = 32


def make(kind, **kw):
    torch.manual_seed(0)
    args = dict(d_state=8, headdim=16, chunk_size=8, num_heads=4, max_length=64, dropout=0.0)
    args.update(kw)
    return build_backbone(kind, D, 2, **args).double().eval()


def run_steps(model, x, state, reset=None):
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state, None if reset is None else reset[:, t])
        ys.append(y)
    return torch.stack(ys, 1), state


def max_diff(a, b):
    if isinstance(a, tuple):
        return max(max_diff(u, v) for u, v in zip(a, b, strict=True))
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("kind", BACKBONES)
def test_attributes_and_unknown_kind(kind):
    model = make(kind)
    assert model.kind == kind and model.d_model == D and model.n_layers == 2
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("lstm", D, 2)


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("prefix", [1, 3, 11])
def test_prefix_forward_then_steps_and_two_halves_equal_one_forward(kind, prefix):
    model = make(kind)
    x = torch.randn(3, 23, D, dtype=torch.float64)
    y, state = model(x)
    y1, s1 = model(x[:, :prefix])
    y2, s2 = run_steps(model, x[:, prefix:], s1)
    assert max_diff(torch.cat([y1, y2], 1), y) < 1e-10
    assert max_diff(s2, state) < 1e-10
    y3, s3 = model(x[:, prefix:], s1)
    assert max_diff(torch.cat([y1, y3], 1), y) < 1e-10
    assert max_diff(s3, state) < 1e-10


@pytest.mark.parametrize("kind", BACKBONES)
def test_steps_from_initial_state_equal_forward(kind):
    model = make(kind)
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y, state = model(x)
    y_steps, s_steps = run_steps(model, x, model.initial_state(2))
    assert max_diff(y_steps, y) < 1e-10 and max_diff(s_steps, state) < 1e-10


@pytest.mark.parametrize("kind", BACKBONES)
def test_resets_equal_separate_runs(kind):
    model = make(kind)
    x = torch.randn(2, 20, D, dtype=torch.float64)
    reset = torch.zeros(2, 20, dtype=torch.bool)
    reset[0, 7] = reset[1, 7] = True
    reset[1, 3] = True
    _, warm = model(torch.randn(2, 5, D, dtype=torch.float64))  # a non-zero incoming state
    y, state = model(x, warm, reset)
    y_fresh, state_fresh = model(x[:, 7:])
    assert max_diff(y[:, 7:], y_fresh) < 1e-10
    assert max_diff(state, state_fresh) < 1e-10
    y_a, _ = model(x[1:, 3:7])  # row 1's middle episode
    assert max_diff(y[1:, 3:7], y_a) < 1e-10
    y_w, _ = model(x[:1, :7], tuple(s[:1] for s in warm))  # row 0 continues the warm state
    assert max_diff(y[:1, :7], y_w) < 1e-10
    # the same resets through `step`
    y_steps, s_steps = run_steps(model, x, warm, reset)
    assert max_diff(y_steps, y) < 1e-10 and max_diff(s_steps, state) < 1e-10
    # a reset at t = 0 ignores the incoming state
    r0 = torch.zeros(2, 20, dtype=torch.bool)
    r0[:, 0] = True
    y0, _ = model(x, warm, r0)
    assert max_diff(y0, model(x)[0]) < 1e-10


@pytest.mark.parametrize("kind", BACKBONES)
def test_gradients_are_finite_and_reach_every_parameter(kind):
    model = make(kind).train()
    x = torch.randn(2, 12, D, dtype=torch.float64, requires_grad=True)
    reset = torch.zeros(2, 12, dtype=torch.bool)
    reset[1, 5] = True
    y, _ = model(x, reset=reset)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", BACKBONES)
def test_bf16_autocast_on_cpu_returns_fp32_features(kind):
    model = build_backbone(kind, D, 2, d_state=8, headdim=16, chunk_size=8, num_heads=4)
    x = torch.randn(2, 10, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = model(x)
        y1, _ = model.step(x[:, 0], state)
    assert y.dtype == torch.float32 and y1.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(y1).all()


@pytest.mark.parametrize("kind", BACKBONES)
def test_bad_inputs_raise(kind):
    model = make(kind)
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, D, dtype=torch.float64), reset=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        model.step(torch.randn(2, 5, D, dtype=torch.float64), model.initial_state(2))
    with pytest.raises(ValueError):
        model(torch.randn(3, 5, D, dtype=torch.float64), model.initial_state(2))


# ------------------------------------------------------------------------------- Transformer


def reference_transformer(model, x):
    """The reference's computation, written out: one window, no resets, positions 0..L-1,
    full causal attention with -1e9 fill (fp64)."""
    h = model.in_norm(model.in_proj(x))
    h = model.norm(h + model.position.weight[: x.shape[1]])
    L = x.shape[1]
    mask = torch.tril(torch.ones(L, L, dtype=torch.bool))
    for blk in model.blocks:
        b, _, d = h.shape
        nh, hd = blk.num_heads, blk.head_dim
        q = blk.w_q(h).view(b, L, nh, hd).transpose(1, 2)
        k = blk.w_k(h).view(b, L, nh, hd).transpose(1, 2)
        v = blk.w_v(h).view(b, L, nh, hd).transpose(1, 2)
        attn = torch.matmul(q / hd**0.5, k.transpose(2, 3)).masked_fill(~mask, -1e9)
        out = torch.matmul(F.softmax(attn, -1), v).transpose(1, 2).reshape(b, L, d)
        h = blk.attn_norm(blk.fc(out) + h)
        h = blk.ffn_norm(blk.w_2(F.relu(blk.w_1(h))) + h)
    return h


def test_transformer_matches_the_reference_computation_within_a_window():
    model = make("transformer", max_length=16)
    x = torch.randn(2, 16, D, dtype=torch.float64)
    assert max_diff(model(x)[0], reference_transformer(model, x)) < 1e-12


def test_transformer_reference_sizes_and_parameter_count():
    model = build_backbone("transformer", 512, 2)  # Drama XS: 8 heads, 128 positions, dropout 0.1
    assert model.num_heads == 8 and model.max_length == 128
    assert model.blocks[0].dropout.p == 0.1 and model.blocks[0].w_1.out_features == 1024
    d = 512
    per_block = 4 * d * d + (d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * 2 * d
    expected = d * d + 2 * d + 128 * d + 2 * d + 2 * per_block
    assert sum(p.numel() for p in model.parameters()) == expected


def test_transformer_sliding_window_beyond_max_length():
    """Past max_length steps, step and forward agree (same window), and the state stays bounded."""
    model = make("transformer", max_length=6)
    x = torch.randn(2, 20, D, dtype=torch.float64)
    y, state = model(x)
    y_steps, s_steps = run_steps(model, x, model.initial_state(2))
    assert max_diff(y_steps, y) < 1e-10 and max_diff(s_steps, state) < 1e-10
    assert state[1].shape == (2, 5, 4, D // 4) and state[0].tolist() == [20, 20]
    # each layer sees 5 steps back, so through 2 layers step 19 depends on steps 9..19 only
    x2 = x.clone()
    x2[:, 8] += 1.0
    assert max_diff(model(x2)[0][:, 19], y[:, 19]) < 1e-12
    x2[:, 9] += 1.0
    assert max_diff(model(x2)[0][:, 19], y[:, 19]) > 1e-6


def test_transformer_dropout_only_in_training():
    model = make("transformer", dropout=0.5)
    x = torch.randn(2, 8, D, dtype=torch.float64)
    assert max_diff(model(x)[0], model(x)[0]) == 0
    model.train()
    assert max_diff(model(x)[0], model(x)[0]) > 1e-6


def test_transformer_sinusoidal_positions_and_bad_config():
    table = sinusoidal_positions(10, 8)
    assert table[3, 2].item() == pytest.approx(math.sin(3 * 10000 ** (-2 / 8)))
    assert table[3, 3].item() == pytest.approx(math.cos(3 * 10000 ** (-2 / 8)))
    model = make("transformer", positional="sinusoidal")
    assert not any("position" in n for n, _ in model.named_parameters())
    for kw in ({"num_heads": 5}, {"max_length": 0}, {"positional": "rotary"}):
        with pytest.raises(ConfigError):
            TransformerBackbone(D, 2, **kw)


# -------------------------------------------------------------------------------------- GRU


def test_gru_is_a_plain_multilayer_gru():
    model = make("gru")
    x = torch.randn(2, 7, D, dtype=torch.float64)
    h = torch.zeros(2, D, dtype=torch.float64)
    layer_in = x
    for layer in range(2):
        cell = torch.nn.GRUCell(D, D).double()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(model.gru, f"{name}_l{layer}"))
        h = torch.zeros(2, D, dtype=torch.float64)
        outs = []
        for t in range(7):
            h = cell(layer_in[:, t], h)
            outs.append(h)
        layer_in = torch.stack(outs, 1)
    y, (state,) = model(x)
    assert max_diff(y, layer_in) < 1e-12 and max_diff(state[:, 1], h) < 1e-12
