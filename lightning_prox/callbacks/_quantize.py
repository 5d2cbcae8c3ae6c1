"""Snapping tensors to a grid of levels (pure functions used by ``HardQuantization``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_levels", "nearest_level", "quantization_sq_error"]


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Sorted, distinct, finite levels; ``ValueError`` naming the value otherwise."""
    try:
        lv = tuple(float(v) for v in levels)
    except (TypeError, ValueError):
        raise ValueError(f"levels must be a sequence of numbers, got {levels!r}") from None
    if not lv or any(v != v or abs(v) == float("inf") for v in lv):
        raise ValueError(f"levels must be a non-empty sequence of finite numbers, got {levels!r}")
    if len(set(lv)) != len(lv):
        raise ValueError(f"levels must be distinct, got {levels!r}")
    return tuple(sorted(lv))


@torch.no_grad()
def nearest_level(x: Tensor, levels: Sequence[float]) -> Tensor:
    """Each entry of ``x`` replaced by its nearest level; a tie (a midpoint) goes to the larger level.

    Comparisons run in float32 for half types; the result has ``x``'s dtype and device and holds
    exactly the level values (e.g. binary ``(-1, 1)`` maps 0 to +1, deterministic on every rank).

    Example:
        >>> nearest_level(torch.tensor([-0.3, 0.0, 0.2, 0.5, 2.0]), (-1.0, 0.0, 1.0))
        tensor([0., 0., 0., 1., 1.])
    """
    lv = check_levels(levels)
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    table = torch.tensor(lv, dtype=work.dtype, device=x.device)
    if len(lv) == 1:
        return torch.full_like(x, lv[0])
    mids = (table[1:] + table[:-1]) / 2
    idx = torch.bucketize(work, mids, right=True)
    return table[idx].to(x.dtype)


@torch.no_grad()
def quantization_sq_error(x: Tensor, levels: Sequence[float]) -> Tensor:
    """Σ (x − nearest_level(x))² as a float64 0-dim tensor on ``x``'s device (additive; no host sync)."""
    q = nearest_level(x, levels)
    return (x.double() - q.double()).pow(2).sum()
