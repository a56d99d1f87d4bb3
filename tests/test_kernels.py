"""The optional mamba-ssm dispatch (lightning_drama/ssm/kernels.py), checked on the CPU.

The fused kernels need CUDA, so these tests replace them with slow stand-ins that follow the
kernels' documented contracts (state and conv window cut where `seq_idx` changes, initial states
entering at t = 0) and check that our glue around them (resets to `seq_idx`, the conv state
prepended as a sequence of its own, initial states masked by a reset at t = 0) gives the layer
the same outputs and states as the pure-PyTorch path.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lightning_drama.ssm import Mamba2, kernels, ssd_reference


def fake_chunk_scan(x, dt, A, B, C, chunk_size, D=None, initial_states=None, seq_idx=None,
                    return_final_states=False):  # fmt: skip
    """`mamba_chunk_scan_combined`'s contract through the sequential loop (chunk_size unused)."""
    reset = None
    if seq_idx is not None:  # a new sequence index starts a fresh state (none at t = 0)
        reset = torch.zeros(seq_idx.shape, dtype=torch.bool)
        reset[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    y, final = ssd_reference(x, dt, A, B, C, D=D, initial_state=initial_states, reset=reset)
    return (y, final) if return_final_states else y


def fake_causal_conv1d(x, weight, bias=None, seq_idx=None, initial_states=None, activation=None):
    """x [b, C, L], weight [C, k]: out_t = bias + sum_i weight_i x_{t-k+1+i}, within a sequence."""
    b, channels, L = x.shape
    k = weight.shape[1]
    if initial_states is None:
        initial_states = x.new_zeros(b, channels, k - 1)
    xpad = torch.cat([initial_states, x], dim=-1)
    out = torch.zeros_like(x) if bias is None else bias[None, :, None].expand_as(x).clone()
    for t in range(L):
        for i in range(k):
            src = t - k + 1 + i  # the time of the input this tap reads
            tap = weight[:, i] * xpad[:, :, src + k - 1]  # [b, C]
            if seq_idx is not None and src >= 0:  # no tap across a sequence boundary
                tap = tap * (seq_idx[:, src] == seq_idx[:, t]).to(x.dtype)[:, None]
            out[:, :, t] += tap
    return F.silu(out) if activation == "silu" else out


def test_fused_paths_need_the_kernels_cuda_tensors_and_channels_divisible_by_8(monkeypatch):
    cuda_like, cpu = SimpleNamespace(is_cuda=True), torch.zeros(1)
    monkeypatch.setattr(kernels, "mamba_chunk_scan_combined", None)
    monkeypatch.setattr(kernels, "causal_conv1d_fn", None)
    assert not kernels.use_fused_scan(cuda_like, 16, force_torch=False)
    assert not kernels.use_fused_conv(cuda_like, 16, force_torch=False)
    monkeypatch.setattr(kernels, "mamba_chunk_scan_combined", fake_chunk_scan)
    monkeypatch.setattr(kernels, "causal_conv1d_fn", fake_causal_conv1d)
    for use in (kernels.use_fused_scan, kernels.use_fused_conv):
        assert use(cuda_like, 16, force_torch=False)
        assert not use(cuda_like, 16, force_torch=True)  # the argument forces the torch path
        assert not use(cuda_like, 12, force_torch=False)  # the kernels need multiples of 8
        assert not use(cpu, 16, force_torch=False)


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("reset_at", [None, [0], [3, 9], [0, 1, 11]])
def test_fused_glue_equals_the_torch_path(monkeypatch, with_state, reset_at):
    torch.manual_seed(0)
    layer = Mamba2(d_model=16, d_state=8, headdim=8, chunk_size=4).double()
    b, L = 2, 12
    u = torch.randn(b, L, 16, dtype=torch.float64)
    state = None
    if with_state:  # a state carried from an earlier window
        _, state = layer(torch.randn(b, 5, 16, dtype=torch.float64))
    reset = None
    if reset_at is not None:
        reset = torch.zeros(b, L, dtype=torch.bool)
        reset[0, reset_at] = True

    layer.force_torch = True
    y_torch, (conv_torch, ssm_torch) = layer(u, state, reset)

    monkeypatch.setattr(kernels, "mamba_chunk_scan_combined", fake_chunk_scan)
    monkeypatch.setattr(kernels, "causal_conv1d_fn", fake_causal_conv1d)
    monkeypatch.setattr(kernels, "use_fused_scan", lambda x, channels, force_torch: True)
    monkeypatch.setattr(kernels, "use_fused_conv", lambda x, channels, force_torch: True)
    calls = []
    for name in ("fused_scan", "fused_conv"):
        original = getattr(kernels, name)
        recorded = lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a)  # noqa: E731
        monkeypatch.setattr(kernels, name, recorded)
    layer.force_torch = False
    y_fused, (conv_fused, ssm_fused) = layer(u, state, reset)

    assert calls == ["fused_conv", "fused_scan"]
    # fused_scan hands A, D and the state to the kernel in fp32, as the kernel expects.
    torch.testing.assert_close(y_fused, y_torch, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ssm_fused, ssm_torch.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(conv_fused, conv_torch, rtol=0, atol=0)
