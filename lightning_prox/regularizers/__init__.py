"""Regularizers with exact proximal operators (DESIGN.md §3)."""

from ._base import Regularizer, as_regularizer, from_spec, get_regularizer_class, registered_names
from .group_lasso import GroupLasso
from .l0 import L0
from .l1 import L1
from .lq import Lq
from .mcp import MCP
from .nuclear_norm import NuclearNorm
from .quantization import Quantization
from .scad import SCAD

__all__ = [
    "GroupLasso",
    "L0",
    "L1",
    "MCP",
    "SCAD",
    "Lq",
    "NuclearNorm",
    "Quantization",
    "Regularizer",
    "as_regularizer",
    "from_spec",
    "get_regularizer_class",
    "registered_names",
]
