"""Proximal optimizers (DESIGN.md §4): ``torch.optim.Optimizer`` subclasses, no Lightning imports."""

__all__: list[str] = []
