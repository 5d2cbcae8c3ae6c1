"""ProxGen + GroupLasso as one native pass (``_group_kernels.adam_group_lasso_``) against the eager step.

The eager step is torch's fused AdamW (or the multi-tensor RMSprop/AdaGrad step), the floored metric, then
``GroupLasso.prox_multi``. Agreement: the moments to the bit (adam; rmsprop/adagrad: to rounding), the
parameters within the tolerance rules of ``test_native_group`` (relative to each group's largest value;
the fused pass takes a correctly rounded √v where ``torch.sqrt`` may be an ulp off), the same zero groups
and the same reported solver statistics (float32 iterations within one, where a stop rule meets the
rounding floor of the sums).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math

import pytest
import torch

from lightning_prox.optim import ProxGen, _native
from lightning_prox.optim import _group_kernels as gk
from lightning_prox.regularizers import GroupLasso

pytestmark = pytest.mark.skipif(_native._compiler() is None, reason="no C++ compiler here")

TOL = {torch.float32: 2e-3, torch.float64: 2e-4}  # test_native_group's eager-solver tolerance
#: the shapes of the fused layouts: 1×1 conv, k = 9 and 49, linear, one group, odd sizes, a 1-d conv
SHAPES = [(6, 5, 1, 1), (7, 4, 3, 3), (5, 3, 7, 7), (9, 13), (1, 1, 3, 3), (33, 17), (8, 4, 5)]


@contextlib.contextmanager
def counting(monkeypatch):
    """Counts the fused passes that run."""
    calls = []
    real = gk.adam_group_lasso_

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(gk, "adam_group_lasso_", spy)
        yield calls


def _grads(shapes, dtype, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        gs = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        if t == 0:  # coordinates without gradient history (v = 0): the Euclidean fill of the floor
            for g in gs:
                g.view(-1)[::5] = 0
        out.append(gs)
    return out


def _run(impl, shapes, dtype, reg, steps=3, seed=0, threads=None, scale=0.01, **kw):
    gen = torch.Generator().manual_seed(seed + 1)
    ps = [
        torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) * scale)
        for s in shapes
    ]
    opt = ProxGen(ps, lr=kw.pop("lr", 1e-2), regularizer=reg, implementation=impl, **kw)
    stats = []
    old = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for gs in _grads(shapes, dtype, steps, seed):
            for p, g in zip(ps, gs):
                p.grad = g
            opt.step()
            st = opt.prox_stats()[0]
            stats.append((st["inner_iters"], st["screened"]))
    finally:
        torch.set_num_threads(old)
    return [p.detach().clone() for p in ps], opt, stats


def _groups(x, dim):
    return (
        x.reshape(x.shape[0], -1) if dim == "out" else x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 1)
    )


def _assert_agree(xs, ys, dim, dtype):
    for x, y in zip(xs, ys):
        gx, gy = _groups(x, dim).flatten(1), _groups(y, dim).flatten(1)
        assert torch.equal((gx == 0).all(1), (gy == 0).all(1))  # the same zero groups
        scale = gy.abs().amax(1).double().clamp_min(1e-30)
        err = (gx - gy).abs().amax(1).double()
        assert bool((err <= TOL[dtype] * scale).all()), float((err / scale).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", ["in", "out"])
@pytest.mark.parametrize(
    ("preconditioner", "cap", "wd", "extra"),
    [
        ("adam", 1.0, 0.0, {}),
        ("adam", None, 0.1, {}),
        ("adam", 1.0, 0.0, {"maximize": True}),
        ("adam", None, 0.0, {"bias_correction": False, "lam": 0.1}),
        ("rmsprop", None, 0.0, {}),
        ("adagrad", None, 0.0, {}),
        ("adagrad", 1.0, 0.1, {}),
        ("adagrad", None, 0.1, {"weighting": "none", "lam": 2.0}),
    ],
)
def test_fused_matches_eager(monkeypatch, dtype, dim, preconditioner, cap, wd, extra):
    extra = dict(extra)
    reg = GroupLasso(extra.pop("lam", 0.6), dim=dim, weighting=extra.pop("weighting", "sqrt"))
    kw = dict(preconditioner=preconditioner, threshold_cap=cap, weight_decay=wd, **extra)
    with counting(monkeypatch) as calls:
        xf, of, sf = _run("native", SHAPES, dtype, reg, **kw)
    assert calls == [len(SHAPES)] * 3  # every step ran the fused pass
    xe, oe, se = _run("eager", SHAPES, dtype, reg, **kw)
    _assert_agree(xf, xe, dim, dtype)
    for pf, pe in zip(of.param_groups[0]["params"], oe.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = of.state[pf][key], oe.state[pe][key]
            if preconditioner == "adam" and extra.get("bias_correction", True):  # torch's fused AdamW
                assert torch.equal(a, b), key
            else:
                torch.testing.assert_close(a, b, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert [s for _, s in sf] == [s for _, s in se]
    slack = 1 if dtype == torch.float32 else 0
    assert all(abs(i - j) <= slack for (i, _), (j, _) in zip(sf, se)), (sf, se)
    total = sum(_groups(x, dim).shape[0] for x in xf)
    assert any(0 < s < total for _, s in sf), sf  # some groups screened, not all: not vacuous


def test_iterations_equal_and_grouping_independent_of_threads(monkeypatch):
    """Tensors large enough for two threads: the same bits at 1 and 2 threads (each group's result
    depends on its own values only) and every run repeats itself; iterations equal eager's."""
    shapes = [(64, 64, 3, 3), (96, 400)]
    for dim in ("in", "out"):
        reg = GroupLasso(0.2, dim=dim)
        x1, _, s1 = _run("native", shapes, torch.float64, reg, threads=1)
        x2, _, s2 = _run("native", shapes, torch.float64, reg, threads=2)
        x2b, _, _ = _run("native", shapes, torch.float64, reg, threads=2)
        assert all(torch.equal(a, b) for a, b in zip(x1, x2)) and s1 == s2
        assert all(torch.equal(a, b) for a, b in zip(x2, x2b))
        xe, _, se = _run("eager", shapes, torch.float64, reg, threads=2)
        _assert_agree(x2, xe, dim, torch.float64)
        assert s2 == se and s2[0][0] >= 2


def test_resume_is_bit_exact():
    reg = GroupLasso(0.3, dim="in")
    shapes = SHAPES[:4]
    grads = _grads(shapes, torch.float32, 4, seed=3)
    gen = torch.Generator().manual_seed(4)
    init = [torch.randn(s, generator=gen) * 0.05 for s in shapes]

    def make(ps):
        return ProxGen(ps, lr=1e-2, regularizer=reg, implementation="native")

    ps = [torch.nn.Parameter(t.clone()) for t in init]
    opt = make(ps)
    for t, gs in enumerate(grads):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        if t == 1:
            saved = ([p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict()))
    qs = [torch.nn.Parameter(t) for t in saved[0]]
    opt2 = make(qs)
    opt2.load_state_dict(saved[1])
    for gs in grads[2:]:
        for q, g in zip(qs, gs):
            q.grad = g.clone()
        opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@pytest.mark.parametrize("dim", ["in", "out"])
def test_every_group_screened_and_one_group(monkeypatch, dim):
    """The paper's metric (no floor, so one step can zero every group): all zeros, all screened."""
    shapes = [(1, 1, 3, 3), (8, 5)]
    with counting(monkeypatch) as calls:
        xf, _, sf = _run(
            "native", shapes, torch.float32, GroupLasso(1e6, dim=dim), steps=2, threshold_cap=None
        )
    assert calls and all(bool((x == 0).all()) for x in xf)
    assert sf == [(0, sum(_groups(x, dim).shape[0] for x in xf))] * 2
    xe, _, se = _run("eager", shapes, torch.float32, GroupLasso(1e6, dim=dim), steps=2, threshold_cap=None)
    assert sf == se


def test_nan_gradient_stays_nan_and_screens_its_group_as_eager(monkeypatch):
    """Without the finite check a NaN gradient makes a NaN metric: both paths screen its group (NaN
    where θ̂ is NaN, zero elsewhere in it) and solve the others alike; the NaN never becomes zero."""
    shape = (6, 4, 3, 3)
    results = []
    for impl in ("native", "eager"):
        p = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 0.05)
        opt = ProxGen([p], lr=1e-2, regularizer=GroupLasso(0.3), implementation=impl, check_finite=False)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(6))
        g[2, 1, 0, 0] = math.nan
        p.grad = g
        opt.step()
        x = p.detach()
        assert bool(x[2, 1, 0, 0].isnan()), impl
        group = x[:, 1]
        assert bool((group.isnan() | (group == 0)).all()), impl
        assert int(x.isnan().sum()) == int(group.isnan().sum()), impl
        results.append(x)
    others = torch.ones(shape, dtype=torch.bool)
    others[:, 1] = False
    torch.testing.assert_close(results[0][others], results[1][others], rtol=1e-5, atol=1e-7)
    assert torch.equal(results[0][others] == 0, results[1][others] == 0)
    # with the finite check (the default) the step raises before anything changes
    p = torch.nn.Parameter(torch.randn(shape) * 0.05)
    opt = ProxGen([p], lr=1e-2, regularizer=GroupLasso(0.3), implementation="native")
    before = p.detach().clone()
    p.grad = g
    with pytest.raises(ValueError):
        opt.step()
    assert torch.equal(p.detach(), before)


def test_other_layouts_fall_back(monkeypatch):
    """Non-contiguous parameters, module layouts and subclasses run the eager step, with its results."""

    @dataclasses.dataclass(frozen=True)
    class MyGroupLasso(GroupLasso):
        pass

    shape = (8, 6, 3, 3)
    cases = [
        (GroupLasso(0.3, layout="conv:2"), torch.contiguous_format),
        (MyGroupLasso(0.3), torch.contiguous_format),
        (GroupLasso(0.3), torch.channels_last),
    ]
    for reg, fmt in cases:
        results = []
        for impl in ("native", "eager"):
            gen = torch.Generator().manual_seed(6)
            p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.05).contiguous(memory_format=fmt))
            opt = ProxGen([p], lr=1e-2, regularizer=reg, implementation=impl)
            with counting(monkeypatch) as calls:
                for _ in range(2):
                    p.grad = torch.randn(shape, generator=gen).contiguous(memory_format=fmt)
                    opt.step()
            assert calls == []
            results.append(p.detach().clone())
        assert torch.equal(*results)


def _good_args(dtype=torch.float32):
    p = torch.randn(4, 5, dtype=dtype)
    return [torch.tensor([[1, 4, 5, 1, 0]]), [p], [torch.randn_like(p)], [torch.zeros_like(p)],
            [torch.zeros_like(p)], torch.tensor([[1e-3, 0.03, 0.03, 1e-3]], dtype=torch.float64), 1.0, 0.1,
            0.999, 1e-3, 1e-8, 0.0, 1.0, 1e18, 1e-6, 10, 8, torch.empty(4, dtype=torch.int64),
            torch.empty(4, dtype=torch.int64)]  # fmt: skip


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (2, lambda a: [a[2][0].double()], "dtype"),
        (3, lambda a: [torch.zeros(4, 6)], "shape"),
        (4, lambda a: [torch.zeros(5, 4).t()], "contiguous"),
        (0, lambda a: torch.tensor([[1, 4, 5, 2, 0]]), "layout"),
        (0, lambda a: torch.tensor([[0, 4, 5, 2, 0]]), "layout"),
        (5, lambda a: torch.zeros(1, 3, dtype=torch.float64), "scal"),
        (17, lambda a: torch.empty(3, dtype=torch.int64), "iters"),
    ],
)
def test_wrong_argument_raises_before_the_kernel(index, bad, match):
    assert gk._ops() is not None
    args = _good_args()
    ref = [t.clone() for t in args[1]]
    args[index] = bad(args)
    with pytest.raises(ValueError, match=match):
        torch.ops.lightning_prox.adam_group_lasso_(*args)
    assert all(torch.equal(a, b) for a, b in zip(args[1], ref))


def test_no_metric_buffer_kept():
    """The eager step keeps a parameter-sized metric buffer between steps; the fused pass keeps none."""
    kept = {}
    for impl in ("native", "eager"):
        _, opt, _ = _run(impl, SHAPES, torch.float32, GroupLasso(0.6), steps=2)
        kept[impl] = sum(t.numel() for t in opt._scratch._flat.values()) + sum(
            a.numel() + b.numel() for a, b in opt._scratch._bufs.values()
        )
    assert kept["native"] == 0 and kept["eager"] >= sum(math.prod(s) for s in SHAPES)


def test_overflowing_second_moment_pins_as_eager():
    """A gradient whose square overflows (check_finite passes it: it is finite) makes v = inf and an
    infinite metric: the coordinate is pinned at θ̂ on both paths, the rest agrees as usual."""
    shape = (6, 4, 3, 3)
    res = {}
    for impl in ("native", "eager"):
        p = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 0.05)
        opt = ProxGen([p], lr=1e-2, regularizer=GroupLasso(0.3), implementation=impl)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(6))
        g[2, 1, 0, 0] = 1e30
        p.grad = g
        opt.step()
        assert bool(opt.state[p]["exp_avg_sq"].isinf().any())
        res[impl] = (p.detach().clone(), opt.state[p]["exp_avg_sq"].clone())
    assert torch.equal(res["native"][1], res["eager"][1])
    assert res["native"][0][2, 1, 0, 0] == res["eager"][0][2, 1, 0, 0] != 0
    _assert_agree([res["native"][0]], [res["eager"][0]], "in", torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_input_channels_are_thread_independent(monkeypatch, dtype):
    """dim="in" groups of wide tensors (200 channels of 3×3 columns, 513 single columns, split over
    threads): the same bits at 1 and 2 threads, and the eager step's values, zero groups and
    statistics."""
    shapes = [(64, 200, 3, 3), (300, 513)]
    reg = GroupLasso(0.8, dim="in")  # the third step screens some groups
    with counting(monkeypatch) as calls:
        x1, _, s1 = _run("native", shapes, dtype, reg, threads=1)
        x2, _, s2 = _run("native", shapes, dtype, reg, threads=2)
    assert calls == [len(shapes)] * 6
    assert all(torch.equal(a, b) for a, b in zip(x1, x2)) and s1 == s2
    xe, _, se = _run("eager", shapes, dtype, reg, threads=2)
    _assert_agree(x1, xe, "in", dtype)
    assert [s for _, s in s1] == [s for _, s in se]
    slack = 1 if dtype == torch.float32 else 0
    assert all(abs(i - j) <= slack for (i, _), (j, _) in zip(s1, se)), (s1, se)
    assert any(0 < s < 200 + 513 for _, s in s1), s1  # some groups screened, not all: not vacuous
