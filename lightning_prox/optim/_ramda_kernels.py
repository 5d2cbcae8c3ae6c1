"""RAMDA's step as one native pass per tensor (CPU; ``implementation="native"``).

The eager multi-tensor step (:func:`lightning_prox.optim.ramda._multi_tensor_ramda`) runs the
bookkeeping V, U, P = ∛U + ε, z = W0 − V/P and the subproblem solve as separate memory passes, about
30 of them per step for group lasso. Here the same math runs in C++ kernels (``_ramda_kernels.cpp``,
built at first use by :mod:`._native` and cached on disk, each one ``torch.ops.lightning_prox``
operator over all tensors of a bucket, declared in :data:`KERNELS`):

* **elementwise** regularizers (none, ``L1``): ``V += s·g; U += s·g²; P = ∛U + ε; z = W0 − V/P;
  Ŵ = prox(z); W ← lerp(W, Ŵ, c)`` per element;
* ``GroupLasso(solver="newton")``: tile by tile, a tile being whole groups of about 2^16 values
  (rows of [out, rest] for ``dim="out"``; for ``dim="in"`` a block of adjacent input channels, i.e.
  of columns of [out, in·k], at least 512 bytes and a whole number of vectors wide per row): V, U, P and
  P⊙z into a per-thread tile buffer; per group ‖P⊙z‖² (screening: zero iff ‖P⊙z‖ ≤ α·λ·w_g), ‖z‖²
  and max/min P (the root bracket); the Newton root search on the cached tile, one sweep per iteration;
  then ``Ŵ = P⊙z/(P + c); W ← lerp(W, Ŵ, c)`` and ‖Ŵ_g‖. W, g, W0, V and U are read once per step.

The root search is ``GroupLasso(solver="newton")``'s, run per group in float64 on unscaled values (the
root c of c‖P⊙z/(P + c)‖ = α·λ·w_g is scale-free; |q| ≤ |z|) with ``_group_solver._newton_update``'s
update, bracket [max(τw·min P/gap, τw/‖z_g‖), τw·max P/gap], stop rule and minimum of 2 iterations,
started where the eager solver starts: the warm start c = τw/‖Ŵ_{t−1,g}‖ clamped into the bracket
(the group norms of the last solution, kept with the optimizer state in ``prox_point_norms``), else the
bracket's lower end. The iterations of a tile run until all its groups have converged (the eager
solver iterates a whole tensor until all its groups have); a tensor reports the eager count, the
iteration at which its last group converged. Both take the same iterations up to the rounding of
float32 sums near the stop test. An overflowed U (P = +inf) pins its coordinate as ``GroupLasso``'s
prox does (Ŵ = z there). ∛U is a division-free Newton iteration for U^{−1/3} from a bit-level first
guess plus one correction (≤ 1 ulp in float32; :func:`cbrt` exposes it). The kernels sum in the
parameter's dtype over short runs and add the runs up in float64. Results agree with the eager step
to rounding (tests: 1e-6 of the weights' scale, same zeros, same solver iterations).

With OpenMP the tiles are split over ``torch.get_num_threads()`` threads; every group is computed
within its tile in a fixed order, so the results do not depend on the thread count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..regularizers._base import Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import group_weight
from ..regularizers.group_lasso import GroupLasso
from ..regularizers.l1 import L1
from ..structure import check_groupable
from . import _native
from ._native import Arg, Kernel

__all__ = ["KERNELS", "cbrt", "ramda_native_", "supports"]

_DTYPES = (torch.float32, torch.float64)


def _check_layout(values: dict[str, Any]) -> None:
    """The layout rows (rows, R, N, K, offset) match the tensors and fit the per-group arrays."""
    lay, first = values["layout"], next(v for v in values.values() if isinstance(v, (list, tuple)))
    if lay.shape != (len(first), 5):
        raise ValueError(f"layout has shape {tuple(lay.shape)}; expected ({len(first)}, 5)")
    size = min(values[k].numel() for k in ("thr", "norms", "stat"))
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
        "ramda_group_",
        (_GROUP, Arg("w", "tensors", out=True), Arg("g", "tensors"), Arg("w0", "tensors"),
         Arg("v", "tensors", out=True), Arg("u", "tensors", out=True), Arg("x", "tensors", out=True),
         Arg("s", "float"), Arg("eps", "float"), Arg("cm", "float"), Arg("thr", "array", dtype=torch.float64),
         Arg("norms", "array", out=True, dtype=torch.float64), Arg("stat", "array", out=True, dtype=torch.float64),
         Arg("tol", "float"), Arg("max_iters", "int")),
        check=_check_layout,
    ),
    Kernel("ramda_cbrt_", (Arg("u", "tensors"), Arg("y", "tensors", out=True))),
)  # fmt: skip


def _ops() -> Any:
    """The operators of :data:`KERNELS`, or None when they cannot be built here (then eager runs)."""
    return _native.kernels("_ramda_kernels.cpp", KERNELS)


def cbrt(u: Tensor) -> Tensor:
    """∛u for u ≥ 0 (float32/float64) as the native kernels compute it: within 1 ulp in float32
    (tested), u = 0 gives exactly 0, subnormals are scaled into the normal range first.

    Example:
        >>> cbrt(torch.tensor([0.0, 8.0, 1e-3]))
        tensor([0.0000, 2.0000, 0.1000])
    """
    ops = _ops()
    if ops is None:
        raise RuntimeError("the native RAMDA kernels are not available here (no working C++ compiler)")
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
    prox_point_norms: list[Tensor] | None = None,
) -> bool:
    """One RAMDA step of a bucket (same device, dtype and counters) with the native kernels.

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
    norms = prox_point_norms if prox_point_norms is not None else [p.new_empty(0) for p in params]
    rows = zip(params, grads, initial_points, grad_sums, grad_sq_sums, prox_points, norms)
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
    """The fused group-lasso pass over every tensor of a bucket; returns (iterations, screened groups).

    ``rows``: per tensor (W, g, W0, V, U, Ŵ, cached ‖Ŵ_g‖). The kernel reports per group whether it
    was screened, solved in closed form or after how many Newton iterations; a tensor's count is the
    eager solver's: 0 when every group is screened or of uniform P, else the iteration at which its last
    group converged, at least 2 (the eager solver's minimum) and at most ``max_iters``.
    """
    dtype = rows[0][0].dtype
    layouts = [_layout(r[0], reg.dim) for r in rows]
    sizes = np.array([lay[4] for lay in layouts])
    starts = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    # per tensor (rows, R, N, K, offset of its first group in the per-group arrays)
    layout = torch.tensor([(*lay[:4], o) for lay, o in zip(layouts, starts.tolist())], dtype=torch.int64)
    for (*_, x, nrm), (lay_rows, R, N, K, n_groups) in zip(rows, layouts):
        if nrm.numel() != n_groups:  # no cached ‖Ŵ_g‖ (first step, or a state from the eager path)
            xv = x.view(R, N) if lay_rows else x.view(R, n_groups, K)
            nrm.resize_(n_groups).copy_(torch.linalg.vector_norm(xv, dim=1 if lay_rows else (0, 2)))
    norms = torch.cat([r[6].double() for r in rows])  # in: ‖Ŵ_{t−1,g}‖, out: ‖Ŵ_t,g‖
    thr_t = [
        float(cap(tau * group_weight(r[0].numel() // n, reg.weighting), r[0])) for r, n in zip(rows, sizes)
    ]
    thr = torch.from_numpy(np.repeat(thr_t, sizes))
    stat = torch.empty(len(thr), dtype=torch.float64)
    tol = max(rtol, 16 * float(torch.finfo(dtype).eps))
    cols = [list(col) for col in zip(*rows)]
    ops.ramda_group_(layout, *cols[:6], s, eps, momentum, thr, norms, stat, tol, max_iters)
    for nrm, o, n in zip(cols[6], starts, sizes):
        nrm.copy_(norms[o : o + n])
    st = stat.numpy()
    solved = np.maximum.reduceat(st, starts)  # −1 all screened, 0 all screened or closed form
    iters = np.where(solved > 0, np.minimum(np.maximum(solved, min(2, max_iters)), max_iters), 0)
    return int(iters.max()), int((st < 0).sum())


def _layout(p: Tensor, dim: str) -> tuple[int, int, int, int, int]:
    """(rows, R, N, K, number of groups) of ``p`` viewed as [R, N]: ``dim="out"`` a group per row
    (rows = 1); ``dim="in"`` a group per input channel, the columns j with j // K = g (K = ∏kernel)."""
    n = p.numel()
    R = p.shape[0]
    if dim == "out":
        return 1, R, n // R, 1, R
    return 0, R, n // R, n // (R * p.shape[1]), p.shape[1]
