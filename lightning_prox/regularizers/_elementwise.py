"""Shared plumbing of the separable (elementwise) regularizers: the scale s = step/metric."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ._base import Regularizer, Step, threshold_dtype

__all__ = ["finite_scale"]

_Q_VALUES = (0.0, 0.5, 2.0 / 3.0, 1.0)


def finite_scale(step: Step, metric: Tensor | None, like: Tensor, factor: float = 1.0) -> Tensor | float:
    """factor·step/metric in ``like``'s compute dtype, capped at the largest finite value (never inf)."""
    dt = threshold_dtype(like)
    big = torch.finfo(dt).max
    if metric is None:
        if isinstance(step, Tensor):
            return torch.clamp(step.to(dt) * factor, max=big)
        v = float(step) * factor
        return min(v, big) if math.isfinite(v) else big
    num = step.to(dt) * factor if isinstance(step, Tensor) else float(step) * factor
    if not isinstance(num, Tensor) and not math.isfinite(num):
        num = big
    return torch.clamp(num / metric.to(dt), max=big)


def check_q(name: str, q: float) -> float:
    """Return the canonical q ∈ {0, 1/2, 2/3, 1}; a ValueError naming the accepted values otherwise."""
    if not isinstance(q, bool) and isinstance(q, (int, float)):
        for v in _Q_VALUES:
            if abs(float(q) - v) < 1e-6:
                return v
    raise ValueError(f"{name}: q must be one of 0, 0.5, 2/3 (0.6667), 1, got {q!r}")


@dataclasses.dataclass(frozen=True)
class _Elementwise(Regularizer):
    """Separable regularizer: prox(z)_i = map(z_i, s_i) with s = factor·step/metric (float32 or wider).

    ``_factor()`` folds a constant into the one division by the metric (λ for the l_q family, 1 for
    MCP/SCAD whose maps take s = step/metric), so the scale costs one pass plus one clamp.
    """

    def _factor(self) -> float:
        return self.lam

    def _map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        raise NotImplementedError

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        zf = z.to(threshold_dtype(z))
        return self._map(zf, finite_scale(step, metric, z, self._factor())).to(z.dtype)


def cap(v: Tensor | float, like: Tensor) -> Tensor | float:
    """Cap a threshold scale at the largest finite value of ``like``'s compute dtype."""
    big = torch.finfo(threshold_dtype(like)).max
    if isinstance(v, Tensor):
        return torch.clamp(v, max=big)
    return v if v <= big else big
