"""In-place multi-tensor prox kernels for the optimizers' hot path (ℓ1 soft thresholding).

These compute exactly what :meth:`L1.prox` computes (same rounding: the threshold is
``(step·λ)·(1/metric)`` and the map is ``z − clamp(z, −t, t)`` = ``sign(z)·max(|z| − t, 0)``), but
write into the parameters instead of allocating new tensors, and reuse scratch buffers. Half
precision tensors are not handled here (DESIGN.md §3 wants float32 thresholds): :func:`supports`
says no and the optimizers fall back to the regularizer's own ``prox``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Regularizer
from .l1 import L1

__all__ = ["prox_", "soft_threshold_", "supports"]

_FAST_DTYPES = (torch.float32, torch.float64)


def supports(reg: Regularizer, params: list[Tensor]) -> bool:
    """True when :func:`prox_` has an in-place kernel for ``reg`` on these tensors."""
    return type(reg) is L1 and all(p.dtype in _FAST_DTYPES for p in params)


def prox_(reg: Regularizer, params: list[Tensor], step: float, metrics: list[Tensor] | None) -> None:
    """θ ← reg.prox(θ, step, metric) in place for a regularizer accepted by :func:`supports`."""
    c = step * reg.lam
    if metrics is None:
        soft_threshold_(params, c)
        return
    thr = torch._foreach_reciprocal(metrics)
    soft_threshold_(params, c, thr)


def soft_threshold_(params: list[Tensor], c: float, inv_metrics: list[Tensor] | None = None) -> None:
    """Soft thresholding in place, θ ← sign(θ)·max(|θ| − t, 0) with t = c (or c·inv_metric).

    Args:
        params: tensors overwritten with the result.
        c: the threshold scale step·λ (a float).
        inv_metrics: ``None`` (uniform threshold ``c``) or 1/metric per tensor; these scratch
            tensors are overwritten (they hold the thresholds afterwards, then garbage).
    """
    if inv_metrics is None:
        for p in params:
            torch._C._nn.softshrink(p, c, out=p)
        return
    torch._foreach_mul_(inv_metrics, c)  # t = c / metric, rounded as L1.prox rounds it
    for p, t in zip(params, inv_metrics):
        lo = torch.neg(t)
        p.sub_(torch.clamp(p, lo, t))
