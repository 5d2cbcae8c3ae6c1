"""Proximal optimizers (DESIGN.md §4): ``torch.optim.Optimizer`` subclasses, no Lightning imports."""

from .proxgen import ProxAdam, ProxGen
from .proxsgd import ProxSGD, TwoStageProxSGD
from .ramda import RAMDA
from .rmda import RMDA

__all__: list[str] = ["ProxAdam", "ProxGen", "ProxSGD", "RAMDA", "RMDA", "TwoStageProxSGD"]
