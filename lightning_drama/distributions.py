"""Pure math for Drama's distributions (DreamerV3 style): symlog, two-hot, categorical latents, KL.

Every function is stateless and works on any leading shape. Losses and statistics are computed in
fp32 whatever the input dtype, so they stay exact under bf16 autocast.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------- symlog


def symlog(x: torch.Tensor) -> torch.Tensor:
    """`sign(x) * log(1 + |x|)`: compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `symlog`: `sign(x) * (exp(|x|) - 1)`."""
    return torch.sign(x) * torch.expm1(x.abs())


# -------------------------------------------------------------------------------------- two-hot


def symlog_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0) -> torch.Tensor:
    """Bin centres evenly spaced in symlog space: `[num_bins]` fp32 (paper: 255 in [-20, 20])."""
    # Computed in fp64 so that the middle bin is exactly 0 (fp32 linspace gives 7e-8).
    steps = torch.arange(num_bins, dtype=torch.float64) / (num_bins - 1)
    return (low + (high - low) * steps).float()


def twohot_encode(y: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot weights of `y` (already in bin space, e.g. symlog'd): `[...] -> [..., K]`.

    The weight is split linearly between the two neighbouring bins so that `sum(w * bins) == y`
    for every y inside the bin range; values outside are clamped to the edge bins.
    """
    y = y.float().clamp(bins[0], bins[-1])
    k = bins.numel()
    below = (torch.searchsorted(bins, y.contiguous(), right=True) - 1).clamp(0, k - 2)  # [...]
    lo, hi = bins[below], bins[below + 1]
    w_hi = (y - lo) / (hi - lo)  # [...] in [0, 1]
    weights = torch.zeros(*y.shape, k, dtype=torch.float32, device=y.device)
    weights.scatter_(-1, below.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    weights.scatter_add_(-1, (below + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return weights


def twohot_decode(probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected bin value of a distribution over bins: `[..., K] -> [...]` (in bin space)."""
    return (probs.float() * bins).sum(-1)


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Prediction of a two-hot symlog head, `symexp(E[bin])`: `[..., K] -> [...]`."""
    return symexp(twohot_decode(torch.softmax(logits.float(), -1), bins))


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a two-hot symlog head against raw targets: `[..., K], [...] -> [...]`."""
    weights = twohot_encode(symlog(target.float()), bins)
    return -(weights * torch.log_softmax(logits.float(), -1)).sum(-1)


# -------------------------------------------------------------------------- categorical latents


def unimix_logits(logits: torch.Tensor, unimix: float = 0.01) -> torch.Tensor:
    """Log-probabilities of `(1 - unimix) * softmax(logits) + unimix / classes` over the last dim.

    Mixing in 1 % uniform keeps every class probability >= unimix / classes, so KLs stay bounded.
    """
    probs = torch.softmax(logits.float(), -1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


def sample_straight_through(logits: torch.Tensor) -> torch.Tensor:
    """One-hot sample of `Categorical(logits)`, straight-through gradients: `[..., C] -> [..., C]`.

    Gumbel-max sampling (argmax of logits + Gumbel noise) is exact and vectorised; the returned
    value is the one-hot sample, the gradient is that of the probabilities.
    """
    probs = torch.softmax(logits.float(), -1)
    u = torch.rand_like(probs).clamp_(1e-20, 1.0)
    index = (logits.float() - torch.log(-torch.log(u))).argmax(-1, keepdim=True)  # [..., 1]
    one_hot = torch.zeros_like(probs).scatter_(-1, index, 1.0)
    return one_hot + probs - probs.detach()


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of `Categorical(logits)` over the last dim: `[..., C] -> [...]`."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of independent categoricals, summed over them: `[..., S, C] -> [...]`."""
    logp = torch.log_softmax(p_logits.float(), -1)
    logq = torch.log_softmax(q_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum((-2, -1))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `x` over the entries where `mask` is true (all if mask is None); 0 if none."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def kl_free_bits(
    kl: torch.Tensor, free_bits: float = 1.0, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Free-bits KL loss: `max(free_bits, mean(kl))` as in STORM / Drama's code, and the raw mean.

    The clip is applied to the batch mean (not per step as in DreamerV3): below `free_bits` nats on
    average the term gives no gradient, so the latents are not pushed to collapse onto the prior.
    """
    raw = masked_mean(kl, mask)
    return raw.clamp(min=free_bits), raw
