"""Proximal optimizers: ``torch.optim.Optimizer`` subclasses on one base, no Lightning imports."""

from ._base import ProxOptimizer, group_regularizer
from .pathprox import PathProx
from .proxgen import ProxAdam, ProxGen
from .proxsgd import ProxSGD, TwoStageProxSGD
from .ramda import RAMDA
from .rmda import RMDA
from .sr2 import SR2

__all__: list[str] = [
    "PathProx",
    "ProxAdam",
    "ProxGen",
    "ProxOptimizer",
    "ProxSGD",
    "RAMDA",
    "RMDA",
    "SR2",
    "TwoStageProxSGD",
    "group_regularizer",
]
