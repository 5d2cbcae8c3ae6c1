"""Per-group statistics the proximal optimizers expose to callbacks (computed on demand, not in ``step``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._common import group_regularizer

__all__ = ["group_stats"]


def group_stats(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    metric_fn: Callable[[dict[str, Any]], list[Tensor | None]] | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    """``lr``, ``lam``, ``regularizer``, ``mean_threshold``, ``zeros``, ``numel`` (+ solver ``info``).

    ``mean_threshold`` is step·λ·mean(1/metric) over the group's elements (step·λ for a Euclidean
    prox): the ℓ1 soft threshold averaged over the group, the scale every other regularizer's
    threshold is a function of. Values are 0-dim float64 tensors on the group's first device; no
    host read happens here.
    """
    params: list[Tensor] = list(group["params"])
    reg = group_regularizer(group)
    device = params[0].device if params else torch.device("cpu")
    zeros = torch.zeros((), dtype=torch.int64, device=device)
    numel = 0
    for p in params:
        zeros = zeros + (p.detach() == 0).sum().to(device)
        numel += p.numel()
    lr, lam = float(group["lr"]), float(group.get("lam", 0.0))
    scale = lr * lam if reg is not None else 0.0
    if scale == 0.0 or metric_fn is None or numel == 0:
        mean_thr = torch.tensor(scale, dtype=torch.float64, device=device)
    else:
        total = torch.zeros((), dtype=torch.float64, device=device)
        counted = 0
        for p, d in zip(params, metric_fn(group)):
            if d is None:  # no state yet: this tensor was never stepped
                continue
            total = total + d.to(torch.float64).reciprocal().sum().to(device)
            counted += p.numel()
        mean_thr = total * (scale / max(counted, 1))
    out: dict[str, Any] = {
        "lr": lr,
        "lam": lam,
        "regularizer": None if reg is None else type(reg).__name__,
        "mean_threshold": mean_thr,
        "zeros": zeros,
        "numel": numel,
    }
    out.update(info)
    return out
