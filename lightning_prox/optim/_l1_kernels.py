"""In-place ℓ1 kernels of ProxGen under Adam's metric: a chunked eager pass and a compiled Adam + ℓ1 pass.

Both take the metric floor of :class:`~lightning_prox.optim.ProxGen` (``threshold_cap``): the
soft threshold is ``c / max(D, floor)``, which never exceeds ``c / floor``, and ``c`` (the
Euclidean threshold) where the second moment is exactly 0. An infinite metric (a
second moment that overflowed) gives a zero threshold: the coordinate stays where the smooth step
left it. The softshrink form below never multiplies 0 by inf: the scaled metric is clamped to
``_E_MAX`` first (a threshold below ``c / 1e19`` is below rounding anyway).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from ..regularizers import _fused
from ..regularizers.functional import prox_l1

__all__ = ["compiled_adam_l1_", "soft_threshold_metric_"]

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


def _adam_l1_kernel(p: Tensor, g: Tensor, m: Tensor, v: Tensor, scalars: Tensor) -> None:
    # scalars (p's dtype, CPU): [1 - lr·wd, 1 - beta1, beta2, 1 - beta2, lr / bc1, bc2_sqrt, eps,
    # lr·lam, 1/floor (inf: no floor, and then no Euclidean metric for v = 0 either)]
    p.mul_(scalars[0])
    m.lerp_(g, scalars[1])
    v.mul_(scalars[2]).addcmul_(g, g, value=scalars[3])
    r = 1.0 / (v.sqrt() / scalars[5] + scalars[6])  # 1/D: one division serves step and threshold
    p.sub_(scalars[4] * m * r)
    rp = torch.where((v == 0) & (scalars[8] < math.inf), 1.0, torch.clamp(r, max=scalars[8]))
    p.copy_(prox_l1(p, scalars[7] * rp))


@functools.lru_cache(maxsize=1)
def _compiled() -> Any:
    return torch.compile(_adam_l1_kernel, dynamic=True, fullgraph=True)


def compiled_adam_l1_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    scalars: list[Tensor],
) -> bool:
    """One compiled pass per tensor: decoupled decay, Adam moments, Adam step and the floored ℓ1 prox.

    CPU tensors, contiguous. Returns False (nothing changed) when compiling fails (every compiled
    path then runs eager for the rest of the process). Tensors of fewer than 2 elements run the same
    function eagerly (dynamo would recompile for each of them).
    """
    if not _fused.compiled_available():
        return False
    kernel = _compiled()
    calls = [
        (_fused.alias(p, (p.numel(),)), _fused.alias(g, (g.numel(),)), _fused.alias(m, (m.numel(),)),
         _fused.alias(v, (v.numel(),)), s)
        for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, scalars)
    ]  # fmt: skip
    tiny = [a for a in calls if a[0].numel() < 2]
    for i, args in enumerate([a for a in calls if a[0].numel() >= 2]):
        try:
            kernel(*args)
        except Exception as err:  # a compiler failure means: use the eager path
            if i > 0:  # the kernel compiled and ran before: this is a real error
                raise
            _fused.mark_compile_failed("Adam + l1", err)
            return False
    for args in tiny:
        _adam_l1_kernel(*args)
    return True
