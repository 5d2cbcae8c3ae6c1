"""Applying a group's regularizer to a list of parameters in place (shared by ProxSGD and ProxGen).

The optimizers never threshold on their own (one prox layer for every optimizer): they hand the points θ̂, the
step and the diagonal metric to the regularizer. Euclidean ℓ1 goes through the in-place kernel
of :mod:`lightning_prox.regularizers._fused` (the same rounding as :class:`L1`); every other
regularizer goes through ``prox_multi`` when the class has it (batched, e.g. the inexact solver of
group lasso under a diagonal metric) and ``prox`` per tensor otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..regularizers import _fused
from ..regularizers._base import Regularizer, run_prox_multi

__all__ = ["prox_tensors_"]


def prox_tensors_(
    reg: Regularizer | None,
    params: list[Tensor],
    step: float,
    metrics: list[Tensor] | None = None,
    info: dict[str, Any] | None = None,
    *,
    fast: bool = True,
) -> None:
    """θ ← reg.prox(θ, step, metric) for every tensor of ``params``, in place.

    Args:
        reg: the group's regularizer at its current strength (``None`` or ``lam == 0``: nothing to do).
        params: the points θ̂ (parameters after the smooth step), overwritten with the prox.
        step: the prox step (the learning rate), a float ≥ 0 (0: nothing to do).
        metrics: ``None`` (Euclidean prox) or one positive diagonal metric per tensor.
        info: optional dict that receives solver statistics (e.g. ``"inner_iters"``).
        fast: use the fused in-place kernels where one exists (False: the regularizer's own ``prox``).
    """
    if reg is None or reg.lam == 0.0 or step == 0 or not params:  # step 0: the prox is the identity
        return
    if fast and metrics is None and _fused.supports(reg, params):
        _fused.soft_threshold_(params, step * reg.lam)
        return
    if hasattr(reg, "_prox_multi"):
        # out=params: regularizers that can write in place do (no parameter-sized temporary and
        # no copy back); the others copy into params themselves. Unchecked: the optimizer's metrics
        # are positive by construction (one read of every metric less)
        run_prox_multi(reg, list(params), step, metrics, info=info, out=list(params))
        return
    outs = [reg.prox(p, step, None if metrics is None else metrics[i]) for i, p in enumerate(params)]
    torch._foreach_copy_(params, outs)
