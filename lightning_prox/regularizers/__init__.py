"""Regularizers with exact proximal operators (DESIGN.md §3)."""

from ._base import Regularizer, as_regularizer, from_spec, get_regularizer_class, registered_names
from .group_lasso import GroupLasso
from .l1 import L1

__all__ = [
    "GroupLasso",
    "L1",
    "Regularizer",
    "as_regularizer",
    "from_spec",
    "get_regularizer_class",
    "registered_names",
]
