"""The native group-lasso prox under a diagonal metric against the eager Newton solver.

Tolerances, relative to each group's largest |z|: the eager solver's own accuracy, 2e-3 in float32 and
2e-4 in float64 (it may stop a group at a relative residual up to √tol, tol = max(rtol, 16·eps), when
Newton stalls); 1e-12 in float64 with rtol=0. The native solve sums in float64 and refines such groups:
its residual is checked against the optimality condition itself (2e-6 float32, 1e-10 float64). The
same zero groups except groups within rounding of ‖m⊙z‖ = τw (excluded
explicitly and counted); the same screened counts and the same reported solver iterations (float32:
within one, where the stop rule meets the rounding floor of the sums).
"""

from __future__ import annotations

import contextlib
import math
import warnings
import zlib

import pytest
import torch

from lightning_prox.optim import ProxGen, _native
from lightning_prox.optim import _group_kernels as gk
from lightning_prox.regularizers import GroupLasso
from lightning_prox.regularizers._group_solver import group_weight

pytestmark = pytest.mark.skipif(_native._compiler() is None, reason="no C++ compiler here")

TOL = {torch.float32: 2e-3, torch.float64: 2e-4}
TOL_RTOL0 = 1e-12  # float64 with rtol=0: both solve to 16·eps
#: the native solve's own relative residual |c‖m⊙z/(m + c)‖ − τw|/(τw) per live group
RESID = {torch.float32: 2e-6, torch.float64: 1e-10}
TIE = {torch.float32: 1e-4, torch.float64: 1e-10}  # relative distance of ‖m⊙z‖ to τw counted as a tie


@contextlib.contextmanager
def eager(monkeypatch):
    """GroupLasso's eager solver: the native kernel reported unavailable."""
    with monkeypatch.context() as mp:
        mp.setattr(gk, "_ops", lambda: None)
        yield


def _metric(kind: str, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(like.shape, generator=gen, dtype=torch.float64)
    if kind == "log-uniform":  # spread over 1e0 … 1e7
        m = torch.exp(u * math.log(1e7))
    else:  # Adam-like: lr-scaled √v + ε of a gradient with a per-coordinate scale
        g = torch.randn(like.shape, generator=gen, dtype=torch.float64) * torch.exp(4 * u - 2)
        m = (g.square().sqrt() + 1e-8) / 1e-3
    return m.to(like.dtype)


def _group_ratio(z, m, tau, dim, weighting):
    """‖m⊙z‖/(τw) per group in float64, as the tensor's groups are laid out."""
    a = (z.double() * m.double()).square()
    dims = tuple(range(1, z.ndim)) if dim == "out" else (0, *range(2, z.ndim))
    size = z.numel() // (z.shape[0] if dim == "out" else z.shape[1])
    return a.sum(dims).sqrt() / (tau * group_weight(size, weighting))


def _groups(x, dim):
    return (
        x.reshape(x.shape[0], -1) if dim == "out" else x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 1)
    )


SHAPES = [((12, 8, 3, 3), "in"), ((12, 8, 3, 3), "out"), ((40, 24), "in"), ((40, 24), "out"), ((300,), "out"),
          ((64, 32, 3, 3), "in"), ((96, 1, 5, 5), "out")]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "dim"), SHAPES)
@pytest.mark.parametrize("kind", ["log-uniform", "adam"])
def test_native_matches_eager(monkeypatch, dtype, shape, dim, kind):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dim, kind)).encode()))
    ties = 0
    iters = {True: 0, False: 0}
    for trial, channels_last in enumerate((False, True)):
        z = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        if channels_last and len(shape) == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        m = _metric(kind, z, gen)
        reg = GroupLasso(1.0, dim=dim, weighting="sqrt" if trial == 0 else "none")
        ratio0 = _group_ratio(z, m, 1.0, dim, reg.weighting)
        # τ from tiny (nothing zero) to zeroing most groups
        for q in (0.0, 0.3, 0.7, 0.95):
            tau = float(ratio0.quantile(q)) * (1e-6 if q == 0 else 1.001)  # 1.001: no tie by construction
            info_n, info_e = {}, {}
            xn = reg.prox_multi([z], tau, metrics=[m], info=info_n)[0]
            with eager(monkeypatch):
                xe = reg.prox_multi([z], tau, metrics=[m], info=info_e)[0]
            ratio = _group_ratio(z, m, tau, dim, reg.weighting)
            tie = (ratio - 1).abs() <= TIE[dtype]
            ties += int(tie.sum())
            gn, ge, gz = _groups(xn, dim), _groups(xe, dim), _groups(z, dim)
            zero_n, zero_e = (gn == 0).flatten(1).all(1), (ge == 0).flatten(1).all(1)
            assert torch.equal(zero_n[~tie], zero_e[~tie])
            assert bool(zero_n[ratio < 1 - TIE[dtype]].all())  # the screening test itself
            scale = gz.abs().flatten(1).amax(1).double()
            err = (gn - ge).abs().flatten(1).amax(1).double()
            assert bool((err[~tie] <= TOL[dtype] * scale[~tie]).all()), float((err / scale)[~tie].max())
            assert xn.shape == z.shape and xn.dtype == dtype
            if not bool(tie.any()):
                assert _optimality_residual(xn, z, m, tau, dim, reg.weighting) <= RESID[dtype]
            if dtype == torch.float64:
                xn0 = reg.prox_multi([z], tau, metrics=[m], rtol=0.0)[0]
                with eager(monkeypatch):
                    xe0 = reg.prox_multi([z], tau, metrics=[m], rtol=0.0)[0]
                err0 = (_groups(xn0, dim) - _groups(xe0, dim)).abs().flatten(1).amax(1)
                assert bool((err0[~tie] <= TOL_RTOL0 * scale[~tie]).all())
            if not bool(tie.any()):
                assert info_n["screened"] == info_e["screened"]
                # float32 sums reach their rounding floor differently (float64 against torch's float32
                # sums): the stop rule may fire one iteration apart there
                slack = 1 if dtype == torch.float32 else 0
                assert abs(info_n["inner_iters"] - info_e["inner_iters"]) <= slack, (info_n, info_e)
                iters[info_n["inner_iters"] == info_e["inner_iters"]] += 1
    assert ties <= 2  # ties are rare: the test above is not vacuous
    assert iters[True] >= iters[False]  # mostly the same iterations


def _optimality_residual(x, z, m, tau, dim, weighting):
    """Per live group, |c‖m⊙z/(m + c)‖ − τw|/(τw) with c = τw/‖x_g‖, in float64."""
    gx, gz, gm = (_groups(t.double(), dim).flatten(1) for t in (x, z, m))
    thr = tau * group_weight(gx.shape[1], weighting)
    nx = gx.norm(dim=1)
    live = nx > 0
    if not bool(live.any()):
        return torch.tensor(0.0, dtype=torch.float64)
    c = thr / nx[live]
    p = gm[live] * gz[live] / (gm[live] + c[:, None])
    return ((c * p.norm(dim=1) - thr).abs() / thr).max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_solves_the_secular_equation(dtype):
    """Brute-force check against the optimality condition, independent of the eager solver."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(20, 16, 3, 3, generator=gen, dtype=dtype)
    m = _metric("log-uniform", z, gen)
    for dim in ("in", "out"):
        reg = GroupLasso(1.0, dim=dim)
        tau = float(_group_ratio(z, m, 1.0, dim, "sqrt").median()) * 1.001
        x = reg.prox_multi([z], tau, metrics=[m])[0]
        assert _optimality_residual(x, z, m, tau, dim, "sqrt") <= RESID[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warm_start_out_and_several_tensors(monkeypatch, dtype):
    """x0s, out aliasing zs (in place) and a list of tensors of both layouts: as eager."""
    gen = torch.Generator().manual_seed(5)
    zs = [torch.randn(s, generator=gen, dtype=dtype) for s in ((10, 6, 3, 3), (30, 20), (0, 4), (7,))]
    ms = [_metric("adam", z, gen) for z in zs]
    x0s = [z * 0.9 for z in zs]
    reg = GroupLasso(0.5, dim="out")
    tau = 2e-3
    info_e = {}
    with eager(monkeypatch):
        xe = reg.prox_multi(zs, tau, metrics=ms, x0s=x0s, info=info_e)
    info_n = {}
    work = [z.clone() for z in zs]
    xn = reg.prox_multi(work, tau, metrics=ms, x0s=x0s, info=info_n, out=work)
    assert all(a is b for a, b in zip(xn, work))
    for a, b, z in zip(xn, xe, zs):
        assert torch.equal(a == 0, b == 0)
        torch.testing.assert_close(
            a, b, rtol=0, atol=TOL[dtype] * max(1.0, float(z.abs().max()) if z.numel() else 1.0)
        )
    assert info_n == info_e and info_n["inner_iters"] >= 2


@pytest.mark.parametrize("dim", ["in", "out"])
def test_infinite_metric_pinned_and_nan_stays_nan(monkeypatch, dim):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(16, 8, 3, 3, generator=gen)
    m = _metric("log-uniform", z, gen)
    m[0, 0, 0, 0] = m[3, 2, 1, 1] = math.inf
    reg = GroupLasso(1.0, dim=dim)
    tau = float(_group_ratio(z, m.clamp_max(1e8), 1.0, dim, "sqrt").median())
    xn = reg.prox_multi([z], tau, metrics=[m])[0]
    with eager(monkeypatch):
        xe = reg.prox_multi([z], tau, metrics=[m])[0]
    pin = torch.isposinf(m)
    assert torch.equal(xn[pin], z[pin]) and torch.equal(xe[pin], z[pin])
    assert bool(((xn - xe).abs() <= TOL[torch.float32] * z.abs().amax()).all())
    z2 = z.clone()
    z2[5, 4, 2, 0] = math.nan
    m2 = m.clone()
    m2[pin] = 1.0
    xn = reg.prox_multi([z2], tau, metrics=[m2])[0]
    with eager(monkeypatch):
        xe = reg.prox_multi([z2], tau, metrics=[m2])[0]
    nan = torch.isnan(z2)
    assert bool(xn[nan].isnan().all()) and bool(xe[nan].isnan().all())
    assert torch.equal(xn[~nan] == 0, xe[~nan] == 0)


@pytest.mark.parametrize("dim", ["in", "out"])
def test_nan_stays_nan_when_every_group_is_screened(monkeypatch, dim):
    """A τ that screens every group (the solver's early exit) still leaves a NaN entry NaN on both
    paths, never an exact zero (that would hide divergence as sparsity); the rest is exactly zero."""
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(6, 4, 3, 3, generator=gen)
    z[2, 1, 0, 0] = math.nan
    m = _metric("log-uniform", z, gen)
    reg = GroupLasso(1.0, dim=dim)
    nan = torch.isnan(z)
    for path in ("native", "eager"):
        with contextlib.ExitStack() as stack:
            if path == "eager":
                stack.enter_context(eager(monkeypatch))
            x = reg.prox_multi([z], 1e12, metrics=[m])[0]
        assert bool(x[nan].isnan().all()), path
        assert bool((x[~nan] == 0).all()), path


def test_proxgen_steps_native_match_eager(monkeypatch):
    """ProxGen (Adam metric) + GroupLasso: steps with the native and the eager prox agree (values, zeros,
    reported iterations and screened groups)."""
    gen = torch.Generator().manual_seed(11)
    shapes = [(16, 8, 3, 3), (32, 16), (16,)]
    init = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]

    def run(dim):
        ps = [p.clone().requires_grad_() for p in init]
        opt = ProxGen(
            [{"params": ps[:2], "regularizer": GroupLasso(0.7, dim=dim)}, {"params": ps[2:]}], lr=1e-2
        )
        stats = []
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
            st = opt.prox_stats()[0]
            stats.append((st["inner_iters"], st["screened"]))
        return [p.detach() for p in ps], stats

    for dim in ("in", "out"):
        native, st_n = run(dim)
        with eager(monkeypatch):
            ref, st_e = run(dim)
        for a, b in zip(native, ref):
            assert torch.equal(a == 0, b == 0)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert [s for _, s in st_n] == [s for _, s in st_e]
        assert all(abs(i - j) <= 1 for (i, _), (j, _) in zip(st_n, st_e)), (st_n, st_e)
        assert bool((native[0] == 0).any()) and not bool((native[0] == 0).all())  # some groups zeroed


def _good_args(n_groups=4):
    z = torch.randn(n_groups, 5)
    return [torch.tensor([[1, n_groups, 5, 1, 0]]), [z], [torch.ones_like(z)], [], [torch.empty_like(z)],
            torch.tensor([0.5], dtype=torch.float64), 1e18, 1e-6, 10,
            torch.empty(n_groups, dtype=torch.int64), torch.empty(n_groups, dtype=torch.int64)]  # fmt: skip


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (2, lambda a: [a[2][0].double()], "dtype"),
        (4, lambda a: [torch.empty(4, 6)], "shape"),
        (2, lambda a: [torch.ones(5, 4).t()], "contiguous"),
        (0, lambda a: torch.tensor([[1, 4, 5, 2, 0]]), "layout"),
        (0, lambda a: torch.tensor([[1, 4, 5, 1, 1]]), "layout"),
        (5, lambda a: torch.tensor([0.5, 0.5], dtype=torch.float64), "thr"),
        (9, lambda a: torch.empty(4, dtype=torch.float64), "iters"),
    ],
)
def test_wrong_argument_raises_before_the_kernel(index, bad, match):
    assert gk._ops() is not None
    args = _good_args()
    args[index] = bad(args)
    with pytest.raises(ValueError, match=match):
        torch.ops.lightning_prox.group_lasso_prox_(*args)


def test_no_compiler_falls_back_to_eager_with_one_warning(monkeypatch, tmp_path):
    gen = torch.Generator().manual_seed(13)
    z = torch.randn(8, 6, 3, 3, generator=gen)
    m = _metric("adam", z, gen)
    reg = GroupLasso(1.0, dim="in")
    with eager(monkeypatch):
        ref = reg.prox_multi([z], 1e-3, metrics=[m])[0]
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
    _native.kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="building _group_kernels.cpp failed"):
            got = reg.prox_multi([z], 1e-3, metrics=[m])[0]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = reg.prox_multi([z], 1e-3, metrics=[m])[0]
    finally:
        _native.kernels.cache_clear()
    assert torch.equal(got, ref) and torch.equal(again, ref)
