"""ℓ0 regularizer: preconditioned hard thresholding (ProxGen digest 000 §2.2)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from ._base import Step, threshold_dtype
from ._elementwise import _Elementwise

__all__ = ["L0"]


@dataclasses.dataclass(frozen=True)
class L0(_Elementwise):
    r"""λ·#{i : x_i ≠ 0}, with prox (hard thresholding)

    .. math::

        \operatorname{prox}(z)_i = z_i \text{ if } |z_i| > \sqrt{2\,\text{step}\cdot\lambda/\text{metric}_i},
        \text{ else } 0 .

    At equality both 0 and ``z_i`` are minimizers; this implementation returns 0 (exact zeros win ties).

    Args:
        lam: λ ≥ 0.

    Example:
        >>> import torch
        >>> L0(lam=0.5).prox(torch.tensor([2.0, -0.9, 1.0]), step=1.0)
        tensor([2., 0., 0.])
    """

    def value(self, x: Tensor) -> Tensor:
        return self.lam * (x != 0).sum().to(threshold_dtype(x))

    def _factor(self) -> float:
        return 2.0 * self.lam

    def _map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        # s = 2·step·λ/metric: keep z where |z| > sqrt(s) (ties → 0), as prox_l0 with mu = s/2
        thr = s.sqrt() if isinstance(s, Tensor) else s**0.5
        return torch.where(zf.abs() > thr, zf, 0.0)

    _writes_out: ClassVar[bool] = True

    def _prox_multi(
        self,
        zs: list[Tensor],
        step: Step,
        metrics: list[Tensor] | None,
        x0s: list[Tensor] | None,
        max_iters: int | None,
        rtol: float | None,
        info: dict | None,
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        return self._chunked_prox_multi(zs, step, metrics, out)
