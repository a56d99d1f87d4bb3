"""The factored form of the chunked SSD scan, with a hand-written backward pass.

Inside a chunk of length l the decay from step s to step t is exp(cs_t - cs_s), with cs the
cumulative log-decay from the chunk start. Split it at m, half the chunk's total log-decay:

    exp(cs_t - cs_s) = exp(cs_t - m) * exp(m - cs_s) = w_out_t * w_in_s / dt_s

so every head of a group shares one causal [l, l] matrix C_t . B_s per chunk, and the products
run over [l, heads * P] blocks in the input's own time-major layout. Per chunk and group:

    u      = w_in * x                              [l, K]   (K = heads per group * P)
    S      = B_end^T u                              [N, K]   the chunk's own contribution
    hh_k   = em_k h_k                               [N, K]   em = exp(m): the entering state
    h_k+1  = em_k (carry_k hh_k + S_k)                       (em^2 is the chunk's decay)
    z      = (C B^T * causal) u + C_start hh        [l, K]
    y      = w_out * z + D x

Exact in exact arithmetic; in floating point the relative error grows with |z| of exp(z), which
the caller bounds (`ssd.FACTORED_MAX_EXPONENT`). Resets are masks: `causal` drops pairs across a
reset, B_end keeps steps after a chunk's last reset, C_start steps before its first, and carry
is 0 for a chunk that contains a reset.

Why a hand-written backward: the scan is memory-bound on a CPU, and autograd's version of the
same products makes extra passes over [b, L, H, P] tensors (separate multiply-then-sum
reductions, a gradient accumulation that could run in place, a graph node per view). This one
fuses them; at B=16, L=128, H=16, P=64, N=16 forward+backward takes 11.0 ms instead of 12.0 ms
(2-core CPU, side by side in one process; benchmarks/ssm.py). Its equality with autograd
through the sequential reference is tested in fp64 (tests/test_ssd.py).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def ssd_chunked_factored(
    x: Tensor,
    dt: Tensor,
    cs: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    l: int,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """x [b, L, H, P], dt [b, L, H], cs [b, L/l, l, H] (cumulative log-decay within each chunk),
    B, C [b, L, G, N], D [H] or None, initial_state [b, H, P, N] or None, reset [b, L] bool or
    None; L a multiple of l. Returns y [b, L, H, P] and the final state [b, H, P, N]."""
    return _FactoredScan.apply(x, dt, cs, B, C, D, initial_state, reset, l)


def _groups(t: Tensor) -> list[Tensor]:
    """[n, k, G, m] -> G tensors [n, k, m] (a view; no copy for one group)."""
    return [t.squeeze(2)] if t.shape[2] == 1 else list(t.unbind(2))


def _stack_groups(parts: list[Tensor]) -> Tensor:
    """G tensors [n, k, m] -> [n, k, G, m]."""
    return parts[0].unsqueeze(2) if len(parts) == 1 else torch.stack(parts, 2)


def _cat_groups(parts: list[Tensor]) -> Tensor:
    """G tensors [n, k, m] -> [n, k, G * m], the heads of each group side by side."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _dot_last(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b, -1): one pass as a batch of dot products, without the [.., P] product."""
    if not (a.is_contiguous() and b.is_contiguous()):
        return (a * b).sum(-1)
    P = a.shape[-1]
    return torch.bmm(a.view(-1, 1, P), b.view(-1, P, 1)).view(a.shape[:-1])


class _FactoredScan(torch.autograd.Function):
    """Forward as in the module docstring; backward by hand (`_backward`)."""

    @staticmethod
    def forward(ctx, x, dt, cs, B, C, D, h0, reset, l):
        b, L, H, P = x.shape
        G, N = B.shape[2:]
        c = L // l
        n, K = b * c, H // G * P  # chunks in the batch; columns of one group's blocks
        x5 = x.view(b, c, l, H, P)
        m = 0.5 * cs[:, :, -1:]  # [b, c, 1, H]
        e_in = torch.exp(m - cs)  # [b, c, l, H]
        w_in = e_in * dt.reshape(b, c, l, H)
        w_out = torch.exp(cs - m)
        em = torch.exp(m).view(b, c, 1, H, 1)
        u = (x5 * w_in.unsqueeze(-1)).view(n, l, G, K)
        Bc, Cc = B.reshape(n, l, G, N), C.reshape(n, l, G, N)
        causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()  # s <= t
        end_mask = start_mask = carry = None
        if reset is not None:  # a reset at k cuts every path that crosses k
            count = torch.cumsum(reset.reshape(n, l).to(torch.int32), dim=-1)
            causal = causal & (count[:, :, None] == count[:, None, :])  # [n, l, l]
            end_mask = (count == count[:, -1:]).to(x.dtype).view(n, l, 1, 1)
            start_mask = (count == 0).to(x.dtype).view(n, l, 1, 1)
            carry = (count[:, -1] == 0).to(x.dtype).view(b, c, 1, 1, 1)
        B_end = Bc if end_mask is None else Bc * end_mask
        C_start = Cc if start_mask is None else Cc * start_mask
        u_g, B_g, C_g, Be_g, Cs_g = (_groups(t) for t in (u, Bc, Cc, B_end, C_start))

        # S: [b, c, N, H, P], each chunk's state on its own (scaled by exp(-m)).
        S = _stack_groups([Bk.transpose(1, 2) @ uk for Bk, uk in zip(Be_g, u_g, strict=True)])
        S = S.view(b, c, N, H, P)
        # Across chunks: hs[:, k] = h_k entering chunk k (hs[:, c] the final state).
        hs = x.new_empty(b, c + 1, N, H, P)
        hh = torch.empty_like(S)  # em_k h_k: what chunk k's outputs read
        if h0 is None:
            hs[:, 0].zero_()
        else:
            hs[:, 0] = h0.permute(0, 3, 1, 2)
        for k in range(c):
            torch.mul(hs[:, k], em[:, k], out=hh[:, k])
            if carry is None:
                a = S[:, k] + hh[:, k]
            else:
                a = torch.addcmul(S[:, k], hh[:, k], carry[:, k])
            torch.mul(a, em[:, k], out=hs[:, k + 1])
        final = hs[:, c].permute(0, 2, 3, 1).contiguous()  # [b, H, P, N]

        hh_g = _groups(hh.view(n, N, G, K))
        CBs, zs = [], []
        for Bk, Ck, Csk, hk, uk in zip(B_g, C_g, Cs_g, hh_g, u_g, strict=True):
            CB = (Ck @ Bk.transpose(1, 2)) * causal  # [n, l(t), l(s)], shared by the group's heads
            CBs.append(CB)
            zs.append((Csk @ hk).baddbmm_(CB, uk))  # [n, l, K]: one output buffer
        z = _cat_groups(zs).view(b, c, l, H, P)
        y = z * w_out.unsqueeze(-1)
        if D is not None:
            y.addcmul_(x5, D.view(H, 1))
        ctx.save_for_backward(
            x, B_end, C_start, Bc, Cc, D, u, z, hs, hh, e_in, w_in, w_out, em, causal, carry
        )
        ctx.CBs, ctx.l, ctx.h0_given, ctx.device_type = CBs, l, h0 is not None, x.device.type
        ctx.masks = (end_mask, start_mask)
        ctx.set_materialize_grads(False)
        return y.view(b, L, H, P), final

    @staticmethod
    def backward(ctx, gy, gfinal):
        with torch.autocast(device_type=ctx.device_type, enabled=False):
            return _backward(ctx, gy, gfinal)


def _backward(ctx, gy: Tensor | None, gfinal: Tensor | None):
    x, B_end, C_start, Bc, Cc, D, u, z, hs, hh, e_in, w_in, w_out, em, causal, carry = (
        ctx.saved_tensors
    )
    end_mask, start_mask = ctx.masks
    l = ctx.l
    b, L, H, P = x.shape
    n, _, G, N = Bc.shape
    c, K = n // b, H // G * P
    x5 = x.view(b, c, l, H, P)
    gy5 = torch.zeros_like(x5) if gy is None else gy.reshape(b, c, l, H, P)

    # y = w_out * z + D x
    gz = gy5 * w_out.unsqueeze(-1)
    g_wout = _dot_last(gy5, z)  # [b, c, l, H]
    gD = _dot_last(gy5, x5).sum((0, 1, 2)) if D is not None and ctx.needs_input_grad[5] else None

    # z = (C B^T * causal) u + C_start hh, per group
    gz_g = _groups(gz.view(n, l, G, K))
    # gz_t u_s scales as exp(cs_t - cs_s): at most 1 for s <= t, but above the diagonal up to
    # exp(2 FACTORED_MAX_EXPONENT), past fp32's range, where a product with the mask turned an
    # inf into NaN (inf * 0) that reached B and C. tril_ writes zeros instead (as masked_fill_
    # would, ~10x slower on CPU); then, with resets, the product drops the pairs across one,
    # finite as they lie below the diagonal.
    reset_causal = causal if causal.dim() == 3 else None  # [n, l, l] with resets
    u_g, hh_g = _groups(u), _groups(hh.view(n, N, G, K))
    gB, gC, gCs, gu, ghh = [], [], [], [], []
    for gzk, uk, hk, Bk, Ck, Csk, CB in zip(
        gz_g, u_g, hh_g, _groups(Bc), _groups(Cc), _groups(C_start), ctx.CBs, strict=True
    ):
        gCB = torch.bmm(gzk, uk.transpose(1, 2)).tril_()  # [n, l(t), l(s)]
        if reset_causal is not None:
            gCB.mul_(reset_causal)
        gC.append(gCB @ Bk)  # [n, l, N]
        gB.append(gCB.transpose(1, 2) @ Ck)
        gCs.append(torch.bmm(gzk, hk.transpose(1, 2)))  # [n, l, N]
        ghh.append(torch.bmm(Csk.transpose(1, 2), gzk))  # [n, N, K]
        gu.append(torch.bmm(CB.transpose(1, 2), gzk))  # [n, l, K]
    ghh = _stack_groups(ghh).view(b, c, N, H, P)

    # Across chunks, backwards: hh_k = em_k h_k; h_{k+1} = em_k (carry_k hh_k + S_k).
    # GH[:, k] is the gradient of h_{k+1}; ghh accumulates that of hh in place.
    GH = torch.empty_like(hs[:, 1:])
    gS = torch.empty_like(GH)
    if gfinal is None:
        GH[:, c - 1].zero_()
    else:
        GH[:, c - 1] = gfinal.permute(0, 3, 1, 2)
    for k in reversed(range(c)):
        torch.mul(GH[:, k], em[:, k], out=gS[:, k])
        if carry is None:
            ghh[:, k].add_(gS[:, k])
        else:
            ghh[:, k].addcmul_(gS[:, k], carry[:, k])
        if k > 0:
            torch.mul(ghh[:, k], em[:, k], out=GH[:, k - 1])
    gh0 = (ghh[:, 0] * em[:, 0]).permute(0, 2, 3, 1) if ctx.h0_given else None
    # d/dm through em = exp(m): em * dL/dem = <GH_k, h_{k+1}> + <ghh_k, hh_k>, per (b, chunk, head).
    g_em = (GH * hs[:, 1:]).sum((2, 4)) + (ghh * hh).sum((2, 4))  # [b, c, H]

    # S = B_end^T u
    gBe, gS_g = [], _groups(gS.view(n, N, G, K))
    for guk, Bek, gSk, uk in zip(gu, _groups(B_end), gS_g, u_g, strict=True):
        guk.baddbmm_(Bek, gSk)  # in place: the gradient of u from both of its uses
        gBe.append(torch.bmm(uk, gSk.transpose(1, 2)))  # [n, l, N]
    gB, gC, gBe, gCs = (_stack_groups(t) for t in (gB, gC, gBe, gCs))  # [n, l, G, N]
    if end_mask is not None:
        gBe, gCs = gBe * end_mask, gCs * start_mask
    gB, gC = (gB + gBe).view(b, L, G, N), (gC + gCs).view(b, L, G, N)

    # u = w_in * x with w_in = exp(m - cs) dt, w_out = exp(cs - m), m = cs[..., -1] / 2
    gu = _cat_groups(gu).view(b, c, l, H, P)
    g_win = _dot_last(gu, x5)  # [b, c, l, H]
    gx = gu.mul_(w_in.unsqueeze(-1))
    if D is not None:
        gx.addcmul_(gy5, D.view(H, 1))
    g_dt = (g_win * e_in).view(b, L, H)
    g_in, g_out = g_win * w_in, g_wout * w_out  # gradients of the exponents m - cs and cs - m
    g_cs = g_out - g_in
    g_cs[:, :, -1] += 0.5 * (g_in.sum(2) - g_out.sum(2) + g_em)
    return gx.view(b, L, H, P), g_dt, g_cs, gB, gC, gD, gh0, None, None
