"""In-place ℓ1 kernels of ProxGen and ProxSGD: the chunked eager soft thresholding under Adam's metric,
and the native one-pass Adam + ℓ1 and SGD + ℓ1 steps (``_l1_kernels.cpp``, operators declared in
:data:`KERNELS`; equal to the eager step to the bit); and the one-pass steps of ProxGen and ProxSGD
with the other separable proxes that have a native form (:func:`native_kind`: ℓ0, Lq with
q = 0, 1/2, 2/3, MCP, SCAD, Quantization; :func:`adam_prox_`, :func:`sgd_prox_`).

Both ℓ1 forms under Adam's metric take the metric floor of :class:`~lightning_prox.optim.ProxGen` (``threshold_cap``): the
soft threshold is ``c / max(D, floor)``, which never exceeds ``c / floor``, and ``c`` (the
Euclidean threshold) where the second moment is exactly 0. An infinite metric (a
second moment that overflowed) gives a zero threshold: the coordinate stays where the smooth step
left it. The softshrink form below never multiplies 0 by inf: the scaled metric is clamped to
``_E_MAX`` first (a threshold below ``c / 1e19`` is below rounding anyway).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..regularizers import L0, L1, MCP, SCAD, Lq, Quantization, Regularizer, _fused
from . import _native
from ._native import Arg, Kernel

__all__ = [
    "KERNELS",
    "adam_l1_",
    "adam_prox_",
    "native_available",
    "native_kind",
    "sgd_l1_",
    "sgd_prox_",
    "soft_threshold_metric_",
    "supports",
]

#: the signature table of ``_l1_kernels.cpp``
KERNELS = (
    Kernel(
        "adam_l1_",
        (Arg("p", "tensors", out=True), Arg("g", "tensors"), Arg("m", "tensors", out=True),
         Arg("v", "tensors", out=True), Arg("scal", "array", dtype=torch.float64), Arg("decay", "float"),
         Arg("w1", "float"), Arg("beta2", "float"), Arg("c2", "float"), Arg("eps", "float"), Arg("floor", "int"),
         Arg("vec", "int")),
        check=lambda a: _check_rows(a, "scal", 6),
    ),
    Kernel(
        "adam_lq_",
        (Arg("p", "tensors", out=True), Arg("g", "tensors"), Arg("m", "tensors", out=True),
         Arg("v", "tensors", out=True), Arg("scal", "array", dtype=torch.float64), Arg("decay", "float"),
         Arg("w1", "float"), Arg("beta2", "float"), Arg("c2", "float"), Arg("eps", "float"), Arg("a", "float"),
         Arg("kind", "int"), Arg("floor", "float"), Arg("fill", "float"), Arg("vec", "int")),
        check=lambda a: (_check_rows(a, "scal", 3), _check_kind(a["kind"])),
    ),
    Kernel(
        "sgd_l1_",
        (Arg("p", "tensors", out=True), Arg("g", "tensors"), Arg("buf", "tensors", out=True, optional=True),
         Arg("wd", "float"), Arg("mom", "float"), Arg("damp1", "float"), Arg("lr", "float"), Arg("c", "float"),
         Arg("nesterov", "int"), Arg("first", "int"), Arg("vec", "int"), Arg("shrink_vec", "int")),
    ),
    Kernel(
        "adam_sep_",
        (Arg("p", "tensors", out=True), Arg("g", "tensors"), Arg("m", "tensors", out=True),
         Arg("v", "tensors", out=True), Arg("scal", "array", dtype=torch.float64), Arg("decay", "float"),
         Arg("w1", "float"), Arg("beta2", "float"), Arg("c2", "float"), Arg("eps", "float"), Arg("kind", "int"),
         Arg("num", "float"), Arg("nprm", "int"), Arg("prm", "array", dtype=torch.float64), Arg("floor", "float"),
         Arg("fill", "float"), Arg("vec", "int")),
        check=lambda a: (_check_rows(a, "scal", 2), _check_sep(a, (MCP_KIND, SCAD_KIND, QUANT_KIND))),
    ),
    Kernel(
        "sgd_sep_",
        (Arg("p", "tensors", out=True), Arg("g", "tensors"), Arg("buf", "tensors", out=True, optional=True),
         Arg("wd", "float"), Arg("mom", "float"), Arg("damp1", "float"), Arg("lr", "float"),
         Arg("nesterov", "int"), Arg("first", "int"), Arg("vec", "int"), Arg("kind", "int"), Arg("a", "float"),
         Arg("nprm", "int"), Arg("prm", "array", dtype=torch.float64)),
        check=lambda a: _check_sep(a, tuple(range(QUANT_KIND + 1))),
    ),
)  # fmt: skip


def _check_rows(values: dict[str, Any], name: str, width: int) -> None:
    n = len(values["p"])
    if values[name].shape != (n, width):
        raise ValueError(
            f"{name} has shape {tuple(values[name].shape)}; expected ({n}, {width}): a row per tensor"
        )


def _check_kind(kind: int) -> None:
    if kind not in range(MCP_KIND):
        raise ValueError(
            f"kind is {kind}; expected one of {list(range(MCP_KIND))} (ℓ0 and Lq, see native_kind)"
        )


def _check_sep(values: dict[str, Any], kinds: tuple[int, ...]) -> None:
    kind, n, prm = values["kind"], values["nprm"], values["prm"]
    if kind not in kinds:
        raise ValueError(
            f"kind is {kind}; expected one of {list(kinds)} (one per regularizer, see native_kind)"
        )
    # the levels; λ and b (MCP) or a (SCAD); nothing for ℓ0/Lq
    want = (1, 4) if kind == QUANT_KIND else ((2, 2) if kind >= MCP_KIND else (0, 0))
    if prm.shape != (n,) or not want[0] <= n <= want[1]:
        raise ValueError(
            f"prm has shape {tuple(prm.shape)} and nprm is {n}; expected nprm = prm's length, from {want[0]} to "
            f"{want[1]} for kind {kind}"
        )


#: the kind of each native prox by (exact regularizer type, parameters), one numbering for every kernel
#: (a subclass may override the prox: it keeps the eager path): ℓ0 hard thresholding (ℓ0: |z| > sqrt(2·step·λ/D);
#: Lq with q = 0: the same threshold as sqrt(step·λ/D)·√2, rounded as that class rounds it), the polynomial
#: + Newton forms of Lq with q = 1/2 and 2/3 (``adam_lq_``, and ``sgd_sep_`` after ProxSGD's step), the exact
#: MCP and SCAD proxes and Quantization with q = 1 and at most 4 levels (the classes' chunk kernels:
#: ``adam_sep_`` and ``sgd_sep_``)
_KINDS = {
    (L0, None): 0, (Lq, 0.0): 1, (Lq, 0.5): 2, (Lq, 2.0 / 3.0): 3, (MCP, True): 4, (SCAD, True): 5,
    (Quantization, (1.0, True)): 6,
}  # fmt: skip
MCP_KIND, SCAD_KIND, QUANT_KIND = 4, 5, 6


def _key(regularizer: Regularizer | None) -> tuple[Any, Any]:
    kind = type(regularizer)
    if kind is Lq:
        return kind, regularizer.q  # type: ignore[union-attr]
    if kind in (MCP, SCAD):
        return kind, regularizer.exact  # type: ignore[union-attr]
    if kind is Quantization:  # the level-mask kernel of that class
        return kind, (regularizer.q, len(regularizer.levels) <= 4)  # type: ignore[union-attr]
    return kind, None


def native_kind(regularizer: Regularizer | None) -> int | None:
    """The native prox that computes ``regularizer``'s (its exact type and parameters, see ``_KINDS``),
    else None (ℓ1 has kernels of its own)."""
    return _KINDS.get(_key(regularizer))


def covers(regularizer: Regularizer | None) -> bool:
    """True when a native pass computes ``regularizer``'s prox: an exact ``L1`` or a :func:`native_kind`."""
    return type(regularizer) is L1 or native_kind(regularizer) is not None


def supports(regularizer: Regularizer | None, params: list[Tensor]) -> bool:
    """True when :func:`native_kind` names ``regularizer``'s prox and ``params`` are float32/float64."""
    return native_kind(regularizer) is not None and all(
        p.dtype in (torch.float32, torch.float64) for p in params
    )


def _prm(regularizer: Regularizer, kind: int) -> Tensor:
    """The parameters of an MCP, SCAD or Quantization kind, as ``prm`` (none for ℓ0/Lq)."""
    if kind == MCP_KIND:
        vals: tuple[float, ...] = (regularizer.lam, regularizer.b)  # type: ignore[attr-defined]
    elif kind == SCAD_KIND:
        vals = (regularizer.lam, regularizer.a)  # type: ignore[attr-defined]
    elif kind == QUANT_KIND:
        vals = regularizer.levels  # type: ignore[attr-defined]
    else:
        vals = ()
    return torch.tensor(vals, dtype=torch.float64)


def _ops() -> Any:
    return _native.kernels("_l1_kernels.cpp", KERNELS)


def native_available() -> bool:
    """True when the native kernels are built (the first call builds them, once per machine)."""
    return _ops() is not None


_E_MAX = 1e19


def soft_threshold_metric_(
    params: list[Tensor],
    exp_avg_sqs: list[Tensor],
    c: float,
    bias_correction2_sqrts: list[float],
    eps: float,
    floor: float,
    scratch: _fused.Scratch,
) -> None:
    """θ ← sign(θ)·max(|θ| − t, 0) with t = c / D̄, in place, chunk by chunk.

    D̄ = max(sqrt(v)/b + eps, floor), and D̄ = 1 (the Euclidean metric) where v = 0 when
    ``floor > 0`` (a coordinate without gradient history).

    Args:
        params: the points θ̂ (after the smooth step), overwritten with the prox (float32/float64).
        exp_avg_sqs: the second moments ``v`` (read only), same dtype.
        c: step·λ ≥ 0.
        bias_correction2_sqrts: ``b`` per tensor (1.0 for RMSprop/AdaGrad or without bias correction).
        eps: δ.
        floor: the metric floor (0: none, the paper's metric everywhere).
        scratch: reusable buffers.

    With ``E = b·max(D, floor)`` (clamped to [b·floor, 1e19]) soft thresholding θ at ``c/D`` is
    ``softshrink(θ·E, c·b)/E``: six passes over a cache-sized chunk, no threshold formed.
    """
    for p, v, b in zip(params, exp_avg_sqs, bias_correction2_sqrts):
        if p.numel() == 0:
            continue
        cb, eb, fb = c * b, eps * b, floor * b
        if not (p.is_contiguous() and v.is_contiguous()):
            e = v.sqrt().add_(eb).clamp_(min=fb, max=_E_MAX)
            if floor > 0:
                e.masked_fill_(v == 0, b)
            p.copy_(torch._C._nn.softshrink(p * e, cb).div_(e))
            continue
        pf, vf = p.view(-1), v.view(-1)
        n = pf.numel()
        chunk = _fused.CHUNK if p.device.type == "cpu" else n  # on GPUs chunks only add kernel launches
        w_all, s_all = scratch.get(p, min(n, chunk))
        for start in range(0, n, chunk):
            pc, vc = pf[start : start + chunk], vf[start : start + chunk]
            k = pc.numel()
            w, s = w_all[:k], s_all[:k]
            torch.sqrt(vc, out=w)
            w.add_(eb).clamp_(min=fb, max=_E_MAX)
            if floor > 0:
                w.masked_fill_(vc == 0, b)
            torch.mul(pc, w, out=s)
            torch._C._nn.softshrink(s, cb, out=s)
            torch.div(s, w, out=pc)


def adam_l1_(
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
    c: float,
    bc2_sqrts: list[float],
    floor: float,
    preconditioner: str = "adam",
    bias_correction: bool = True,
) -> None:
    """One native pass per tensor: ProxGen's smooth step, then :func:`soft_threshold_metric_` with
    threshold ``c`` (= lr·λ), ``bc2_sqrts`` and ``floor``.

    ``preconditioner="adam"`` with bias correction is torch's fused AdamW step: the same bits as
    ``torch._fused_adamw_`` followed by :func:`soft_threshold_metric_`, up to that function's
    ``torch.sqrt`` (not correctly rounded on every CPU; the kernel's is). ``"rmsprop"`` (v ← βv +
    (1 − β)g²), ``"adagrad"`` (v ← v + g²) and no bias correction are the same pass with other
    scalars; they agree with the eager multi-tensor step to rounding. CPU float32/float64 tensors,
    contiguous, of one dtype; ``steps`` are the incremented counters. The caller checks
    :func:`native_available` first.
    """
    b2, c2, smooth = _adam_scalars(steps, lr, beta1, beta2, preconditioner, bias_correction)
    scal = torch.tensor(
        [(*row, c * b, eps * b, floor * b, b) for row, b in zip(smooth, bc2_sqrts)], dtype=torch.float64
    ).reshape(len(params), 6)
    _ops().adam_l1_(
        params, grads, exp_avgs, exp_avg_sqs, scal, 1 - lr * weight_decay, 1 - beta1, b2, c2, eps,
        int(floor > 0), _scalar_tail(params[0]),
    )  # fmt: skip


def adam_prox_(
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
    regularizer: Regularizer,
    bc2_sqrts: list[float],
    floor: float,
    fill: float,
    preconditioner: str = "adam",
    bias_correction: bool = True,
) -> None:
    """One native pass per tensor: the smooth step of :func:`adam_l1_`, then ``regularizer``'s prox with
    step lr (one of :func:`native_kind`'s) under the metric D = √v/b + eps (b = ``bc2_sqrts``), floored
    as ProxGen floors it: D̄ = max(D, ``floor``), and ``fill`` where v = 0 (``floor`` > 0 only).

    The moments are :func:`adam_l1_`'s (the same bits as the eager step), D is rebuilt with a correctly
    rounded square root (torch.sqrt is not on every CPU), and the prox follows the eager chunk kernels'
    operations in the parameters' dtype (the non-finite policy included: θ̂ where θ̂ is not finite or
    D = inf): for MCP, SCAD and Quantization (``adam_sep_``) the eager prox of the same θ̂ and D̄ to the
    bit; for ℓ0 and Lq (``adam_lq_``) to a few ulp (q = 2/3 takes |θ̂|^{1/3} by Newton steps instead of
    torch's exp(log(·)/3)). So the parameters agree with the eager step to a few ulp, and a coordinate
    within rounding of a threshold of the prox may fall on the other side. MCP, SCAD and Quantization
    take the smooth step's D (``bc2_sqrts`` must be its √bc2, a ValueError otherwise). The caller
    checks :func:`native_available` and :func:`native_kind` first.
    """
    kind = native_kind(regularizer)
    b2, c2, smooth = _adam_scalars(steps, lr, beta1, beta2, preconditioner, bias_correction)
    tail = (1 - lr * weight_decay, 1 - beta1, b2, c2, eps)
    if kind < MCP_KIND:  # type: ignore[operator]
        scal = torch.tensor([(*row, b) for row, b in zip(smooth, bc2_sqrts)], dtype=torch.float64)
        a = lr * (2.0 * regularizer.lam if kind == 0 else regularizer.lam)  # ℓ0's s = step·2λ/D
        _ops().adam_lq_(
            params, grads, exp_avgs, exp_avg_sqs, scal.reshape(len(params), 3), *tail, a, kind, floor, fill,
            _scalar_tail(params[0]),
        )  # fmt: skip
        return
    if bc2_sqrts != [row[1] for row in smooth]:
        raise ValueError(
            f"bc2_sqrts is {bc2_sqrts}; the MCP, SCAD and Quantization passes take the smooth step's metric, "
            f"whose √bc2 are {[row[1] for row in smooth]}"
        )
    prm = _prm(regularizer, kind)  # type: ignore[arg-type]
    num = lr * regularizer.lam if kind == QUANT_KIND else lr  # MCP and SCAD take s = step/D̄
    scal = torch.tensor(smooth, dtype=torch.float64).reshape(len(params), 2)
    _ops().adam_sep_(
        params, grads, exp_avgs, exp_avg_sqs, scal, *tail, kind, num, prm.numel(), prm, floor, fill,
        _scalar_tail(params[0]),
    )  # fmt: skip


def _adam_scalars(
    steps: list[float], lr: float, beta1: float, beta2: float, preconditioner: str, bias_correction: bool
) -> tuple[float, float, list[tuple[float, float]]]:
    """β₂ and 1 − β₂ of the second moment (1, 1 for AdaGrad) and per tensor lr/bc1 and the √bc2 of the
    smooth step (torch's fused Adam computes its bias corrections in double with pow and sqrt)."""
    adam_bc = preconditioner == "adam" and bias_correction
    b2, c2 = (1.0, 1.0) if preconditioner == "adagrad" else (beta2, 1 - beta2)
    rows = [
        (lr / (1 - beta1**s) if bias_correction else lr, math.sqrt(1 - beta2**s) if adam_bc else 1.0)
        for s in steps
    ]
    return b2, c2, rows


def sgd_l1_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    c: float,
    first: bool,
) -> None:
    """One native pass per tensor: torch's fused SGD step (``first``: the buffers take the first
    direction), then soft thresholding at ``c`` (= lr·λ) — the same bits as those two calls (torch's
    softshrink runs the last numel % (64 bytes / element size) values in scalar code, where it gives
    −0 for a zeroed negative value: measured on torch 2.14's x86 wheels; a tensor it splits between
    threads has such ranges inside too, where only the sign of a zero can differ).

    ``momentum_buffers`` is None for momentum 0. The caller checks :func:`native_available` first.
    """
    _ops().sgd_l1_(
        params, grads, momentum_buffers or [], weight_decay, momentum, 1 - dampening, lr, c, int(nesterov),
        int(first), _scalar_tail(params[0]), 64 // params[0].element_size(),
    )  # fmt: skip


def sgd_prox_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    regularizer: Regularizer,
    first: bool,
) -> None:
    """One native pass per tensor: the SGD step of :func:`sgd_l1_`, then ``regularizer``'s Euclidean
    prox with step lr (one of :func:`native_kind`'s): the same bits as torch's fused SGD step followed
    by the regularizer's ``prox_multi``, except Lq with q = 1/2 and 2/3 (a few ulp: |θ̂|^{1/2} correctly
    rounded, torch.sqrt's is not on every CPU; |θ̂|^{1/3} as in :func:`adam_prox_`), where a coordinate
    within rounding of the zeroing threshold may fall on the other side.
    The caller checks :func:`native_available` and :func:`native_kind` first.
    """
    kind = native_kind(regularizer)
    big = torch.finfo(params[0].dtype).max
    lam = regularizer.lam
    if kind == 0:  # the eager thresholds, in double: sqrt(min(2·lr·λ, max)) and sqrt(min(lr·λ, max))·√2
        a = min(lr * (2.0 * lam), big) ** 0.5
    elif kind == 1:
        a = math.sqrt(min(lr * lam, big)) * math.sqrt(2.0)
    else:
        a = lr if kind in (MCP_KIND, SCAD_KIND) else lr * lam
    prm = _prm(regularizer, kind)  # type: ignore[arg-type]
    _ops().sgd_sep_(
        params, grads, momentum_buffers or [], weight_decay, momentum, 1 - dampening, lr, int(nesterov),
        int(first), _scalar_tail(params[0]), kind, a, prm.numel(), prm,
    )  # fmt: skip


def _scalar_tail(like: Tensor) -> int:
    """torch's fused CPU kernels (as its compiler built them) run the last numel % this many elements in
    scalar code, where a moment update rounds differently (measured on torch 2.14's x86 wheels)."""
    return (32 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 16) // like.element_size()
