"""ℓ1 regularizer: preconditioned soft thresholding (ProxGen digest 000 §2.1)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ._base import Regularizer, Step, threshold_dtype
from .functional import prox_l1

__all__ = ["L1"]


@dataclasses.dataclass(frozen=True)
class L1(Regularizer):
    r"""λ‖x‖₁, with prox

    .. math::

        \operatorname{prox}(z)_i = \operatorname{sign}(z_i)\max\big(|z_i| - \text{step}\cdot\lambda/\text{metric}_i,\ 0\big).

    Args:
        lam: λ ≥ 0.

    Example:
        >>> import torch
        >>> L1(lam=0.5).prox(torch.tensor([1.0, -0.2]), step=1.0)
        tensor([0.5000, 0.0000])
    """

    def value(self, x: Tensor) -> Tensor:
        return self.lam * x.to(threshold_dtype(x)).abs().sum()

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        thr = step * self.lam if metric is None else (step * self.lam) / metric.to(threshold_dtype(z))
        return prox_l1(z, thr)
