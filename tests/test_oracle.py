"""Our pure-PyTorch Mamba-2 against an outside oracle: Hugging Face `transformers` 5.x.

What is compared, with weights copied across (the mapping is in `copy_mixer` / `copy_backbone`):

- `Mamba2` against `transformers`' `Mamba2Mixer`: the forward pass; step-by-step decoding
  (`Mamba2.step` against the mixer called one token at a time with a `DynamicCache`); a state
  carried from a prefix into a continuation (our `(conv_state, ssm_state)` against the cache's
  conv and recurrent states, and the outputs after it);
- `Mamba2Backbone` against `Mamba2Model(inputs_embeds=...)` (2 layers): the last hidden state of
  a forward pass, of a continuation from a carried state and of decoding steps;
- the gradients of a loss with respect to the input and to every parameter (names mapped), for
  the mixer and the backbone;
- `ssd_scan` against an SSD computed in this file from the published algorithm of mamba-ssm's
  `ssd_minimal_discrete` (Dao & Gu, 2024, Listing 1): inputs `X * dt` and `A * dt`, chunked, with
  a segment sum within chunks, diagonal blocks, chunk states, a recurrence across chunks and the
  state-to-output term.

`transformers` runs its pure-torch path on the CPU: the kernel-dispatching wrappers around its
torch functions are unwrapped (`force_hf_torch_path`), so neither mamba-ssm, causal-conv1d nor a
hub kernel can be picked up. The 5.x series is required: from 5.0 its gated norm normalises per
group of `d_inner / ngroups` channels as mamba-ssm's `RMSNormGated(group_size=...)` does; 4.x
normalises over all of `d_inner`, which is not Mamba-2 for ngroups > 1 (and its cache API differs).

Precision: in fp32 both sides run as they are (tolerance 1e-5). HF's torch path upcasts
to fp32 inside (`.float()` and `.to(torch.float32)` in the scan, the norms and the decode step),
so in fp64 it agrees with us only to ~2e-7; the fp64 comparisons therefore run HF's code under
`Fp64Upcasts`, a `TorchFunctionMode` that turns those upcasts of fp64 tensors into no-ops, and
then agree to ~1e-15 (tolerance 1e-10). Measured differences are noted at `TOL`.

Why: the rest of the suite checks our scan against our own sequential loop, our steps against our
forward and so on, which shows the code is self-consistent; this module is the evidence that it
computes Mamba-2 as others implement it.
"""

import contextlib
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lightning_drama.ssm import Mamba2, Mamba2Backbone, ssd, ssd_scan

transformers = pytest.importorskip(
    "transformers",
    reason="transformers (requirements-dev.txt) is not installed: the outside Mamba-2 oracle "
    "for these comparisons is missing",
)
from transformers import DynamicCache, Mamba2Config  # noqa: E402
from transformers.models.mamba2 import modeling_mamba2 as hf  # noqa: E402

D_MODEL, D_STATE, D_CONV, EXPAND, HEADDIM = 64, 8, 4, 2, 16  # 8 heads of 16 channels
NORM_EPS = 1e-5
# (ngroups, chunk_size, L): chunks that divide L and chunks that do not.
SHAPES = [(1, 16, 64), (2, 24, 53), (2, 16, 41)]
DTYPES = [torch.float64, torch.float32]
# Tolerances, from the measured max differences (transformers 5.24, torch 2.13, CPU) with margin:
# - against HF (absolute; outputs and states are O(1)): fp64 <= 2.3e-15 under Fp64Upcasts,
#   fp32 <= 1.4e-6;
# - gradients (relative to the gradient's largest entry, or absolute below 1; entries reach ~100):
#   fp64 <= 1.3e-15, fp32 <= 9e-7;
# - ssd_scan against ssd_minimal (relative in the same way): fp64 <= 3e-15, fp32 <= 1.8e-7.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SSD_TOL = {torch.float64: 1e-12, torch.float32: 2e-6}

# The torch functions that `modeling_mamba2` dispatches to kernels when they are installed.
HF_KERNEL_FUNCTIONS = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba2_split_conv1d_scan_combined",
    "mamba2_selective_state_update",
    "mamba2_chunk_scan",
]


def test_transformers_is_5x():
    major = int(transformers.__version__.split(".")[0])
    assert major == 5, (
        f"transformers {transformers.__version__}: these comparisons need 5.x "
        "(requirements-dev.txt); 4.x normalises the gated norm over all of d_inner for "
        "ngroups > 1 and has another cache API"
    )


@pytest.fixture(autouse=True)
def force_hf_torch_path(monkeypatch):
    """HF's reference torch implementations, whatever kernels are installed."""
    for name in HF_KERNEL_FUNCTIONS:
        torch_fn = inspect.unwrap(getattr(hf, name))
        assert torch_fn.__module__ == hf.__name__, f"{name}: not the torch fallback ({torch_fn})"
        monkeypatch.setattr(hf, name, torch_fn)


class Fp64Upcasts(TorchFunctionMode):
    """`t.float()` and `t.to(torch.float32)` of an fp64 tensor return it in fp64.

    HF's torch path upcasts to fp32 for precision; under this mode the same code upcasts to (stays
    in) fp64, so an fp64 model is compared in fp64 throughout. fp32 tensors are untouched.
    """

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
    """The context to run HF's code in: `Fp64Upcasts` for fp64, nothing for fp32."""
    return Fp64Upcasts() if dtype == torch.float64 else contextlib.nullcontext()


def hf_config(ngroups, chunk_size, n_layers=1):
    return Mamba2Config(
        hidden_size=D_MODEL,
        num_hidden_layers=n_layers,
        state_size=D_STATE,
        conv_kernel=D_CONV,
        expand=EXPAND,
        head_dim=HEADDIM,
        num_heads=EXPAND * D_MODEL // HEADDIM,
        n_groups=ngroups,
        chunk_size=chunk_size,
        layer_norm_epsilon=NORM_EPS,
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        time_step_limit=(0.0, float("inf")),
        vocab_size=16,  # the embeddings are unused: inputs_embeds
    )


def randomize(module):
    """Non-trivial values where the default init is constant (D, norm weights), so that a swapped
    or missing parameter shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("D") or (name.endswith("weight") and p.dim() == 1):
                p.uniform_(0.5, 1.5)


def make_mixer(ngroups, chunk_size, dtype, seed=0):
    torch.manual_seed(seed)
    ours = Mamba2(
        D_MODEL,
        D_STATE,
        D_CONV,
        EXPAND,
        HEADDIM,
        ngroups,
        chunk_size,
        force_torch=True,
        norm_eps=NORM_EPS,
    )
    randomize(ours)
    theirs = hf.Mamba2Mixer(hf_config(ngroups, chunk_size), layer_idx=0)
    copy_mixer(ours, theirs)
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


def mixer_mapping(prefix_ours="", prefix_theirs=""):
    """Our parameter name -> (HF parameter name, our tensor -> HF's layout)."""
    same = lambda t: t  # noqa: E731
    names = {
        "in_proj.weight": ("in_proj.weight", same),  # both pack [z, x, B, C, dt]
        "conv_weight": ("conv1d.weight", lambda t: t.unsqueeze(1)),  # [C, k] -> [C, 1, k]
        "conv_bias": ("conv1d.bias", same),
        "dt_bias": ("dt_bias", same),
        "A_log": ("A_log", same),
        "D": ("D", same),
        "norm.weight": ("norm.weight", same),  # the gated, grouped RMSNorm
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
    with torch.no_grad():
        for name, (hf_name, to_hf) in mapping.items():
            theirs_params[hf_name].copy_(to_hf(ours_params[name]))


def copy_mixer(ours, theirs):
    copy_params(ours, theirs, mixer_mapping())


def copy_backbone(ours, theirs):
    copy_params(ours, theirs, backbone_mapping(ours.n_layers))


def max_diff(a, b):
    return (a - b).abs().max().item()


def hf_states(cache, layer_idx):
    """HF's cache as our `(conv_state [B, k-1, C], ssm_state [B, H, P, N])`: HF keeps the last k
    inputs of the conv, channels first; we keep the last k-1, time first."""
    conv = cache.get_conv_state(layer_idx)[..., 1:].transpose(1, 2)
    return conv, cache.get_recurrent_state(layer_idx)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ngroups,chunk_size,L", SHAPES)
def test_mixer_forward(ngroups, chunk_size, L, dtype):
    ours, theirs = make_mixer(ngroups, chunk_size, dtype)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    with torch.no_grad():
        y, _ = ours(x)
        with hf_precision(dtype):
            y_hf = theirs(x)
        y_hf_plain = theirs(x)
    assert max_diff(y, y_hf) < TOL[dtype]
    # Without Fp64Upcasts, HF's fp32 upcasts limit the fp64 agreement (measured ~2e-7).
    assert max_diff(y, y_hf_plain) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prefix", [1, 2, 23])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_mixer_step_decoding(ngroups, prefix, dtype):
    """A prefix through forward (HF: prefill into its cache), then single steps (HF: one token
    at a time with the cache, its recurrent `selective_state_update` and `causal_conv1d_update`
    path). Prefixes shorter than the conv kernel included."""
    ours, theirs = make_mixer(ngroups, 16, dtype)
    L = prefix + 12
    x = torch.randn(3, L, D_MODEL, dtype=dtype)
    cache = DynamicCache(config=hf_config(ngroups, 16))
    with torch.no_grad(), hf_precision(dtype):
        y, state = ours(x[:, :prefix])
        y_hf = theirs(x[:, :prefix], cache=cache)
        assert max_diff(y, y_hf) < TOL[dtype]
        for t in range(prefix, L):
            y, state = ours.step(x[:, t], state)
            y_hf = theirs(x[:, t : t + 1], cache=cache)
            assert max_diff(y, y_hf[:, 0]) < TOL[dtype], f"step {t}"
        for ours_s, hf_s in zip(state, hf_states(cache, 0), strict=True):
            assert max_diff(ours_s, hf_s) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixer_steps_from_initial_state(dtype):
    """Our steps from `initial_state` against HF decoding from an empty cache (its first token
    goes through the chunked path)."""
    ours, theirs = make_mixer(2, 16, dtype)
    x = torch.randn(2, 10, D_MODEL, dtype=dtype)
    cache = DynamicCache(config=hf_config(2, 16))
    state = ours.initial_state(2)
    with torch.no_grad(), hf_precision(dtype):
        for t in range(x.shape[1]):
            y, state = ours.step(x[:, t], state)
            y_hf = theirs(x[:, t : t + 1], cache=cache)
            assert max_diff(y, y_hf[:, 0]) < TOL[dtype], f"step {t}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prefix", [2, 23])
@pytest.mark.parametrize("ngroups,chunk_size,L", SHAPES)
def test_mixer_carried_state(ngroups, chunk_size, L, prefix, dtype):
    """forward(prefix) -> state -> forward(rest, state) against HF's prefill then a multi-token
    forward with the same cache; the carried states themselves against the cache's."""
    ours, theirs = make_mixer(ngroups, chunk_size, dtype)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    cache = DynamicCache(config=hf_config(ngroups, chunk_size))
    with torch.no_grad(), hf_precision(dtype):
        y1, state = ours(x[:, :prefix])
        y1_hf = theirs(x[:, :prefix], cache=cache)
        for ours_s, hf_s in zip(state, hf_states(cache, 0), strict=True):
            assert max_diff(ours_s, hf_s) < TOL[dtype]
        y2, state = ours(x[:, prefix:], state)
        y2_hf = theirs(x[:, prefix:], cache=cache)
        y_full, _ = ours(x)
    assert max_diff(y1, y1_hf) < TOL[dtype]
    assert max_diff(y2, y2_hf) < TOL[dtype]
    for ours_s, hf_s in zip(state, hf_states(cache, 0), strict=True):
        assert max_diff(ours_s, hf_s) < TOL[dtype]
    assert max_diff(torch.cat([y1, y2], 1), y_full) < TOL[dtype]


def make_backbone(ngroups, chunk_size, dtype, n_layers=2, seed=0):
    torch.manual_seed(seed)
    ours = Mamba2Backbone(
        D_MODEL,
        n_layers,
        D_STATE,
        D_CONV,
        EXPAND,
        HEADDIM,
        ngroups,
        chunk_size,
        dropout=0.0,
        force_torch=True,
        norm_eps=NORM_EPS,
    )
    randomize(ours)
    theirs = hf.Mamba2Model(hf_config(ngroups, chunk_size, n_layers))
    copy_backbone(ours, theirs)
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ngroups,chunk_size,L", SHAPES)
def test_backbone_forward_carried_state_and_steps(ngroups, chunk_size, L, dtype):
    ours, theirs = make_backbone(ngroups, chunk_size, dtype)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    prefix, n_steps = L - 15, 5
    with torch.no_grad(), hf_precision(dtype):
        y, _ = ours(x)
        y_hf = theirs(inputs_embeds=x, use_cache=False).last_hidden_state
        assert max_diff(y, y_hf) < TOL[dtype]

        y1, state = ours(x[:, :prefix])
        out = theirs(inputs_embeds=x[:, :prefix], use_cache=True)
        cache = out.cache
        assert max_diff(y1, out.last_hidden_state) < TOL[dtype]
        y2, state = ours(x[:, prefix:-n_steps], state)
        y2_hf = theirs(inputs_embeds=x[:, prefix:-n_steps], cache=cache, use_cache=True)
        assert max_diff(y2, y2_hf.last_hidden_state) < TOL[dtype]
        for t in range(L - n_steps, L):
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
    hf_with_grad = {n for n, p in theirs.named_parameters() if p.grad is not None}
    assert hf_with_grad == {hf_name for hf_name, _ in mapping.values()}
    for name, (g, g_hf) in grads.items():
        assert g is not None and g_hf is not None, name
        scale = max(1.0, g_hf.abs().max().item())
        assert max_diff(g, g_hf) < TOL[dtype] * scale, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ngroups,chunk_size,L", SHAPES[:2])
def test_mixer_gradients(ngroups, chunk_size, L, dtype):
    ours, theirs = make_mixer(ngroups, chunk_size, dtype)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    check_gradients(ours, theirs, mixer_mapping(), lambda u: ours(u)[0], theirs, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ngroups,chunk_size,L", SHAPES[:2])
def test_backbone_gradients(ngroups, chunk_size, L, dtype):
    ours, theirs = make_backbone(ngroups, chunk_size, dtype)
    x = torch.randn(2, L, D_MODEL, dtype=dtype)
    check_gradients(
        ours,
        theirs,
        backbone_mapping(ours.n_layers),
        lambda u: ours(u)[0],
        lambda u: theirs(inputs_embeds=u, use_cache=False).last_hidden_state,
        x,
        dtype,
    )


# --- ssd_scan against the published minimal SSD ----------------------------------------------


def segsum(a):
    """[..., T] -> [..., T, T]: out[..., i, j] = a[j+1] + ... + a[i] for j <= i, else -inf.
    Masked cumulative sums (the stable form), not differences of one cumulative sum."""
    T = a.shape[-1]
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    s = torch.cumsum(a[..., :, None].expand(*a.shape, T).masked_fill(~lower, 0.0), dim=-2)
    return s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))


def ssd_minimal(X, A, B, C, block_len, initial_states=None):
    """The SSD of mamba-ssm's `ssd_minimal_discrete`, written from the algorithm.

    X [b, L, h, p] = x * dt, A [b, L, h] = A * dt, B, C [b, L, h, n]; L a multiple of block_len.
    Returns Y [b, L, h, p] and the final state [b, h, p, n].
    """
    b, L, h, p = X.shape
    c = L // block_len
    assert c * block_len == L
    X, B, C = (t.reshape(b, c, block_len, *t.shape[2:]) for t in (X, B, C))
    A = A.reshape(b, c, block_len, h).permute(0, 3, 1, 2)  # [b, h, c, l]
    A_cumsum = torch.cumsum(A, dim=-1)

    # 1. Diagonal blocks: within each chunk, the quadratic (attention-like) form.
    decay = torch.exp(segsum(A))  # [b, h, c, l, s]
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay, X)

    # 2. The state each chunk produces from its own inputs, decayed to the chunk's end.
    decay_to_end = torch.exp(A_cumsum[..., -1:] - A_cumsum)  # [b, h, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, X)

    # 3. Across chunks: the state entering each chunk, from the initial state.
    if initial_states is None:
        initial_states = torch.zeros_like(states[:, :1])
    else:
        initial_states = initial_states[:, None]
    states = torch.cat([initial_states, states], dim=1)  # [b, c+1, h, p, n]
    decay_chunk = torch.exp(segsum(F.pad(A_cumsum[..., -1], (1, 0))))  # [b, h, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = states[:, :-1], states[:, -1]

    # 4. The entering state's contribution to every output of its chunk.
    decay_from_start = torch.exp(A_cumsum)  # [b, h, c, l]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, decay_from_start)

    return (Y_diag + Y_off).reshape(b, L, h, p), final_state


SSD_FORMS = {"auto": None, "factored": float("inf"), "segsum": -1.0}


def ssd_inputs(L, G, with_state, with_D, dtype, seed, dt_shift=-1.0, b=2, H=8, P=5, N=6):
    """Random SSD inputs, rounded to `dtype` and returned in fp64 (the reference's precision)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(b, L, H, generator=g, dtype=torch.float64) + dt_shift)
    A = -torch.empty(H, dtype=torch.float64).uniform_(0.1, 4.0, generator=g)
    B = torch.randn(b, L, G, N, generator=g, dtype=torch.float64)
    C = torch.randn(b, L, G, N, generator=g, dtype=torch.float64)
    D = torch.randn(H, generator=g, dtype=torch.float64) if with_D else None
    h0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64) if with_state else None
    return [None if t is None else t.to(dtype).double() for t in (x, dt, A, B, C, D, h0)]


def check_ssd_scan(x, dt, A, B, C, D, h0, chunk_size, block_len, dtype):
    """ssd_scan in `dtype` against ssd_minimal in fp64 on the same inputs; returns the max
    differences (y, final state), relative to the reference's largest entry when that is > 1."""
    H, G = x.shape[2], B.shape[2]
    Bh, Ch = (t.repeat_interleave(H // G, dim=2) for t in (B, C))  # group g -> its H/G heads
    y_ref, final_ref = ssd_minimal(x * dt[..., None], A * dt, Bh, Ch, block_len, h0)
    if D is not None:
        y_ref = y_ref + D[:, None] * x
    args = [None if t is None else t.to(dtype) for t in (x, dt, A, B, C)]
    y, final = ssd_scan(*args, chunk_size, *[None if t is None else t.to(dtype) for t in (D, h0)])
    assert y.dtype == dtype
    diffs = []
    for ours, ref in ((y, y_ref), (final, final_ref)):
        diffs.append(max_diff(ours.double(), ref) / max(1.0, ref.abs().max().item()))
    return diffs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", list(SSD_FORMS))
@pytest.mark.parametrize(
    "L,chunk_size,block_len,G,with_state,with_D",
    [
        (60, 16, 20, 1, False, False),  # our chunk does not divide L
        (60, 20, 15, 2, True, True),
        (60, 7, 60, 4, True, False),
        (48, 64, 16, 1, False, True),  # one chunk longer than L
        (64, 16, 16, 2, True, True),
    ],
)
def test_ssd_scan_matches_minimal_ssd(
    L, chunk_size, block_len, G, with_state, with_D, form, dtype, monkeypatch
):
    if SSD_FORMS[form] is not None:  # force one form of ssd_scan's within-chunk part
        monkeypatch.setattr(ssd, "FACTORED_MAX_EXPONENT", SSD_FORMS[form])
    inputs = ssd_inputs(L, G, with_state, with_D, dtype, seed=L + chunk_size + G)
    for diff in check_ssd_scan(*inputs, chunk_size, block_len, dtype):
        assert diff < SSD_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ssd_scan_matches_minimal_ssd_strong_decay(dtype):
    """Chunks decaying by far more than e^-120: ssd_scan picks its segment-sum form itself."""
    x, dt, A, B, C, D, h0 = ssd_inputs(64, 2, True, True, dtype, seed=7, dt_shift=2.0)
    chunk_log_decay = (dt * A).view(2, 4, 16, -1).sum(2)
    assert chunk_log_decay.min() < -2 * ssd.FACTORED_MAX_EXPONENT
    for diff in check_ssd_scan(x, dt, A, B, C, D, h0, 16, 32, dtype):
        assert diff < SSD_TOL[dtype]
