"""The native finite-gradient scan (``_finite_kernels.cpp``, operator declared in :data:`KERNELS`): one
call over a list of CPU gradients, testing the exponent bits of every value (a value is NaN or ±inf
exactly when they are all ones), for float16, bfloat16, float32 and float64 alike.

It reads each gradient once, in the reverse of the step's order (last tensor, last block first), so
that the step starts on the gradients read last, where the last-level cache holds them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _native
from ._native import Arg, Kernel

__all__ = ["KERNELS", "all_finite"]

#: the signature table of ``_finite_kernels.cpp``
KERNELS = (
    Kernel("finite_scan", (Arg("x", "tensors"), Arg("bad", "array", out=True, dtype=torch.int64)), bits=True),
)


def _ops() -> Any:
    return _native.kernels("_finite_kernels.cpp", KERNELS)


def all_finite(tensors: list[Tensor]) -> bool | None:
    """True when every value of ``tensors`` (CPU, contiguous, one floating dtype of float16, bfloat16,
    float32, float64; a list the caller sorted by dtype) is finite, False when one is NaN or ±inf; None
    when the kernels cannot be built here (after the mechanism's one warning): the caller checks eagerly.

    Example:
        >>> all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])]) in (False, None)
        True
    """
    ops = _ops()
    if ops is None:
        return None
    bad = torch.zeros(1, dtype=torch.int64)
    ops.finite_scan(tensors, bad)
    return not bad.item()
