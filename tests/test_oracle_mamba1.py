"""Our pure-PyTorch Mamba-1 against an outside oracle: Hugging Face `transformers`' Mamba.

What is compared, with weights copied across (the mapping is in `mixer_mapping`):

- `Mamba` against `transformers`' `MambaMixer`: the forward pass; a prefix through forward
  (HF: prefill into its cache) then single steps (HF: one token at a time with the cache, its
  `causal_conv1d_update` and `selective_state_update` path), with the carried states against the
  cache's conv and recurrent states; steps from `initial_state` against decoding from an empty
  cache;
- `MambaBackbone` against `MambaModel(inputs_embeds=...)` (2 layers): the last hidden state of a
  forward pass and of decoding steps after a prefill;
- the gradients of a loss with respect to the input and to every parameter (names mapped), for
  the mixer and the backbone.

HF cannot continue a sequence with more than one token from its cache (its torch scan restarts
from a zero SSM state), so carried states are compared through single steps only; our multi-token
continuations are checked against our own forward in tests/test_mamba1.py.

`transformers` runs its pure-torch path on the CPU: the kernel-dispatching wrappers around its
torch functions are unwrapped (`force_hf_torch_path`), so neither mamba-ssm, causal-conv1d nor a
hub kernel can be picked up, and its sequential scan is used (`use_mambapy` and
`use_associative_scan` off).

Precision: HF upcasts to fp32 inside (`.float()` of A_log, D, the dt bias, B and the inputs), so
the fp64 comparisons run HF's code under `Fp64Upcasts` (as tests/test_oracle.py does), which keeps
fp64 tensors in fp64; then they agree to ~1e-15 (tolerance 1e-10). In fp32 both sides run as they
are. Measured differences are noted at `TOL`.
"""

import contextlib
import inspect

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lightning_drama.ssm.mamba1 import Mamba, MambaBackbone

transformers = pytest.importorskip(
    "transformers",
    reason="transformers (requirements-dev.txt) is not installed: the outside Mamba-1 oracle "
    "for these comparisons is missing",
)
from transformers import DynamicCache, MambaConfig  # noqa: E402
from transformers.models.mamba import modeling_mamba as hf  # noqa: E402

D_MODEL, D_STATE, D_CONV, EXPAND, DT_RANK = 48, 8, 4, 2, 5  # d_inner 96
NORM_EPS = 1e-5
DTYPES = [torch.float64, torch.float32]
# Tolerances, from the measured max differences (transformers 5.24, torch 2.13, CPU) with margin:
# outputs and states (absolute; they are O(1)): fp64 <= 9e-16 under Fp64Upcasts, fp32 <= 4.8e-7
# (the 2-layer backbone; the mixer <= 4.5e-8); gradients (relative to the gradient's largest
# entry, or absolute below 1): fp64 <= 7e-16, fp32 <= 2.3e-7.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# The torch functions that `modeling_mamba` dispatches to kernels when they are installed.
HF_KERNEL_FUNCTIONS = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba_inner_fn",
    "mamba_selective_scan",
    "mamba_selective_state_update",
]


@pytest.fixture(autouse=True)
def force_hf_torch_path(monkeypatch):
    """HF's reference torch implementations, whatever kernels are installed."""
    for name in HF_KERNEL_FUNCTIONS:
        torch_fn = inspect.unwrap(getattr(hf, name))
        assert torch_fn.__module__ == hf.__name__, f"{name}: not the torch fallback ({torch_fn})"
        monkeypatch.setattr(hf, name, torch_fn)


class Fp64Upcasts(TorchFunctionMode):
    """`t.float()` and `t.to(torch.float32)` of an fp64 tensor return it in fp64, so HF's code
    runs in fp64 throughout for an fp64 model. fp32 tensors are untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float64:
            if func is torch.Tensor.float:
                return args[0]
            if func is torch.Tensor.to:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
                if kwargs.get("dtype") is torch.float32:
                    kwargs = {**kwargs, "dtype": torch.float64}
        return func(*args, **kwargs)


def hf_precision(dtype):
    return Fp64Upcasts() if dtype == torch.float64 else contextlib.nullcontext()


def hf_config(n_layers=1):
    return MambaConfig(
        hidden_size=D_MODEL,
        num_hidden_layers=n_layers,
        state_size=D_STATE,
        conv_kernel=D_CONV,
        expand=EXPAND,
        time_step_rank=DT_RANK,
        layer_norm_epsilon=NORM_EPS,
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        use_mambapy=False,
        use_associative_scan=False,
        vocab_size=16,  # the embeddings are unused: inputs_embeds
    )


def randomize(module):
    """Non-trivial values where the default init is constant or repeated (D, the norm weights,
    A_log's identical rows), so that a swapped or transposed parameter shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("D") or (name.endswith("weight") and p.dim() == 1):
                p.uniform_(0.5, 1.5)
            elif name.endswith("A_log"):
                p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))


def mixer_mapping(prefix_ours="", prefix_theirs=""):
    """Our parameter name -> (HF parameter name, our tensor -> HF's layout)."""
    same = lambda t: t  # noqa: E731
    names = {
        "in_proj.weight": ("in_proj.weight", same),  # both pack [x, z]
        "conv_weight": ("conv1d.weight", lambda t: t.unsqueeze(1)),  # [C, k] -> [C, 1, k]
        "conv_bias": ("conv1d.bias", same),
        "x_proj.weight": ("x_proj.weight", same),  # both pack [dt, B, C]
        "dt_proj.weight": ("dt_proj.weight", same),
        "dt_proj.bias": ("dt_proj.bias", same),
        "A_log": ("A_log", same),  # both [d_inner, d_state]
        "D": ("D", same),
        "out_proj.weight": ("out_proj.weight", same),
    }
    return {prefix_ours + k: (prefix_theirs + v, f) for k, (v, f) in names.items()}


def backbone_mapping(n_layers):
    names = {"final_norm.weight": ("norm_f.weight", lambda t: t)}
    for i in range(n_layers):
        names[f"norms.{i}.weight"] = (f"layers.{i}.norm.weight", lambda t: t)
        names.update(mixer_mapping(f"mixers.{i}.", f"layers.{i}.mixer."))
    return names


def copy_params(ours, theirs, mapping):
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert set(mapping) == set(ours_params), "every parameter of ours must be mapped"
    assert {v for v, _ in mapping.values()} == set(theirs_params) - {"embeddings.weight"}
    with torch.no_grad():
        for name, (hf_name, to_hf) in mapping.items():
            theirs_params[hf_name].copy_(to_hf(ours_params[name]))


def make_mixer(dtype, chunk_size=8, seed=0):
    torch.manual_seed(seed)
    ours = Mamba(D_MODEL, D_STATE, D_CONV, EXPAND, DT_RANK, chunk_size=chunk_size, force_torch=True)
    randomize(ours)
    theirs = hf.MambaMixer(hf_config(), layer_idx=0)
    copy_params(ours, theirs, mixer_mapping())
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


def make_backbone(dtype, n_layers=2, chunk_size=8, seed=0):
    torch.manual_seed(seed)
    ours = MambaBackbone(
        D_MODEL,
        n_layers,
        D_STATE,
        D_CONV,
        EXPAND,
        DT_RANK,
        chunk_size=chunk_size,
        force_torch=True,
        norm_eps=NORM_EPS,
    )
    randomize(ours)
    theirs = hf.MambaModel(hf_config(n_layers))
    copy_params(ours, theirs, backbone_mapping(n_layers))
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


def max_diff(a, b):
    return (a - b).abs().max().item()


def hf_states(cache, layer_idx):
    """HF's cache as our `(conv_state [B, k-1, C], ssm_state [B, C, N])`: HF keeps the last k
    inputs of the conv, channels first; we keep the last k-1, time first."""
    conv = cache.get_conv_state(layer_idx)[..., 1:].transpose(1, 2)
    return conv, cache.get_recurrent_state(layer_idx)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("chunk_size,L", [(8, 37), (16, 16), (64, 20)])
def test_mixer_forward(chunk_size, L, dtype):
    ours, theirs = make_mixer(dtype, chunk_size)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    with torch.no_grad():
        y, _ = ours(x)
        with hf_precision(dtype):
            y_hf = theirs(x)
    assert max_diff(y, y_hf) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prefix", [1, 2, 19])
def test_mixer_prefill_then_step_decoding(prefix, dtype):
    """Prefixes shorter than the conv kernel included; states against the cache's."""
    ours, theirs = make_mixer(dtype)
    L = prefix + 10
    x = torch.randn(3, L, D_MODEL, dtype=dtype)
    cache = DynamicCache(config=hf_config())
    with torch.no_grad(), hf_precision(dtype):
        y, state = ours(x[:, :prefix])
        y_hf = theirs(x[:, :prefix], cache=cache)
        assert max_diff(y, y_hf) < TOL[dtype]
        for ours_s, hf_s in zip(state, hf_states(cache, 0), strict=True):
            assert max_diff(ours_s, hf_s) < TOL[dtype]
        for t in range(prefix, L):
            y, state = ours.step(x[:, t], state)
            y_hf = theirs(x[:, t : t + 1], cache=cache)
            assert max_diff(y, y_hf[:, 0]) < TOL[dtype], f"step {t}"
        for ours_s, hf_s in zip(state, hf_states(cache, 0), strict=True):
            assert max_diff(ours_s, hf_s) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixer_steps_from_initial_state(dtype):
    """Our steps from `initial_state` against HF decoding from an empty cache (its first token
    goes through the full-sequence path)."""
    ours, theirs = make_mixer(dtype)
    x = torch.randn(2, 8, D_MODEL, dtype=dtype)
    cache = DynamicCache(config=hf_config())
    state = ours.initial_state(2)
    with torch.no_grad(), hf_precision(dtype):
        for t in range(x.shape[1]):
            y, state = ours.step(x[:, t], state)
            y_hf = theirs(x[:, t : t + 1], cache=cache)
            assert max_diff(y, y_hf[:, 0]) < TOL[dtype], f"step {t}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backbone_forward_and_decoding(dtype):
    ours, theirs = make_backbone(dtype)
    L, prefix = 30, 24
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    with torch.no_grad(), hf_precision(dtype):
        y, _ = ours(x)
        y_hf = theirs(inputs_embeds=x, use_cache=False).last_hidden_state
        assert max_diff(y, y_hf) < TOL[dtype]

        y1, state = ours(x[:, :prefix])
        out = theirs(inputs_embeds=x[:, :prefix], use_cache=True)
        cache = out.cache
        assert max_diff(y1, out.last_hidden_state) < TOL[dtype]
        for t in range(prefix, L):
            y_t, state = ours.step(x[:, t], state)
            y_t_hf = theirs(inputs_embeds=x[:, t : t + 1], cache=cache, use_cache=True)
            assert max_diff(y_t, y_t_hf.last_hidden_state[:, 0]) < TOL[dtype], f"step {t}"
        hf_flat = [s for i in range(ours.n_layers) for s in hf_states(cache, i)]
        for ours_s, hf_s in zip(state, hf_flat, strict=True):
            assert max_diff(ours_s, hf_s) < TOL[dtype]


def check_gradients(ours, theirs, mapping, run_ours, run_theirs, x, dtype):
    """d(sum(w * y))/d(x and every parameter), ours against HF's through the name mapping."""
    w = torch.randn(*x.shape, dtype=dtype)
    x_ours = x.clone().requires_grad_(True)
    x_hf = x.clone().requires_grad_(True)
    (run_ours(x_ours) * w).sum().backward()
    with hf_precision(dtype):
        loss_hf = (run_theirs(x_hf) * w).sum()
    loss_hf.backward()
    grads = {"input": (x_ours.grad, x_hf.grad)}
    hf_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        hf_name, to_hf = mapping[name]
        grads[name] = (to_hf(p.grad), hf_params[hf_name].grad)
    for name, (g, g_hf) in grads.items():
        assert g is not None and g_hf is not None, name
        scale = max(1.0, g_hf.abs().max().item())
        assert max_diff(g, g_hf) < TOL[dtype] * scale, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixer_gradients(dtype):
    ours, theirs = make_mixer(dtype, chunk_size=8)
    x = torch.randn(2, 27, D_MODEL, dtype=dtype)
    check_gradients(ours, theirs, mixer_mapping(), lambda u: ours(u)[0], theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backbone_gradients(dtype):
    ours, theirs = make_backbone(dtype, chunk_size=4)
    x = torch.randn(2, 21, D_MODEL, dtype=dtype)
    check_gradients(
        ours,
        theirs,
        backbone_mapping(ours.n_layers),
        lambda u: ours(u)[0],
        lambda u: theirs(inputs_embeds=u, use_cache=False).last_hidden_state,
        x,
        dtype,
    )
