"""ℓ1 regularizer: preconditioned soft thresholding (Yun, Lozano & Yang, 2020, Eq. 3)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import ElementwiseRegularizer, cap
from .functional import prox_l1

__all__ = ["L1"]

#: elements per chunk of the metric path on CPU (two scratch buffers stay in cache)
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class L1(ElementwiseRegularizer):
    r"""λ‖x‖₁, with prox

    .. math::

        \operatorname{prox}(z)_i = \operatorname{sign}(z_i)\max\big(|z_i| - \text{step}\cdot\lambda/\text{metric}_i,\ 0\big)
        = z_i - \operatorname{clamp}(z_i, -t_i, t_i),\quad t_i = \text{step}\cdot\lambda/\text{metric}_i .

    Entries with ``|z_i| ≤ t_i`` (ties included) become exactly 0. :meth:`prox_multi` runs as
    two elementwise passes with ``metric=None`` and six with a metric, over cache-sized chunks on CPU
    (no parameter-sized temporary); it supports ``out=``.

    Args:
        lam: λ ≥ 0.

    Example:
        >>> import torch
        >>> L1(lam=0.5).prox(torch.tensor([1.0, -0.2]), step=1.0)
        tensor([0.5000, 0.0000])
    """

    def value(self, x: Tensor) -> Tensor:
        return self.lam * x.to(threshold_dtype(x)).abs().sum()

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        return prox_l1(zf, s)  # s = step·λ/metric

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        fast = (
            not isinstance(step, Tensor)
            and len({(z.dtype, z.device) for z in zs}) == 1
            and zs[0].dtype in (torch.float32, torch.float64)
            and (metrics is None or all(m.dtype == zs[0].dtype for m in metrics))
        )
        if not fast:
            return self._chunked_prox_multi(zs, step, metrics, out)
        a = float(cap(float(step) * self.lam, zs[0]))
        if out is None:
            out = [torch.empty_like(z) for z in zs]
        big = torch.finfo(zs[0].dtype).max
        ms: list[Tensor | None] = list(metrics) if metrics is not None else [None] * len(zs)
        t_buf = c_buf = None
        for z, m, o in zip(zs, ms, out):
            if not (z.is_contiguous() and o.is_contiguous() and (m is None or m.is_contiguous())):
                t = a if m is None else torch.reciprocal(m).mul_(a).clamp_max_(big)
                o.copy_(z - torch.clamp(z, -t, t))
                continue
            zf, of = z.view(-1), o.view(-1)
            mf = None if m is None else m.view(-1)
            n = zf.numel()
            chunk = min(n, _CHUNK if z.device.type == "cpu" else n)  # cache-sized on CPU
            if t_buf is None or t_buf.numel() < chunk:
                t_buf, c_buf = zf.new_empty(chunk), zf.new_empty(chunk)
            for start in range(0, n, chunk):
                zc, oc = zf[start : start + chunk], of[start : start + chunk]
                k = zc.numel()
                t, c = t_buf[:k], c_buf[:k]
                if mf is None:
                    torch.clamp(zc, -a, a, out=c)
                else:
                    # t = step·λ/metric, inf → max (a/m may overflow)
                    torch.reciprocal(mf[start : start + chunk], out=t)
                    t.mul_(a).clamp_max_(big)
                    torch.neg(t, out=c)
                    torch.maximum(zc, c, out=c)
                    torch.minimum(c, t, out=c)
                # o = z − clamp(z, −t, t): +0 inside the threshold (softshrink would give −0)
                torch.sub(zc, c, out=oc)
        return out
