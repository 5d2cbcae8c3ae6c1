"""lightning_prox: proximal methods for PyTorch Lightning.

Train exactly sparse, channel-structured, low-rank and binary/ternary networks with ProxGen,
Prox-SGD, ProxQuant, SR2, RMDA/RAMDA and PathProx. See DESIGN.md for the layers.
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
