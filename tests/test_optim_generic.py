"""Generic optimizer tests driven by ``tests/cases.py``."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from tests.cases import (
    CAPABILITIES,
    OPTIMIZER_CASES,
    OPTIMIZER_ERROR_CASES,
    case_id,
    make_cnn,
    single_thread,  # noqa: F401
    train,
    weight_groups,
)


def _has_impl(cls: type) -> bool:
    return CAPABILITIES[cls]["reference_loop"]


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
def test_objective_goes_down(case):
    """Full-batch least squares + the case's regularizer: F = f + R decreases."""
    cls, kwargs, _ = case
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 8, generator=g)
    b = a @ torch.randn(8, 2, generator=g)
    w = torch.nn.Parameter(torch.randn(8, 2, generator=g))
    opt = cls([w], **kwargs)
    reg = kwargs.get("regularizer")

    def objective() -> torch.Tensor:
        f = 0.5 * ((a @ w - b) ** 2).mean()
        return f + (reg.value(w) if reg is not None else 0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * ((a @ w - b) ** 2).mean()
        loss.backward()
        return loss

    with torch.no_grad():
        start = float(objective())
    for _ in range(60):
        opt.step(closure)
    with torch.no_grad():
        assert float(objective()) < 0.7 * start


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
def test_resume_through_weights_only_checkpoint_is_exact(case):
    """50 steps straight == 25 steps, save/load (weights_only=True) into fresh objects, 25 more."""
    cls, kwargs, _ = case
    straight = make_cnn()
    opt = cls(weight_groups(straight), **kwargs)
    train(straight, opt, range(50))

    first = make_cnn()
    opt1 = cls(weight_groups(first), **kwargs)
    train(first, opt1, range(25))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt1.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_cnn(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = cls(weight_groups(resumed), **kwargs)
    opt2.load_state_dict(ckpt["optim"])
    train(resumed, opt2, range(25, 50))
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=case_id)
def test_param_groups_behave_like_separate_optimizers(case):
    cls, kwargs, _ = case
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(6, 4, generator=g), torch.randn(5, 3, generator=g)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(8)]
    joint = [torch.nn.Parameter(t.clone()) for t in init]
    alone = [torch.nn.Parameter(t.clone()) for t in init]
    opt = cls([{"params": [joint[0]]}, {"params": [joint[1]]}], **kwargs)
    opts = [cls([p], **kwargs) for p in alone]
    for gs in grads:
        for p, q, gr in zip(joint, alone, gs):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        for o in opts:
            o.step()
    for p, q in zip(joint, alone):
        assert torch.equal(p, q)


def _exact_prox(case) -> bool:
    """False for an iterative prox under a non-uniform metric: its stopping rule sees the whole batch
    of tensors in the fast path and one tensor at a time in the loop, so the iterates differ by the
    solver tolerance (that solver is tested with the regularizers)."""
    reg = case[1].get("regularizer")
    euclidean = case[0].__name__ == "ProxSGD" or case[1].get("prox_metric") == "euclidean"
    return reg is None or euclidean or not getattr(reg, "inexact_under_metric", False)


@pytest.mark.parametrize(
    "case", [c for c in OPTIMIZER_CASES if _has_impl(c[0]) and _exact_prox(c)], ids=case_id
)
def test_fast_path_matches_forloop(case):
    cls, kwargs, _ = case
    ref = make_cnn()
    fast = copy.deepcopy(ref)
    train(ref, cls(weight_groups(ref), **kwargs, foreach=False), range(30))
    train(fast, cls(weight_groups(fast), **kwargs, implementation="eager"), range(30))
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.equal(p == 0, q == 0), name


@pytest.mark.parametrize("case", OPTIMIZER_ERROR_CASES, ids=lambda c: f"{c[0].__name__}-{sorted(c[1])}")
def test_invalid_arguments_raise(case):
    cls, kwargs, match = case
    with pytest.raises(ValueError, match=match):
        cls([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    if "lr" in kwargs or cls.__init__.__defaults__ is None:
        return
    with pytest.raises(ValueError, match=match) as err:  # the same check per param group, naming it
        cls([{"params": [torch.nn.Parameter(torch.zeros(2))], **kwargs}])
    assert "param group 0" in str(err.value)
