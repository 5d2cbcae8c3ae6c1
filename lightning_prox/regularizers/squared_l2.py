"""(λ/2)‖x‖²: weight decay as a regularizer, the baseline of PathProx (Yang et al., 2022, Eq. 1)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ._base import threshold_dtype
from ._elementwise import ElementwiseRegularizer

__all__ = ["SquaredL2"]


@dataclasses.dataclass(frozen=True)
class SquaredL2(ElementwiseRegularizer):
    r"""(λ/2)‖x‖², the weight-decay penalty, with prox

    .. math::

        \operatorname{prox}(z)_i = \frac{z_i}{1 + \text{step}\cdot\lambda/\text{metric}_i} .

    With ``ProxMixin(penalty_mode="subgradient")`` it adds (λ/2)‖W‖² of the selected weights (biases
    and norm layers excluded by the default selection) to the loss: the weight-decay baseline of the
    PathProx paper and code (``Leiay/PathProx``, ``--with-loss-term``), which ``torch.optim.SGD``'s
    ``weight_decay`` is not, since it also decays biases. As a prox it is proximal weight decay
    (never an exact zero, except for z = 0).

    Args:
        lam: λ ≥ 0.

    Example:
        >>> import torch
        >>> SquaredL2(lam=1.0).prox(torch.tensor([2.0, -4.0]), step=1.0)
        tensor([ 1., -2.])
        >>> float(SquaredL2(lam=0.5).value(torch.tensor([2.0, 2.0])))
        2.0
    """

    def value(self, x: Tensor) -> Tensor:
        return 0.5 * self.lam * x.to(threshold_dtype(x)).square().sum()

    def map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        return zf / (1.0 + s)  # s = step·λ/metric (0 for an infinite metric: z is kept)
