"""Pure math for the actor-critic's targets: lambda-returns and the percentile return scale."""

from __future__ import annotations

import torch


def lambda_returns(
    reward: torch.Tensor,
    cont: torch.Tensor,
    value: torch.Tensor,
    gamma: float = 0.985,
    lam: float = 0.95,
) -> torch.Tensor:
    """TD(lambda) returns of an imagined trajectory, bootstrapped from the last value.

    `reward[:, k]` and `cont[:, k]` (= 1 - termination) are the outcome of action a_k taken in state
    s_k; `value[:, k] = V(s_k)` for k = 0..H. With G_H = V(s_H):

        G_k = r_k + gamma * c_k * ((1 - lam) * V(s_{k+1}) + lam * G_{k+1})

    reward, cont: [N, H]; value: [N, H+1] -> returns [N, H] (fp32).
    """
    reward, cont, value = reward.float(), cont.float(), value.float()
    horizon = reward.shape[1]
    if value.shape[1] != horizon + 1:
        raise ValueError(
            f"lambda_returns: value has {value.shape[1]} steps, expected {horizon + 1}"
        )
    returns = []
    last = value[:, -1]  # G_H = V(s_H)
    for k in reversed(range(horizon)):
        last = reward[:, k] + gamma * cont[:, k] * ((1.0 - lam) * value[:, k + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1], 1)


def percentile_range(x: torch.Tensor, low: float = 0.05, high: float = 0.95) -> torch.Tensor:
    """`quantile(x, high) - quantile(x, low)` over all entries (linear interpolation as numpy)."""
    x = x.detach().float().flatten()
    q = torch.quantile(x, torch.tensor([low, high], device=x.device))
    return q[1] - q[0]
