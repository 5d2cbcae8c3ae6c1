"""RAMDA's step as a few native passes per tensor (CPU; ``implementation="native"``).

The eager multi-tensor step (:func:`lightning_prox.optim.ramda._multi_tensor_ramda`) runs the
bookkeeping V, U, P = ∛U + ε, z = W0 − V/P and the subproblem solve as separate memory passes, about
30 of them per step for group lasso. Here the same math runs in C++ kernels (``_ramda_kernels.cpp``,
built at first use by :mod:`._native` and cached on disk, each pass one ``torch.ops.lightning_prox``
operator over all tensors of a bucket, declared in :data:`KERNELS`):

* **elementwise** regularizers (none, ``L1``): one pass per tensor,
  ``V += s·g; U += s·g²; P = ∛U + ε; z = W0 − V/P; Ŵ = prox(z); W ← lerp(W, Ŵ, c)``;
* ``GroupLasso(solver="newton")``: a *prep* pass that updates V and U, keeps P and P⊙z in two reused
  scratch buffers and returns per group the secular sums at the warm start together with ‖P⊙z‖²
  (screening) and max/min P (the root bracket); one pass per further Newton iteration (the sums
  Σ q², Σ q²/(P + c) with q = P⊙z/(P + c)); and a *final* pass ``Ŵ = P⊙z/(P + c); W ← lerp(W, Ŵ, c)``.

The per-group root search is the library's (``_group_solver._newton_update``: the same safeguarded
Newton, stop rule, bracket and start as ``GroupLasso(solver="newton")``: the warm start, or without one
the root's lower bound τw/‖z_g‖ from the ‖z_g‖² the prep pass sums, so both take the same
iterations up to the rounding of float32 sums near the stop test), run in float64 on unscaled values
(the root c of c‖P⊙z/(P + c)‖ = α·λ·w_g is scale-free; |q| ≤ |z|). The warm start c = τw/‖Ŵ_{t−1,g}‖
comes from the group norms of the last solution, kept with the optimizer state (``prox_point_norms``),
so no pass over Ŵ is needed. An overflowed U (P = +inf) pins its coordinate as ``GroupLasso``'s prox does
(Ŵ = z there). ∛U is a division-free Newton iteration for U^{−1/3} from a bit-level first
guess plus one correction (≤ 1 ulp in float32; :func:`cbrt` exposes it). The kernels sum in the
parameter's dtype over short runs and add the runs up in float64. Results agree with the eager step to
rounding (tests: 1e-6 of the weights' scale, same zeros, same solver iterations).

The kernels walk every tensor contiguously: ``dim="out"`` groups are rows of [out, rest];
``dim="in"`` groups are the columns j with j // k = g of [out, in·k] (k the kernel size), summed
row by row into per-column accumulators. With OpenMP the rows are split over ``torch.get_num_threads()``
threads; a given thread count gives the same bits on every run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..regularizers import _fused
from ..regularizers._base import Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _newton_update, group_weight
from ..regularizers.group_lasso import GroupLasso
from ..regularizers.l1 import L1
from ..structure import check_groupable
from . import _native
from ._native import Arg, Kernel

__all__ = ["KERNELS", "cbrt", "ramda_native_", "supports"]

_NP_OPS = (np.where, np.sqrt, np.maximum)  # the ops _newton_update runs on
_DTYPES = (torch.float32, torch.float64)


def _check_layout(values: dict[str, Any]) -> None:
    """The layout rows (rows, R, N, K, offset) match the tensors and fit the per-group arrays."""
    lay, first = values["layout"], next(v for v in values.values() if isinstance(v, (list, tuple)))
    if lay.shape != (len(first), 5):
        raise ValueError(f"layout has shape {tuple(lay.shape)}; expected ({len(first)}, 5)")
    size = min(values[k].numel() for k in ("c", "s2", "s3", "sq", "sz", "mx", "mn") if k in values)
    for i, ((rows, R, N, K, o), t) in enumerate(zip(lay.tolist(), first)):
        groups = R if rows else N // max(K, 1)
        if rows not in (0, 1) or R * N != t.numel() or K < 1 or N % K or not 0 <= o <= size - groups:
            raise ValueError(
                f"layout[{i}] = {(rows, R, N, K, o)} does not describe a tensor of shape {tuple(t.shape)} "
                f"whose {groups} groups fit arrays of {size} values"
            )


_GROUP = Arg("layout", "array", dtype=torch.int64)
#: the signature table of ``_ramda_kernels.cpp``: one ``torch.ops.lightning_prox`` operator per entry
KERNELS = (
    Kernel(
        "ramda_elementwise_",
        (Arg("w", "tensors", out=True), Arg("g", "tensors"), Arg("w0", "tensors"), Arg("v", "tensors", out=True),
         Arg("u", "tensors", out=True), Arg("x", "tensors", out=True), Arg("s", "float"), Arg("eps", "float"),
         Arg("cm", "float"), Arg("tau", "float")),
    ),
    Kernel(
        "ramda_group_prep_first_",
        (_GROUP, Arg("g", "tensors"), Arg("w0", "tensors"), Arg("v", "tensors", out=True),
         Arg("u", "tensors", out=True), Arg("P", "tensors", out=True), Arg("pz", "tensors", out=True),
         Arg("s", "float"), Arg("eps", "float"), Arg("c", "array", dtype=torch.float64),
         *(Arg(k, "array", out=True, dtype=torch.float64) for k in ("s2", "s3", "sq", "sz", "mx", "mn"))),
        check=_check_layout,
    ),
    Kernel(
        "ramda_group_secular_",
        (_GROUP, Arg("P", "tensors"), Arg("pz", "tensors"), Arg("c", "array", dtype=torch.float64),
         Arg("s2", "array", out=True, dtype=torch.float64), Arg("s3", "array", out=True, dtype=torch.float64)),
        check=_check_layout,
    ),
    Kernel(
        "ramda_group_final_",
        (_GROUP, Arg("P", "tensors"), Arg("pz", "tensors"), Arg("c", "array", dtype=torch.float64),
         Arg("w", "tensors", out=True), Arg("x", "tensors", out=True), Arg("cm", "float")),
        check=_check_layout,
    ),
    Kernel("ramda_cbrt_", (Arg("u", "tensors"), Arg("y", "tensors", out=True))),
)  # fmt: skip


def _ops() -> Any:
    """The operators of :data:`KERNELS`, or None when they cannot be built here (then eager runs)."""
    return _native.kernels("_ramda_kernels.cpp", KERNELS)


def cbrt(u: Tensor) -> Tensor:
    """∛u for u ≥ 0 (float32/float64) as the compiled kernels compute it: within 1 ulp in float32
    (tested), u = 0 gives exactly 0, subnormals are scaled into the normal range first.

    Example:
        >>> cbrt(torch.tensor([0.0, 8.0, 1e-3]))
        tensor([0.0000, 2.0000, 0.1000])
    """
    ops = _ops()
    if ops is None:
        raise RuntimeError("the compiled RAMDA kernels are not available here (no working C++ compiler)")
    u = u.detach().contiguous()
    y = torch.empty_like(u)
    ops.ramda_cbrt_([u], [y])
    return y


def supports(reg: Regularizer | None, params: list[Tensor]) -> bool:
    """True when :func:`ramda_native_` covers this bucket's regularizer and tensors: no regularizer, an
    exact ``L1`` or ``GroupLasso(solver="newton")``, on CPU float32/float64 tensors, with the kernels
    built (the first call builds them; :func:`ramda_native_` also needs the tensors contiguous)."""
    return (
        _kind(reg) is not None
        and bool(params)
        and all(p.device.type == "cpu" and p.dtype in _DTYPES for p in params)
        and _ops() is not None
    )


def _kind(reg: Regularizer | None) -> str | None:
    if reg is None or reg.lam == 0.0 or type(reg) is L1:
        return "elementwise"
    if type(reg) is GroupLasso and reg.solver == "newton" and reg.layout is None:  # module layouts: eager
        return "group"
    return None


def ramda_native_(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    grad_sq_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    s: float,
    alpha: float,
    c: float,
    eps: float,
    regularizer: Regularizer | None,
    max_inner_iters: int,
    inner_rtol: float,
    info: dict[str, Any] | None,
    scratch: _fused.Scratch,
    prox_point_norms: list[Tensor] | None = None,
) -> bool:
    """One RAMDA step of a bucket (same device, dtype and counters) with the compiled kernels.

    ``prox_point_norms`` (group lasso): per tensor the group norms ‖Ŵ_g‖ of the last solution, in the
    parameter's dtype, updated in place (resized on first use) — the warm start of the next solve
    (c = τw/‖Ŵ_g‖), so that no pass over Ŵ is needed; an empty or mis-sized entry is computed from Ŵ.
    Keep them with the optimizer state: a resumed run then starts exactly where it stopped.
    Returns False, having changed nothing, when the bucket is not covered (:func:`supports`, or a
    non-contiguous tensor); the caller then runs the eager step.
    """
    if not supports(regularizer, params):
        return False
    tensors = (*params, *grads, *initial_points, *grad_sums, *grad_sq_sums, *prox_points)
    dtype = params[0].dtype
    if not all(t.is_contiguous() and t.dtype == dtype for t in tensors):
        return False
    ops = _ops()
    if _kind(regularizer) == "elementwise":
        tau = 0.0 if regularizer is None else alpha * regularizer.lam  # soft thresholding at 0: identity
        ops.ramda_elementwise_(
            params, grads, initial_points, grad_sums, grad_sq_sums, prox_points, s, eps, c, tau
        )
        if info is not None and tau > 0:  # what the eager prox_multi reports: a closed form
            info["inner_iters"] = int(info.get("inner_iters", 0))
            info["screened"] = int(info.get("screened", 0))
        return True
    assert isinstance(regularizer, GroupLasso)
    for p in params:
        check_groupable(p, regularizer.dim)  # the eager solver's error, before anything changes
    pbufs = scratch.views(params)  # P of every tensor, in one reused flat buffer
    pzbufs = scratch.views(params, slot=1)  # P⊙z
    norms = prox_point_norms if prox_point_norms is not None else [p.new_empty(0) for p in params]
    rows = zip(params, grads, initial_points, grad_sums, grad_sq_sums, prox_points, pbufs, pzbufs, norms)
    rows = [r for r in rows if r[0].numel()]
    iters, screened = (
        _group_bucket(ops, rows, regularizer, alpha * regularizer.lam, s, eps, c, max_inner_iters, inner_rtol)
        if rows
        else (0, 0)
    )
    if info is not None:
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), iters)
        info["screened"] = int(info.get("screened", 0)) + screened
    return True


def _group_bucket(
    ops: Any,
    rows: list[tuple[Tensor, ...]],
    reg: GroupLasso,
    tau: float,
    s: float,
    eps: float,
    momentum: float,
    max_iters: int,
    rtol: float,
) -> tuple[int, int]:
    """Prep, Newton and final passes of every tensor of a bucket; returns (iterations, screened groups).

    ``rows``: per tensor (W, g, W0, V, U, Ŵ, P buffer, P⊙z buffer, cached ‖Ŵ_g‖). The root search runs on
    the groups of all tensors at once (one set of numpy operations per iteration, not one per tensor);
    each tensor keeps its own iteration count and stop test, as the eager solver's per-tensor loop, and
    a pass runs only over tensors still iterating (one operator call per pass over those tensors).

    The prep pass returns the secular sums at the warm start c = τw/‖Ŵ_{t−1,g}‖ together with
    ‖P⊙z‖², max P and min P per group: screening, the root bracket and the first Newton step come out
    of it. A warm start outside its bracket (rare) is clamped and evaluated again, as the eager solver
    does, so both take the same iterations.
    """
    dtype = rows[0][0].dtype
    layouts = [_layout(r[0], reg.dim) for r in rows]
    sizes = np.array([lay[4] for lay in layouts])
    offs = np.concatenate([[0], np.cumsum(sizes)])
    starts = offs[:-1]
    # per tensor (rows, R, N, K, offset of its first group in the per-group arrays)
    layout = torch.tensor([(*lay[:4], o) for lay, o in zip(layouts, starts.tolist())], dtype=torch.int64)
    cols = list(zip(*rows))
    for (*_, x, _pb, _pz, nrm), (lay_rows, R, N, K, n_groups) in zip(rows, layouts):
        if nrm.numel() != n_groups:  # no cached ‖Ŵ_g‖ (first step, or a state from the eager path)
            xv = x.view(R, N) if lay_rows else x.view(R, n_groups, K)
            nrm.resize_(n_groups).copy_(torch.linalg.vector_norm(xv, dim=1 if lay_rows else (0, 2)))
    x0n = torch.cat([r[8].double() for r in rows]).numpy()
    thr_t = [
        float(cap(tau * group_weight(r[0].numel() // n, reg.weighting), r[0])) for r, n in zip(rows, sizes)
    ]
    thr = np.repeat(thr_t, sizes)
    tiny = float(np.finfo(np.float64).tiny)
    tol = max(rtol, 16 * float(torch.finfo(dtype).eps))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        warm = thr / np.maximum(x0n, tiny)  # a solution x0 has c = τw/‖x0‖
    cv = np.where(x0n > 0, warm, 1.0)
    s2, s3, pz_sq, z_sq, mx, mn = (np.empty(offs[-1]) for _ in range(6))
    s2_t, s3_t = torch.from_numpy(s2), torch.from_numpy(s3)  # the kernels write the numpy arrays
    g, w0, v, u, pbufs, pzbufs = cols[1], cols[2], cols[3], cols[4], list(cols[6]), list(cols[7])
    ops.ramda_group_prep_first_(
        layout, g, w0, v, u, pbufs, pzbufs, s, eps, torch.from_numpy(cv), s2_t, s3_t,
        *(torch.from_numpy(a) for a in (pz_sq, z_sq, mx, mn)),
    )  # fmt: skip
    norm = np.sqrt(pz_sq)
    alive = norm > thr  # zero iff ‖P⊙z‖ ≤ α·λ·w_g (ties → zero)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        gap = np.maximum(norm - thr, tiny)
        # root bracket τw·[min P, max P]/(‖P⊙z‖ − τw), both ends ≥ tiny as in the eager solver
        hi = np.maximum(np.where(alive, thr * mx / gap, 1.0), tiny)
        lo = np.minimum(np.maximum(np.where(alive, thr * mn / gap, 1.0), tiny), hi)
        # the eager solver's tighter lower end τw/‖z_g‖ (‖p(c)‖ ≤ ‖z_g‖), so that both start alike
        lo = np.where(alive, np.minimum(np.maximum(lo, thr / np.maximum(np.sqrt(z_sq), tiny)), hi), lo)
    # per tensor: all groups zero or of uniform P → the closed form c = hi, no iteration
    closed = np.logical_and.reduceat((mn == mx) | ~alive, starts)
    start = np.where((x0n > 0) & alive, np.minimum(np.maximum(warm, lo), hi), lo)
    # a warm start outside its bracket: that tensor starts where the eager solver does, evaluated again
    evaluate = np.logical_or.reduceat((start != cv) & alive, starts) & ~closed
    cv = np.where(np.repeat(evaluate, sizes), start, np.where(np.repeat(closed, sizes), hi, cv))
    done, prev = ~alive, np.full_like(cv, np.inf)
    j = np.where(closed, 0, 1)  # the prep pass was the first evaluation
    active = ~closed
    while active.any():
        idx = np.flatnonzero(evaluate)
        if idx.size:
            ops.ramda_group_secular_(
                layout[torch.from_numpy(idx)], [pbufs[i] for i in idx], [pzbufs[i] for i in idx],
                torch.from_numpy(cv), s2_t, s3_t,
            )  # fmt: skip
        mask = np.repeat(active, sizes)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf steps are rejected
            new = _newton_update(_NP_OPS, cv, s2, s3, lo, hi, thr, done, prev, tol, tiny)
        cv, lo, hi, done, prev = (np.where(mask, a, b) for a, b in zip(new, (cv, lo, hi, done, prev)))
        stop = (j >= max_iters) | ((j >= min(2, max_iters)) & np.logical_and.reduceat(done, starts))
        active &= ~stop
        j = np.where(active, j + 1, j)
        evaluate = active
    cv = np.where(alive, cv, np.inf)  # screened groups: Ŵ = P⊙z/(P + inf) = 0 exactly
    ops.ramda_group_final_(
        layout, pbufs, pzbufs, torch.from_numpy(cv), list(cols[0]), list(cols[5]), momentum
    )
    with np.errstate(divide="ignore"):
        new_norms = torch.from_numpy(np.where(alive, thr / cv, 0.0))  # ‖Ŵ_g‖ = τw/c: the next warm start
    for nrm, o, n in zip(cols[8], starts, sizes):
        nrm.copy_(new_norms[o : o + n])
    return int(j.max()), int((~alive).sum())


def _layout(p: Tensor, dim: str) -> tuple[int, int, int, int, int]:
    """(rows, R, N, K, number of groups) of ``p`` viewed as [R, N]: ``dim="out"`` a group per row
    (rows = 1); ``dim="in"`` a group per input channel, the columns j with j // K = g (K = ∏kernel)."""
    n = p.numel()
    R = p.shape[0]
    if dim == "out":
        return 1, R, n // R, 1, R
    return 0, R, n // R, n // (R * p.shape[1]), p.shape[1]
