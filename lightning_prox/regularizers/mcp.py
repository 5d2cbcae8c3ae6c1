"""Minimax concave penalty (Zhang 2010), exact preconditioned prox or ProxGen's printed form (Yun, Lozano & Yang, 2020, Appendix C, Eqs. 17–23)."""

from __future__ import annotations

import dataclasses
import math

from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import LONG_CHUNK, ElementwiseRegularizer, chunked_map, guarded, per_dtype
from .functional import _mcp_rho, mcp_kernel, prox_mcp, prox_mcp_paper

__all__ = ["MCP"]


@dataclasses.dataclass(frozen=True)
class MCP(ElementwiseRegularizer):
    r"""Σ_i ρ(x_i) with the minimax concave penalty

    .. math::

        \rho(x) = \lambda|x| - \frac{x^2}{2b} \ (|x| \le b\lambda), \qquad \rho(x) = \frac{b\lambda^2}{2} \ (|x| > b\lambda).

    ``exact=True``: the exact minimizer of step·ρ(x) + ½ metric_i (x − z_i)². With s = step/metric_i,
    s·ρ is MCP with λ' = sλ and b' = b/s, so the prox is the best of 0, the inner stationary point
    ``b(|z| − sλ)/(b − s)`` clipped to [0, bλ] (only when s < b) and ``max(|z|, bλ)``; ties go to the
    smaller magnitude. ``exact=False``: ProxGen Eq. 23 as printed,
    ``sign(z)·min(b·max(|z| − sλ, 0)/(b − 1), |z|)``, which only rescales λ and is not the exact prox
    when s ≠ 1 (scaling by s maps MCP(λ, b) to MCP(sλ, b/s), not MCP(sλ, b)).

    Args:
        lam: λ ≥ 0.
        b: concavity parameter (b > 0 when exact, b > 1 for the paper's formula).
        exact: exact prox (default) or the paper's formula.

    Example:
        >>> import torch
        >>> z = torch.tensor([0.5, 2.0, 5.0])
        >>> MCP(lam=1.0, b=3.0).prox(z, step=2.0)
        tensor([0., 0., 5.])
        >>> MCP(lam=1.0, b=3.0, exact=False).prox(z, step=2.0)
        tensor([0.0000, 0.0000, 4.5000])
    """

    b: float = 3.0
    exact: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        lo = 0.0 if self.exact else 1.0
        if (
            isinstance(self.b, bool)
            or not isinstance(self.b, (int, float))
            or not (math.isfinite(self.b) and self.b > lo)
        ):
            raise ValueError(f"MCP: b must be a finite number > {lo:g} (exact={self.exact}), got {self.b!r}")
        object.__setattr__(self, "b", float(self.b))

    def value(self, x: Tensor) -> Tensor:
        return _mcp_rho(x.to(threshold_dtype(x)).abs(), self.lam, self.b).sum()

    def _factor(self) -> float:
        return 1.0  # the maps take s = step/metric and λ separately

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        fn = prox_mcp if self.exact else prox_mcp_paper
        return fn(zf, s, self.lam, self.b)

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        if not self.exact or isinstance(step, Tensor):
            return self._chunked_prox_multi(zs, step, metrics, out)
        kernel = per_dtype(lambda dtype: mcp_kernel(float(step), self.lam, self.b, dtype))
        return chunked_map(zs, metrics, guarded(kernel), 9, out, LONG_CHUNK)
