"""The ProxOptimizer contract: param groups, checks before any change, torch flags, the pre-prox hook."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from lightning_prox.optim import ProxOptimizer, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso
from tests.cases import single_thread  # noqa: F401


def _snapshot(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> tuple:
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def _same(a: tuple, b: tuple) -> bool:
    pa, sa = a
    pb, sb = b
    if not all(torch.equal(x, y) for x, y in zip(pa, pb)):
        return False
    if sa["param_groups"] != sb["param_groups"] or sa["state"].keys() != sb["state"].keys():
        return False
    for k in sa["state"]:
        for key, v in sa["state"][k].items():
            w = sb["state"][k][key]
            if not (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w):
                return False
    return True


def test_proxsgd_is_a_prox_optimizer():
    assert issubclass(ProxSGD, ProxOptimizer)


def test_add_param_group_normalizes_regularizer_and_checks_fit():
    w = torch.nn.Parameter(torch.randn(3, 4))
    opt = ProxSGD([w], lr=0.1)
    b = torch.nn.Parameter(torch.randn(5))
    opt.add_param_group({"params": [b], "regularizer": L1(0.3)})
    assert opt.param_groups[1]["regularizer"] == L1(0.3).spec()
    assert opt.param_groups[1]["lam"] == 0.3
    bias = torch.nn.Parameter(torch.randn(7))
    with pytest.raises(ValueError, match=r"param group 2.*shape \(7,\).*GroupLasso"):
        opt.add_param_group({"params": [bias], "regularizer": GroupLasso(0.1)})
    assert len(opt.param_groups) == 2  # the bad group was not kept
    with pytest.raises(ValueError, match=r"param group 2: lr must be .*-1"):
        opt.add_param_group({"params": [bias], "lr": -1.0})
    assert len(opt.param_groups) == 2
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    opt.step()
    assert (b.abs() < 1e9).all()


def test_construction_names_parameter_shape_and_regularizer():
    bias = torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match=r"'fc\.bias'.*shape \(4,\).*GroupLasso"):
        ProxSGD([("fc.bias", bias)], lr=0.1, regularizer=GroupLasso(0.1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_bad_lr_is_a_value_error(bad):
    with pytest.raises(ValueError, match="lr must be"):
        ProxSGD([torch.nn.Parameter(torch.ones(2))], lr=bad)


@pytest.mark.parametrize("impl", [{}, {"foreach": False}, {"fused": False}])
def test_lr_zero_is_identity(impl):
    w0 = torch.tensor([[0.5, -0.01, 2.0], [0.0, 1e-3, -4.0]])
    w = torch.nn.Parameter(w0.clone())
    opt = ProxSGD([w], lr=0.0, momentum=0.9, regularizer=GroupLasso(1.0, dim="out"), **impl)
    w.grad = torch.ones_like(w0)
    opt.step()
    assert torch.equal(w.detach(), w0)
    assert torch.equal(opt.state[w]["momentum_buffer"], w.grad)  # the moments update as SGD's do


@pytest.mark.parametrize("impl", [{}, {"foreach": False}, {"fused": False}])
def test_maximize_matches_torch_sgd(impl):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
    b.data.copy_(a.data)
    ours = ProxSGD([a], lr=0.1, momentum=0.9, maximize=True, **impl)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, maximize=True)
    for _ in range(3):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", [{}, {"foreach": False}, {"fused": False}])
def test_grad_with_other_strides_matches_contiguous(impl):
    torch.manual_seed(0)
    w0 = torch.randn(4, 3, 3, 3)
    g = torch.randn(4, 3, 3, 3)
    a = torch.nn.Parameter(w0.clone().to(memory_format=torch.channels_last))
    b = torch.nn.Parameter(w0.clone())
    oa = ProxSGD([a], lr=0.1, momentum=0.9, regularizer=L1(0.05), **impl)
    ob = ProxSGD([b], lr=0.1, momentum=0.9, regularizer=L1(0.05), **impl)
    for _ in range(3):
        a.grad = g.clone()  # row-major gradient on a channels_last weight
        b.grad = g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def test_non_finite_grad_changes_nothing_and_names_parameter():
    w = torch.nn.Parameter(torch.randn(3))
    v = torch.nn.Parameter(torch.randn(2))
    opt = ProxSGD([("w", w), ("v", v)], lr=0.1, momentum=0.9, regularizer=L1(0.1))
    w.grad, v.grad = torch.ones(3), torch.ones(2)
    opt.step()
    before = _snapshot(opt, [w, v])
    w.grad, v.grad = torch.ones(3), torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"'v'"):
        opt.step()
    assert _same(before, _snapshot(opt, [w, v]))


def test_sparse_grad_refused_before_state_is_created():
    w = torch.nn.Parameter(torch.randn(3))
    v = torch.nn.Parameter(torch.randn(3))
    opt = ProxSGD([w, v], lr=0.1, momentum=0.9)
    w.grad = torch.ones(3)
    v.grad = torch.ones(3).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert len(opt.state) == 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(capturable=True), "capturable"),
        (dict(differentiable=True), "differentiable"),
        (dict(fused=True, foreach=False), "contradict"),
        (dict(foreach=False, implementation="native"), "native"),
        (dict(implementation="cuda"), r"implementation .*'cuda'"),
        (dict(maximize="yes"), "maximize"),
    ],
)
def test_torch_flags_refused_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        ProxSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, **kw)


@pytest.mark.parametrize(
    "old, new, foreach", [("fast", "eager", None), ("forloop", "eager", False), ("compiled", "native", None)]
)
def test_old_implementation_names_warn_and_map(old, new, foreach):
    with pytest.warns(DeprecationWarning, match=old):
        opt = ProxSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, implementation=old)
    assert opt.implementation == new
    assert opt.param_groups[0]["foreach"] is foreach


def test_pre_prox_hook_sees_smooth_point_and_can_be_removed():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.05]))
    opt = ProxSGD([w], lr=0.5, regularizer=L1(0.2))
    seen = []

    def hook(o):
        assert o is opt
        seen.append(w.detach().clone())
        w.data.mul_(2.0)  # the hook may move the point; the prox applies to the moved point

    handle = opt.register_pre_prox_hook(hook)
    w.grad = torch.tensor([0.2, 0.0])
    opt.step()
    torch.testing.assert_close(seen[0], torch.tensor([0.9, 0.05]))
    torch.testing.assert_close(w.detach(), torch.tensor([1.7, 0.0]))
    handle.remove()
    opt.step()
    assert len(seen) == 1


def test_state_dict_loads_weights_only_and_old_groups_get_defaults(tmp_path):
    w = torch.nn.Parameter(torch.randn(3))
    opt = ProxSGD([w], lr=0.1, momentum=0.9, regularizer=L1(0.1))
    w.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    for key in ("maximize", "foreach", "fused"):  # a checkpoint written before these keys existed
        del sd["param_groups"][0][key]
    torch.save(sd, tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=True)
    fresh = ProxSGD([w], lr=0.1, momentum=0.9, regularizer=L1(0.1))
    fresh.load_state_dict(loaded)
    assert fresh.param_groups[0]["maximize"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.step()


def test_prox_stats_after_step():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.05]))
    opt = ProxSGD([w], lr=0.5, regularizer=L1(0.2))
    w.grad = torch.tensor([0.2, 0.0])
    opt.step()
    (stats,) = opt.prox_stats()
    assert stats["regularizer"] == "L1"
    assert int(stats["zeros"]) == 1 and stats["numel"] == 2
    assert float(stats["mean_threshold"]) == pytest.approx(0.1)
