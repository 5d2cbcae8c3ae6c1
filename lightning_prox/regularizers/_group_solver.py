"""Screening + inexact proximal gradient for group-separable regularizers under a diagonal metric.

Solves, for every tensor ``z`` of a list at once,

.. math::

    \\min_x \\; \\tau \\sum_g w_g \\|x_g\\|_2 + \\tfrac12 \\sum_i m_i (x_i - z_i)^2, \\qquad \\tau = \\text{step}\\cdot\\lambda,

with the exact zero-group screening test (Huang & Lee, 2024, Algorithm 2 and its public code): the optimality
condition at :math:`x_g = 0` reads :math:`m_g \\odot z_g \\in \\tau w_g \\, \\mathbb{B}_2`, so group ``g`` is
zero **iff** :math:`\\|m_g \\odot z_g\\|_2 \\le \\tau w_g`. The other groups run proximal gradient with the
per-group step :math:`\\eta_g = 1/\\max_{i\\in g} m_i` (a valid 1/L for each separable block):

.. math::

    x_g \\leftarrow \\operatorname{gst}\\big(x_g - \\eta_g\\, m_g \\odot (x_g - z_g),\\ \\eta_g \\tau w_g\\big),
    \\qquad \\operatorname{gst}(u, t) = \\max(0, 1 - t/\\|u\\|)\\,u,

stopping when :math:`(Q(x^{j-1}) - Q(x^j))/(|Q(x^j)| + 1) < \\text{rtol}` holds for every tensor (at least
2 iterations, at most ``max_iters``). A group whose metric is constant is solved exactly by one step,
so when every group is uniform the closed form is returned with no iteration at all.

Layout: every tensor is viewed "group-major" (``[G, s]``, one row per group; ``dim="in"`` transposes
``[out, in, *k]`` to ``[in, out, k]``), and tensors whose groups have the same trailing shape are
concatenated into one bucket, so each iteration is a handful of batched kernels per bucket (no
Python loop over groups, none over tensors) and the stop test costs one small reduction; it is read
on the host every iteration on CPU and every ``_CHECK_EVERY_DEVICE`` iterations on accelerators.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..structure import check_groupable
from ._base import Step, threshold_dtype, warn_at_cap
from ._elementwise import cap

__all__ = ["group_major", "from_group_major", "solve_group_lasso"]

_CHECK_EVERY_DEVICE = 4


def group_major(x: Tensor, dim: str) -> Tensor:
    """View ``x`` as ``[G, *trail]`` with one group per leading index (a view when possible)."""
    if dim == "out":
        return x.reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 1)


def from_group_major(g: Tensor, like: Tensor, dim: str) -> Tensor:
    """Inverse of :func:`group_major`: back to ``like``'s shape (a new tensor in ``like``'s dtype)."""
    if dim == "out":
        return g.reshape(like.shape).to(like.dtype)
    return g.reshape(like.shape[1], like.shape[0], -1).transpose(0, 1).reshape(like.shape).to(like.dtype)


def group_weight(size: int, weighting: str) -> float:
    return math.sqrt(size) if weighting == "sqrt" else 1.0


def _scale(nrm: Tensor, thr: Tensor | float) -> Tensor:
    """max(0, 1 − thr/nrm), computed on a clamped input (0 at ties and for nrm = 0; never NaN)."""
    return torch.where(nrm > thr, 1.0 - thr / nrm.clamp_min(torch.finfo(nrm.dtype).tiny), 0.0)


class _Layout:
    """Per-group reductions and broadcasts on a tensor in its own memory layout (no transposed copy).

    The tensor is viewed 2-D: ``dim="out"`` as ``[G, s]`` (a group per row; reductions along rows),
    ``dim="in"`` as ``[out, G·k]`` (group j owns columns j·k … j·k + k − 1 of every row; reductions
    first down the columns, then over each group's k columns). Group vectors broadcast as ``[G, 1]``
    or as a ``[1, G·k]`` row, so every elementwise pass runs over long contiguous rows.
    """

    def __init__(self, z: Tensor, dim: str) -> None:
        self.dim = dim
        if dim == "out":
            self.g, self.k = z.shape[0], 0
            self.shape = (z.shape[0], z.numel() // max(z.shape[0], 1))
        else:
            self.g = z.shape[1]
            self.k = z.numel() // (z.shape[0] * z.shape[1])
            self.shape = (z.shape[0], z.shape[1] * self.k)

    def view(self, x: Tensor) -> Tensor:
        return x.reshape(self.shape)

    def bcast(self, v: Tensor) -> Tensor:
        if self.dim == "out":
            return v.unsqueeze(1)
        return v.unsqueeze(1).expand(self.g, self.k).reshape(1, -1)

    def sum(self, x: Tensor) -> Tensor:
        return x.sum(1) if self.dim == "out" else x.sum(0).view(self.g, self.k).sum(1)

    def amax(self, x: Tensor) -> Tensor:
        return x.amax(1) if self.dim == "out" else x.amax(0).view(self.g, self.k).amax(1)

    def amin(self, x: Tensor) -> Tensor:
        return x.amin(1) if self.dim == "out" else x.amin(0).view(self.g, self.k).amin(1)

    def norm(self, x: Tensor, block: Tensor | None = None) -> Tensor:
        """Per-group 2-norm of ``x`` (viewed 2-D). ``dim="in"`` squares a block of rows at a time into
        ``block`` (allocated when None) and sums down the columns: torch's vector_norm and aminmax
        reduce down columns several times slower than mul + sum (9 ms against 1 ms on a
        [512, 4608] tensor), and block by block no squared copy of the tensor is made."""
        if self.dim == "out":
            return torch.linalg.vector_norm(x, dim=1)
        R, C = x.shape
        rows = max(1, min(R, _BLOCK // max(C, 1))) if x.device.type == "cpu" else R
        if block is None or block.numel() < rows * C:
            block = torch.empty(rows * C, dtype=x.dtype, device=x.device)
        acc = torch.zeros(C, dtype=x.dtype, device=x.device)
        for r0 in range(0, R, rows):
            blk = x[r0 : r0 + rows]
            sq = torch.mul(blk, blk, out=block[: blk.numel()].view(blk.shape))
            acc += sq.sum(0)
        return torch.sqrt(acc.view(self.g, self.k).sum(1))


#: elements per block of the Newton iterations on CPU: the two block buffers (2 MiB each in float32)
#: stay cache resident while the iteration streams the scaled metric and a² through them
_BLOCK = 1 << 19


def _secular_sums(
    lay: _Layout, M: Tensor, A: Tensor, c: Tensor, tbuf: Tensor, ubuf: Tensor, rows: int
) -> tuple[Tensor, Tensor]:
    """Per group Σ a²/(m + c)² and Σ a²/(m + c)³ (``A`` = |a|), block of rows by block (6 passes)."""
    R, C = lay.shape
    if lay.dim == "out":
        p2 = torch.empty(R, dtype=M.dtype, device=M.device)
        p3 = torch.empty_like(p2)
    else:
        p2 = torch.zeros(C, dtype=M.dtype, device=M.device)
        p3 = torch.zeros_like(p2)
        c_row = lay.bcast(c)
    for r0 in range(0, R, rows):
        r1 = min(R, r0 + rows)
        T = tbuf[: (r1 - r0) * C].view(r1 - r0, C)
        U = ubuf[: (r1 - r0) * C].view(r1 - r0, C)
        torch.add(M[r0:r1], c[r0:r1].unsqueeze(1) if lay.dim == "out" else c_row, out=T)
        torch.div(A[r0:r1], T, out=U)  # |a|/(m + c)
        U.mul_(U)  # a²/(m + c)²
        if lay.dim == "out":
            torch.sum(U, 1, out=p2[r0:r1])
            U.div_(T)
            torch.sum(U, 1, out=p3[r0:r1])
        else:
            p2 += U.sum(0)
            U.div_(T)
            p3 += U.sum(0)
    if lay.dim == "in":
        p2, p3 = p2.view(lay.g, lay.k).sum(1), p3.view(lay.g, lay.k).sum(1)
    return p2, p3


def _solution_into(
    lay: _Layout, x: Tensor, zv: Tensor, M: Tensor, c: Tensor, tbuf: Tensor, rows: int
) -> None:
    """x = z⊙m/(m + c) block of rows by block (3 passes in cache). Screened groups take c = inf:
    m/(m + inf) = 0 exactly (never NaN: m is finite and ≥ 0). Each block of x is written after its
    block of z is read, so ``x`` may alias ``zv``."""
    R, C = lay.shape
    c_row = lay.bcast(c) if lay.dim == "in" else None
    for r0 in range(0, R, rows):
        r1 = min(R, r0 + rows)
        T = tbuf[: (r1 - r0) * C].view(r1 - r0, C)
        torch.add(M[r0:r1], c[r0:r1].unsqueeze(1) if c_row is None else c_row, out=T)
        torch.div(M[r0:r1], T, out=T)
        torch.mul(zv[r0:r1], T, out=x[r0:r1])


def _newton_update(ops, c, p2, p3, lo, hi, thr, done, prev, tol: float, tiny: float):
    """One safeguarded Newton update of the per-group roots c (numpy or torch vectors, via ``ops`` =
    (where, sqrt, clamp_min)). Returns the new c, bracket, sticky convergence flags and corrections.

    A group is converged once its residual |c‖p‖ − τw| or its bracket is below tol (relative), or its
    Newton correction is below tol or no longer contracting near the root (the rounding floor of the
    float32 sums, e.g. for a group whose c‖p(c)‖ is flat in c); a converged group keeps its c, so
    that all groups of a tensor can meet the test at different iterations.
    """
    where, sqrt, clamp_min = ops
    nrm = c * sqrt(p2)  # ‖c·p(c)‖, increasing in c
    below = nrm < thr
    lo = where(below, c, lo)
    hi = where(below, hi, c)
    dn = clamp_min(c * (p2 - c * p3), 0.0) / clamp_min(nrm, tiny)  # d‖c·p‖/dc ≥ 0
    step = c - (nrm - thr) / clamp_min(dn, tiny)
    inside = (step >= lo) & (step <= hi)
    c_new = where(inside, step, sqrt(lo) * sqrt(hi))
    delta = abs(c_new - c)
    resid = abs(nrm - thr)
    stalled = (delta >= 0.5 * prev) & (resid <= math.sqrt(tol) * thr)
    small = inside & ((delta <= tol * c) | stalled)
    done = done | (resid <= tol * thr) | (hi - lo <= tol * hi) | small
    prev = where(inside, delta, float("inf"))
    c = where(done, where(inside, c_new, c), c_new)
    return c, lo, hi, done, prev


def _solve_newton(
    zs: list[Tensor],
    tau: Step,
    metrics: list[Tensor],
    x0s: list[Tensor] | None,
    dim: str,
    weighting: str,
    max_iters: int,
    rtol: float,
    info: dict | None,
    outs: list[Tensor] | None = None,
) -> list[Tensor]:
    """Exact prox of ``tau·Σ_g w_g‖x_g‖`` under diagonal metrics: screening + per-group Newton.

    For a group with ‖m⊙z‖ > τw the solution is x = z⊙m/(m + c) with c > 0 the root of
    c·‖p(c)‖ = τw, p(c) = m⊙z/(m + c). Newton runs on F(c) = 1/‖p(c)‖ − c/(τw) (the Moré–Sorensen
    form of a trust-region secular equation): linear in c when m is constant on the group (one step
    is exact) and nearly linear otherwise, decreasing, started at the left end of the bracket
    c ∈ [max(τw·min m/gap, τw/‖z‖), τw·max m/gap] (gap = ‖m⊙z‖ − τw); steps that leave the bracket
    are replaced by its geometric middle. Everything is scaled by the group maxima of |z| and m (m⊙z cannot
    overflow; the root is scale-free). Stop: |c‖p‖ − τw| ≤ tol·τw or a bracket relatively narrower
    than tol, for every live group of the tensor, tol = max(rtol, 16·eps(dtype)); at least 2
    iterations (when ``max_iters`` ≥ 2) unless every live group has a constant metric (closed form,
    0 iterations). Each tensor is solved in its own layout (:class:`_Layout`, no transposed copies)
    with two scratch buffers of the largest tensor (the scaled metric and |a|) and two of one block
    of rows, shared by all tensors; an iteration is 6 passes over cached blocks.
    """
    out: list[Tensor] = []
    iters = 0
    screened_counts: list[Tensor] = []
    pool: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for i, (z, m) in enumerate(zip(zs, metrics)):
        check_groupable(z, dim)
        if z.numel() == 0:
            out.append(z.clone() if outs is None else outs[i])
            continue
        dt, dev = threshold_dtype(z), z.device
        lay = _Layout(z, dim)
        n = z.numel()
        bufs = pool.get((dt, dev))
        if bufs is None or bufs[0].numel() < n:
            # the scaled metric and |a| span a whole tensor (every iteration reads them); the two
            # work buffers of the iterations and of the final pass span one block of rows
            largest = max(t.numel() for t in zs if threshold_dtype(t) == dt and t.device == dev)
            blocks = bufs[2:] if bufs is not None else [torch.empty(0, dtype=dt, device=dev)] * 2
            bufs = pool[(dt, dev)] = [torch.empty(largest, dtype=dt, device=dev) for _ in range(2)] + blocks
        M, A = (lay.view(b[:n]) for b in bufs[:2])
        rows = max(1, _BLOCK // lay.shape[1]) if dev.type == "cpu" else lay.shape[0]
        need = min(rows, lay.shape[0]) * lay.shape[1]
        if bufs[2].numel() < need:
            bufs[2:] = [torch.empty(need, dtype=dt, device=dev) for _ in range(2)]
        T, U = bufs[2], bufs[3]
        zv, mv = lay.view(z.to(dt)), lay.view(m.to(dt))
        tiny, big = torch.finfo(dt).tiny, torch.finfo(dt).max
        tol = max(rtol, 16 * torch.finfo(dt).eps)
        thr = cap(tau * group_weight(n // lay.g, weighting), zv)
        check_every = 1 if dev.type == "cpu" else _CHECK_EVERY_DEVICE

        mx = lay.amax(mv).clamp_min(tiny)
        mn = lay.amin(mv)
        torch.div(mv, lay.bcast(mx), out=M)  # scaled metric, group max 1
        torch.abs(zv, out=A)
        za = lay.amax(A).clamp_min(tiny)
        A.mul_(lay.bcast(za.reciprocal()))
        norm_z = lay.norm(A, bufs[2])  # ‖z_g‖/za
        A.mul_(M)  # |a| = (|z|/za)⊙(m/mx) ≤ 1
        norm_a = lay.norm(A, bufs[2])
        thr_s = torch.clamp((thr / za) / mx, max=big)
        alive = norm_a > thr_s  # zero iff ‖m⊙z‖ ≤ τw (ties → zero)
        if info is not None:
            screened_counts.append((~alive).sum())
        any_alive, uniform = (
            bool(v) for v in torch.stack([alive.any(), ((mn == mx) | ~alive).all()]).tolist()
        )  # one host read
        if not any_alive:  # every group screened: zeros, nothing to solve; z·0 keeps a NaN group NaN
            given = outs[i] if outs is not None else None
            out.append(torch.mul(z, 0.0, out=given) if given is not None else torch.mul(z, 0.0))
            continue
        gap = (norm_a - thr_s).clamp_min(tiny)
        t_over_gap = torch.where(alive, torch.clamp(thr_s / gap, max=big), 1.0)
        # c bracket [τw·min m/gap, τw·max m/gap], scaled (max m = 1); both ends ≥ tiny, so that c > 0
        # and m + c > 0 even where τw/gap underflows (else an underflowed m gives 0/0 below)
        hi = t_over_gap.clamp_min(tiny)
        lo = torch.minimum(torch.where(alive, t_over_gap * (mn / mx), 1.0).clamp_min(tiny), hi)
        # ‖p(c)‖ ≤ ‖z_g‖ for every c > 0, so the root c = τw/‖p(c)‖ is at least τw/‖z_g‖: a tighter
        # lower end, and nearly the root itself when c is small against the metric (small steps, as
        # in training), where Newton started there needs 2 iterations instead of 3 from the bracket's
        # geometric middle
        lo_z = torch.clamp(thr_s / norm_z.clamp_min(tiny), max=big)
        lo = torch.where(alive, torch.minimum(torch.maximum(lo, lo_z), hi), lo)
        c = lo.clone()
        if x0s is not None:
            # warm start: a solution x0 has c = τw/‖x0‖ (scaled: thr_s·za/‖x0‖); clamped into the bracket
            x0n = lay.norm(lay.view(x0s[i].to(dt)), bufs[2])
            warm = torch.clamp(thr_s * za / x0n.clamp_min(tiny), max=big)
            c = torch.where((x0n > 0) & alive, torch.minimum(torch.maximum(warm, lo), hi), c)
        if uniform:
            c = hi
        j = 0
        pending: list = []
        # per-group bookkeeping of the iteration: numpy float64 on CPU (a few µs per op instead of
        # ~5 µs per torch op on small vectors), torch on accelerators (no host copies)
        on_cpu = dev.type == "cpu"
        if on_cpu:
            ops = (np.where, np.sqrt, np.maximum)
            cv, lo_v, hi_v = (t.double().numpy() for t in (c, lo, hi))
            thr_v, done = thr_s.double().numpy(), (~alive).numpy()
            prev = np.full_like(cv, np.inf)
        else:
            ops = (torch.where, torch.sqrt, torch.clamp_min)
            cv, lo_v, hi_v, thr_v, done = c, lo, hi, thr_s, ~alive
            prev = torch.full_like(c, torch.inf)
        while not uniform and j < max_iters:
            j += 1
            c_t = torch.from_numpy(cv).to(dt) if on_cpu else cv
            p2, p3 = _secular_sums(lay, M, A, c_t, T, U, rows)
            if on_cpu:
                p2, p3 = p2.double().numpy(), p3.double().numpy()
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf steps are rejected
                cv, lo_v, hi_v, done, prev = _newton_update(
                    ops,
                    cv,
                    p2,
                    p3,
                    lo_v,
                    hi_v,
                    thr_v,
                    done,
                    prev,
                    tol,
                    float(np.finfo(np.float64).tiny) if on_cpu else tiny,
                )
            pending.append(done.all())
            if j >= min(2, max_iters) and (j == max_iters or len(pending) >= check_every):
                if bool(pending[-1]) if on_cpu else bool(torch.stack(pending).any()):
                    break
                pending = []
        c = torch.from_numpy(cv).to(dt) if on_cpu else cv
        iters = max(iters, j)
        given = outs[i] if outs is not None else None
        direct = given is not None and given.dtype == dt and given.is_contiguous()
        x = lay.view(given) if direct else torch.empty(lay.shape, dtype=dt, device=dev)
        _solution_into(lay, x, zv, M, torch.where(alive, c, torch.inf), bufs[2], rows)
        if direct:
            out.append(given)
        else:
            x = x.reshape(z.shape).to(z.dtype)
            out.append(x if given is None else given.copy_(x))
    if info is not None:
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), iters)
        n_scr = (
            int(torch.stack([s.to(zs[0].device) for s in screened_counts]).sum()) if screened_counts else 0
        )
        info["screened"] = int(info.get("screened", 0)) + n_scr
    return out


def _warn_if_capped(live: list, q: Tensor, zs: list[Tensor], max_iters: int, rtol: float) -> None:
    """Duality gap of a PG solve that reached its cap; warns when it exceeds rtol (worst tensor).

    Returns nothing; the gap is relative to the dual value (≤ the optimum), so it bounds the relative
    objective gap. The dual point of group g is ``y_g = m_g⊙(z_g − x_g)`` scaled into the ball of radius τw_g, with
    value ``⟨y_g, z_g⟩ − ½ Σ y_g²/m_g``; screened groups (x_g = 0, ‖m_g⊙z_g‖ ≤ τw_g) have zero gap.
    """
    dev0 = q.device
    gap = torch.zeros_like(q)
    dual_total = q.clone()  # screened groups: dual value = primal value
    for _xb, _keep, zk, mk, _eta, _eta_thr, thr, tidk, xk, d, dm in live:
        y = -dm  # m⊙(z − x) of the last iterate
        ny = torch.linalg.vector_norm(y, dim=1, keepdim=True)
        y = y * torch.where(ny > thr, thr / ny.clamp_min(torch.finfo(ny.dtype).tiny), 1.0)
        dual = torch.linalg.vecdot(y, zk, dim=1) - 0.5 * (y * y / mk).sum(1)
        primal = 0.5 * torch.linalg.vecdot(d, dm, dim=1) + thr * torch.linalg.vector_norm(xk, dim=1)
        gap.index_add_(0, tidk.to(dev0), (primal - dual).to(torch.float64).to(dev0))
    dual_total -= gap
    # relative to the dual value, a lower bound on the optimum: bounds (Q(x) − Q*)/Q*
    rel = (gap / dual_total.clamp_min(torch.finfo(torch.float64).tiny)).cpu()
    worst = int(rel.argmax())
    tol = max(rtol, 8 * torch.finfo(live[0][2].dtype).eps)
    if float(rel[worst]) > tol:
        warn_at_cap("GroupLasso", worst, tuple(zs[worst].shape), float(rel[worst]), max_iters, rtol)


def solve_group_lasso(
    zs: list[Tensor],
    tau: Step,
    metrics: list[Tensor],
    x0s: list[Tensor] | None,
    dim: str,
    weighting: str,
    max_iters: int,
    rtol: float,
    info: dict | None,
    solver: str = "pg",
) -> list[Tensor]:
    """Prox of ``tau·Σ_g w_g‖x_g‖`` under diagonal metrics for all of ``zs`` (see module docstring)."""
    if solver == "newton":
        return _solve_newton(zs, tau, metrics, x0s, dim, weighting, max_iters, rtol, info)
    n = len(zs)
    out: list[Tensor | None] = [None] * n
    buckets: dict[tuple, list[int]] = {}
    for t, z in enumerate(zs):
        check_groupable(z, dim)
        if z.numel() == 0:
            out[t] = z.clone()
            continue
        gm = group_major(z, dim)
        buckets.setdefault((tuple(gm.shape[1:]), threshold_dtype(z), z.device), []).append(t)

    # -- set-up per bucket: screening test, per-group step, uniform-metric check ----------------
    bk = []
    for (_, dt, dev), idxs in buckets.items():
        zb = torch.cat([group_major(zs[t], dim).to(dt) for t in idxs]).flatten(1)
        mb = torch.cat([group_major(metrics[t], dim).to(dt) for t in idxs]).flatten(1)
        counts = [group_major(zs[t], dim).shape[0] for t in idxs]
        tid = torch.repeat_interleave(torch.tensor(idxs, device=dev), torch.tensor(counts, device=dev))
        thr = cap(tau * group_weight(zb.shape[1], weighting), zb)  # τ·w_g, the same for the whole bucket
        mz = mb * zb
        mz_norm = torch.linalg.vector_norm(mz, dim=1)
        finite = torch.isfinite(zb).all(1)
        # zero iff ‖m_g z_g‖ ≤ τ w_g (ties → zero); a group with a NaN or ±inf entry skips the solve
        # (it would turn every iterate NaN, and the stop test with it)
        screened = ~(mz_norm > thr) | ~finite
        mn, mx = torch.aminmax(mb, dim=1)
        const = 0.5 * torch.linalg.vecdot(mz, zb, dim=1)  # objective of x_g = 0
        bk.append([idxs, counts, zb, mb, tid, thr, mz_norm, screened, mn, mx, const, finite])

    # one host read for every bucket: which groups survive, and whether every metric is uniform
    flags = (
        torch.cat([torch.stack([b[7], b[8] != b[9], b[11]]).to(torch.bool).cpu() for b in bk], dim=1)
        if bk
        else None
    )
    n_screened = int((flags[0] & flags[2]).sum()) if flags is not None else 0
    all_uniform = bool(not flags[1].any()) if flags is not None else True
    iters = 0

    if all_uniform:
        # closed form: x_g = max(0, 1 − τ w_g / (m_g‖z_g‖)) z_g = (1 − thr/‖m_g z_g‖)_+ z_g
        for b in bk:
            b.append(b[2] * _scale(b[6], b[5]).unsqueeze(1))
    else:
        pos = 0
        live = []
        for b in bk:
            idxs, counts, zb, mb, tid, thr, mz_norm, screened, mn, mx, const, finite = b
            keep_cpu = ~flags[0, pos : pos + zb.shape[0]]
            pos += zb.shape[0]
            # screened groups are zero; a non-finite group is z·0 as in the closed form: NaN at its
            # NaN and ±inf entries, zero elsewhere
            xb = torch.where(finite.unsqueeze(1), 0.0, zb * 0.0)
            b.append(xb)
            if not bool(keep_cpu.any()):
                continue
            keep = keep_cpu.nonzero().squeeze(1).to(zb.device)
            zk, mk = zb.index_select(0, keep), mb.index_select(0, keep)
            eta = mx.index_select(0, keep).reciprocal().unsqueeze(1)
            if x0s is not None:
                dt = zb.dtype
                x0b = torch.cat([group_major(x0s[t], dim).to(dt) for t in idxs]).flatten(1)
                xk = x0b.index_select(0, keep)
            else:
                xk = zk.clone()
            d = xk - zk
            dm = d * mk
            live.append([xb, keep, zk, mk, eta, eta * thr, thr, tid.index_select(0, keep), xk, d, dm])
        # constant part of Q: ½Σ m z² over screened groups, per tensor
        dev0 = zs[0].device
        q_const = torch.zeros(n, dtype=torch.float64, device=dev0)
        for b in bk:
            q_const.index_add_(
                0, b[4].to(dev0), torch.where(b[7] & b[11], b[10], 0.0).to(torch.float64).to(dev0)
            )
        if live:
            check_every = 1 if dev0.type == "cpu" else _CHECK_EVERY_DEVICE
            q_prev = None
            pending: list[Tensor] = []
            for j in range(1, max_iters + 1):
                q = q_const.clone()
                for _xb, _keep, zk, mk, eta, eta_thr, thr, tidk, xk, d, dm in live:
                    xk.addcmul_(dm, eta, value=-1.0)  # gradient step on ½Σm(x−z)²
                    nrm = torch.linalg.vector_norm(xk, dim=1, keepdim=True)
                    s = _scale(nrm, eta_thr)
                    xk.mul_(s)  # group soft threshold with η_g·τ·w_g
                    torch.sub(xk, zk, out=d)
                    torch.mul(d, mk, out=dm)  # m⊙(x−z): this iterate's gradient, reused next step
                    qg = 0.5 * torch.linalg.vecdot(d, dm, dim=1) + thr * (s * nrm).squeeze(1)
                    q.index_add_(0, tidk.to(dev0), qg.to(torch.float64).to(dev0))
                iters = j
                if q_prev is not None:
                    rel = (q_prev - q) / (q.abs() + 1.0)
                    pending.append(rel.max() < rtol)
                q_prev = q
                if j >= 2 and (j == max_iters or len(pending) >= check_every):
                    if bool(torch.stack(pending).any()):
                        break
                    pending = []
            for entry in live:
                xb, keep, xk = entry[0], entry[1], entry[8]
                xb.index_copy_(0, keep, xk)
            if iters == max_iters:
                _warn_if_capped(live, q, zs, max_iters, rtol)

    # -- scatter buckets back to tensors -----------------------------------------------------------
    for b in bk:
        idxs, counts, xb = b[0], b[1], b[-1]
        for t, part in zip(idxs, torch.split(xb, counts)):
            z = zs[t]
            out[t] = from_group_major(part.reshape(group_major(z, dim).shape), z, dim)
    if info is not None:
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), iters)
        info["screened"] = int(info.get("screened", 0)) + n_screened
    return out  # type: ignore[return-value]
