"""Optimizer state bytes per parameter value: counted after one step, and as each docstring states them."""

from __future__ import annotations

import pytest
import torch

from lightning_prox.optim import RAMDA, RMDA, SR2, PathProx, ProxGen, ProxSGD, TwoStageProxSGD
from lightning_prox.regularizers import L1, GroupLasso

# (name, class, constructor keywords, parameter-shaped bytes per value, phrase of the class docstring)
CASES = [
    ("ProxSGD", ProxSGD, {"lr": 0.1, "regularizer": L1(1e-3)}, 0, "0 bytes per parameter value"),
    (
        "ProxSGD momentum",
        ProxSGD,
        {"lr": 0.1, "momentum": 0.9, "regularizer": L1(1e-3)},
        4,
        "(4 with momentum",
    ),
    ("ProxGen", ProxGen, {"lr": 0.1, "regularizer": L1(1e-3)}, 8, "8 bytes per parameter value"),
    ("ProxGen rmsprop", ProxGen, {"lr": 0.1, "preconditioner": "rmsprop"}, 8, "8 bytes per parameter value"),
    ("ProxGen adagrad", ProxGen, {"lr": 0.1, "preconditioner": "adagrad"}, 8, "8 bytes per parameter value"),
    (
        "ProxGen identity",
        ProxGen,
        {"lr": 0.1, "preconditioner": "identity"},
        4,
        '4 with ``preconditioner="identity"',
    ),
    (
        "TwoStageProxSGD",
        TwoStageProxSGD,
        {"lr": 0.1, "regularizer": L1(1e-3)},
        8,
        "8 bytes per parameter value",
    ),
    ("RMDA", RMDA, {"lr": 0.1, "regularizer": GroupLasso(1e-3)}, 12, "12 bytes per parameter value"),
    ("RAMDA", RAMDA, {"lr": 0.1, "regularizer": GroupLasso(1e-3)}, 16, "16 bytes per parameter value"),
    ("PathProx", PathProx, {"lr": 0.1, "lam": 0.1}, 0, "0 bytes per parameter value"),
    ("PathProx momentum", PathProx, {"lr": 0.1, "lam": 0.1, "momentum": 0.9}, 4, "(4 with momentum"),
]


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in [(12, 6, 3, 3), (12, 6)]]


def _make(cls: type, kwargs: dict, dtype: torch.dtype):
    if cls is PathProx:  # PathProx needs its model's layer pairs
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(dtype)
        params = list(net.parameters())
        return params, cls(params, pairs=net, **kwargs)
    params = _params(dtype)
    return params, cls(params, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_state_bytes_per_value_after_one_step(case, dtype):
    name, cls, kwargs, per_value, phrase = case
    if dtype == torch.bfloat16 and per_value and "momentum" in name:
        per_value //= 2  # the momentum buffer has the parameter's dtype
    params, opt = _make(cls, kwargs, dtype)
    for p in params:
        p.grad = torch.full_like(p, 1e-2)
    opt.step()
    numel = sum(p.numel() for p in params)
    full = small = 0
    for p, st in opt.state.items():
        for v in st.values():
            if torch.is_tensor(v):
                nbytes = v.numel() * v.element_size()
                if v.shape == p.shape:
                    full += nbytes
                else:
                    small += nbytes
    assert full == per_value * numel, (name, full / numel)
    # beyond that: a one-value step counter per tensor, one value per group (RAMDA's native norms)
    assert small <= 4 * sum(1 + max(p.shape) for p in params)
    assert phrase in " ".join((cls.__doc__ or "").split())


def test_sr2_keeps_one_parameter_copy_and_no_per_value_state():
    params = _params(torch.float32)
    opt = SR2(params, regularizer=L1(1e-3))

    def closure():
        opt.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    def trial():
        with torch.no_grad():
            return sum((p**2).sum() for p in params)

    opt.step(closure, trial_closure=trial)
    assert all(not torch.is_tensor(v) for v in opt.state["sr2"].values())
    assert sum(b.numel() * b.element_size() for b in opt._backup) == 4 * sum(p.numel() for p in params)
    doc = " ".join((SR2.__doc__ or "").split())
    assert "0 bytes per parameter value" in doc and "(4 bytes per float32 value)" in doc
