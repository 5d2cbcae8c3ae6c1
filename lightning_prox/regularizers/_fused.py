"""In-place ℓ1 soft thresholding for the optimizers' hot path, and their reusable scratch buffers.

:func:`soft_threshold_` computes what :class:`L1` computes under a uniform threshold (ProxSGD, a
Euclidean metric) — soft thresholding ``z − clamp(z, −c, c)`` — as one ``softshrink`` pass per tensor
written into the parameters instead of new tensors. :class:`Scratch` holds the reused buffers of the
chunked kernels (no step allocates parameter-sized temporaries). Half-precision tensors are not handled
here (their thresholds must be computed in float32): :func:`supports` says no and the optimizers fall
back to the regularizer's own ``prox_multi``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import Regularizer
from .l1 import L1

__all__ = ["CHUNK", "Scratch", "soft_threshold_", "supports"]

_FAST_DTYPES = (torch.float32, torch.float64)
#: elements per chunk: two float32 buffers of this size (2 MiB) stay in a typical L2/L3 slice.
CHUNK = 1 << 18


def supports(reg: Regularizer | None, params: list[Tensor]) -> bool:
    """True when the in-place ℓ1 kernels apply (an exact ``L1`` on float32/float64 tensors)."""
    return type(reg) is L1 and all(p.dtype in _FAST_DTYPES for p in params)


class Scratch:
    """Reusable flat buffers per (device, dtype), grown on demand.

    :meth:`get` gives the two chunk-sized buffers of the in-place kernels; :meth:`views` gives one
    buffer shaped like a whole list of tensors (the metric handed to a regularizer's
    ``prox_multi``): on CPU a fresh parameter-sized tensor per step costs page faults that take
    longer than the arithmetic (ResNet-18: ~40 ms against ~15 ms reused).
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}
        self._flat: dict[tuple[torch.device, torch.dtype, int], Tensor] = {}

    def views(self, likes: list[Tensor], slot: int = 0) -> list[Tensor]:
        """One contiguous tensor shaped like each of ``likes`` (same device and dtype), all views of one buffer
        (``slot`` selects an independent buffer)."""
        n = sum(t.numel() for t in likes)
        key = (likes[0].device, likes[0].dtype, slot)
        flat = self._flat.get(key)
        if flat is None or flat.numel() < n:
            flat = likes[0].new_empty(n)
            self._flat[key] = flat
        out, start = [], 0
        for t in likes:
            out.append(flat[start : start + t.numel()].view(t.shape))
            start += t.numel()
        return out

    def get(self, like: Tensor, n: int) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        bufs = self._bufs.get(key)
        if bufs is None or bufs[0].numel() < n:
            bufs = (like.new_empty(n), like.new_empty(n))
            self._bufs[key] = bufs
        return bufs[0][:n], bufs[1][:n]


def soft_threshold_(params: list[Tensor], c: float) -> None:
    """θ ← sign(θ)·max(|θ| − c, 0) in place (uniform threshold c = step·λ ≥ 0)."""
    for p in params:
        torch._C._nn.softshrink(p, c, out=p)
