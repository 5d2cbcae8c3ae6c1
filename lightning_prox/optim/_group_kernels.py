"""The exact group-lasso prox under a diagonal metric as one native pass per tensor (CPU float32/float64).

``GroupLasso(solver="newton").prox_multi`` with a metric runs the eager solver
(:func:`lightning_prox.regularizers._group_solver._solve_newton`) as about 30 memory passes over each
tensor plus 6 to build the scaled metric. Here the same solve runs group by group in C++
(``_group_kernels.cpp``, built at first use by :mod:`._native` and cached on disk, one
``torch.ops.lightning_prox.group_lasso_prox_`` operator declared in :data:`KERNELS`): each group is read
once, its Newton iterations run on its cached scaled copy, and its solution is written once; groups are
split over OpenMP threads with a static schedule (the same bits for a given thread count).

The steps, their order and their dtype are the eager solver's (screening ‖m⊙z‖ ≤ τw, the bracket, the
warm start, the safeguarded Newton update of ``_newton_update``, its stop rule and tolerance
``max(rtol, 16·eps)``), so results agree with the eager path to rounding, with the same zero groups
(except groups within rounding of ‖m⊙z‖ = τw) and the same reported iterations. A +inf metric entry
pins its coordinate (x = z); a NaN in z stays NaN (its group is screened to z·0).

:func:`adam_group_lasso_` (``torch.ops.lightning_prox.adam_group_lasso_``) runs ProxGen's smooth step with
the solve and keeps no metric buffer: tile by tile of adjacent groups, θ̂ and the floored metric go into
per-thread buffers, the groups are solved there as above, and the solution is written back (``dim="out"``:
one read and write of the parameters, gradients and moments; ``dim="in"``: a contiguous smooth pass first,
then the tiles read θ̂ and the second moment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..regularizers import GroupLasso, Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _Layout, group_weight
from ..regularizers.group_lasso import _PIN_METRIC
from ..structure import check_groupable
from . import _native
from ._l1_kernels import _adam_scalars, _scalar_tail
from ._native import Arg, Kernel

__all__ = ["KERNELS", "adam_group_lasso_", "fuses", "native_available", "prox_group_lasso"]

_DTYPES = (torch.float32, torch.float64)


def _check(values: dict[str, Any]) -> None:
    """The layout rows (rows, R, N, K, offset) describe the tensors (``z``, or ``p`` of the fused step) and
    their groups fit ``iters``/``flags``; ``thr`` holds one threshold per tensor (the fused step: ``scal``
    one row of 4)."""
    lay, zs = values["layout"], values["z"] if "z" in values else values["p"]
    if lay.shape != (len(zs), 5):
        raise ValueError(f"layout has shape {tuple(lay.shape)}; expected ({len(zs)}, 5)")
    name, want = ("thr", (len(zs),)) if "thr" in values else ("scal", (len(zs), 4))
    if values[name].shape != want:
        raise ValueError(f"{name} has shape {tuple(values[name].shape)}; expected {want}")
    if values["iters"].shape != values["flags"].shape or values["iters"].ndim != 1:
        raise ValueError(
            f"iters and flags must be 1-D of one size, got {tuple(values['iters'].shape)} and "
            f"{tuple(values['flags'].shape)}"
        )
    size = values["iters"].numel()
    for i, ((rows, R, N, K, o), t) in enumerate(zip(lay.tolist(), zs)):
        groups = R if rows else N // max(K, 1)
        if (
            rows not in (0, 1)
            or R * N != t.numel()
            or K < 1
            or N % K
            or groups < 1
            or not 0 <= o <= size - groups
        ):
            raise ValueError(
                f"layout[{i}] = {(rows, R, N, K, o)} does not describe a tensor of shape {tuple(t.shape)} "
                f"whose {groups} groups fit arrays of {size} values"
            )


#: the signature table of ``_group_kernels.cpp``
KERNELS = (
    Kernel(
        "group_lasso_prox_",
        (Arg("layout", "array", dtype=torch.int64), Arg("z", "tensors"), Arg("m", "tensors"),
         Arg("x0", "tensors", optional=True), Arg("x", "tensors", out=True),
         Arg("thr", "array", dtype=torch.float64), Arg("pin", "float"), Arg("tol", "float"),
         Arg("max_iters", "int"), Arg("iters", "array", out=True, dtype=torch.int64),
         Arg("flags", "array", out=True, dtype=torch.int64)),
        check=_check,
    ),
    Kernel(
        "adam_group_lasso_",
        (Arg("layout", "array", dtype=torch.int64), Arg("p", "tensors", out=True), Arg("g", "tensors"),
         Arg("m", "tensors", out=True), Arg("v", "tensors", out=True), Arg("scal", "array", dtype=torch.float64),
         Arg("decay", "float"), Arg("w1", "float"), Arg("beta2", "float"), Arg("c2", "float"), Arg("eps", "float"),
         Arg("floor", "float"), Arg("fill", "float"), Arg("pin", "float"), Arg("tol", "float"),
         Arg("max_iters", "int"), Arg("vec", "int"), Arg("iters", "array", out=True, dtype=torch.int64),
         Arg("flags", "array", out=True, dtype=torch.int64)),
        check=_check,
    ),
)  # fmt: skip


def _ops() -> Any:
    return _native.kernels("_group_kernels.cpp", KERNELS)


def native_available() -> bool:
    """True when the native group kernels are built (the first call builds them, once per machine)."""
    return _ops() is not None


def _layout(z: Tensor, dim: str) -> tuple[int, int, int, int, int]:
    """(rows, R, N, K, groups) of ``z`` viewed as [R, N]: the groups of ``_group_solver._Layout``."""
    lay = _Layout(z, dim)
    R, N = lay.shape
    return (1, R, N, 1, lay.g) if dim == "out" else (0, R, N, lay.k, lay.g)


def _plan(zs: list[Tensor], tau: float, dim: str, weighting: str) -> tuple[Tensor, Tensor, list[int]]:
    """The ``layout`` and ``thr`` arrays of non-empty tensors ``zs`` and the offsets of their groups."""
    lays = [_layout(z, dim) for z in zs]
    offs = [0]
    for lay in lays:
        offs.append(offs[-1] + lay[4])
    layout = torch.tensor([(*lay[:4], o) for lay, o in zip(lays, offs)], dtype=torch.int64)
    thr = torch.tensor(
        [float(cap(tau * group_weight(z.numel() // lay[4], weighting), z)) for z, lay in zip(zs, lays)],
        dtype=torch.float64,
    )
    return layout, thr, offs


def _stats(offs: list[int], iters: Tensor, flags: Tensor) -> tuple[int, int]:
    """The solver iterations (the max over tensors) and the screened groups the kernel reported."""
    alive = (flags & 1).bool()
    # a tensor iterates unless every group is screened or has a constant metric (the closed form)
    n_iter = 0
    for o0, o1 in zip(offs[:-1], offs[1:]):
        a, f = alive[o0:o1], flags[o0:o1]
        if bool((a & ((f & 2) == 0)).any()):
            n_iter = max(n_iter, int(iters[o0:o1][a].max()))
    return n_iter, int((~alive).sum())


def prox_group_lasso(
    zs: list[Tensor],
    tau: float | Tensor,
    metrics: list[Tensor],
    x0s: list[Tensor] | None,
    dim: str,
    weighting: str,
    max_iters: int,
    rtol: float,
    info: dict | None,
    outs: list[Tensor] | None,
    pin: float,
) -> list[Tensor] | None:
    """The prox of ``_solve_newton`` with the native kernel, or None (nothing done) when it does not
    apply: not all tensors on CPU in float32/float64 with metric (and ``x0s``, ``outs``) of the same
    dtype, a non-scalar step, or no compiler. Non-contiguous tensors are solved from contiguous copies.
    The caller has checked the shapes (``check_groupable``)."""
    if isinstance(tau, Tensor):
        if tau.numel() != 1 or tau.device.type != "cpu":
            return None
        tau = float(tau)
    if not zs:
        return None
    dtype = zs[0].dtype
    lists = [zs, metrics, *(t for t in (x0s, outs) if t is not None)]
    if dtype not in _DTYPES or not all(
        t.device.type == "cpu" and t.dtype == dtype for ts in lists for t in ts
    ):
        return None
    ops = _ops()
    if ops is None:
        return None
    res: list[Tensor] = [
        outs[i] if outs is not None else z.clone() if not z.numel() else torch.empty(z.shape, dtype=dtype)
        for i, z in enumerate(zs)
    ]
    live = [i for i, z in enumerate(zs) if z.numel()]
    if not live:
        return res
    layout, thr, offs = _plan([zs[i] for i in live], tau, dim, weighting)
    z_c = [zs[i].contiguous() for i in live]
    m_c = [metrics[i].contiguous() for i in live]
    x0_c = [x0s[i].contiguous() for i in live] if x0s is not None else []
    # the solution goes straight into a contiguous output (it may alias z: each group is read first)
    x_c = [res[i] if res[i].is_contiguous() else torch.empty_like(z) for i, z in zip(live, z_c)]
    iters = torch.empty(offs[-1], dtype=torch.int64)
    flags = torch.empty(offs[-1], dtype=torch.int64)
    tol = max(rtol, 16 * torch.finfo(dtype).eps)
    ops.group_lasso_prox_(layout, z_c, m_c, x0_c, x_c, thr, pin, tol, max_iters, iters, flags)
    for i, x in zip(live, x_c):
        if x is not res[i]:
            res[i].copy_(x)
    if info is not None:
        n_iter, n_screened = _stats(offs, iters, flags)
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), n_iter)
        info["screened"] = int(info.get("screened", 0)) + n_screened
    return res


def fuses(regularizer: Regularizer | None) -> bool:
    """True when :func:`adam_group_lasso_` computes ``regularizer``'s prox: a :class:`GroupLasso` itself (a
    subclass may change the prox) with the exact solver and the tensors' own layout."""
    return type(regularizer) is GroupLasso and regularizer.solver == "newton" and regularizer.layout is None


def adam_group_lasso_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    regularizer: GroupLasso,
    bc2_sqrts: list[float],
    floor: float,
    fill: float,
    preconditioner: str = "adam",
    bias_correction: bool = True,
) -> Callable[[dict | None], None]:
    """ProxGen's step with a group-lasso prox as one native call per bucket: the smooth step, the metric
    and the group solve of :func:`prox_group_lasso`, tile of groups by tile of groups in cache.

    The moments are those of :func:`~lightning_prox.optim._l1_kernels.adam_l1_` (adam with bias
    correction: torch's fused AdamW step to the bit; rmsprop/adagrad: the eager step's to rounding).
    The metric is the eager step's D = √v/b + eps (b = ``bc2_sqrts``), floored as ProxGen floors it
    (max(D, ``floor``), ``fill`` where v = 0; ``floor`` = 0: neither), and the solve is
    :func:`prox_group_lasso`'s with step lr, group by group. The one difference from the eager step
    (torch's fused AdamW, then the metric, then the native prox) is √v: correctly rounded here, while
    ``torch.sqrt`` is not on every CPU (torch 2.14's AVX512 build: about one float32 value in five
    differs by an ulp). So the parameters agree to a few ulp, with the same zero groups except groups
    within rounding of the screening tie ‖m⊙z‖ = τw, and the same reported statistics except where a
    group's stop rule meets the rounding floor of its sums (float32: the iterations may differ by one).
    ``dim="out"`` groups are contiguous rows: the step, the metric and the solve of a tile of them in
    one pass. ``dim="in"`` groups (a column block of the tensor viewed as [out, in·k]): the smooth step
    as one contiguous pass (θ̂ into the parameters), then a tile of adjacent groups at a time reads θ̂
    and v (the metric recomputed, the same bits) as one contiguous run per row and writes the solution. No buffer outlives the call; each thread's spans a tile (about 0.5 MB, and at
    least three copies of one group).

    CPU float32/float64 tensors, contiguous, of one dtype, that ``regularizer`` (:func:`fuses`) can group
    (else ValueError, before anything changes); ``steps`` are the incremented counters. The caller checks
    :func:`native_available` first. Returns ``finish(info)``, to call where the eager step runs its prox:
    it sets ``info["inner_iters"]`` and ``info["screened"]`` as ``prox_multi`` does. A NaN second moment
    (possible only without the finite-gradient check) screens its group, as in the eager step: NaN
    where θ̂ is NaN, zero elsewhere in the group.
    """
    for p in params:
        check_groupable(p, regularizer.dim)
    live = [i for i, p in enumerate(params) if p.numel()]
    dtype = params[0].dtype
    iters = torch.empty(0, dtype=torch.int64)
    flags = torch.empty(0, dtype=torch.int64)
    offs = [0]
    if live:
        ps = [params[i] for i in live]
        layout, thr, offs = _plan(ps, lr * regularizer.lam, regularizer.dim, regularizer.weighting)
        b2, c2, smooth = _adam_scalars(
            [steps[i] for i in live], lr, beta1, beta2, preconditioner, bias_correction
        )
        scal = torch.tensor(
            [(*row, bc2_sqrts[i], t) for row, i, t in zip(smooth, live, thr.tolist())], dtype=torch.float64
        ).reshape(len(live), 4)
        iters = torch.empty(offs[-1], dtype=torch.int64)
        flags = torch.empty(offs[-1], dtype=torch.int64)
        tol = max(regularizer.rtol, 16 * torch.finfo(dtype).eps)
        _ops().adam_group_lasso_(
            layout, ps, [grads[i] for i in live], [exp_avgs[i] for i in live], [exp_avg_sqs[i] for i in live],
            scal, 1 - lr * weight_decay, 1 - beta1, b2, c2, eps, floor, fill, _PIN_METRIC, tol,
            regularizer.max_iters, _scalar_tail(ps[0]), iters, flags,
        )  # fmt: skip

    def finish(info: dict | None) -> None:
        if info is not None:
            info["inner_iters"], info["screened"] = _stats(offs, iters, flags)

    return finish
