"""SCAD penalty (Fan & Li 2001), exact preconditioned prox or ProxGen's printed form (Yun, Lozano & Yang, 2020, Appendix C, Eqs. 24–29)."""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import LONG_CHUNK, ElementwiseRegularizer, chunked_map, guarded, per_dtype
from .functional import _scad_rho, prox_scad, prox_scad_paper, scad_kernel

__all__ = ["SCAD"]


@dataclasses.dataclass(frozen=True)
class SCAD(ElementwiseRegularizer):
    r"""Σ_i ρ(x_i) with the smoothly clipped absolute deviation penalty (a > 2)

    .. math::

        \rho(x) = \begin{cases} \lambda|x| & |x| \le \lambda \\
        -\dfrac{x^2 - 2a\lambda|x| + \lambda^2}{2(a-1)} & \lambda < |x| \le a\lambda \\
        \dfrac{(a+1)\lambda^2}{2} & |x| > a\lambda \end{cases}

    ``exact=True``: the exact minimizer of step·ρ(x) + ½ metric_i (x − z_i)². With s = step/metric_i,
    s·ρ is *not* a SCAD with rescaled λ (its knots stay at λ and aλ), so each piece is minimized:
    ``clamp(|z| − sλ, 0, λ)``, the middle piece's stationary point ``((a−1)|z| − saλ)/(a−1−s)`` clipped
    to [λ, aλ] (only when that piece is convex, s < a − 1), and ``max(|z|, aλ)``; the best of these and
    0 wins, ties going to the smaller magnitude. ``exact=False``: ProxGen Eq. 29 as printed, the unit
    SCAD prox with λ_i = sλ and ``a`` unchanged (Eq. 29 of the ProxGen paper: not the exact prox when s ≠ 1).

    Args:
        lam: λ ≥ 0.
        a: the SCAD parameter, a > 2 (3.7 is the usual choice).
        exact: exact prox (default) or the paper's formula.

    Example:
        >>> import torch
        >>> z = torch.tensor([0.5, 3.0, 5.0])
        >>> SCAD(lam=1.0, a=3.7).prox(z, step=2.0)
        tensor([0., 1., 5.])
        >>> SCAD(lam=1.0, a=3.7, exact=False).prox(z, step=2.0)
        tensor([0.0000, 1.0000, 3.5882])
    """

    a: float = 3.7
    exact: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.a, bool)
            or not isinstance(self.a, (int, float))
            or not (math.isfinite(self.a) and self.a > 2)
        ):
            raise ValueError(f"SCAD: a must be a finite number > 2, got {self.a!r}")
        object.__setattr__(self, "a", float(self.a))

    def value(self, x: Tensor) -> Tensor:
        return _scad_rho(x.to(threshold_dtype(x)).abs(), self.lam, self.a).sum()

    def _factor(self) -> float:
        return 1.0  # the maps take s = step/metric and λ separately

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        fn = prox_scad if self.exact else prox_scad_paper
        return fn(zf, s, self.lam, self.a)

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        if not self.exact or isinstance(step, Tensor):
            return self._chunked_prox_multi(zs, step, metrics, out)
        kernel = per_dtype(lambda dtype: scad_kernel(float(step), self.lam, self.a, dtype))
        return chunked_map(zs, metrics, guarded(kernel), 9, out, LONG_CHUNK)
