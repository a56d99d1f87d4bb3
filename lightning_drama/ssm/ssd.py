"""The state-space duality (SSD) scan of Mamba-2 (Dao & Gu, 2024) in pure PyTorch.

The recurrence, per batch row b and head h (P = head dim, N = state dim):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: [P, N]
    y_t = h_t C_t + D * x_t

with `reset[b, t]` meaning h_{t-1} is treated as zero (an episode boundary inside a window).

`ssd_scan` computes it chunk by chunk: inside a chunk of length l the quadratic (attention-like)
form, across chunks a linear recurrence over chunk states, so the cost is linear in L.
`ssd_reference` is the plain sequential loop, the ground truth for the tests.

Two forms of the within-chunk part give the same result:
- factored (the fast one on CPU, in `ssd_factored.py` with a hand-written backward pass): the
  decay exp(cs_t - cs_s) is split into a scale on the inputs and one on the outputs, so all heads
  of a group share one [l, l] matrix per chunk and the products run on large [l, heads * P]
  blocks in the input's own layout;
- segment sum: a per-head [l, l] decay matrix from masked cumulative sums, stable for any decay.
Each segment of up to `SEGMENT_LENGTH` steps takes the factored form when its scales stay within
`FACTORED_MAX_EXPONENT` (every chunk decaying by less than e^-120), else the segment-sum form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_drama import sync
from lightning_drama.ssm.ssd_factored import ssd_chunked_factored

Tensor = torch.Tensor

SEGMENT_LENGTH = 256


def _check_inputs(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"ssd: x must be [batch, length, heads, headdim], got shape {tuple(x.shape)}"
        )
    b, L, H, P = x.shape
    if dt.shape != (b, L, H):
        raise ValueError(
            f"ssd: dt must be [batch, length, heads] = {(b, L, H)}, got {tuple(dt.shape)}"
        )
    if A.shape != (H,):
        raise ValueError(f"ssd: A must be [heads] = {(H,)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, L) or B.shape != C.shape:
        raise ValueError(
            "ssd: B and C must both be [batch, length, groups, d_state] with batch and length of x "
            f"{(b, L)}, got B {tuple(B.shape)} and C {tuple(C.shape)}"
        )
    G, N = B.shape[2:]
    if H % G:
        raise ValueError(f"ssd: heads ({H}, from x {tuple(x.shape)}) not divisible by groups ({G})")
    if D is not None and D.shape != (H,):
        raise ValueError(f"ssd: D must be [heads] = {(H,)}, got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, H, P, N):
        raise ValueError(
            f"ssd: initial_state must be [batch, heads, headdim, d_state] = {(b, H, P, N)}, "
            f"got {tuple(initial_state.shape)}"
        )
    if reset is not None and reset.shape != (b, L):
        raise ValueError(f"ssd: reset must be [batch, length] = {(b, L)}, got {tuple(reset.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # fp64 stays fp64 (exactness tests); everything else is computed in fp32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def segsum_exp(a: Tensor, reset: Tensor | None = None) -> Tensor:
    """Decay matrix `M[..., t, s] = exp(a[s+1] + ... + a[t])` for s <= t, else 0.

    a: [..., T] log-decays; reset: [..., T] bool (broadcastable), where reset at k cuts every
    path that crosses k (M[t, s] = 0 when a reset lies in (s, t]). Computed by masked cumulative
    sums instead of differences of one cumsum, which would cancel catastrophically in fp32.
    """
    T = a.size(-1)
    idx = torch.arange(T, device=a.device)
    strictly_lower = idx[:, None] > idx[None, :]  # [T(t), T(s)]
    # x[..., i, s] = a[i] for i > s: a cumsum over i then sums a[s+1..t].
    x = a[..., :, None].expand(*a.shape, T).masked_fill(~strictly_lower, 0.0)
    seg = torch.cumsum(x, dim=-2)  # [..., T, T]
    keep = idx[:, None] >= idx[None, :]
    if reset is not None:
        count = torch.cumsum(reset.to(torch.int32), dim=-1)  # resets up to and including k
        keep = keep & (count[..., :, None] == count[..., None, :])
    return torch.exp(seg.masked_fill(~keep, float("-inf")))


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = 64,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    reset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan.

    Args:
        x: [b, L, H, P] inputs. dt: [b, L, H] positive step sizes (after softplus).
        A: [H] negative decay rates. B, C: [b, L, G, N] with G dividing H; group g serves heads
            g*H/G .. (g+1)*H/G - 1. chunk_size: block length of the quadratic part.
        D: [H] skip or None. initial_state: [b, H, P, N] or None (zeros).
        reset: [b, L] bool or None; reset[b, t] zeroes h_{t-1} for that row.

    Returns:
        y [b, L, H, P] in x's dtype and final_state [b, H, P, N] in fp32 (fp64 for fp64 input).
        Under autocast every step runs in fp32: the exponentials and states need the range.
    """
    _check_inputs(x, dt, A, B, C, D, initial_state, reset)
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = x.dtype
    dtype = _compute_dtype(x)
    if x.shape[1] == 0:  # nothing to scan: the state passes through
        b, _, H, P = x.shape
        final = x.new_zeros(b, H, P, B.shape[-1], dtype=dtype)
        return x.new_zeros(x.shape), final if initial_state is None else initial_state.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        D = None if D is None else D.to(dtype)
        state = None if initial_state is None else initial_state.to(dtype)
        l = min(chunk_size, x.shape[1])
        seg = max(l, SEGMENT_LENGTH // l * l)
        # Long sequences go through in segments with the state carried: the same result, but
        # each segment's intermediates stay small enough to be reused from the allocator's
        # cache instead of being page-faulted in afresh (L = 2048 with glibc's default malloc
        # settings: 0.45 s in segments, 0.71 s in one piece).
        # split, not slicing: a slice's gradient is a zero-filled tensor of the full size.
        # (One segment: no split at all, whose gradient would be a copy.)
        pieces = [t.split(seg, dim=1) if t.shape[1] > seg else [t] for t in (x, dt, B, C)]
        resets = [None] * len(pieces[0]) if reset is None else reset.split(seg, dim=1)
        ys = []
        for x_k, dt_k, B_k, C_k, reset_k in zip(*pieces, resets, strict=True):
            y, state = _ssd_chunk_segment(x_k, dt_k, A, B_k, C_k, D, l, state, reset_k)
            ys.append(y)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)
    return y.to(out_dtype), state


def _pad_to_chunks(l: int, x, dt, B, C, reset):
    """Pads the time axis to a multiple of l. Zero dt means no decay and no input, so padded
    steps leave the final state exact."""
    pad = (-x.shape[1]) % l
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        if reset is not None:
            reset = F.pad(reset, (0, pad))
    return x, dt, B, C, reset


def _ssd_chunk_segment(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    l: int,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """One segment of the scan: the factored form when its exponentials are in range, else the
    segment-sum form (the same result; see `_ssd_chunked_factored`)."""
    L = x.shape[1]
    x, dt, B, C, reset = _pad_to_chunks(l, x, dt, B, C, reset)
    b, Lp, H, _ = x.shape
    cs = torch.cumsum((dt * A).view(b, Lp // l, l, H), dim=2)  # log-decay, chunk start -> t
    if _factored_in_range(cs):
        y, final = _ssd_chunked_factored(x, dt, cs, B, C, D, l, initial_state, reset)
    else:
        y, final = _ssd_chunked_segsum(x, dt, A, B, C, D, l, initial_state, reset)
    return y[:, :L], final


# The factored form scales by exp(+-z) with |z| up to half a chunk's total log-decay. Beyond
# this bound (a chunk decaying by more than e^-120) the segment-sum form takes over. The same
# bound in fp32: a factor of e^60 leaves room below fp32's e^88.7 for what it scales, and the
# products of two large factors, up to e^120, lie above the causal diagonal, which the backward
# pass masks (ssd_factored.py). A lower fp32 bound would trim the factored form's rounding
# error, which grows with the decay (for a strongly decaying head's dt gradient up to ~2e-6
# relative, against ~1e-7 in the segment-sum form), but with Mamba-2's initial A and dt half of
# all segments have |z| > 30, and the segment-sum form is ~3x slower at chunk 64.
FACTORED_MAX_EXPONENT = 60.0


def _factored_in_range(cs: Tensor) -> bool:
    """Whether the factored form is safe here. The answer is a host read of device data, free on
    a CPU; on an accelerator it would stall the launch queue on every call, so there the
    segment-sum form, safe for any decay, is taken without looking."""
    if not sync.host_reads_are_free(cs.device):
        return False
    if cs.numel() == 0:
        return True
    half = 0.5 * cs[:, :, -1:]
    bound = torch.maximum((half - cs).abs().amax(), half.abs().amax())
    return bool(bound <= FACTORED_MAX_EXPONENT)


# The factored form, with its hand-written backward pass, lives in ssd_factored.py.
_ssd_chunked_factored = ssd_chunked_factored


def _across_chunks(states: Tensor, gate: Tensor, h: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """h_{k+1} = gate_k * h_k + states_k over the chunks k along `dim`, from h_0 = h.

    gate broadcasts against a chunk's state. Returns the state entering every chunk (h_0 ..
    h_{c-1}, stacked along `dim`) and the final state h_c. A short sequential loop: the [c, c]
    decay-matrix form is quadratic in c and its small products are slower on CPU already at
    L = 128. unbind, not indexing: the gradient of each index would be a zero-filled full-size
    tensor.
    """
    entering = []
    for state_k, gate_k in zip(states.unbind(dim), gate.unbind(dim), strict=True):
        entering.append(h)
        h = torch.addcmul(state_k, gate_k, h)
    return torch.stack(entering, dim), h


class _TransposeContiguous(torch.autograd.Function):
    """`t.transpose(1, 2).contiguous()` whose gradient is made contiguous once, too.

    The chunked scan works head-major ([b, H, L, ...]) so that every per-chunk matrix product
    reads one flat batch of matrices; with a plain transpose the incoming gradient would stay a
    strided view and each matrix product of the backward pass would copy it again.
    """

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return t.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.transpose(1, 2).contiguous()


def _head_major(t: Tensor) -> Tensor:
    return _TransposeContiguous.apply(t)


def _ssd_chunked_segsum(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    l: int,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The chunked scan with a per-head decay matrix from `segsum_exp`: stable for any decay.

    Works head-major ([b, H, c, l, ...]) so each per-chunk product reads one flat batch of
    matrices; dt, the decays and D are folded into the small [l, l] and [l, N] factors.
    """
    b, L, H, P = x.shape  # L is a multiple of l
    G, N = B.shape[2:]
    hg = H // G  # heads per group
    c = L // l  # number of chunks

    # Head-major layout, [b, H, c, l, ...]: every product below is one flat batch of matrices.
    # dt, the decays and D are folded into the small [l, l] and [l, N] factors, so the only
    # passes over x-sized tensors are the matrix products themselves.
    xh = _head_major(x).view(b, H, c, l, P)
    Bg = _head_major(B).view(b, G, 1, c, l, N)
    Cg = _head_major(C).view(b, G, 1, c, l, N)
    dth = dt.transpose(1, 2).reshape(b, G, hg, c, l)
    a = dth * A.view(G, hg, 1, 1)  # log-decays [b, G, hg, c, l]
    r = None if reset is None else reset.view(b, 1, 1, c, l)

    # 1. Within each chunk: y_t = sum_{s<=t} (C_t . B_s) decay(s->t) dt_s x_s  (+ D x_t).
    decay = segsum_exp(a, r)  # [b, G, hg, c, l(t), l(s)]
    CB = Cg @ Bg.transpose(-1, -2)  # [b, G, 1, c, l, l], shared by the group's heads
    scores = CB * (decay * dth.unsqueeze(-2))  # [b, G, hg, c, l, l]
    if D is not None:
        eye = torch.eye(l, dtype=x.dtype, device=x.device)
        scores = torch.addcmul(scores, D.view(G, hg, 1, 1, 1), eye)

    # 2. The state each chunk leaves behind on its own: sum_s decay(s->end) dt_s x_s B_s^T.
    to_end = decay[..., -1, :] * dth  # [b, G, hg, c, l]
    Bw = (Bg * to_end.unsqueeze(-1)).view(b, H, c, l, N)
    chunk_states = xh.transpose(-1, -2) @ Bw  # [b, H, c, P, N]

    # 3. Across chunks: h_{k+1} = decay(chunk k) h_k + chunk_states_k.
    gate = torch.exp(a.sum(-1)).view(b, H, c, 1, 1)  # decay across a whole chunk
    if reset is not None:  # a reset anywhere in chunk k cuts the state coming into it
        gate = gate * ~reset.view(b, 1, c, l, 1).any(-2, keepdim=True)
    h = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    entering, final = _across_chunks(chunk_states, gate, h, dim=2)  # [b, H, c, P, N]
    final = final.contiguous()  # [b, H, P, N]

    # 4. The entering state seen from inside the chunk: C_t h_in decay(start->t), added to the
    # within-chunk part by one fused batched product.
    from_start = torch.exp(torch.cumsum(a, dim=-1))  # [b, G, hg, c, l]
    if reset is not None:
        from_start = from_start * (torch.cumsum(r.to(torch.int32), dim=-1) == 0)
    Cw = (Cg * from_start.unsqueeze(-1)).view(b * H * c, l, N)
    y_in = Cw @ entering.reshape(b * H * c, P, N).transpose(-1, -2)  # [b*H*c, l, P]
    y = torch.baddbmm(y_in, scores.reshape(b * H * c, l, l), xh.view(b * H * c, l, P))
    return _head_major(y.view(b, H, L, P)), final  # [b, L, H, P]


def ssd_reference(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int | None = None,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    reset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The same recurrence as `ssd_scan`, one step at a time (slow, obviously correct).

    `chunk_size` is accepted and ignored so the two functions are interchangeable.
    """
    _check_inputs(x, dt, A, B, C, D, initial_state, reset)
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    dtype = _compute_dtype(x)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    Bh = B.repeat_interleave(H // G, dim=2)  # [b, L, H, N]
    Ch = C.repeat_interleave(H // G, dim=2)
    h = x.new_zeros(b, H, P, N) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(L):
        if reset is not None:
            h = h * (~reset[:, t]).to(dtype).view(b, 1, 1, 1)
        decay = torch.exp(dt[:, t] * A).view(b, H, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t]).unsqueeze(-1) * Bh[:, t].unsqueeze(2)
        y = (h * Ch[:, t].unsqueeze(2)).sum(-1)  # [b, H, P]
        if D is not None:
            y = y + D.to(dtype)[:, None] * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, H, P)
    return y, h


def ssd_step(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    state: Tensor,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One recurrence step. x [b, H, P], dt [b, H], B, C [b, G, N], state [b, H, P, N] (fp32)."""
    H = x.shape[1]
    G = B.shape[1]
    dtype = state.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf, dtf = x.to(dtype), dt.to(dtype)
        Bh = B.to(dtype).repeat_interleave(H // G, dim=1)  # [b, H, N]
        Ch = C.to(dtype).repeat_interleave(H // G, dim=1)
        decay = torch.exp(dtf * A.to(dtype))[..., None, None]
        # Three passes over the state (the largest tensor: 64 MB at batch 1024): scale, add the
        # rank-one input, read it for y. (A product and a sum for each, or a `state @ C` that
        # copies its operand, take up to twice as long.)
        xdt = (dtf[..., None] * xf).unsqueeze(-1)  # [b, H, P, 1]
        state = torch.addcmul(state * decay, xdt, Bh.unsqueeze(2))
        b, P, N = x.shape[0], x.shape[2], state.shape[-1]
        y = torch.bmm(state.reshape(b * H, P, N), Ch.reshape(b * H, N, 1)).view(b, H, P)
        if D is not None:
            y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), state
