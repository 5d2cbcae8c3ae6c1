"""Quantization regularizer: l_q distance to a finite level set (ProxQuant: Bai, Wang & Liberty, ICLR 2019; revised form: Yun, Lozano & Yang, 2020, §2)."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import LONG_CHUNK, ElementwiseRegularizer, check_q, chunked_map, finite_scale, guarded
from .functional import _C_HALF, _scale_into, lq_penalty, prox_lq

__all__ = ["Quantization"]


@dataclasses.dataclass(frozen=True)
class Quantization(ElementwiseRegularizer):
    r"""λ Σ_i min_ℓ |x_i − ℓ|^q over a finite, strictly increasing level set, q ∈ {0, 1/2, 2/3, 1}.

    The prox exchanges the two minimizations,

    .. math::

        \min_x \tfrac12 (x - z)^2 + \mu \min_\ell |x - \ell|^q
        = \min_\ell \Big[\min_x \tfrac12 (x - z)^2 + \mu |x - \ell|^q\Big],\qquad \mu = \text{step}\cdot\lambda/\text{metric}_i,

    so the exact prox is the best over levels of ``ℓ + prox_lq(z − ℓ, μ)`` scored by its own level's
    objective (that score equals the true objective at the winner, so no Voronoi bookkeeping is needed).
    The inner value :math:`V(d) = \min_y \tfrac12 (y - d)^2 + \mu |y|^q` is even and non-decreasing
    in ``|d|``, so the **nearest level wins**: the prox is ``ℓ* + prox_lq(z − ℓ*, μ)`` with ``ℓ*`` the
    level nearest to ``z``. Ties (``z`` at a midpoint between levels) go to the **larger level** (e.g. ``z = 0`` with levels ``(-1, 1)``
    goes toward +1: torch.sign(0) = 0 would make 0 a minimizer). With ``levels=(-1, 1)``, ``metric=None`` and q = 1 this is
    ProxQuant's binary prox; with a preconditioner metric it is revised ProxQuant.

    Args:
        lam: λ ≥ 0.
        levels: the quantization levels, finite, strictly increasing, at least one
            (binary ``(-1, 1)``, ternary ``(-1, 0, 1)``, multi-level).
        q: the exponent of the distance, one of 0, 0.5, 2/3, 1.

    Example:
        >>> import torch
        >>> reg = Quantization(lam=0.2, levels=(-1.0, 0.0, 1.0), q=1.0)
        >>> reg.prox(torch.tensor([0.9, 0.45, -0.1, -2.0]), step=1.0)
        tensor([ 1.0000,  0.2500,  0.0000, -1.8000])
    """

    levels: tuple[float, ...] = (-1.0, 1.0)
    q: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        lv = self.levels
        if isinstance(lv, (int, float)) or not hasattr(lv, "__iter__"):
            raise ValueError(f"Quantization: levels must be a sequence of numbers, got {lv!r}")
        lv = tuple(lv)
        if (
            not lv
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in lv)
            or any(b <= a for a, b in zip(lv, lv[1:]))
        ):
            raise ValueError(
                f"Quantization: levels must be a non-empty, strictly increasing sequence of finite numbers "
                f"(no duplicates), got {self.levels!r}"
            )
        object.__setattr__(self, "levels", tuple(float(v) for v in lv))
        object.__setattr__(self, "q", check_q(type(self).__name__, self.q))

    @property
    def quant_levels(self) -> tuple[float, ...]:
        """The levels (declared for callbacks such as hard quantization)."""
        return self.levels

    def _neighbours(self, xf: Tensor) -> tuple[Tensor, Tensor]:
        lv = torch.tensor(self.levels, dtype=xf.dtype, device=xf.device)
        k = torch.searchsorted(lv, xf.contiguous())
        left = lv[torch.clamp(k - 1, min=0)]
        right = lv[torch.clamp(k, max=len(self.levels) - 1)]
        return left, right

    def value(self, x: Tensor) -> Tensor:
        xf = x.to(threshold_dtype(x))
        left, right = self._neighbours(xf)
        d = torch.minimum((xf - left).abs(), (xf - right).abs())
        return self.lam * lq_penalty(d, self.q).sum()

    def _nearest(self, zf: Tensor) -> Tensor:
        """The level nearest to each entry; at a midpoint the larger level (one pass per level gap)."""
        lv = self.levels
        if len(lv) == 1:
            return torch.full_like(zf, lv[0])
        if len(lv) <= 4:
            out = torch.full_like(zf, lv[0])
            for a, b in zip(lv, lv[1:]):
                out = torch.where(zf >= 0.5 * (a + b), b, out)
            return out
        lt = torch.tensor(lv, dtype=zf.dtype, device=zf.device)
        return lt[torch.bucketize(zf, 0.5 * (lt[1:] + lt[:-1]), right=True)]

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        # V(d) = min_y ½(y − d)² + μ|y|^q is even and non-decreasing in |d|, so the best level is the
        # nearest one (ties: the larger); the prox is that level plus the l_q prox of the offset.
        level = self._nearest(zf)
        return level + prox_lq(zf - level, s, self.q)  # s = step·λ/metric

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        lv = self.levels
        if self.q not in (0.5, 1.0) or len(lv) > 4 or isinstance(step, Tensor):
            return self._chunked_prox_multi(zs, step, metrics, out)
        num = float(step) * self._factor()

        def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
            # _map without boolean tensors (slow on CPU): the nearest level by 0/1 float masks,
            # level ← b·mask + level·(1 − mask) (exact: one term is ±0), then level + soft threshold
            level, mask, tmp, d, t, neg, az, x = bufs
            level.fill_(lv[0])
            for a, b in zip(lv, lv[1:]):
                torch.ge(z, 0.5 * (a + b), out=mask)
                torch.neg(mask, out=tmp).add_(1.0)
                level.mul_(tmp)
                torch.mul(mask, b, out=tmp)
                level.add_(tmp)
            torch.sub(z, level, out=d)
            if self.q == 0.5:
                _lhalf_into(d, m, t, mask, tmp, az, x)
            else:
                if m is None:
                    thr = finite_scale(step, None, z, self._factor())
                    torch.clamp(d, -thr, thr, out=tmp)
                else:
                    _scale_into(t, m, num)
                    torch.neg(t, out=neg)
                    torch.clamp(d, neg, t, out=tmp)
                d.sub_(tmp)
            torch.add(level, d, out=o)

        def _lhalf_into(
            d: Tensor, m: Tensor | None, t: Tensor, mask: Tensor, u: Tensor, az: Tensor, x: Tensor
        ):
            # d ← prox_lhalf(d, step·λ/m): its operations in its order, the final where as a float mask
            dt = d.dtype
            if m is None:
                mu = finite_scale(step, None, d, self._factor())
                s23 = mu ** (2.0 / 3.0) * 2.0 ** (2.0 / 3.0)
                thr: Tensor | float = _C_HALF * s23
                den: Tensor = torch.clamp(torch.as_tensor(s23, dtype=dt), min=torch.finfo(dt).tiny)
            else:
                _scale_into(t, m, num).pow_(2.0 / 3.0).mul_(2.0 ** (2.0 / 3.0))  # λ̃^{2/3}
                thr = torch.mul(t, _C_HALF, out=x)
                den = t.clamp_min_(torch.finfo(dt).tiny)
            torch.abs(d, out=az)
            torch.gt(az, thr, out=mask)  # x ≠ 0 where |d| > thr (ties → 0)
            torch.div(az, den, out=u)
            u.clamp_min_(_C_HALF).pow_(-1.5).mul_(3.0**1.5 / 8.0).arccos_()  # φ
            u.mul_(2.0 / 3.0).neg_().add_(2.0 * math.pi / 3.0).cos_().add_(1.0)
            torch.mul(d, 2.0 / 3.0, out=x)
            x.mul_(u).mul_(mask)
            # +0 (not −0) and 0 for NaN offsets where not kept, as torch.where(…, 0.0) gives
            torch.add(x, 0.0, out=d).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)

        return chunked_map(zs, metrics, guarded(kernel), 8, out, LONG_CHUNK)
