"""lightning_prox: proximal methods for PyTorch Lightning.

Train exactly sparse, channel-structured, low-rank and binary/ternary networks with ProxGen
(proximal Adam/RMSprop/AdaGrad; Yun, Lozano & Yang, 2020, "A General Family of Stochastic Proximal
Gradient Methods for Deep Learning"), Prox-SGD, ProxQuant (Bai, Wang & Liberty, ICLR 2019) and its
revised form, RMDA/RAMDA (Huang & Lee, ICLR 2022 and NeurIPS 2024) and SR2 (Lakhmiri, Orban & Lodi,
2022, a stochastic proximal method with adaptive quadratic regularization) and PathProx (Yang et al.,
2022, the proximal form of weight decay on layer pairs).

The package has four layers, each usable without the ones above it:

- :mod:`lightning_prox.regularizers`: the value and exact proximal operator of every regularizer;
- :mod:`lightning_prox.optim`: ``torch.optim.Optimizer`` subclasses that apply them (no Lightning);
- :mod:`lightning_prox.callbacks`: sparsity monitoring, λ schedules, target sparsity, structure freeze,
  hard quantization, RAMDA stages;
- :class:`lightning_prox.ProxMixin` and :mod:`lightning_prox.cli`: the Lightning module mixin and the
  ``lightning-prox`` command.

Example:

    >>> import torch
    >>> from lightning_prox.optim import ProxSGD
    >>> from lightning_prox.regularizers import L1
    >>> w = torch.nn.Parameter(torch.tensor([0.5, -1e-4, 2.0]))
    >>> opt = ProxSGD([{"params": [w], "regularizer": L1(1.0)}], lr=1e-2)
    >>> w.grad = torch.zeros(3)
    >>> opt.step()  # soft thresholding at lr * lam = 0.01
    >>> (w == 0).tolist(), round(w[0].item(), 4)
    ([False, True, False], 0.49)
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0.dev0"

# Lightning-facing names are imported lazily so that `import lightning_prox.regularizers` (and the
# optimizers) stays a torch-only import.
_LAZY = {"ProxMixin": "lightning_prox.module"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_prox' has no attribute {name!r}")


__all__ = ["ProxMixin", "__version__"]
