"""Nuclear norm of a weight viewed as a matrix: SVD shrinkage, screening + inexact PG under a metric.

RAMDA (Huang & Lee, NeurIPS 2024) Appendix E and ``pgd_solver_nuclear`` of the authors' code
(ismoptgroup/ramda_exp, ``Core/solver.py``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor

from ._base import ProxOptions, Regularizer, Step, threshold_dtype
from ._elementwise import cap
from .group_lasso import _check_solver_args

__all__ = ["NuclearNorm"]

_CHECK_EVERY_DEVICE = 4


def _svt(y: Tensor, thr: Tensor | float) -> tuple[Tensor, Tensor]:
    """Singular value thresholding of a batch of matrices: (U·max(S − thr, 0)·Vᴴ, shrunk S)."""
    u, s, vh = torch.linalg.svd(y, full_matrices=False)
    s = torch.clamp_min(s - thr, 0.0)
    return (u * s.unsqueeze(-2)) @ vh, s


@dataclasses.dataclass(frozen=True)
class NuclearNorm(Regularizer):
    r"""λ‖X‖_* = λ Σ σ_k(X) of the tensor viewed as ``X = x.reshape(out, -1)``.

    .. math::

        \operatorname{prox}(z) = U \max(\Sigma - \text{step}\cdot\lambda / c,\ 0) V^\top
        \quad\text{for } Z = U\Sigma V^\top \text{ and a metric constant } c \text{ (or None, } c = 1).

    Under a non-constant diagonal metric ``m`` there is no closed form. The whole matrix is zero iff
    ``‖m ⊙ Z‖₂ ≤ step·λ`` (spectral norm; the optimality condition at 0), which is screened exactly;
    otherwise proximal gradient runs with step ``η = 1/max(m)``,
    ``X ← svt(X − η m ⊙ (X − Z), η·step·λ)``, stopped by ``(Q_{j-1} − Q_j)/(|Q_j| + 1) < rtol``
    (at least 2, at most ``max_iters`` iterations). Matrices of equal shape are solved as one batch.

    Args:
        lam: λ ≥ 0.
        max_iters: iteration cap of the inexact solver (≥ 1).
        rtol: relative objective decrease that stops the solver (≥ 0).

    Example:
        >>> import torch
        >>> NuclearNorm(lam=1.0).prox(torch.diag(torch.tensor([3.0, 0.5])), step=1.0)
        tensor([[2., 0.],
                [0., 0.]])
    """

    max_iters: int = 100
    rtol: float = 1e-8

    inexact_under_metric: ClassVar[bool] = True
    counts_rank: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_solver_args(type(self).__name__, self.max_iters, self.rtol)

    def check_param(self, shape: tuple[int, ...], name: str = "parameter") -> None:
        if len(shape) < 2:
            raise ValueError(
                f"NuclearNorm cannot regularize {name} of shape {tuple(shape)}: it needs a tensor with at "
                "least 2 dimensions (viewed as [out, -1]); exclude it or use an elementwise regularizer"
            )

    def value(self, x: Tensor) -> Tensor:
        self.check_param(tuple(x.shape))
        xf = x.to(threshold_dtype(x)).reshape(x.shape[0], -1)
        if xf.numel() == 0:
            return xf.new_zeros(())
        return self.lam * torch.linalg.svdvals(xf).sum()

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        return self._prox_multi([z], step, None if metric is None else [metric], ProxOptions())[0]

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        x0s, max_iters, rtol, info = opts.x0s, opts.max_iters, opts.rtol, opts.info
        for z in zs:
            self.check_param(tuple(z.shape))
        tau = cap(step * self.lam, zs[0]) if zs else step * self.lam
        max_iters = self.max_iters if max_iters is None else max_iters
        rtol = self.rtol if rtol is None else rtol
        out: list[Tensor | None] = [None] * len(zs)
        mats = {}
        for t, z in enumerate(zs):
            if z.numel() == 0:
                out[t] = z.clone()
            else:
                mats[t] = z.to(threshold_dtype(z)).reshape(z.shape[0], -1)
        if metrics is None:
            for t, zm in mats.items():
                out[t] = _svt(zm, tau)[0].reshape(zs[t].shape).to(zs[t].dtype)
            return out  # type: ignore[return-value]

        ms = {t: metrics[t].to(mats[t].dtype).reshape(mats[t].shape) for t in mats}
        # one host read: which metrics are constant, which matrices are screened to zero
        mnmx = {t: torch.aminmax(m) for t, m in ms.items()}
        spec = {t: torch.linalg.matrix_norm(ms[t] * mats[t], ord=2) for t in mats}
        keys = list(mats)
        if not keys:
            return out  # type: ignore[return-value]
        dev0 = zs[keys[0]].device
        flags = torch.stack(
            [torch.stack([(mnmx[t][0] == mnmx[t][1]), ~(spec[t] > tau)]).to(dev0) for t in keys]
        ).cpu()
        uniform = {t: bool(flags[i, 0]) for i, t in enumerate(keys)}
        screened = {t: bool(flags[i, 1]) for i, t in enumerate(keys)}
        n_screened = sum(screened.values())
        live: dict[tuple, list[int]] = {}
        for t in keys:
            z = zs[t]
            if screened[t]:
                out[t] = torch.zeros_like(z)
            elif uniform[t]:
                out[t] = _svt(mats[t], tau / mnmx[t][1])[0].reshape(z.shape).to(z.dtype)
            else:
                live.setdefault((tuple(mats[t].shape), mats[t].dtype, z.device), []).append(t)
        iters = 0
        if live:
            batches = []
            for idxs in live.values():
                zb = torch.stack([mats[t] for t in idxs])
                mb = torch.stack([ms[t] for t in idxs])
                eta = torch.stack([mnmx[t][1] for t in idxs]).reciprocal().reshape(-1, 1, 1)
                if x0s is not None:
                    xb = torch.stack([x0s[t].to(zb.dtype).reshape(zb.shape[1:]) for t in idxs])
                else:
                    xb = zb.clone()
                batches.append([idxs, zb, mb, eta, xb])
            check_every = 1 if dev0.type == "cpu" else _CHECK_EVERY_DEVICE
            q_prev = None
            pending: list[Tensor] = []
            for j in range(1, max_iters + 1):
                qs = []
                for b in batches:
                    _, zb, mb, eta, xb = b
                    y = xb - eta * mb * (xb - zb)
                    xb, s = _svt(y, eta.reshape(-1, 1) * tau)
                    b[4] = xb
                    d = xb - zb
                    qs.append((0.5 * (mb * d * d).sum((1, 2)) + tau * s.sum(1)).to(torch.float64).to(dev0))
                q = torch.cat(qs)
                iters = j
                if q_prev is not None:
                    pending.append(((q_prev - q) / (q.abs() + 1.0)).max() < rtol)
                q_prev = q
                if j >= 2 and (j == max_iters or len(pending) >= check_every):
                    if bool(torch.stack(pending).any()):
                        break
                    pending = []
            for idxs, _, _, _, xb in batches:
                for t, x in zip(idxs, xb):
                    out[t] = x.reshape(zs[t].shape).to(zs[t].dtype)
        if info is not None:
            info["inner_iters"] = iters
            info["screened"] = n_screened
        return out  # type: ignore[return-value]
