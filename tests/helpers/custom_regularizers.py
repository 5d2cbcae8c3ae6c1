"""Regularizers written as a user would, outside the package (the classes of docs/custom_regularizers.md).

They live in an importable module so that YAML can name them by ``class_path`` and a checkpoint can
name them by ``"helpers.custom_regularizers.ClassName"``.
"""

from __future__ import annotations

import dataclasses

import torch

from lightning_prox.regularizers import ElementwiseRegularizer, Regularizer


@dataclasses.dataclass(frozen=True)
class ElasticNet(Regularizer):
    """λ(‖x‖₁ + γ/2‖x‖²); prox_i = soft(z_i, s_i)/(1 + γ s_i) with s = step·λ/metric (Zou & Hastie 2005)."""

    gamma: float = 1.0

    def value(self, x):
        x = x.double()
        return self.lam * (x.abs().sum() + 0.5 * self.gamma * x.square().sum())

    def prox(self, z, step, metric=None):
        s = step * self.lam / (1.0 if metric is None else metric)
        return (z - torch.clamp(z, -s, s)) / (1 + self.gamma * s)


@dataclasses.dataclass(frozen=True)
class FastElasticNet(ElementwiseRegularizer):
    """The same penalty through the elementwise base: only the scalar map."""

    gamma: float = 1.0

    def value(self, x):
        x = x.double()
        return self.lam * (x.abs().sum() + 0.5 * self.gamma * x.square().sum())

    def map(self, z, s):
        return (z - z.clamp(-s, s)) / (1 + self.gamma * s)


@dataclasses.dataclass(frozen=True)
class LogSum(ElementwiseRegularizer):
    """λ Σ log(1 + |x|/ε) (Candès, Wakin & Boyd 2008): the best of 0 and the larger stationary point."""

    eps: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if not self.eps > 0:
            raise ValueError(f"LogSum: eps must be > 0, got {self.eps!r}")

    def value(self, x):
        return self.lam * torch.log1p(x.double().abs() / self.eps).sum()

    def map(self, z, s):
        a, eps = z.abs(), self.eps
        # x > 0 solves s/(eps + x) + x - a = 0: x = ((a - eps) + sqrt((a + eps)^2 - 4s)) / 2
        disc = (a + eps) ** 2 - 4 * s
        x = (0.5 * ((a - eps) + disc.clamp_min(0).sqrt())).clamp_min(0)
        f = lambda v: s * torch.log1p(v / eps) + 0.5 * (v - a) ** 2  # noqa: E731
        better = (disc > 0) & (f(x) < f(torch.zeros_like(x)))  # ties go to 0
        return torch.where(better, torch.sign(z) * x, torch.zeros_like(z))


@dataclasses.dataclass(frozen=True)
class L1(Regularizer):
    """A user class that shares the library's ``L1`` name and does something else entirely."""

    def value(self, x):
        return x.sum() * 0

    def prox(self, z, step, metric=None):
        return torch.full_like(z, 42.0)


@dataclasses.dataclass(frozen=True)
class BlockSparse(Regularizer):
    """A grouped regularizer whose grouping field is not called ``dim``: it declares ``groups_by``."""

    axis: str = "out"
    groups_by = "axis"

    def value(self, x):
        return self.lam * x.double().reshape(x.shape[0], -1).norm(dim=1).sum()

    def prox(self, z, step, metric=None):
        zf = z.reshape(z.shape[0], -1)
        nrm = zf.norm(dim=1, keepdim=True)
        return (zf * (1 - step * self.lam / nrm.clamp_min(1e-30)).clamp_min(0)).reshape(z.shape)
