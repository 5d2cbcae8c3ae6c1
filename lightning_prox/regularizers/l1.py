"""ℓ1 regularizer: preconditioned soft thresholding (ProxGen digest 000 §2.1)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._base import Step, threshold_dtype
from ._elementwise import _Elementwise, cap
from .functional import prox_l1

__all__ = ["L1"]


@dataclasses.dataclass(frozen=True)
class L1(_Elementwise):
    r"""λ‖x‖₁, with prox

    .. math::

        \operatorname{prox}(z)_i = \operatorname{sign}(z_i)\max\big(|z_i| - \text{step}\cdot\lambda/\text{metric}_i,\ 0\big)
        = z_i - \operatorname{clamp}(z_i, -t_i, t_i),\quad t_i = \text{step}\cdot\lambda/\text{metric}_i .

    Entries with ``|z_i| ≤ t_i`` (ties included) become exactly 0. :meth:`prox_multi` runs as
    multi-tensor ``torch._foreach_*`` passes (3 with ``metric=None``, 6 with a metric).

    Args:
        lam: λ ≥ 0.

    Example:
        >>> import torch
        >>> L1(lam=0.5).prox(torch.tensor([1.0, -0.2]), step=1.0)
        tensor([0.5000, 0.0000])
    """

    def value(self, x: Tensor) -> Tensor:
        return self.lam * x.to(threshold_dtype(x)).abs().sum()

    def _map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        return prox_l1(zf, s)  # s = step·λ/metric

    def _prox_multi(
        self,
        zs: list[Tensor],
        step: Step,
        metrics: list[Tensor] | None,
        x0s: list[Tensor] | None,
        max_iters: int | None,
        rtol: float | None,
        info: dict | None,
    ) -> list[Tensor]:
        fast = (
            not isinstance(step, Tensor)
            and len({(z.dtype, z.device) for z in zs}) == 1
            and zs[0].dtype in (torch.float32, torch.float64)
            and (metrics is None or all(m.dtype == zs[0].dtype for m in metrics))
        )
        if not fast:
            return super()._prox_multi(zs, step, metrics, x0s, max_iters, rtol, info)
        a = float(cap(float(step) * self.lam, zs[0]))
        if metrics is None:
            c = torch._foreach_clamp_min(zs, -a)
            torch._foreach_clamp_max_(c, a)
        else:
            t = torch._foreach_reciprocal(metrics)
            torch._foreach_mul_(t, a)
            torch._foreach_clamp_max_(t, torch.finfo(zs[0].dtype).max)  # a/m may overflow: inf → max
            neg = torch._foreach_neg(t)
            c = torch._foreach_maximum(zs, neg)
            torch._foreach_minimum_(c, t)
        return list(torch._foreach_sub(zs, c))
