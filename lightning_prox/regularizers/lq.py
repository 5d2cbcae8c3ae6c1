"""ℓq regularizers, q ∈ {0, 1/2, 2/3, 1}: Cao et al. closed forms, preconditioned (Yun, Lozano & Yang, 2020, §2 and Appendix C)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ._base import ProxOptions, Step, threshold_dtype
from ._elementwise import ElementwiseRegularizer, check_q, chunked_map, guarded
from .functional import lhalf_kernel, lq_penalty, ltwothirds_kernel, prox_lq

__all__ = ["Lq"]

#: chunk of the q = 1/2, 2/3 kernels on CPU: their ~25 eager operations per chunk cost more in
#: per-call overhead than in cache misses at 32K values; 256K (eight 1 MiB buffers, in L3) was
#: fastest on a 2-core machine, one thread (32K-1M tried: 11.1x, 9.8x, 9.6x, 8.3x a fused Adam step
#: for 32K, 64K, 128K, 256K; slower again from 512K)
_CHUNK = 1 << 18


@dataclasses.dataclass(frozen=True)
class Lq(ElementwiseRegularizer):
    r"""λ Σ_i |x_i|^q for q ∈ {0, 1/2, 2/3, 1} (|x|^0 := [x ≠ 0]), with the exact closed-form prox.

    Per coordinate the prox minimizes step·λ|x|^q + ½ metric_i (x − z_i)², i.e.
    :math:`(x - z_i)^2 + \tilde\lambda_i |x|^q` with :math:`\tilde\lambda_i = 2\,\text{step}\cdot\lambda/\text{metric}_i`
    (Cao et al.'s formulas minimize (x − z)² + λ|x|^q, without the ½: hence the factor 2). Zeroing thresholds on ``|z_i|``:

    ===== ============================================ =====================
    q     threshold                                    value just above it
    ===== ============================================ =====================
    0     :math:`\tilde\lambda^{1/2}`                  ``z`` (no shrinkage)
    1/2   :math:`\tfrac{\sqrt[3]{54}}{4}\tilde\lambda^{2/3}` ``(2/3)·z``
    2/3   :math:`\tfrac23 3^{1/4}\tilde\lambda^{3/4}`  ``(1/2)·z``
    1     :math:`\tilde\lambda/2`                      0 (continuous)
    ===== ============================================ =====================

    At a threshold the result is 0 (for q < 1 both 0 and the jump value are minimizers there).

    Args:
        lam: λ ≥ 0.
        q: the exponent, one of 0, 0.5, 2/3, 1.

    Example:
        >>> import torch
        >>> Lq(lam=0.5, q=0.5).prox(torch.tensor([2.0, 0.5]), step=1.0)
        tensor([1.8144, 0.0000])
    """

    q: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "q", check_q(type(self).__name__, self.q))

    def value(self, x: Tensor) -> Tensor:
        return self.lam * lq_penalty(x.to(threshold_dtype(x)), self.q).sum()

    @property
    def zero_threshold_law(self) -> tuple[float, float]:
        # the table above with λ̃ = 2·s·λ
        if self.q == 0:
            return (2.0**0.5, 0.5)
        if self.q == 0.5:
            return (54.0 ** (1 / 3) / 4 * 2.0 ** (2 / 3), 2.0 / 3.0)
        if self.q == 2.0 / 3.0:
            return (2 / 3 * 3.0**0.25 * 2.0**0.75, 0.75)
        return (1.0, 1.0)

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        return prox_lq(zf, s, self.q)  # s = step·λ/metric

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        if self.q not in (0.5, 2.0 / 3.0):
            return super()._prox(z, step, metric)
        return self._prox_multi([z], step, None if metric is None else [metric], ProxOptions())[0]

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        out = opts.out
        if self.q not in (0.5, 2.0 / 3.0):
            return self._chunked_prox_multi(zs, step, metrics, out)
        # q = 1/2 and 2/3: the polynomial + Newton kernels of lhalf_kernel / ltwothirds_kernel, chunk
        # by chunk (one kernel per (compute dtype, device), built once per call)
        a = step * self.lam
        kernels: dict = {}

        def kernel(z: Tensor, m: Tensor | None, out: Tensor, bufs: list[Tensor]) -> None:
            key = (z.dtype, z.device)
            k = kernels.get(key)
            if k is None:
                make = lhalf_kernel if self.q == 0.5 else ltwothirds_kernel
                k = kernels[key] = make(a, z.dtype, z.device)
            k(z, m, out, bufs)

        return chunked_map(zs, metrics, guarded(kernel), 5, out, _CHUNK)
