"""ℓ0 regularizer: preconditioned hard thresholding (Yun, Lozano & Yang, 2020, Eq. 4)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import LONG_CHUNK, ElementwiseRegularizer, chunked_map, finite_scale, guarded
from .functional import _scale_into

__all__ = ["L0"]


@dataclasses.dataclass(frozen=True)
class L0(ElementwiseRegularizer):
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

    @property
    def zero_threshold_law(self) -> tuple[float, float]:
        return (math.sqrt(2.0), 0.5)  # |z| ≤ sqrt(2·s·λ)

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        # s = 2·step·λ/metric: keep z where |z| > sqrt(s) (ties → 0), as prox_l0 with mu = s/2
        thr = s.sqrt() if isinstance(s, Tensor) else s**0.5
        return torch.where(zf.abs() > thr, zf, 0.0)

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        if isinstance(step, Tensor):
            return self._chunked_prox_multi(zs, step, metrics, out)
        num = float(step) * self._factor()

        def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
            # where(|z| > sqrt(s), z, +0) without boolean tensors (slow on CPU): a 0/1 float mask,
            # z·mask + 0 (−0 → +0), and NaN (never above the threshold) → 0 as torch.where gives
            az, mask = bufs
            torch.abs(z, out=az)
            if m is None:
                thr = finite_scale(step, None, z, self._factor())
                torch.gt(az, thr**0.5, out=mask)
            else:
                _scale_into(mask, m, num).sqrt_()
                torch.gt(az, mask, out=mask)
            torch.mul(z, mask, out=o)
            o.add_(0.0).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)

        return chunked_map(zs, metrics, guarded(kernel), 2, out, LONG_CHUNK)
