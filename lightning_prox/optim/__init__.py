"""Proximal optimizers (DESIGN.md §4): ``torch.optim.Optimizer`` subclasses, no Lightning imports."""

from .ramda import RAMDA
from .rmda import RMDA

__all__: list[str] = ["RAMDA", "RMDA"]
