"""Regularizers with exact proximal operators, and the base classes to write your own."""

from ._base import (
    ProxOptions,
    Regularizer,
    as_regularizer,
    from_spec,
    get_regularizer_class,
    registered_names,
)
from ._elementwise import ElementwiseRegularizer
from .coupled_group_lasso import CoupledGroupLasso
from .group_lasso import GroupLasso
from .l0 import L0
from .l1 import L1
from .lq import Lq
from .mcp import MCP
from .nuclear_norm import NuclearNorm
from .quantization import Quantization
from .scad import SCAD
from .squared_l2 import SquaredL2

__all__ = [
    "ElementwiseRegularizer",
    "GroupLasso",
    "L0",
    "L1",
    "MCP",
    "SCAD",
    "SquaredL2",
    "Lq",
    "NuclearNorm",
    "Quantization",
    "ProxOptions",
    "Regularizer",
    "as_regularizer",
    "from_spec",
    "get_regularizer_class",
    "registered_names",
    "CoupledGroupLasso",
]
