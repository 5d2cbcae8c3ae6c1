"""RMDA's step as about one native memory pass per tensor (CPU float32/float64, ``_rmda_kernels.cpp``).

The eager step of :class:`~lightning_prox.optim.RMDA` runs V += s·g, Ŵ = W_0 − V/β, the regularizer's
Euclidean prox on Ŵ and the averaging W ← (1 − c)·W + c·Ŵ as separate passes (about 12 memory
passes per step with group lasso). The kernel (one ``torch.ops.lightning_prox.rmda_step_`` operator
declared in :data:`KERNELS`, built at first use by :mod:`._native` and cached on disk) does all of it
in one walk over each tensor: it reads g, V, W_0 and W and writes V, Ŵ and W once (28 bytes per
float32 value, a fused Adam step's count). ``GroupLasso(dim="out")`` scales each row while it is in
cache; ``dim="in"`` groups span all rows, so their Ŵ is read once more (32 bytes per value).

* No regularizer (MDA) or λ = 0: every value is the eager step's to the bit.
* ``L1``: soft thresholding at step·λ as torch's ``softshrink`` rounds it: the eager bits, up to the
  sign of a zeroed value (torch gives −0 for a zeroed negative value in its last few elements).
* ``GroupLasso`` (the exact Euclidean prox max(0, 1 − τ_g/‖z_g‖)·z_g; ``dim="in"`` or ``"out"``, and
  module layouts whose groups are those of a reshaped view: transposed and depthwise convs, LSTM/GRU
  gates, embeddings; grouped convs with several filters per group run eagerly): V and z = W_0 − V/β are the eager bits; the group norms sum in an order of their
  own (float partial sums added in float64), so Ŵ and W agree with the eager step to a few ulp of
  the scale, with the same zero groups except groups within rounding of ‖z_g‖ = τ_g. The non-finite
  policy is the eager prox's: a NaN norm scales its group by 0 (NaN stays NaN), an infinite one by 1.

Threads: without a regularizer, with ℓ1 and with ``dim="out"`` the bits do not depend on the thread
count; ``dim="in"`` splits the rows over the threads, so a given thread count gives the same bits on
every run and other counts agree to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..regularizers._base import Regularizer
from ..regularizers._elementwise import cap
from ..regularizers._group_solver import _Layout, group_weight
from ..regularizers.group_lasso import GroupLasso
from ..regularizers.l1 import L1
from ..structure import plain_form
from . import _native
from ._native import Arg, Kernel

__all__ = ["KERNELS", "native_available", "rmda_step_", "supports"]

_DTYPES = (torch.float32, torch.float64)
#: kind of the prox: none (MDA, or λ = 0), group lasso, ℓ1
_NONE, _GROUP, _L1 = 0, 1, 2


def _check(values: dict[str, Any]) -> None:
    """Layout rows (rows, R, N, K) describe the tensors; one threshold and one count per tensor; c ∈ (0, 1]."""
    n, lay = len(values["g"]), values["layout"]
    for name, shape in (("layout", (n, 4)), ("thr", (n,)), ("screened", (n,))):
        if tuple(values[name].shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(values[name].shape)}; expected {shape}: a row per tensor"
            )
    if values["kind"] not in (_NONE, _GROUP, _L1):
        raise ValueError(
            f"kind is {values['kind']}; expected {_NONE} (no prox), {_GROUP} (group lasso) or {_L1} (l1)"
        )
    if not 0.0 < values["c"] <= 1.0:
        raise ValueError(f"c is {values['c']}; expected the momentum weight in (0, 1]")
    thr = values["thr"]
    if not bool(torch.isfinite(thr).all()) or bool((thr < 0).any()):
        raise ValueError(f"thr must be finite and >= 0, got {thr.tolist()}")
    for i, ((rows, R, N, K), t) in enumerate(zip(lay.tolist(), values["g"])):
        if rows not in (0, 1) or R * N != t.numel() or K < 1 or N % K or (t.numel() and R < 1):
            raise ValueError(
                f"layout[{i}] = {(rows, R, N, K)} does not describe a tensor of shape {tuple(t.shape)} "
                "viewed as [R, N] with groups of K columns (rows = 0) or rows (rows = 1)"
            )


#: the signature table of ``_rmda_kernels.cpp``
KERNELS = (
    Kernel(
        "rmda_step_",
        (Arg("layout", "array", dtype=torch.int64), Arg("g", "tensors"), Arg("v", "tensors", out=True),
         Arg("w0", "tensors"), Arg("p", "tensors", out=True), Arg("w_hat", "tensors", out=True),
         Arg("thr", "array", dtype=torch.float64), Arg("s", "float"), Arg("nb", "float"), Arg("c", "float"),
         Arg("kind", "int"), Arg("screened", "array", out=True, dtype=torch.int64)),
        check=_check,
    ),
)  # fmt: skip


def _ops() -> Any:
    return _native.kernels("_rmda_kernels.cpp", KERNELS)


def native_available() -> bool:
    """True when the kernel is built (the first call builds it, once per machine)."""
    return _ops() is not None


def _kind(reg: Regularizer | None, step: float) -> int:
    if reg is None or reg.lam == 0.0 or step == 0:  # the prox is the identity
        return _NONE
    return _L1 if type(reg) is L1 else _GROUP


def _view(p: Tensor, reg: GroupLasso) -> tuple[Tensor, str] | None:
    """``p`` as a plain grouping: itself, or for a module ``layout`` the reshaped view that groups as
    ``GroupLasso``'s layout path does (None: the layout needs a gathered copy)."""
    if reg.layout is None:
        return p, reg.dim
    form = plain_form(p.shape, reg.dim, reg.layout)
    return None if form is None else (p.view(form[0]), form[1])


def supports(reg: Regularizer | None, params: list[Tensor], states: list[dict[str, Any]]) -> bool:
    """True when the kernel computes this step: no regularizer (or λ = 0), an exact ``L1`` or a
    ``GroupLasso`` whose grouping is a plain view of each tensor (no module ``layout``, or one that
    reshapes: transposed and depthwise convs, gates, embeddings), CPU float32/float64 parameters with
    state of their dtype, everything contiguous."""
    for p, st in zip(params, states):
        if p.device.type != "cpu" or p.dtype not in _DTYPES or not p.is_contiguous():
            return False
        if any(
            st[k].dtype != p.dtype or not st[k].is_contiguous()
            for k in ("grad_sum", "initial_point", "prox_point")
        ):
            return False
    if reg is None or reg.lam == 0.0 or type(reg) is L1:
        return True
    return type(reg) is GroupLasso and all(p.numel() == 0 or _view(p, reg) is not None for p in params)


def _threshold(p: Tensor, reg: Regularizer | None, step: float, kind: int) -> float:
    """The eager prox's threshold: step·λ (ℓ1), step·λ·w_g capped at the dtype's largest value (group lasso)."""
    if kind == _NONE or not p.numel():
        return 0.0
    tau = step * reg.lam  # type: ignore[union-attr]
    if kind == _L1:
        return tau
    view, dim = _view(p, reg)  # type: ignore[arg-type, misc]
    size = p.numel() // _Layout(view, dim).g
    return float(cap(tau * group_weight(size, reg.weighting), p))  # type: ignore[union-attr]


def _layout(p: Tensor, reg: Regularizer | None) -> tuple[int, int, int, int]:
    if not isinstance(reg, GroupLasso) or p.numel() == 0:
        return (1, 1, p.numel(), 1)
    view, dim = _view(p, reg)  # type: ignore[misc]
    lay = _Layout(view, dim)
    R, N = lay.shape
    return (1, R, N, 1) if dim == "out" else (0, R, N, lay.k)


def rmda_step_(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict[str, Any]],
    *,
    s: float,
    beta: float,
    step: float,
    c: float,
    reg: Regularizer | None,
    info: dict[str, Any],
) -> None:
    """V += s·g, Ŵ = prox_{step·ψ}(W_0 − V/β), W ← lerp(W, Ŵ, c) for every tensor (one pass each).

    ``reg`` is the group's regularizer at its strength (``None``: MDA; ``L1``: soft thresholding at
    step·λ); a group-lasso prox fills ``info`` as ``GroupLasso.prox_multi`` does (``inner_iters`` 0,
    ``screened`` the zeroed groups). The caller checks :func:`supports` and :func:`native_available` first.
    """
    kind = _kind(reg, step)
    thr = [_threshold(p, reg, step, kind) for p in params]
    layout = torch.tensor([_layout(p, reg if kind == _GROUP else None) for p in params], dtype=torch.int64)
    screened = torch.zeros(len(params), dtype=torch.int64)
    _ops().rmda_step_(
        layout.reshape(len(params), 4),
        grads,
        [st["grad_sum"] for st in states],
        [st["initial_point"] for st in states],
        params,
        [st["prox_point"] for st in states],
        torch.tensor(thr, dtype=torch.float64),
        s,
        -1.0 / beta,
        c,
        kind,
        screened,
    )
    if kind == _GROUP:
        info["inner_iters"] = 0
        info["screened"] = int(screened.sum())
