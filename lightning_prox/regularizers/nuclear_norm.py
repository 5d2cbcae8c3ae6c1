"""Nuclear norm of a weight viewed as a matrix: SVD shrinkage; screening + proximal gradient under a metric.

RAMDA (Huang & Lee, NeurIPS 2024) Appendix E and ``pgd_solver_nuclear`` of the authors' code
(ismoptgroup/ramda_exp, ``Core/solver.py``) for the screening test and the proximal-gradient solver;
FISTA (Beck & Teboulle, SIAM J. Imaging Sci. 2009) with the gradient restart of O'Donoghue & Candès
(Found. Comput. Math. 2015, Section 3.2) for the default accelerated solver.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._base import ProxOptions, Regularizer, Step, threshold_dtype, warn_at_cap
from ._elementwise import cap
from .group_lasso import _check_solver_args

__all__ = ["NuclearNorm"]

_CHECK_EVERY_DEVICE = 4


def _svt(y: Tensor, thr: Tensor | float) -> tuple[Tensor, Tensor]:
    """Singular value thresholding of a batch of matrices: (U·max(S − thr, 0)·Vᴴ, shrunk S)."""
    u, s, vh = torch.linalg.svd(y, full_matrices=False)
    s = torch.clamp_min(s - thr, 0.0)
    return (u * s.unsqueeze(-2)) @ vh, s


def _pow2(v: Tensor) -> Tensor:
    """2^(e−1) for v = f·2^e, f ∈ [0.5, 1) (0.5 for v = 0): v/2^(e−1) ∈ [1, 2), an exact division, and
    2^(e−1) ≤ v stays finite for the dtype's max."""
    return torch.ldexp(torch.ones_like(v), torch.frexp(v).exponent - 1)


def _nan_unless(ok: Tensor, x: Tensor) -> Tensor:
    return torch.where(ok, x, torch.nan)


class _Batch:
    """Matrices of one shape solved together: Z, metric M, step η = 1/max M, iterate X, extrapolated
    point Y, momentum t, and the last relative duality gap of each matrix."""

    def __init__(
        self, idxs: list[int], z: Tensor, m: Tensor, eta: Tensor, tau: Tensor, x0: Tensor | None
    ) -> None:
        self.idxs, self.z, self.m, self.eta, self.tau = idxs, z, m, eta, tau
        self.x = z.clone() if x0 is None else x0
        self.y = self.x
        self.t = torch.ones_like(eta)
        self.gap = torch.full((len(idxs),), torch.inf, dtype=torch.float64, device=z.device)

    def step(self, accelerated: bool) -> Tensor:
        """One proximal-gradient step from Y; returns the objective Q of the new iterate (float64).

        The dual point ``G = (W − X)/η = U·min(S, ητ)·Vᴴ/η`` of the step (W = Y − η M⊙(Y − Z),
        X = svt(W, ητ)) has ‖G‖₂ ≤ τ, so ``D(G) = ⟨G, Z⟩ − ½ Σ G²/M`` is a lower bound on the optimal
        value and ``(Q(X) − D(G))/D(G)`` bounds X's relative objective gap ``(Q(X) − Q*)/Q*`` at no extra SVD.
        """
        w = self.y - self.eta * self.m * (self.y - self.z)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        tau = self.tau
        thr = self.eta.reshape(-1, 1) * tau.reshape(-1, 1)
        s_x = torch.clamp_min(s - thr, 0.0)
        x = (u * s_x.unsqueeze(-2)) @ vh
        g = (u * torch.minimum(s, thr).unsqueeze(-2)) @ vh / self.eta
        d = x - self.z
        q = (0.5 * (self.m * d * d).sum((1, 2)) + tau * s_x.sum(1)).to(torch.float64)
        dual = ((g * self.z).sum((1, 2)) - 0.5 * (g * g / self.m).sum((1, 2))).to(torch.float64)
        # relative to D ≤ Q*: bounds (Q(X) − Q*)/Q*
        self.q, self.dual = q, dual
        self.gap = (q - dual) / dual.clamp_min(torch.finfo(torch.float64).tiny)
        if accelerated:
            restart = ((self.y - x) * (x - self.x)).sum((1, 2), keepdim=True) > 0
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * self.t * self.t))
            beta = torch.where(restart, 0.0, (self.t - 1.0) / t_new)
            self.t = torch.where(restart, 1.0, t_new)
            self.y = x + beta * (x - self.x)
        else:
            self.y = x
        self.x = x
        return q


def _solve(batches: list[_Batch], max_iters: int, rtol: float, solver: str, dev0) -> int:
    """Run every batch to its stop test; returns the iterations run (``max_iters``: stopped at the cap).

    ``"apg"``: stop once every matrix's relative duality gap is ≤ tol = max(rtol, 8·eps) (at least one
    iteration). ``"pg"`` (the papers'): stop once (Q_{j−1} − Q_j)/(|Q_j| + 1) < rtol for every matrix
    (at least 2 iterations).
    """
    accelerated = solver == "apg"
    tol = max(rtol, 8 * torch.finfo(batches[0].z.dtype).eps)
    check_every = 1 if dev0.type == "cpu" else _CHECK_EVERY_DEVICE
    q_prev = None
    pending: list[Tensor] = []
    for j in range(1, max_iters + 1):
        q = torch.cat([b.step(accelerated).to(dev0) for b in batches])
        if accelerated:
            pending.append(torch.cat([b.gap.to(dev0) for b in batches]).max() <= tol)
        elif q_prev is not None:
            pending.append(((q_prev - q) / (q.abs() + 1.0)).max() < rtol)
        q_prev = q
        first = 1 if accelerated else 2
        if j >= first and (j == max_iters or len(pending) >= check_every):
            if bool(torch.stack(pending).any()):
                return j
            pending = []
    return max_iters


def _warn_if_capped(name: str, batches: list[_Batch], zs: list[Tensor], max_iters: int, rtol: float) -> None:
    """Warn when a solve ended at its cap farther than rtol from optimal (worst matrix of the call).

    Far from the optimum the step's dual point can be poor, so the gap also tries ``M⊙(Z − X)``
    scaled into the spectral ball of radius τ (one spectral norm, only here) and keeps the better.
    """
    gaps = []
    for b in batches:
        g = b.m * (b.z - b.x)
        nrm = torch.linalg.matrix_norm(g, ord=2).reshape(-1, 1, 1)
        tau = b.tau.reshape(-1, 1, 1)
        g = g * torch.where(nrm > tau, tau / nrm.clamp_min(torch.finfo(nrm.dtype).tiny), 1.0)
        dual = ((g * b.z).sum((1, 2)) - 0.5 * (g * g / b.m).sum((1, 2))).to(torch.float64)
        best = torch.maximum(dual, b.dual)
        gaps.append(((b.q - best) / best.clamp_min(torch.finfo(torch.float64).tiny)).cpu())
    gap_all = torch.cat(gaps)
    worst = int(gap_all.argmax())
    gap = float(gap_all[worst])
    if gap > max(rtol, 8 * torch.finfo(batches[0].z.dtype).eps):
        t = [i for b in batches for i in b.idxs][worst]
        warn_at_cap(name, t, tuple(zs[t].shape), gap, max_iters, rtol)


@dataclasses.dataclass(frozen=True)
class NuclearNorm(Regularizer):
    r"""λ‖X‖_* = λ Σ σ_k(X) of the tensor viewed as ``X = x.reshape(out, -1)``.

    .. math::

        \operatorname{prox}(z) = U \max(\Sigma - \text{step}\cdot\lambda / c,\ 0) V^\top
        \quad\text{for } Z = U\Sigma V^\top \text{ and a metric constant } c \text{ (or None, } c = 1).

    Under a non-constant diagonal metric ``m`` there is no closed form. The whole matrix is zero iff
    ``‖m ⊙ Z‖₂ ≤ step·λ`` (spectral norm; the optimality condition at 0), which is screened exactly;
    otherwise proximal gradient runs with step ``η = 1/max(m)``,
    ``X ← svt(Y − η m ⊙ (Y − Z), η·step·λ)`` (one SVD per iteration; matrices of equal shape are
    solved as one batch), by ``solver``:

    * ``"apg"`` (default): accelerated (FISTA, Beck & Teboulle 2009) with the gradient restart of
      O'Donoghue & Candès (2015, Section 3.2), stopped by a **duality gap**: every step yields a dual
      point ``G`` with ``‖G‖₂ ≤ step·λ`` at no extra SVD, and the solve stops once
      ``(Q(X) − D(G))/D(G) ≤ rtol`` (floor 8·eps of the dtype), which bounds the relative distance
      of the objective ``Q`` to its optimum. Its iterations grow like √(max m / min m): about 50 for a
      metric spread over one decade, 600 over three (Adam's ``sqrt(v̂) + eps`` of a trained layer).
    * ``"pg"``: the papers' plain proximal gradient (Huang & Lee, 2024, Algorithm 2), stopped when
      ``(Q_{j-1} − Q_j)/(|Q_j| + 1) < rtol`` (at least 2 iterations). Use it to reproduce the papers;
      it guarantees only a monotone decrease of ``Q``: with a metric spread over three decades it
      stops 1e-2 (relative) from the optimum, with too high a rank.

    A ``+inf`` metric entry pins the whole matrix (the result is ``z``: the entry is fixed and the
    singular values cannot move without it). The gap bounds the objective; the entries are accurate
    to about its square root (in float32, whose gap floor is ~1e-6: ~1e-3 relative along the
    worst-conditioned direction). Either way the result is the iterate at the stop; when a solve
    reaches ``max_iters`` with a duality gap above ``rtol``, a ``RuntimeWarning`` names the tensor,
    the gap and the cap (once per tensor shape).

    Args:
        lam: λ ≥ 0.
        max_iters: iteration cap of the solver (≥ 1).
        rtol: ``"apg"``: relative duality gap that stops the solver; ``"pg"``: relative objective
            decrease (≥ 0).
        solver: ``"apg"`` (default, duality-gap stop) or ``"pg"`` (the papers' solver).

    Example:
        >>> import torch
        >>> NuclearNorm(lam=1.0).prox(torch.diag(torch.tensor([3.0, 0.5])), step=1.0)
        tensor([[2., 0.],
                [0., 0.]])
        >>> m = torch.tensor([[4.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> x = NuclearNorm(lam=1.0).prox(torch.eye(2, dtype=torch.float64), step=1.0, metric=m)
        >>> x.diagonal().round(decimals=3)  # the optimum is diag(0.75, 0.5)
        tensor([0.7500, 0.5000], dtype=torch.float64)
    """

    max_iters: int = 1000
    rtol: float = 1e-8
    solver: Literal["apg", "pg"] = "apg"

    inexact_under_metric: ClassVar[bool] = True
    counts_rank: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_solver_args(type(self).__name__, self.max_iters, self.rtol)
        if self.solver not in ("apg", "pg"):
            raise ValueError(f"NuclearNorm: solver must be 'apg' or 'pg', got {self.solver!r}")

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
        x0s, info = opts.x0s, opts.info
        for z in zs:
            self.check_param(tuple(z.shape))
        tau = cap(step * self.lam, zs[0]) if zs else step * self.lam
        max_iters = self.max_iters if opts.max_iters is None else opts.max_iters
        rtol = self.rtol if opts.rtol is None else opts.rtol
        out: list[Tensor | None] = [None] * len(zs)
        mats, finite, scale, taus = {}, {}, {}, {}
        for t, z in enumerate(zs):
            if z.numel() == 0:
                out[t] = z.clone()
            else:
                zm = z.to(threshold_dtype(z)).reshape(z.shape[0], -1)
                # a matrix with a NaN or ±inf entry has no SVD: it is solved as zeros and comes out
                # all NaN (a 0-dim mask, so no device sync)
                finite[t] = torch.isfinite(zm).all()
                zm = torch.where(finite[t], zm, 0.0)
                # solved in units of a power of two near max|z| (exact scaling): an SVD of entries
                # near the dtype's max overflows; τ scales along (svt(s·Y, s·τ) = s·svt(Y, τ))
                scale[t] = _pow2(zm.abs().amax())
                mats[t] = zm / scale[t]
                taus[t] = torch.clamp(tau / scale[t], max=torch.finfo(zm.dtype).max)
        if metrics is None:
            for t, zm in mats.items():
                x = _svt(zm, taus[t])[0] * scale[t]
                out[t] = _nan_unless(finite[t], x).reshape(zs[t].shape).to(zs[t].dtype)
            return out  # type: ignore[return-value]

        ms, pinned = {}, {}
        for t in mats:
            m = metrics[t].to(mats[t].dtype).reshape(mats[t].shape)
            # a +inf entry couples to the whole spectrum: the matrix is pinned (x = z), solved with a
            # unit metric (the closed form) and discarded; 0-dim masks, no device sync
            pinned[t] = torch.isposinf(m).any()
            # a NaN metric entry (a NaN gradient) makes the matrix NaN, as a NaN in z does
            nan_m = torch.isnan(m).any()
            finite[t] = finite[t] & ~nan_m
            m = torch.where(pinned[t] | nan_m, 1.0, m)
            mu = _pow2(m.amax())  # the metric in units of its max too: τ/μ solves the same problem
            ms[t] = m / mu
            taus[t] = torch.clamp(taus[t] / mu, max=torch.finfo(m.dtype).max)
        # one host read: which metrics are constant, which matrices are screened to zero
        mnmx = {t: torch.aminmax(m) for t, m in ms.items()}
        spec = {t: torch.linalg.matrix_norm(ms[t] * mats[t], ord=2) for t in mats}
        keys = list(mats)
        if not keys:
            return out  # type: ignore[return-value]
        dev0 = zs[keys[0]].device
        flags = torch.stack(
            [torch.stack([(mnmx[t][0] == mnmx[t][1]), ~(spec[t] > taus[t])]).to(dev0) for t in keys]
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
                x = _svt(mats[t], taus[t] / mnmx[t][1])[0] * scale[t]
                out[t] = x.reshape(z.shape).to(z.dtype)
            else:
                live.setdefault((tuple(mats[t].shape), mats[t].dtype, z.device), []).append(t)
        iters = 0
        if live:
            batches = []
            for idxs in live.values():
                zb = torch.stack([mats[t] for t in idxs])
                mb = torch.stack([ms[t] for t in idxs])
                x0 = (
                    None
                    if x0s is None
                    else torch.stack([x0s[t].to(zb.dtype).reshape(zb.shape[1:]) / scale[t] for t in idxs])
                )
                eta = torch.stack([mnmx[t][1] for t in idxs]).reciprocal().reshape(-1, 1, 1)
                batches.append(_Batch(idxs, zb, mb, eta, torch.stack([taus[t] for t in idxs]), x0))
            iters = _solve(batches, max_iters, rtol, self.solver, dev0)
            for b in batches:
                for t, x in zip(b.idxs, b.x):
                    out[t] = (x * scale[t]).reshape(zs[t].shape).to(zs[t].dtype)
            if iters == max_iters:
                _warn_if_capped(type(self).__name__, batches, zs, max_iters, rtol)
        for t in keys:
            x = torch.where(pinned[t], zs[t], out[t])  # type: ignore[arg-type]
            out[t] = _nan_unless(finite[t], x)
        if info is not None:
            info["inner_iters"] = iters
            info["screened"] = n_screened
        return out  # type: ignore[return-value]
