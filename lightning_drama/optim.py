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

    The step takes one kernel per operation for all the tensors of a group (`torch._foreach_*`),
    not one per tensor, and never reads a value back to the host: t and n_t are kept as 0-d
    tensors beside the parameter. :meth:`skip_next_step_if` makes the next step a no-op when a
    0-d bool tensor is true, also without a host sync (the way to skip a step on a non-finite
    gradient on a GPU without stalling it).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (4e-5).
        betas: decay of the momentum and of the second moment ((0.9, 0.999)).
        eps: added to sqrt(v) (1e-20).
        weight_decay: decoupled weight decay (1e-4).
        foreach: one kernel per operation and group (default) or the plain per-tensor loop, kept
            as the obviously-correct reference (it syncs on a skip flag).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        weight_decay: float = 1e-4,
        foreach: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LaProp: invalid learning rate {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"LaProp: betas must be in [0, 1), got {betas}")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(
                f"LaProp: eps and weight_decay must be >= 0, got {eps}, {weight_decay}"
            )
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)
        self._skip: torch.Tensor | None = None

    def skip_next_step_if(self, condition: torch.Tensor | None) -> None:
        """The next :meth:`step` leaves parameters and state untouched where `condition` (a 0-d
        bool tensor, e.g. `~torch.isfinite(grad_norm)`) is true; gradients may then hold NaN.
        None clears a flag set before."""
        self._skip = condition

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_skip", None)
        for group in self.param_groups:
            group.setdefault("foreach", True)

    def _state_of(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        dtype = _scalar_dtype(p)
        for key in ("step", "exp_avg_lr"):  # 0-d tensors (numbers in older checkpoints)
            value = state.get(key, 0.0)
            if not torch.is_tensor(value) or value.device != p.device or value.dtype != dtype:
                state[key] = torch.as_tensor(value, dtype=dtype).to(p.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip, self._skip = self._skip, None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LaProp does not support sparse gradients")
            by_place: dict[tuple, list[torch.Tensor]] = {}
            for p in params:
                by_place.setdefault((p.device, p.dtype), []).append(p)
            for tensors in by_place.values():
                update = _foreach_step if group["foreach"] else _single_tensor_step
                update(tensors, [self._state_of(p) for p in tensors], group, skip)
        return loss


def _scalar_dtype(p: torch.Tensor) -> torch.dtype:
    """t, n_t and the skip factor: fp64 beside fp64 parameters (exact tests), else fp32."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _single_tensor_step(
    params: list[torch.Tensor], states: list[dict], group: dict, skip: torch.Tensor | None
) -> None:
    """The plain loop (the reference for the foreach step)."""
    if skip is not None and bool(skip):
        return
    lr, (beta1, beta2) = group["lr"], group["betas"]
    eps, weight_decay = group["eps"], group["weight_decay"]
    for p, state in zip(params, states, strict=True):
        grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        state["exp_avg_lr"].mul_(beta1).add_((1.0 - beta1) * lr)
        bias_correction2 = 1.0 - beta2 ** state["step"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (exp_avg_sq / bias_correction2).sqrt_().add_(eps)
        exp_avg.mul_(beta1).addcdiv_(grad, denom, value=(1.0 - beta1) * lr)
        if weight_decay:
            p.mul_(1.0 - lr * weight_decay)
        p.add_(exp_avg * (-lr / state["exp_avg_lr"]))


def _foreach_step(
    params: list[torch.Tensor], states: list[dict], group: dict, skip: torch.Tensor | None
) -> None:
    """The same update for a list of tensors on one device, one kernel per operation. With a
    skip flag every change is multiplied by keep = 1 - skip (the gradients zeroed first, so that
    NaN in them cannot leak through 0 * NaN): the state and the parameters stay as they were."""
    lr, (beta1, beta2) = group["lr"], group["betas"]
    eps, weight_decay = group["eps"], group["weight_decay"]
    device = params[0].device
    grads = [p.grad for p in params]
    exp_avg = [s["exp_avg"] for s in states]
    exp_avg_sq = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    exp_avg_lr = [s["exp_avg_lr"] for s in states]
    if skip is None:
        keep = torch.ones((), dtype=_scalar_dtype(params[0]), device=device)
    else:
        keep = (~skip.to(device=device, dtype=torch.bool)).to(_scalar_dtype(params[0]))
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = torch.where(keep.bool(), flat, torch.zeros((), dtype=flat.dtype, device=device))
        sizes = [p.numel() for p in params]
        grads = [g.view_as(p) for g, p in zip(flat.split(sizes), params, strict=True)]
    beta1_t = 1.0 - (1.0 - beta1) * keep  # beta1 when stepping, 1 (no change) when skipping
    beta2_t = 1.0 - (1.0 - beta2) * keep

    torch._foreach_add_(steps, keep)
    torch._foreach_mul_(exp_avg_lr, beta1_t)
    torch._foreach_add_(exp_avg_lr, (1.0 - beta1) * lr * keep)
    torch._foreach_mul_(exp_avg_sq, beta2_t)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
    # 1 - beta2^t, floored so that a first step that is skipped (t = 0, v = 0) divides 0 by a
    # tiny number instead of 0 by 0; from t = 1 on it is >= 1 - beta2 and the floor does nothing.
    bias_correction2 = torch._foreach_pow(beta2, steps)
    torch._foreach_neg_(bias_correction2)
    torch._foreach_add_(bias_correction2, 1.0)
    torch._foreach_clamp_min_(bias_correction2, 1e-30)
    denom = torch._foreach_div(exp_avg_sq, bias_correction2)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_mul_(exp_avg, beta1_t)
    torch._foreach_addcdiv_(exp_avg, grads, denom, value=(1.0 - beta1) * lr)
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay * keep)
    # p -= lr / n * m; n is 0 only before any step, where keep = 0 and m = 0 (the floor again)
    scale = torch._foreach_clamp_min(exp_avg_lr, 1e-30)
    torch._foreach_reciprocal_(scale)
    torch._foreach_mul_(scale, -lr * keep)
    torch._foreach_addcmul_(params, exp_avg, scale)


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
