"""RAMDA's step as a few compiled (``torch.compile``) passes per tensor (CPU; ``implementation="compiled"``).

The eager multi-tensor step (:func:`lightning_prox.optim.ramda._multi_tensor_ramda`) runs the
bookkeeping V, U, P = ∛U + ε, z = W0 − V/P and the subproblem solve as separate memory passes, about
30 of them per step for group lasso. Here the same math runs as:

* **elementwise** regularizers (none, ``L1``): one pass per tensor,
  ``V += s·g; U += s·g²; P = ∛U + ε; z = W0 − V/P; Ŵ = prox(z); W ← lerp(W, Ŵ, c)``;
* ``GroupLasso(solver="newton")``: a flat *prep* pass (V, U, and P and P⊙z into two reused scratch
  buffers), a *first* pass that returns per group the secular sums at the warm start together with
  ‖P⊙z‖² (screening) and max/min P (the root bracket), one pass per further Newton iteration (the
  sums Σ q², Σ q²/(P + c) with q = P⊙z/(P + c)) and a *final* pass
  ``Ŵ = P⊙z/(P + c); W ← lerp(W, Ŵ, c)``.

The per-group root search is the library's (``_group_solver._newton_update``: the same safeguarded
Newton, stop rule and warm start as ``GroupLasso(solver="newton")``), run on unscaled values (the
root c of c‖P⊙z/(P + c)‖ = α·λ·w_g is scale-free; |q| ≤ |z|, so the sums overflow only for weights
beyond 1e19 in float32). The warm start c = τw/‖Ŵ_{t−1,g}‖ comes from the group norms of the last
solution, kept with the optimizer state (``prox_point_norms``), so no pass over Ŵ is needed.
∛U is a division-free Newton iteration for U^{−1/3} from a bit-level first guess plus one correction
(≤ 1 ulp in float32 on a 1e-44…1e38 sweep; exp/log would cost as much as the rest of the pass).
Results agree with the eager step to rounding (tests: 1e-6 of the weights' scale, same zeros).

Layouts (:func:`_layout`): the reductions run over the contiguous dimension where the grouping
allows it, because inductor's reductions over an outer dimension walk memory in strided column
strips, 2-3x slower. Kernels are compiled once per process (``dynamic=True``: every shape reuses
them) on first use, on small probe tensors, so a failed compile changes nothing and the caller falls
back to eager (with one warning, as ProxGen's compiled path does). Tensors with a dimension of size 1
in the kernel's view run the same Python kernels eagerly (dynamo would specialize and recompile).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..regularizers import _fused
from ..regularizers._base import Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _newton_update, group_weight
from ..regularizers.functional import prox_l1
from ..regularizers.group_lasso import GroupLasso
from ..regularizers.l1 import L1
from ..structure import check_groupable

__all__ = ["cbrt", "ramda_compiled_", "supports"]

_DTYPES = (torch.float32, torch.float64)

# ∛u = u·r² with r ≈ u^{-1/3}: first guess from the bit pattern (r's bits ≈ K − bits(u)/3, K from the
# log-linear approximation 4/3·2^m·(bias − 0.0450465); ≤ 3.8% off), Newton r ← r(4 − u r³)/3 (no
# division), then one Newton correction of y itself. Per dtype: (scale for subnormals and its cube
# root, K, integer view dtype, Newton iterations).
_CBRT = {
    torch.float32: (2.0**24, 2.0**-8, round(4 / 3 * 2**23 * (127 - 0.0450465)), torch.int32, 2),
    torch.float64: (2.0**54, 2.0**-18, round(4 / 3 * 2**52 * (1023 - 0.0450465)), torch.int64, 3),
}


def cbrt(u: Tensor) -> Tensor:
    """∛u for u ≥ 0 (float32/float64): within 1 ulp in float32 (tested), u = 0 gives exactly 0, subnormals are exact-scaled.

    Example:
        >>> cbrt(torch.tensor([0.0, 8.0, 1e-3]))
        tensor([0.0000, 2.0000, 0.1000])
    """
    up, down, magic, int_dtype, iters = _CBRT[u.dtype]
    tiny = torch.finfo(u.dtype).tiny
    small = u < tiny
    # subnormals scaled by 2^24 (2^54) into the normal range, their root scaled back by 2^-8 (2^-18);
    # clamped so that u = 0 runs on a finite value (its result is replaced by 0 below)
    us = torch.where(small, u * up, u).clamp_min(tiny)
    # K − bits/3 in floating point: SIMD has no integer division, and the guess may be a few ulp off
    r = (magic - us.view(int_dtype).to(u.dtype) * (1.0 / 3.0)).to(int_dtype).view(u.dtype)
    for _ in range(iters):
        r = r * (4.0 - us * (r * r * r)) * (1.0 / 3.0)
    y = us * r * r
    y = y + (us - y * y * y) * (r * r) * (1.0 / 3.0)
    return torch.where(u > 0, torch.where(small, y * down, y), 0.0)


def _accumulate(g: Tensor, w0: Tensor, v: Tensor, u: Tensor, s: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """V += s·g, U += s·g² in place; returns P = ∛U + ε and z = W0 − V/P."""
    v.add_(g * s)
    u.add_(s * g * g)
    P = cbrt(u) + eps
    return P, w0 - v / P


# -- kernels (plain torch functions: compiled below, or run eagerly on degenerate shapes) --------------
def _elementwise_kernel(
    p: Tensor, g: Tensor, w0: Tensor, v: Tensor, u: Tensor, x: Tensor, sc: Tensor
) -> None:
    # sc: [s, ε, c, α·λ] (α·λ = 0 without a regularizer: soft thresholding at 0 is the identity)
    P, z = _accumulate(g, w0, v, u, sc[0], sc[1])
    xn = prox_l1(z, sc[3] / P)
    x.copy_(xn)
    p.lerp_(xn, sc[2])


def _group_prep_kernel(
    g: Tensor, w0: Tensor, v: Tensor, u: Tensor, pbuf: Tensor, pzbuf: Tensor, sc: Tensor
) -> None:
    # flat views (one contiguous walk); sc: [s, ε]. pbuf ← P, pzbuf ← P⊙z (Ŵ = P⊙z/(P + c) at the end)
    P, z = _accumulate(g, w0, v, u, sc[0], sc[1])
    pbuf.copy_(P)
    pzbuf.copy_(P * z)


def _first_pass_kernel(pbuf: Tensor, pz: Tensor, c: Tensor, axis: int) -> tuple[Tensor, ...]:
    # the secular sums at the warm start c, plus what screening and the root bracket need: ‖P⊙z‖²,
    # max P and min P (partial reductions, see :func:`_layout`)
    s2, s3 = _secular_kernel(pbuf, pz, c, axis)
    red = 2 if axis == 2 else axis
    return s2, s3, (pz * pz).sum(red), pbuf.amax(red), pbuf.amin(red)


def _secular_kernel(pbuf: Tensor, pz: Tensor, c: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    # Σ q², Σ q²/(P + c) with q = P⊙z/(P + c), c one value per group, reduced along ``axis`` (see
    # :func:`_layout`; the caller finishes the sums per group)
    r = 1.0 / (pbuf + _bcast(c, axis))
    q = pz * r
    q2 = q * q
    red = 2 if axis == 2 else axis
    return q2.sum(red), (q2 * r).sum(red)


def _bcast(c: Tensor, axis: int) -> Tensor:
    return c.view(1, -1, 1) if axis == 2 else c.unsqueeze(0) if axis == 0 else c.unsqueeze(1)


def _group_final_kernel(
    p: Tensor, x: Tensor, pbuf: Tensor, pz: Tensor, c: Tensor, sc: Tensor, axis: int
) -> None:
    # Ŵ = P⊙z/(P + c) (c = inf on screened groups: exactly 0), W ← (1 − c_m)·W + c_m·Ŵ; sc: [c_m]
    xn = pz / (pbuf + _bcast(c, axis))
    x.copy_(xn)
    p.lerp_(xn, sc[0])


_KERNELS = {
    "elementwise": _elementwise_kernel,
    "prep": _group_prep_kernel,
    "first": _first_pass_kernel,
    "secular": _secular_kernel,
    "final": _group_final_kernel,
}


@functools.cache
def _compiled(name: str) -> Any:
    return torch.compile(_KERNELS[name], dynamic=True, fullgraph=True)


def _probe_args(name: str, dtype: torch.dtype, axis: int) -> tuple[Any, ...]:
    """Small arguments for kernel ``name`` in the layout ``axis`` (see :func:`_layout`). Deterministic:
    compiling must not draw from the global RNG (it would shift the user's random stream)."""
    shape = (3, 4, 5) if axis == 2 else (3, 4)
    n = 60 if axis == 2 else 12
    t = [torch.linspace(0.1 + 0.01 * i, 1.0, n, dtype=dtype).view(shape) for i in range(6)]
    flat = [x.view(-1) for x in t]
    c = torch.linspace(0.5, 1.0, 3 if axis == 1 else 4, dtype=dtype)
    if name == "elementwise":
        return (*flat, torch.tensor([0.1, 1e-6, 0.5, 0.01], dtype=dtype))
    if name == "prep":
        return (*flat, torch.tensor([0.1, 1e-6], dtype=dtype))
    if name in ("first", "secular"):
        return (t[0], t[1], c, axis)
    return (t[0], t[1], t[2], t[3], c, torch.tensor([0.5], dtype=dtype), axis)


_ready: set[tuple[str, torch.dtype, int]] = set()


def _ensure(names: list[str], dtype: torch.dtype, axis: int = 0) -> bool:
    """Compile the kernels ``names`` for (dtype, axis) on probe tensors; False (and one warning) on failure."""
    for name in names:
        key = (name, dtype, axis)
        if key in _ready:
            continue
        if not _fused.compiled_available():
            return False
        try:
            _compiled(name)(*_probe_args(name, dtype, axis))
        except Exception as err:  # a compiler failure means: use the eager path
            _fused.mark_compile_failed(f"RAMDA {name}", err)
            return False
        _ready.add(key)
    return True


def _run(name: str, args: tuple[Any, ...], regular: bool) -> Any:
    return (_compiled(name) if regular else _KERNELS[name])(*args)


def supports(reg: Regularizer | None, params: list[Tensor]) -> bool:
    """True when :func:`ramda_compiled_` covers this bucket's regularizer and tensors: no regularizer, an
    exact ``L1`` or ``GroupLasso(solver="newton")``, on CPU float32/float64 tensors, with compiling not
    known to fail (:func:`ramda_compiled_` also needs them contiguous)."""
    kind = _kind(reg)
    return (
        kind is not None
        and bool(params)
        and all(p.device.type == "cpu" and p.dtype in _DTYPES for p in params)
        and _fused.compiled_available()
    )


def _kind(reg: Regularizer | None) -> str | None:
    if reg is None or reg.lam == 0.0 or type(reg) is L1:
        return "elementwise"
    if type(reg) is GroupLasso and reg.solver == "newton":
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
    non-contiguous tensor) or compiling fails; the caller then runs the eager step.
    """
    if not supports(regularizer, params):
        return False
    tensors = (*params, *grads, *initial_points, *grad_sums, *grad_sq_sums, *prox_points)
    if not all(t.is_contiguous() for t in tensors) or any(g.dtype != params[0].dtype for g in grads):
        return False
    dtype = params[0].dtype
    if _kind(regularizer) == "elementwise":
        if not _ensure(["elementwise"], dtype, 0):
            return False
        lam = 0.0 if regularizer is None else regularizer.lam
        sc = torch.tensor([s, eps, c, alpha * lam], dtype=dtype)
        for p, g, w0, v, u, x in zip(params, grads, initial_points, grad_sums, grad_sq_sums, prox_points):
            n = p.numel()
            if n:
                flat = [_fused.alias(t, (n,)) for t in (p, g, w0, v, u, x)]
                _run("elementwise", (*flat, sc), n >= 2)
        if info is not None and lam > 0:  # what the eager prox_multi reports: a closed form
            info["inner_iters"] = int(info.get("inner_iters", 0))
            info["screened"] = int(info.get("screened", 0))
        return True
    assert isinstance(regularizer, GroupLasso)
    for p in params:
        check_groupable(p, regularizer.dim)  # the eager solver's error, before anything changes
    axes = {_layout(p, regularizer.dim)[0] for p in params if p.numel()}
    kernels = [("prep", 0)] + [(name, axis) for axis in sorted(axes) for name in ("first", "secular")]
    kernels += [("final", 0 if axis == 2 else axis) for axis in sorted(axes)]  # final: axis 2 runs as 0
    if not all(_ensure([name], dtype, axis) for name, axis in kernels):
        return False
    tau = alpha * regularizer.lam
    sc_prep = torch.tensor([s, eps], dtype=dtype)
    sc_final = torch.tensor([c], dtype=dtype)
    iters, screened = 0, 0
    pbufs = scratch.views(params)  # P of every tensor, in one reused flat buffer
    pzbufs = scratch.views(params, slot=1)  # P⊙z
    norms = prox_point_norms if prox_point_norms is not None else [p.new_empty(0) for p in params]
    for p, g, w0, v, u, x, pbuf, pzbuf, nrm in zip(
        params, grads, initial_points, grad_sums, grad_sq_sums, prox_points, pbufs, pzbufs, norms
    ):
        if p.numel() == 0:
            continue
        j, n_scr = _group_step(
            (p, g, w0, v, u, x, pbuf, pzbuf),
            nrm,
            regularizer,
            tau,
            sc_prep,
            sc_final,
            max_inner_iters,
            inner_rtol,
        )
        iters, screened = max(iters, j), screened + n_scr
    if info is not None:
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), iters)
        info["screened"] = int(info.get("screened", 0)) + screened
    return True


def _group_step(
    tensors: tuple[Tensor, ...],
    norms: Tensor,
    reg: GroupLasso,
    tau: float,
    sc_prep: Tensor,
    sc_final: Tensor,
    max_iters: int,
    rtol: float,
) -> tuple[int, int]:
    """Prep, first, Newton and final passes of one tensor; returns (iterations, screened groups).

    The first pass returns the secular sums at the warm start c = τw/‖Ŵ_{t−1,g}‖ together with
    ‖P⊙z‖², max P and min P per group: screening, the root bracket and the first Newton step come out
    of it. A warm start outside its bracket (rare) is clamped and evaluated again, as the eager solver
    does, so both take the same iterations.
    """
    p, x = tensors[0], tensors[5]
    n = p.numel()
    axis, shape, n_groups = _layout(p, reg.dim)
    regular = min(shape) >= 2
    x2, pb2, pz2 = (_fused.alias(t, shape) for t in (x, *tensors[6:]))
    if norms.numel() != n_groups:  # no cached ‖Ŵ_g‖ (first step, or a state from the eager path)
        dims = (0, 2) if axis == 2 else axis
        norms.resize_(n_groups).copy_(torch.linalg.vector_norm(x2, dim=dims))
    x0n = norms.double().numpy()
    _run("prep", (*(_fused.alias(t, (n,)) for t in (*tensors[1:5], *tensors[6:])), sc_prep), n >= 2)
    thr = np.full(n_groups, float(cap(tau * group_weight(n // n_groups, reg.weighting), p)))
    tiny = float(np.finfo(np.float64).tiny)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        warm = thr / np.maximum(x0n, tiny)  # a solution x0 has c = τw/‖x0‖
    cv = np.where(x0n > 0, warm, 1.0)
    tol = max(rtol, 16 * float(torch.finfo(p.dtype).eps))
    ops = (np.where, np.sqrt, np.maximum)
    j, alive, n_screened = 0, None, n_groups
    while j < max_iters:
        j += 1
        c_t = torch.from_numpy(cv).to(p.dtype)
        if alive is not None:
            s2, s3 = (_per_group(t, axis) for t in _run("secular", (pb2, pz2, c_t, axis), regular))
        else:  # first pass: also screening and the root bracket
            s2, s3, pz_sq, mx, mn = _run("first", (pb2, pz2, c_t, axis), regular)
            s2, s3, pz_sq = (_per_group(t, axis) for t in (s2, s3, pz_sq))
            mx, mn = _per_group(mx, axis, torch.amax), _per_group(mn, axis, torch.amin)
            norm = np.sqrt(pz_sq)
            alive = norm > thr  # zero iff ‖P⊙z‖ ≤ α·λ·w_g (ties → zero)
            n_screened = int(n_groups - alive.sum())
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                gap = np.maximum(norm - thr, tiny)
                hi = np.where(alive, thr * mx / gap, 1.0)  # root bracket τw·[min P, max P]/(‖P⊙z‖ − τw)
                lo = np.maximum(np.where(alive, thr * mn / gap, 1.0), tiny)
            if not alive.any() or ((mn == mx) | ~alive).all():  # all zero, or closed form (uniform P)
                cv, j = hi, 0
                break
            start = np.where(
                (x0n > 0) & alive, np.minimum(np.maximum(warm, lo), hi), np.sqrt(lo) * np.sqrt(hi)
            )
            done, prev = ~alive, np.full_like(cv, np.inf)
            outside = (start != cv) & alive  # a warm start outside its bracket
            if outside.any():  # evaluate where the eager solver starts
                cv, j = start, 0
                continue
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf steps are rejected
            cv, lo, hi, done, prev = _newton_update(ops, cv, s2, s3, lo, hi, thr, done, prev, tol, tiny)
        if j >= min(2, max_iters) and bool(done.all()):
            break
    if alive is None:  # max_iters == 0 cannot happen (RAMDA needs ≥ 2); kept total for safety
        raise RuntimeError("RAMDA's compiled solver ran no pass")
    cv = np.where(alive, cv, np.inf)
    c_t = torch.from_numpy(cv).to(p.dtype)
    if axis == 2:  # the pointwise final pass runs fastest as [out, in·k] with one c per column
        shape, c_t, axis = (shape[0], shape[1] * shape[2]), c_t.repeat_interleave(shape[2]), 0
    f_args = (*(_fused.alias(t, shape) for t in (p, x, *tensors[6:])), c_t, sc_final, axis)
    _run("final", f_args, regular)
    with np.errstate(divide="ignore"):
        norms.copy_(torch.from_numpy(np.where(alive, thr / cv, 0.0)))  # ‖Ŵ_g‖ = τw/c: the next warm start
    return j, n_screened


def _layout(p: Tensor, dim: str) -> tuple[int, tuple[int, ...], int]:
    """(axis, view shape, number of groups) of the group kernels for ``p``.

    ``dim="out"``: [out, rest], a group per row (axis 1). ``dim="in"``: [out, in, ∏kernel] with the
    reductions over the contiguous kernel dimension in the kernel and over ``out`` by ATen (axis 2),
    or [out, in] with a group per column (axis 0) for linear weights and 1×1 convolutions. Inductor's
    reductions over an outer dimension walk memory in strided column strips (2-3x slower than a
    contiguous walk), so the kernels avoid them where a layout allows.
    """
    n = p.numel()
    if dim == "out":
        return 1, (p.shape[0], n // p.shape[0]), p.shape[0]
    k = n // (p.shape[0] * p.shape[1])
    if k > 1:
        return 2, (p.shape[0], p.shape[1], k), p.shape[1]
    return 0, (p.shape[0], p.shape[1]), p.shape[1]


def _per_group(t: Tensor, axis: int, reduce: Any = torch.sum) -> np.ndarray:
    """The kernels' partial reductions → one float64 value per group (axis 2: finish over ``out``)."""
    return (reduce(t, 0) if axis == 2 else t).double().numpy()
