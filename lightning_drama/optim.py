"""LaProp (Ziyin et al., 2020) and the linear warm-up used for every Drama optimiser."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class LaProp(Optimizer):
    """Adam with the momentum taken over the *normalised* gradient (LaProp, Ziyin et al. 2020).

    Per parameter, at step t with learning rate lr_t (bias corrections as in the authors' code, so a
    changing lr, e.g. during warm-up, is corrected for exactly):

        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        m_t = beta1 * m_{t-1} + (1 - beta1) * lr_t * g_t / (sqrt(v_t / (1 - beta2^t)) + eps)
        n_t = beta1 * n_{t-1} + (1 - beta1) * lr_t                     (n_0 = 0)
        p_t = p_{t-1} - lr_t * m_t / n_t - lr_t * weight_decay * p_{t-1}

    Weight decay is decoupled (AdamW-style, scaled by lr). Unlike Adam, the tiny eps 1e-20 of the
    paper is safe: the momentum averages bounded steps g / sqrt(v).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (4e-5).
        betas: decay of the momentum and of the second moment ((0.9, 0.999)).
        eps: added to sqrt(v) (1e-20).
        weight_decay: decoupled weight decay (1e-4).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        weight_decay: float = 1e-4,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LaProp: invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LaProp: betas must be in [0, 1), got {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"LaProp: eps and weight_decay must be >= 0, got {eps}, {weight_decay}"
            )
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LaProp does not support sparse gradients")
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_lr"] = 0.0
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["exp_avg_lr"] = beta1 * state["exp_avg_lr"] + (1.0 - beta1) * lr
                bias_correction2 = 1.0 - beta2 ** state["step"]

                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
                exp_avg.mul_(beta1).addcdiv_(grad, denom, value=(1.0 - beta1) * lr)
                if weight_decay:
                    p.mul_(1.0 - lr * weight_decay)
                if state["exp_avg_lr"] > 0.0:
                    p.add_(exp_avg, alpha=-lr / state["exp_avg_lr"])
        return loss


def linear_warmup(warmup_steps: int = 1000) -> Callable[[int], float]:
    """LR multiplier for `torch.optim.lr_scheduler.LambdaLR`: (k + 1) / warmup_steps for update k
    (0-based; the first update already moves), then 1.

    Example: `LambdaLR(LaProp(model.parameters()), linear_warmup(1000))`, `scheduler.step()` after
    every `optimizer.step()`.
    """
    if warmup_steps < 0:
        raise ValueError(f"linear_warmup: warmup_steps must be >= 0, got {warmup_steps}")

    def factor(step: int) -> float:
        return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)

    return factor
