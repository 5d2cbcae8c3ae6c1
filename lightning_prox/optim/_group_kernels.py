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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _Layout, group_weight
from . import _native
from ._native import Arg, Kernel

__all__ = ["KERNELS", "prox_group_lasso"]

_DTYPES = (torch.float32, torch.float64)


def _check(values: dict[str, Any]) -> None:
    """The layout rows (rows, R, N, K, offset) describe the tensors and their groups fit ``iters``/``flags``;
    ``thr`` holds one threshold per tensor."""
    lay, zs = values["layout"], values["z"]
    if lay.shape != (len(zs), 5):
        raise ValueError(f"layout has shape {tuple(lay.shape)}; expected ({len(zs)}, 5)")
    if values["thr"].shape != (len(zs),):
        raise ValueError(f"thr has shape {tuple(values['thr'].shape)}; expected ({len(zs)},)")
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
)  # fmt: skip


def _ops() -> Any:
    return _native.kernels("_group_kernels.cpp", KERNELS)


def _layout(z: Tensor, dim: str) -> tuple[int, int, int, int, int]:
    """(rows, R, N, K, groups) of ``z`` viewed as [R, N]: the groups of ``_group_solver._Layout``."""
    lay = _Layout(z, dim)
    R, N = lay.shape
    return (1, R, N, 1, lay.g) if dim == "out" else (0, R, N, lay.k, lay.g)


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
    lays = [_layout(zs[i], dim) for i in live]
    offs = [0]
    for lay in lays:
        offs.append(offs[-1] + lay[4])
    layout = torch.tensor([(*lay[:4], o) for lay, o in zip(lays, offs)], dtype=torch.int64)
    thr = torch.tensor(
        [
            float(cap(tau * group_weight(zs[i].numel() // lay[4], weighting), zs[i]))
            for i, lay in zip(live, lays)
        ],
        dtype=torch.float64,
    )
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
        alive = (flags & 1).bool()
        # a tensor iterates unless every group is screened or has a constant metric (the closed form)
        n_iter = 0
        for o0, o1 in zip(offs[:-1], offs[1:]):
            a, f = alive[o0:o1], flags[o0:o1]
            if bool((a & ((f & 2) == 0)).any()):
                n_iter = max(n_iter, int(iters[o0:o1][a].max()))
        info["inner_iters"] = max(int(info.get("inner_iters", 0)), n_iter)
        info["screened"] = int(info.get("screened", 0)) + int((~alive).sum())
    return res
