"""Regularizers with exact proximal operators (DESIGN.md §3)."""

from ._base import Regularizer, as_regularizer, from_spec, get_regularizer_class, registered_names
from .l1 import L1

__all__ = [
    "L1",
    "Regularizer",
    "as_regularizer",
    "from_spec",
    "get_regularizer_class",
    "registered_names",
]
