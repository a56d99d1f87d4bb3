"""Pure math for the actor-critic's targets: lambda-returns and the percentile return scale."""

from __future__ import annotations

import torch

BOOTSTRAP_MODES = ("reference", "next")


def lambda_returns(
    reward: torch.Tensor,
    cont: torch.Tensor,
    value: torch.Tensor,
    gamma: float = 0.985,
    lam: float = 0.95,
    bootstrap: str = "reference",
) -> torch.Tensor:
    """TD(lambda) returns of an imagined trajectory, bootstrapped from the last value.

    `reward[:, k]` and `cont[:, k]` (= 1 - termination) belong to step k; `value[:, k] = V(s_k)`
    for k = 0..H. With G_H = V(s_H):

        "reference": G_k = r_k + gamma * c_k * ((1 - lam) * V(s_k)     + lam * G_{k+1})
        "next":      G_k = r_k + gamma * c_k * ((1 - lam) * V(s_{k+1}) + lam * G_{k+1})

    "reference" is the Drama code's `calc_lambda_return` (agents.py), which the paper's numbers
    come from: the one-step bootstrap uses the value of the state the step starts in. "next" is
    the textbook (DreamerV3) form.

    reward, cont: [N, H]; value: [N, H+1] -> returns [N, H] (fp32).
    """
    if bootstrap not in BOOTSTRAP_MODES:
        raise ValueError(f"unknown bootstrap {bootstrap!r}; choose one of {BOOTSTRAP_MODES}")
    reward, cont, value = reward.float(), cont.float(), value.float()
    horizon = reward.shape[1]
    if value.shape[1] != horizon + 1:
        raise ValueError(
            f"lambda_returns: value has {value.shape[1]} steps, expected {horizon + 1}"
        )
    offset = 0 if bootstrap == "reference" else 1
    returns = []
    last = value[:, -1]  # G_H = V(s_H)
    for k in reversed(range(horizon)):
        one_step = value[:, k + offset]
        last = reward[:, k] + gamma * cont[:, k] * ((1.0 - lam) * one_step + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1], 1)


def percentile_range(x: torch.Tensor, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """`quantile(x, high) - quantile(x, low)` over all entries (linear interpolation as numpy)."""
    x = x.detach().float().flatten()
    q = torch.quantile(x, torch.tensor([low, high], device=x.device))
    return q[1] - q[0]
