"""Pure thresholding maps: the one place where proximal arithmetic lives.

Every function takes the point ``z`` and a threshold-scale tensor or float, returns a new tensor and
never mutates its input. Regularizer classes turn (λ, step, metric) into these arguments; optimizers
call the regularizers, never these functions' math of their own (STYLE.md principle 1).
Computation happens in float32 for half-precision inputs and the result is cast back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import threshold_dtype

__all__ = ["prox_l1"]


def prox_l1(z: Tensor, thr: Tensor | float) -> Tensor:
    """Soft thresholding: z − clamp(z, −thr, thr) = sign(z)·max(|z| − thr, 0) = argmin_x ½(x − z)² + thr·|x|.

    ``thr`` ≥ 0 (a float or a tensor broadcastable to ``z``, may be +inf). Entries with ``|z| ≤ thr``
    (ties included) become exactly ``+0``.

    Example:
        >>> import torch
        >>> prox_l1(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    dt = threshold_dtype(z)
    zf = z.to(dt)
    if isinstance(thr, Tensor):
        thr = thr.to(dt)
        out = zf - torch.clamp(zf, -thr, thr)
    else:
        out = zf - torch.clamp(zf, -thr, thr)
    return out.to(z.dtype)
