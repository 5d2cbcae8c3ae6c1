"""RAMDA's step as a few native passes per tensor (CPU; ``implementation="native"``).

The eager multi-tensor step (:func:`lightning_prox.optim.ramda._multi_tensor_ramda`) runs the
bookkeeping V, U, P = ∛U + ε, z = W0 − V/P and the subproblem solve as separate memory passes, about
30 of them per step for group lasso. Here the same math runs in C++ kernels (``_ramda_kernels.cpp``,
built at first use by :mod:`._native` and cached on disk):

* **elementwise** regularizers (none, ``L1``): one pass per tensor,
  ``V += s·g; U += s·g²; P = ∛U + ε; z = W0 − V/P; Ŵ = prox(z); W ← lerp(W, Ŵ, c)``;
* ``GroupLasso(solver="newton")``: a *prep* pass that updates V and U, keeps P and P⊙z in two reused
  scratch buffers and returns per group the secular sums at the warm start together with ‖P⊙z‖²
  (screening) and max/min P (the root bracket); one pass per further Newton iteration (the sums
  Σ q², Σ q²/(P + c) with q = P⊙z/(P + c)); and a *final* pass ``Ŵ = P⊙z/(P + c); W ← lerp(W, Ŵ, c)``.

The per-group root search is the library's (``_group_solver._newton_update``: the same safeguarded
Newton, stop rule and warm start as ``GroupLasso(solver="newton")``), run in float64 on unscaled values
(the root c of c‖P⊙z/(P + c)‖ = α·λ·w_g is scale-free; |q| ≤ |z|). The warm start c = τw/‖Ŵ_{t−1,g}‖
comes from the group norms of the last solution, kept with the optimizer state (``prox_point_norms``),
so no pass over Ŵ is needed. ∛U is a division-free Newton iteration for U^{−1/3} from a bit-level first
guess plus one correction (≤ 1 ulp in float32; :func:`cbrt` exposes it). The kernels sum in the
parameter's dtype over short runs and add the runs up in float64. Results agree with the eager step to
rounding (tests: 1e-6 of the weights' scale, same zeros, same solver iterations).

The kernels walk every tensor contiguously: ``dim="out"`` groups are rows of [out, rest];
``dim="in"`` groups are the columns j with j // k = g of [out, in·k] (k the kernel size), summed
row by row into per-column accumulators. With OpenMP the rows are split over ``torch.get_num_threads()``
threads; a given thread count gives the same bits on every run.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from ..regularizers import _fused
from ..regularizers._base import Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _newton_update, group_weight
from ..regularizers.group_lasso import GroupLasso
from ..regularizers.l1 import L1
from ..structure import check_groupable
from . import _native

__all__ = ["cbrt", "ramda_compiled_", "supports"]

_NP_OPS = (np.where, np.sqrt, np.maximum)  # the ops _newton_update runs on
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    "elementwise": [_I64, *[_P] * 6, _D, _D, _D, _D, _INT],
    "group_prep_first": [_INT, _I64, _I64, _I64, *[_P] * 6, _D, _D, *[_P] * 6, _INT],
    "group_secular": [_INT, _I64, _I64, _I64, *[_P] * 5, _INT],
    "group_final": [_INT, _I64, _I64, _I64, *[_P] * 5, _D, _INT],
    "cbrt": [_I64, _P, _P],
}


@functools.cache
def _kernels() -> dict[tuple[str, torch.dtype], Any] | None:
    """The C++ kernels by (name, dtype), or None when they cannot be built here (then eager runs)."""
    lib = _native.load("_ramda_kernels.cpp")
    if lib is None:
        return None
    table = {}
    for name, argtypes in _SIGNATURES.items():
        for dtype, suffix in _SUFFIX.items():
            fn = getattr(lib, f"lp_ramda_{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, None
            table[name, dtype] = fn
    return table


def _kernel(name: str, dtype: torch.dtype) -> Any:
    kernels = _kernels()
    assert kernels is not None
    return kernels[name, dtype]


def cbrt(u: Tensor) -> Tensor:
    """∛u for u ≥ 0 (float32/float64) as the compiled kernels compute it: within 1 ulp in float32
    (tested), u = 0 gives exactly 0, subnormals are scaled into the normal range first.

    Example:
        >>> cbrt(torch.tensor([0.0, 8.0, 1e-3]))
        tensor([0.0000, 2.0000, 0.1000])
    """
    if _kernels() is None:
        raise RuntimeError("the compiled RAMDA kernels are not available here (no working C++ compiler)")
    u = u.detach().contiguous()
    y = torch.empty_like(u)
    _kernel("cbrt", u.dtype)(u.numel(), u.data_ptr(), y.data_ptr())
    return y


def supports(reg: Regularizer | None, params: list[Tensor]) -> bool:
    """True when :func:`ramda_compiled_` covers this bucket's regularizer and tensors: no regularizer, an
    exact ``L1`` or ``GroupLasso(solver="newton")``, on CPU float32/float64 tensors, with the kernels
    built (the first call builds them; :func:`ramda_compiled_` also needs the tensors contiguous)."""
    return (
        _kind(reg) is not None
        and bool(params)
        and all(p.device.type == "cpu" and p.dtype in _SUFFIX for p in params)
        and _kernels() is not None
    )


def _kind(reg: Regularizer | None) -> str | None:
    if reg is None or reg.lam == 0.0 or type(reg) is L1:
        return "elementwise"
    if type(reg) is GroupLasso and reg.solver == "newton" and reg.layout is None:  # module layouts: eager
        return "group"
    return None


def ramda_compiled_(
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
    threads = torch.get_num_threads()
    # the kernels write through raw pointers: tell autograd, as an in-place torch op would (a graph that
    # saved W for backward then fails loudly instead of using the new values)
    increment_version([*params, *grad_sums, *grad_sq_sums, *prox_points])
    if _kind(regularizer) == "elementwise":
        tau = 0.0 if regularizer is None else alpha * regularizer.lam  # soft thresholding at 0: identity
        kernel = _kernel("elementwise", dtype)
        for p, g, w0, v, u, x in zip(params, grads, initial_points, grad_sums, grad_sq_sums, prox_points):
            ptrs = (t.data_ptr() for t in (p, g, w0, v, u, x))
            kernel(p.numel(), *ptrs, s, eps, c, tau, threads)
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
        _group_bucket(
            rows, regularizer, alpha * regularizer.lam, s, eps, c, max_inner_iters, inner_rtol, threads
        )
        if rows
        else (0, 0)
    )
    if info is not None:
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), iters)
        info["screened"] = int(info.get("screened", 0)) + screened
    return True


def _group_bucket(
    rows: list[tuple[Tensor, ...]],
    reg: GroupLasso,
    tau: float,
    s: float,
    eps: float,
    momentum: float,
    max_iters: int,
    rtol: float,
    threads: int,
) -> tuple[int, int]:
    """Prep, Newton and final passes of every tensor of a bucket; returns (iterations, screened groups).

    ``rows``: per tensor (W, g, W0, V, U, Ŵ, P buffer, P⊙z buffer, cached ‖Ŵ_g‖). The root search runs on
    the groups of all tensors at once (one set of numpy operations per iteration, not one per tensor);
    each tensor keeps its own iteration count and stop test, as the eager solver's per-tensor loop, and
    a pass runs only over tensors still iterating.

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
    s2, s3, pz_sq, mx, mn = (np.empty(offs[-1]) for _ in range(5))
    prep = _kernel("group_prep_first", dtype)
    bases = [_addr(a) for a in (cv, s2, s3, pz_sq, mx, mn)]  # float64 arrays: group g at base + 8g
    for (_p, g, w0, v, u, _x, pbuf, pzbuf, _n), lay, o in zip(rows, layouts, starts):
        ptrs = (t.data_ptr() for t in (g, w0, v, u, pbuf, pzbuf))
        prep(*lay[:4], *ptrs, s, eps, *(b + 8 * int(o) for b in bases), threads)
    norm = np.sqrt(pz_sq)
    alive = norm > thr  # zero iff ‖P⊙z‖ ≤ α·λ·w_g (ties → zero)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        gap = np.maximum(norm - thr, tiny)
        hi = np.where(alive, thr * mx / gap, 1.0)  # root bracket τw·[min P, max P]/(‖P⊙z‖ − τw)
        lo = np.maximum(np.where(alive, thr * mn / gap, 1.0), tiny)
    # per tensor: all groups zero or of uniform P → the closed form c = hi, no iteration
    closed = np.logical_and.reduceat((mn == mx) | ~alive, starts)
    start = np.where((x0n > 0) & alive, np.minimum(np.maximum(warm, lo), hi), np.sqrt(lo) * np.sqrt(hi))
    # a warm start outside its bracket: that tensor starts where the eager solver does, evaluated again
    evaluate = np.logical_or.reduceat((start != cv) & alive, starts) & ~closed
    cv = np.where(np.repeat(evaluate, sizes), start, np.where(np.repeat(closed, sizes), hi, cv))
    done, prev = ~alive, np.full_like(cv, np.inf)
    j = np.where(closed, 0, 1)  # the prep pass was the first evaluation
    active = ~closed
    secular = _kernel("group_secular", dtype)
    while active.any():
        at = (_addr(cv), bases[1], bases[2])
        for i in np.flatnonzero(evaluate):
            pb, pz = rows[i][6].data_ptr(), rows[i][7].data_ptr()
            secular(*layouts[i][:4], pb, pz, *(b + 8 * int(starts[i]) for b in at), threads)
        mask = np.repeat(active, sizes)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf steps are rejected
            new = _newton_update(_NP_OPS, cv, s2, s3, lo, hi, thr, done, prev, tol, tiny)
        cv, lo, hi, done, prev = (np.where(mask, a, b) for a, b in zip(new, (cv, lo, hi, done, prev)))
        stop = (j >= max_iters) | ((j >= min(2, max_iters)) & np.logical_and.reduceat(done, starts))
        active &= ~stop
        j = np.where(active, j + 1, j)
        evaluate = active
    cv = np.where(alive, cv, np.inf)  # screened groups: Ŵ = P⊙z/(P + inf) = 0 exactly
    final, cv_addr = _kernel("group_final", dtype), _addr(cv)
    with np.errstate(divide="ignore"):
        new_norms = torch.from_numpy(np.where(alive, thr / cv, 0.0))  # ‖Ŵ_g‖ = τw/c: the next warm start
    for (p, _g, _w0, _v, _u, x, pbuf, pzbuf, nrm), lay, o, n in zip(rows, layouts, starts, sizes):
        final(
            *lay[:4],
            pbuf.data_ptr(),
            pzbuf.data_ptr(),
            cv_addr + 8 * int(o),
            p.data_ptr(),
            x.data_ptr(),
            momentum,
            threads,
        )
        nrm.copy_(new_norms[o : o + n])
    return int(j.max()), int((~alive).sum())


def _addr(a: np.ndarray) -> int:
    """The address of contiguous ``a``'s first element (ctypes' ``a.ctypes.data`` costs ~10 µs a call)."""
    return a.__array_interface__["data"][0]


def _layout(p: Tensor, dim: str) -> tuple[int, int, int, int, int]:
    """(rows, R, N, K, number of groups) of ``p`` viewed as [R, N]: ``dim="out"`` a group per row
    (rows = 1); ``dim="in"`` a group per input channel, the columns j with j // K = g (K = ∏kernel)."""
    n = p.numel()
    R = p.shape[0]
    if dim == "out":
        return 1, R, n // R, 1, R
    return 0, R, n // R, n // (R * p.shape[1]), p.shape[1]
