"""Screening + inexact proximal gradient for group-separable regularizers under a diagonal metric.

Solves, for every tensor ``z`` of a list at once,

.. math::

    \\min_x \\; \\tau \\sum_g w_g \\|x_g\\|_2 + \\tfrac12 \\sum_i m_i (x_i - z_i)^2, \\qquad \\tau = \\text{step}\\cdot\\lambda,

with the exact zero-group screening test (RAMDA digest 003 §2.5, code supplement §B): the optimality
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

import torch
from torch import Tensor

from ..structure import check_groupable
from ._base import Step, threshold_dtype
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
        screened = ~(mz_norm > thr)  # zero iff ‖m_g z_g‖ ≤ τ w_g (ties → zero)
        mn, mx = torch.aminmax(mb, dim=1)
        const = 0.5 * torch.linalg.vecdot(mz, zb, dim=1)  # objective of x_g = 0
        bk.append([idxs, counts, zb, mb, tid, thr, mz_norm, screened, mn, mx, const])

    # one host read for every bucket: which groups survive, and whether every metric is uniform
    flags = (
        torch.cat([torch.stack([b[7], b[8] != b[9]]).to(torch.bool).cpu() for b in bk], dim=1) if bk else None
    )
    n_screened = int(flags[0].sum()) if flags is not None else 0
    all_uniform = bool(not flags[1].any()) if flags is not None else True
    iters = 0

    if all_uniform:
        # closed form: x_g = max(0, 1 − τ w_g / (m_g‖z_g‖)) z_g = (1 − thr/‖m_g z_g‖)_+ z_g
        for b in bk:
            b.append(b[2] * _scale(b[6], b[5]).unsqueeze(1))
    else:
        pos = 0
        live = []
        newton = []
        for b in bk:
            idxs, counts, zb, mb, tid, thr, mz_norm, screened, mn, mx, const = b
            keep_cpu = ~flags[0, pos : pos + zb.shape[0]]
            pos += zb.shape[0]
            xb = torch.zeros_like(zb)
            b.append(xb)
            if not bool(keep_cpu.any()):
                continue
            keep = keep_cpu.nonzero().squeeze(1).to(zb.device)
            zk, mk = zb.index_select(0, keep), mb.index_select(0, keep)
            if solver == "newton":
                # scale z and m by their group maxima: same root c, and m⊙z can no longer overflow
                tiny, big = torch.finfo(zb.dtype).tiny, torch.finfo(zb.dtype).max / 4
                za = zk.abs().amax(1, keepdim=True).clamp_min(tiny)
                mxk = mx.index_select(0, keep).unsqueeze(1)
                mzs = (zk / za) * (mk / mxk)
                thr_s = (thr / za) / mxk
                gap = (torch.linalg.vector_norm(mzs, dim=1, keepdim=True) - thr_s).clamp_min(tiny)
                lo = torch.clamp(thr_s * mn.index_select(0, keep).unsqueeze(1) / gap, max=big)
                hi = torch.clamp(thr_s * mxk / gap, max=big)
                newton.append([xb, keep, mzs, mk, thr_s, lo, hi, zk])
                continue
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
        if newton:
            iters = _newton(newton, max_iters, rtol, zs[0].device)
        # constant part of Q: ½Σ m z² over screened groups, per tensor
        dev0 = zs[0].device
        q_const = torch.zeros(n, dtype=torch.float64, device=dev0)
        for b in bk:
            q_const.index_add_(0, b[4].to(dev0), torch.where(b[7], b[10], 0.0).to(torch.float64).to(dev0))
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


def _newton(entries: list[list], max_iters: int, rtol: float, dev0: torch.device) -> int:
    """Exact per-group solve: x_g = z⊙m/(m + c) with c > 0 the root of h(c) = ‖c·m⊙z/(m + c)‖ − τw.

    h is increasing, bracketed by [τw·min m/(‖mz‖ − τw), τw·max m/(‖mz‖ − τw)] (equal bounds for a
    uniform group); safeguarded Newton (geometric bisection when a step leaves the bracket) until
    |h| ≤ tol·τw or the bracket is relatively narrower than tol for every group, with
    tol = max(rtol, 16·eps(dtype)), at least 2 (like PG) and at most ``max_iters`` iterations.
    ``m⊙z`` and ``τw`` arrive divided by the group maxima of |z| and m (the root is scale-free). Writes the solutions into each
    entry's bucket buffer and returns the number of iterations run.
    """
    check_every = 1 if dev0.type == "cpu" else _CHECK_EVERY_DEVICE
    cs = [torch.sqrt(e[5] * e[6]) for e in entries]  # geometric middle: the bracket may span decades
    tols = [max(rtol, 16 * torch.finfo(e[2].dtype).eps) for e in entries]
    iters = 0
    pending: list[Tensor] = []
    for j in range(1, max_iters + 1):
        for k, (_xb, _keep, mz, m, thr, lo, hi, _z) in enumerate(entries):
            c, tol = cs[k], tols[k]
            tiny = torch.finfo(mz.dtype).tiny
            mc = m + c
            y = mz * (c / mc)  # c·x(c), scaled
            n = torch.linalg.vector_norm(y, dim=1, keepdim=True)
            h = n - thr
            dn = torch.linalg.vecdot(y, mz * m / (mc * mc), dim=1).unsqueeze(1) / n.clamp_min(tiny)
            below = h < 0
            lo.copy_(torch.where(below, c, lo))
            hi.copy_(torch.where(below, hi, c))
            step = c - h / dn.clamp_min(tiny)
            inside = (step > lo) & (step < hi)
            cs[k] = torch.where(inside, step, torch.sqrt(lo * hi))
            pending.append(((h.abs() <= tol * thr) | (hi - lo <= tol * hi)).all())
        iters = j
        if j >= 2 and (j == max_iters or len(pending) >= check_every * len(entries)):
            done = torch.stack(pending).reshape(-1, len(entries)).all(1).any()
            if bool(done):
                break
            pending = []
    for k, (xb, keep, _mz, m, _thr, _lo, _hi, z) in enumerate(entries):
        xb.index_copy_(0, keep, z * (m / (m + cs[k])))
    return iters
