"""The selective scan of Mamba-1 (Gu & Dao, 2023) in pure PyTorch.

The recurrence, per batch row, channel d (D = d_inner channels) and state index n (N):

    h_t[d, n] = exp(delta_t[d] * A[d, n]) * h_{t-1}[d, n] + delta_t[d] * B_t[n] * u_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * u_t[d]            (then * silu(z_t[d]))

with `reset[b, t]` meaning h_{t-1} is treated as zero (an episode boundary inside a window), which
is the decay a_t = exp(delta_t * A) set to 0. Unlike Mamba-2, whose decay is one scalar per head,
the decay differs per (d, n), so there is no matrix-product (SSD) form: the states h [b, L, D, N]
are computed elementwise, as the first-order linear recurrence h_t = a_t * h_{t-1} + x_t.

`selective_scan` runs it chunk by chunk (chunks of `chunk_size` steps, the state carried from one
to the next: linear in L), each chunk by a work-efficient odd-even parallel scan (`_scan_`): pairs
of neighbours are combined into a recurrence of half the length, solved recursively, and the other
half filled in from it, so a chunk of T steps costs ~3 elementwise passes over its [b, T, D, N]
states in log2(T) levels, never a Python loop over time steps. Every coefficient it forms is a
product of decays a <= 1, so nothing can overflow (unlike an `exp(cumsum)` / `exp(-cumsum)`
factorisation); products that would underflow into subnormal numbers are flushed to 0 (`_FLUSH`).

Its backward pass is written by hand (`_SelectiveScanFn`): the gradient of the recurrence is the
same scan run backwards in time. Only the state entering each chunk is kept from the forward pass
and each chunk's decays and states are recomputed in the backward pass, so the memory is
O(b L D N / chunk_size) rather than O(b L D N). The batch is processed in tiles of rows sized so
that a chunk's few [rows, T, D, N] buffers (`WORKSPACE_BYTES`) stay in the CPU's caches and are
reused from chunk to chunk. Double backward is not supported.

`selective_scan_reference` is the plain sequential loop, the ground truth for the tests;
`selective_scan_step` is one step of the recurrence, for decoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

# Steps per chunk of `selective_scan`: the depth of each chunk's parallel scan (log2) and the
# unit of recomputation (the backward pass keeps one [b, D, N] state per chunk). Measured on a
# 2-core CPU, `MambaBackbone(512, 2)` forward + backward at batch 16, fp32: chunks of 4 to 16
# steps are within noise of each other (4-8 slightly ahead at L = 128), 32 and more are slower.
DEFAULT_CHUNK_SIZE = 8


def _check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    initial_state: Tensor | None,
    reset: Tensor | None,
) -> None:
    if u.dim() != 3:
        raise ValueError(
            f"selective_scan: u must be [batch, length, channels], got shape {tuple(u.shape)}"
        )
    b, L, d = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must be [batch, length, channels] = {(b, L, d)}, "
            f"got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(
            f"selective_scan: A must be [channels, d_state] with channels = {d}, "
            f"got {tuple(A.shape)}"
        )
    n = A.shape[1]
    if B.shape != (b, L, n) or C.shape != (b, L, n):
        raise ValueError(
            f"selective_scan: B and C must both be [batch, length, d_state] = {(b, L, n)}, "
            f"got B {tuple(B.shape)} and C {tuple(C.shape)}"
        )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(
                f"selective_scan: {name} must be [channels] = {(d,)}, got {tuple(t.shape)}"
            )
    if z is not None and z.shape != u.shape:
        raise ValueError(
            f"selective_scan: z must be shaped like u {(b, L, d)}, got {tuple(z.shape)}"
        )
    if initial_state is not None and initial_state.shape != (b, d, n):
        raise ValueError(
            f"selective_scan: initial_state must be [batch, channels, d_state] = {(b, d, n)}, "
            f"got {tuple(initial_state.shape)}"
        )
    if reset is not None and reset.shape != (b, L):
        raise ValueError(
            f"selective_scan: reset must be [batch, length] = {(b, L)}, got {tuple(reset.shape)}"
        )


def _compute_dtype(u: Tensor) -> torch.dtype:
    # fp64 stays fp64 (exactness tests); everything else is computed in fp32.
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _discretize_delta(delta: Tensor, delta_bias: Tensor | None, softplus: bool) -> Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta) if softplus else delta


def _output(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """The skip and the gate: `(y + D * u) * silu(z)`."""
    if D is not None:
        y = torch.addcmul(y, u, D)
    if z is not None:
        y = y * F.silu(z)
    return y


# --- the parallel scan of a linear recurrence -------------------------------------------------


def _scan_(x: Tensor, k: Tensor, floor: float, scratch: Tensor, reverse: bool = False) -> None:
    """Solves a first-order linear recurrence along dim 1, in place in `x`.

    Forward: x_t <- x_t + k_{t-1} * x_{t-1} (t = 1 .. T-1, in order), i.e. h_t = a_t h_{t-1} + x_t
    with couplings k = a[:, 1:]. Reverse: x_t <- x_t + k_t * x_{t+1} (t = T-2 .. 0), the adjoint
    recurrence of the backward pass with the same couplings. x: [b, T, ...], k: [b, T-1, ...],
    0 <= k <= 1; scratch: [b, >= T/2, ...], overwritten.

    Odd-even (work-efficient) scan: neighbours (2i, 2i+1) are combined into a recurrence over
    the odd (forward) or even (reverse) positions with couplings k_{2i} k_{2i-+1}, which is
    solved recursively; the other positions then follow from it in one step. Each level works on
    strided views of x and halves the length: ~3 elementwise passes over x in all. Combined
    couplings below `floor` are set to 0 (see `_FLUSH`; `floor` 0: none can be).
    """
    T = x.shape[1]
    if T < 2:
        return
    xe, xo = x[:, 0::2], x[:, 1::2]  # ceil(T/2) and floor(T/2) positions
    k0, k1 = k[:, 0::2], k[:, 1::2]  # k_{2i}: floor(T/2) couplings; k_{2i+1}: ceil(T/2) - 1
    m, r = xo.shape[1], k1.shape[1]
    if not reverse:
        xo.addcmul_(k0, xe[:, :m])  # x_{2i+1} + k_{2i} x_{2i}
        # The odd positions: o_i = x'_{2i+1} + k_{2i} k_{2i-1} o_{i-1}.
        kk = torch.mul(k0[:, 1:], k1[:, : m - 1], out=scratch[:, : m - 1])
        _scan_(xo, _flush_(kk, floor), floor, scratch[:, m - 1 :])
        xe[:, 1:].addcmul_(k1, xo[:, :r])  # h_{2i} = x_{2i} + k_{2i-1} h_{2i-1}
    else:
        xe[:, :m].addcmul_(k0, xo)  # x_{2i} + k_{2i} x_{2i+1}
        # The even positions: e_i = x'_{2i} + k_{2i} k_{2i+1} e_{i+1}.
        kk = torch.mul(k0[:, :r], k1, out=scratch[:, :r])
        _scan_(xe, _flush_(kk, floor), floor, scratch[:, r:], reverse=True)
        xo[:, :r].addcmul_(k1, xe[:, 1:])  # g_{2i+1} = x_{2i+1} + k_{2i+1} g_{2i+2}


# Decays and products of decays below this are flushed to 0. Without it, a chunk whose decays
# multiply to less than fp32's smallest normal number (1.2e-38, e.g. 16 steps of delta * A < -5.5)
# computes on subnormal numbers, which x86 CPUs process 10-100x slower (measured: a whole scan
# up to 20x slower). A term dropped this way is smaller than 1e-20 times the state it decays, far
# below fp32's resolution; in fp64 the floor is out of the way of any test. The flushing costs
# passes over the states, so it is skipped when no product of a chunk's decays can fall below the
# floor (`_flush_floor`), which with Mamba's initial step sizes and decays is always the case.
_FLUSH = {torch.float32: 1e-20, torch.float64: 1e-200}


def _flush_(t: Tensor, floor: float) -> Tensor:
    return F.threshold_(t, floor, 0.0) if floor > 0 else t


def _flush_floor(delta: Tensor, A: Tensor, chunk_size: int) -> float:
    """The floor below which decays are flushed to 0, or 0 when no product of up to
    `chunk_size` decays exp(delta * A) can fall below it."""
    floor = _FLUSH[delta.dtype]
    if delta.numel() == 0 or A.numel() == 0:
        return 0.0
    d_lo, d_hi = torch.aminmax(delta)
    a_lo, a_hi = torch.aminmax(A)
    lowest = torch.stack([d_lo * a_lo, d_lo * a_hi, d_hi * a_lo, d_hi * a_hi]).min().item()
    return 0.0 if chunk_size * lowest >= math.log(floor) else floor


# Bytes of one [rows, T, D, N] workspace buffer: the scan runs on tiles of as many batch rows as
# fit (at least one), so that its five buffers stay in the CPU's last-level cache whatever the
# batch size. Smaller tiles (2-4 MiB) measured no faster, and more tiles mean more small kernels,
# which slow down most when another process competes for the cores.
WORKSPACE_BYTES = 8 << 20


class _Workspace:
    """[rows, T, D, N] buffers, reused from chunk to chunk and tile to tile (a shorter chunk or
    tile takes their first steps and rows). Fresh tensors for every chunk would be page-faulted
    in anew each time, as glibc serves large blocks by mmap and unmaps them when freed."""

    def __init__(self, like: Tensor, shape: tuple[int, ...], names: tuple[str, ...]) -> None:
        self.buffers = {name: like.new_empty(shape) for name in names}

    def __call__(self, name: str, like: Tensor) -> Tensor:
        """The buffer's first rows and steps, as many as `like` [rows, T, ...] has."""
        return self.buffers[name][: like.shape[0], : like.shape[1]]


def _tiles(b: int, L: int, chunk_size: int, d: int, n: int, itemsize: int):
    """(rows per tile, steps per chunk, [(row slice, [(chunk index, time slice), ...]), ...])."""
    T = min(chunk_size, L)
    rows = max(1, min(b, WORKSPACE_BYTES // (T * d * n * itemsize)))
    chunks = [(k, slice(t0, t0 + T)) for k, t0 in enumerate(range(0, L, T))]
    return rows, T, [(slice(r0, r0 + rows), chunks) for r0 in range(0, b, rows)]


def _chunk_states(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    h_in: Tensor,
    reset: Tensor | None,
    floor: float,
    a: Tensor,
    h: Tensor,
    scratch: Tensor,
) -> None:
    """Fills a [b, T, D, N] with the decays and h [b, T, D, N] with the states of one chunk
    entered with state h_in [b, D, N]; scratch [b, T, D, N] is overwritten."""
    # a_t = exp(delta_t A); 0 where the sequence restarts, and below the floor.
    torch.mul(delta.unsqueeze(-1), A, out=a)
    if floor > 0:
        F.threshold_(a, math.log(floor), -math.inf)
    if reset is not None:
        a.masked_fill_(reset[:, :, None, None], -math.inf)
    a.exp_()
    # The inputs x_t = delta_t u_t B_t, the state entering folded into the first, then the scan.
    torch.mul((delta * u).unsqueeze(-1), B.unsqueeze(2), out=h)
    h[:, 0].addcmul_(a[:, 0], h_in)
    _scan_(h, a[:, 1:], floor, scratch)


class _SelectiveScanFn(torch.autograd.Function):
    """(u, delta, A, B, C, h0, reset) -> (sum_n C_t h_t, h_{L-1}) with a hand-written backward.

    Works on tiles of batch rows, each chunk by chunk. Keeps only the state entering each chunk
    for the backward pass, which recomputes the chunk's decays and states from it: the memory is
    O(b L D N / chunk_size), and the recomputation in the cached workspace is faster than
    writing all [b, L, D, N] decays and states to memory and reading them back (measured: the
    paper-size training window, batch 16 x 128 steps, 20% slower so). u, delta: [b, L, D];
    A: [D, N]; B, C: [b, L, N]; h0: [b, D, N]; reset: [b, L] bool (True where the sequence
    restarts) or None. All others in one float dtype.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, reset, chunk_size):
        (b, L, d), n = u.shape, A.shape[1]
        rows, T, tiles = _tiles(b, L, chunk_size, d, n, u.element_size())
        work = _Workspace(u, (rows, T, d, n), ("a", "h", "scratch"))
        floor = _flush_floor(delta, A, chunk_size)
        y = u.new_empty(b, L, d)
        # The state entering each chunk, for the backward pass (none is needed without one).
        starts = u.new_empty(-(-L // T), b, d, n) if any(ctx.needs_input_grad[:6]) else None
        last = u.new_empty(b, d, n)
        for rs, chunks in tiles:
            h_in = h0[rs]
            for k, ts in chunks:
                # A copy: the workspace holding h_in is overwritten next.
                h_in = h_in.clone() if starts is None else starts[k, rs].copy_(h_in)
                u_k, delta_k, B_k = u[rs, ts], delta[rs, ts], B[rs, ts]
                a, h = work("a", u_k), work("h", u_k)
                reset_k = None if reset is None else reset[rs, ts]
                _chunk_states(
                    u_k, delta_k, A, B_k, h_in, reset_k, floor, a, h, work("scratch", u_k)
                )
                y[rs, ts] = torch.matmul(h, C[rs, ts].unsqueeze(-1)).squeeze(-1)  # h_t C_t
                h_in = h[:, -1]
            last[rs] = h_in
        ctx.save_for_backward(u, delta, A, B, C, reset, starts)
        ctx.chunk_size, ctx.floor = chunk_size, floor
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, reset, starts = ctx.saved_tensors
        chunk_size, floor = ctx.chunk_size, ctx.floor
        (b, L, d), n = u.shape, A.shape[1]
        rows, T, tiles = _tiles(b, L, chunk_size, d, n, u.element_size())
        work = _Workspace(u, (rows, T, d, n), ("a", "h", "scratch", "g", "w"))
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A, grad_h0 = torch.zeros_like(A), torch.empty_like(grad_last)
        for rs, chunks in tiles:
            # The gradient reaching the state at the end of the current chunk from later ones.
            g_end = grad_last[rs]
            for k, ts in reversed(chunks):
                u_k, delta_k, B_k, C_k, gy_k = (t[rs, ts] for t in (u, delta, B, C, grad_y))
                h_in = starts[k, rs]
                a, h = work("a", u_k), work("h", u_k)
                reset_k = None if reset is None else reset[rs, ts]
                _chunk_states(
                    u_k, delta_k, A, B_k, h_in, reset_k, floor, a, h, work("scratch", u_k)
                )
                grad_C[rs, ts] = torch.matmul(gy_k.unsqueeze(-2), h).squeeze(-2)  # [b, T, N]
                # dL/dh_t, accumulated backwards in time: g_t = gy_t C_t + a_{t+1} g_{t+1}.
                g = torch.mul(gy_k.unsqueeze(-1), C_k.unsqueeze(2), out=work("g", u_k))
                g[:, -1].add_(g_end)
                _scan_(g, a[:, 1:], floor, work("scratch", u_k), reverse=True)
                g_end = a[:, 0] * g[:, 0]  # into the previous chunk (0 across a reset)
                # w = dL/d(delta_t A) = g_t h_{t-1} a_t, the gradient of the decays' exponents.
                w = work("w", u_k)
                torch.mul(g[:, 1:], h[:, :-1], out=w[:, 1:])
                torch.mul(g[:, 0], h_in, out=w[:, 0])
                w.mul_(a)
                # d delta_t = sum_n w A and dA = sum_{b, t} w delta_t (scratch is free now) ...
                wA = torch.mul(w, A, out=work("scratch", u_k))
                grad_delta_k = torch.sum(wA, -1, out=grad_delta[rs, ts])
                grad_A.add_(w.mul_(delta_k.unsqueeze(-1)).sum((0, 1)))
                # ... and through the inputs x_t = (delta_t u_t) B_t.
                grad_B[rs, ts] = torch.matmul((delta_k * u_k).unsqueeze(-2), g).squeeze(-2)
                grad_du = torch.matmul(g, B_k.unsqueeze(-1)).squeeze(-1)  # [b, T, D]
                torch.mul(grad_du, delta_k, out=grad_u[rs, ts])
                grad_delta_k.addcmul_(grad_du, u_k)
            grad_h0[rs] = g_end
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0, None, None


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    reset: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Chunked selective scan (time second everywhere, unlike mamba-ssm's channel-first kernel).

    Args:
        u: [b, L, D] inputs. delta: [b, L, D] step sizes (before `delta_bias` / softplus).
        A: [D, N] decay rates (negative). B, C: [b, L, N] input and output projections.
        D: [D] skip or None. z: [b, L, D] gate or None (y * silu(z)).
        delta_bias: [D] added to delta first, or None. delta_softplus: delta <- softplus(delta).
        initial_state: [b, D, N] or None (zeros): the state h_{-1} before the first step.
        reset: [b, L] bool or None; reset[b, t] zeroes h_{t-1} for that row (a fresh start).
        chunk_size: steps per chunk: the working set and the unit of recomputation.

    Returns:
        y [b, L, D] in u's dtype and last_state [b, D, N] in fp32 (fp64 for fp64 input).
        Under autocast every step runs in fp32: the decays and states need the precision.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = u.dtype
    dtype = _compute_dtype(u)
    b, L, d = u.shape
    with torch.autocast(device_type=u.device.type, enabled=False):
        if initial_state is None:
            h0 = u.new_zeros(b, d, A.shape[1], dtype=dtype)
        else:
            h0 = initial_state.to(dtype)
        if L == 0:  # nothing to scan: the state passes through
            return u.new_zeros(u.shape), h0
        u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
        delta = _discretize_delta(
            delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus
        )
        reset = None if reset is None else reset.to(torch.bool)
        y, last = _SelectiveScanFn.apply(u, delta, A, B, C, h0, reset, chunk_size)
        y = _output(y, u, None if D is None else D.to(dtype), None if z is None else z.to(dtype))
    return y.to(out_dtype), last


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    reset: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The same as `selective_scan`, one step at a time (slow, obviously correct).

    `chunk_size` is accepted and ignored so the two functions are interchangeable.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, reset)
    b, L, d = u.shape
    dtype = _compute_dtype(u)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    delta = _discretize_delta(
        delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus
    )
    h = u.new_zeros(b, d, A.shape[1]) if initial_state is None else initial_state.to(dtype)
    ys = []
    for t in range(L):
        if reset is not None:
            h = h * (~reset[:, t]).to(dtype).view(b, 1, 1)
        decay = torch.exp(delta[:, t, :, None] * A)  # [b, D, N]
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))  # [b, D]
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(b, 0, d)
    y = _output(y, u, None if D is None else D.to(dtype), None if z is None else z.to(dtype))
    return y, h


def selective_scan_step(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    state: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence, O(1) in the context length.

    u, delta: [b, D]; A: [D, N]; B, C: [b, N]; state: [b, D, N] (fp32 / fp64, its dtype is the
    compute dtype); D, delta_bias: [D]; z: [b, D]. Returns y [b, D] in u's dtype and the new
    state. A reset is the caller's: zero the state's rows first.
    """
    dtype = state.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        uf, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
        delta = _discretize_delta(
            delta, None if delta_bias is None else delta_bias.to(dtype), delta_softplus
        )
        # Two new [b, D, N] tensors (the largest here: 64 MB at batch 1024), then in place.
        decay = torch.mul(delta.unsqueeze(-1), A).exp_()
        state = (state * decay).addcmul_((delta * uf).unsqueeze(-1), B.unsqueeze(1))
        y = torch.bmm(state, C.unsqueeze(-1)).squeeze(-1)  # [b, D]
        y = _output(y, uf, None if D is None else D.to(dtype), None if z is None else z.to(dtype))
    return y.to(u.dtype), state
