"""The state-space duality (SSD) scan of Mamba-2 (Dao & Gu, 2024) in pure PyTorch.

The recurrence, per batch row b and head h (P = head dim, N = state dim):

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: [P, N]
    y_t = h_t C_t + D * x_t

with `reset[b, t]` meaning h_{t-1} is treated as zero (an episode boundary inside a window).

`ssd_scan` computes it chunk by chunk: inside a chunk of length l the quadratic (attention-like)
form, across chunks a linear recurrence over chunk states, so the cost is linear in L.
`ssd_reference` is the plain sequential loop, the ground truth for the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


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
    with torch.autocast(device_type=x.device.type, enabled=False):
        y, final = _ssd_chunked(
            x.to(dtype),
            dt.to(dtype),
            A.to(dtype),
            B.to(dtype),
            C.to(dtype),
            min(chunk_size, x.shape[1]),
            None if initial_state is None else initial_state.to(dtype),
            reset,
        )
        if D is not None:
            y = torch.addcmul(y, x.to(dtype), D.to(dtype)[:, None])
    return y.to(out_dtype), final


def _ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    l: int,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> tuple[Tensor, Tensor]:
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    hg = H // G  # heads per group
    pad = (-L) % l
    if pad:
        # Zero dt means no decay and no input: padded steps leave the final state exact.
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
        if reset is not None:
            reset = F.pad(reset, (0, pad))
    c = (L + pad) // l  # number of chunks

    x = x.view(b, c, l, H, P)
    B = B.view(b, c, l, G, N)
    C = C.view(b, c, l, G, N)
    a = (dt * A).view(b, c, l, H).permute(0, 1, 3, 2)  # log-decays [b, c, H, l]
    # Heads before time so every per-chunk matrix product below reads contiguous blocks.
    xdt = (x * dt.view(b, c, l, H, 1)).permute(0, 1, 3, 2, 4).contiguous()  # [b, c, H, l, P]
    r = None if reset is None else reset.view(b, c, 1, l)

    # 1. Within each chunk: y_t = sum_{s<=t} (C_t . B_s) decay(s->t) dt_s x_s.
    decay = segsum_exp(a, r)  # [b, c, H, l(t), l(s)]
    CB = torch.einsum("bctgn,bcsgn->bcgts", C, B)  # [b, c, G, l, l]
    scores = (CB.unsqueeze(3) * decay.view(b, c, G, hg, l, l)).view(b, c, H, l, l)
    y = scores @ xdt  # [b, c, H, l, P]

    # 2. The state each chunk leaves behind on its own: sum_s decay(s->end) dt_s x_s B_s^T.
    to_end = decay[..., -1, :]  # [b, c, H, l]
    xw = (xdt * to_end.unsqueeze(-1)).view(b, c, G, hg, l, P).transpose(-1, -2)  # [.., P, l]
    chunk_states = (xw.reshape(b, c, G, hg * P, l) @ B.transpose(2, 3)).view(b, c, H, P, N)

    # 3. Across chunks: the state entering each chunk, by the same decay matrix one level up.
    if initial_state is None:
        initial_state = x.new_zeros(b, H, P, N)
    states = torch.cat([initial_state.unsqueeze(1), chunk_states], dim=1)  # [b, c+1, H, P, N]
    chunk_a = F.pad(a.sum(-1), (0, 0, 1, 0)).transpose(1, 2)  # [b, H, c+1]; index 0 = initial
    chunk_r = None
    if reset is not None:
        chunk_r = F.pad(reset.view(b, c, l).any(-1), (1, 0)).view(b, 1, c + 1)
    across = segsum_exp(chunk_a, chunk_r)  # [b, H, c+1, c+1]
    states = across @ states.permute(0, 2, 1, 3, 4).reshape(b, H, c + 1, P * N)
    states = states.view(b, H, c + 1, P, N)
    entering, final = states[:, :, :-1], states[:, :, -1]  # [b, H, c, P, N], [b, H, P, N]

    # 4. What the entering state contributes inside the chunk: C_t h_in decay(start->t).
    from_start = torch.exp(torch.cumsum(a, dim=-1))  # [b, c, H, l]
    if reset is not None:
        from_start = from_start * (torch.cumsum(r.to(torch.int32), dim=-1) == 0)
    h_in = entering.transpose(1, 2).reshape(b, c, G, hg, P, N).permute(0, 1, 2, 5, 3, 4)
    y_in = C.transpose(2, 3) @ h_in.reshape(b, c, G, N, hg * P)  # [b, c, G, l, hg*P]
    y_in = y_in.view(b, c, G, l, hg, P).transpose(3, 4).reshape(b, c, H, l, P)
    y = torch.addcmul(y, y_in, from_start.unsqueeze(-1))  # [b, c, H, l, P]
    y = y.transpose(2, 3).reshape(b, c * l, H, P)
    return y[:, :L], final


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
        state = decay * state + (dtf[..., None] * xf).unsqueeze(-1) * Bh.unsqueeze(2)
        y = (state @ Ch.unsqueeze(-1)).squeeze(-1)  # [b, H, P]
        if D is not None:
            y = y + D.to(dtype)[:, None] * xf
    return y.to(x.dtype), state
