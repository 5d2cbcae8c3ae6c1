"""RMDA's native CPU step (``implementation="native"``/``"auto"``) against the eager step: values, zero
groups, statistics, restarts, resume, thread counts, non-finite gradients, fallbacks and a kernel's
argument checks.

Tolerance: V (``grad_sum``) and, without a regularizer, every tensor are the eager bits; with group lasso
the group norms sum in another order, so Ŵ and W agree to 16 ulp of the tensor's largest value, with the
same zero groups (random data keeps every group away from the zeroing threshold).
"""

import io
from types import SimpleNamespace

import pytest
import torch

from lightning_prox.optim import RMDA, _native
from lightning_prox.optim import _rmda_kernels as rk
from lightning_prox.optim import rmda as rmda_module
from lightning_prox.regularizers import L1, GroupLasso

# 1×1 conv, linear, kernels of 9 and 49 columns, one group (a single row / input feature), more than 64
# rows (several float sums flushed into float64), and numels that are no multiple of any vector width
SHAPES = ((5, 4, 1, 1), (9, 6), (12, 6, 3, 3), (3, 2, 7, 7), (1, 7), (7, 1), (70, 5, 3, 3), (13, 11))


def _require_native(monkeypatch):
    """Count kernel runs; skip when the kernel cannot be built here (the eager path then runs)."""
    ops = rk._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    calls = []
    monkeypatch.setattr(
        rk, "_ops", lambda: SimpleNamespace(rmda_step_=lambda *a: calls.append(a) or ops.rmda_step_(*a))
    )
    return calls


def _run(
    impl, reg, shapes=SHAPES, steps=6, momentum=0.1, dtype=torch.float32, seed=0, restart_at=None, grads=None
):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    opt = RMDA(params, lr=0.1, momentum=momentum, regularizer=reg, implementation=impl, check_finite=False)
    stats = []
    for k in range(steps):
        if k == restart_at:
            opt.restart()
        for i, p in enumerate(params):
            p.grad = grads(k, i, p) if grads else torch.randn(p.shape, generator=g, dtype=dtype)
        opt.step()
        stats.append({key: opt.prox_stats()[0].get(key) for key in ("inner_iters", "screened")})
    return params, opt, stats


def _same(x, y):
    """Equal values, NaN where the other has NaN."""
    torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def _assert_agree(a, opt_a, b, opt_b, exact):
    for pa, pb in zip(a, b):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        _same(sa["grad_sum"], sb["grad_sum"])
        # W_0 is W of the last restart: it carries W's rounding
        pairs = ((pa.detach(), pb.detach()), (sa["prox_point"], sb["prox_point"]))
        for x, y in (*pairs, (sa["initial_point"], sb["initial_point"])):
            assert torch.equal(x.isnan(), y.isnan())
            assert torch.equal(x == 0, y == 0)
            if exact:
                _same(x, y)
            else:
                finite = x.isfinite()
                scale = x[finite].abs().max() if finite.any() else torch.tensor(1.0, dtype=x.dtype)
                tol = 16 * torch.finfo(x.dtype).eps * float(scale)
                _same(x[~finite], y[~finite])
                assert bool(((x[finite] - y[finite]).abs() <= tol).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("momentum", [1.0, 0.1, 0.7])
@pytest.mark.parametrize("dim", ["in", "out"])
def test_group_lasso_step_matches_eager(dim, momentum, dtype, monkeypatch):
    calls = _require_native(monkeypatch)
    reg = GroupLasso(2.0, dim=dim)  # zeroes a growing share of the groups at every step
    a, opt_a, st_a = _run("native", reg, momentum=momentum, dtype=dtype)
    b, opt_b, st_b = _run("eager", reg, momentum=momentum, dtype=dtype)
    assert len(calls) == 6
    assert st_a == st_b and 0 < st_a[-1]["screened"]
    _assert_agree(a, opt_a, b, opt_b, exact=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "reg", [None, GroupLasso(0.0), L1(0.0), L1(0.3)], ids=["MDA", "lam0", "l1-lam0", "l1"]
)
def test_elementwise_step_is_the_eager_step_to_the_bit(reg, dtype, monkeypatch):
    """No regularizer, λ = 0 and ℓ1 (torch.equal: a zero may differ in sign only)."""
    calls = _require_native(monkeypatch)
    for momentum in (1.0, 0.1, 0.6):
        a, opt_a, st_a = _run("native", reg, momentum=momentum, dtype=dtype)
        b, opt_b, st_b = _run("eager", reg, momentum=momentum, dtype=dtype)
        assert st_a == st_b
        _assert_agree(a, opt_a, b, opt_b, exact=True)
        if reg is not None and reg.lam:
            assert all(bool((opt_a.state[p]["prox_point"] == 0).any()) for p in a if p.numel() > 20)
    assert calls


def test_closed_form_step_brute_force(monkeypatch):
    """One native step against the formulas written out in float64: V = s·g,
    Ŵ_g = max(0, 1 − τ√|g|/‖z_g‖)·z_g with z = W0 − V/β, W = (1 − c)·W0 + c·Ŵ (t = 1: s = η, β = 1,
    α = η, τ = α·λ)."""
    _require_native(monkeypatch)
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)
    grad = torch.randn(w0.shape, generator=g, dtype=torch.float64)
    w0[:, 1] *= 0.05  # a group that the prox zeroes
    grad[:, 1] *= 0.05
    p = torch.nn.Parameter(w0.clone())
    lr, lam, c = 0.3, 0.5, 0.25
    opt = RMDA([p], lr=lr, momentum=c, regularizer=GroupLasso(lam, dim="in"), implementation="native")
    p.grad = grad
    opt.step()
    z = w0 - lr * grad
    nrm = z.pow(2).sum(dim=(0, 2, 3), keepdim=True).sqrt()
    w_hat = torch.clamp(1 - lr * lam * (6 * 9) ** 0.5 / nrm, min=0) * z
    torch.testing.assert_close(opt.state[p]["prox_point"], w_hat, rtol=0, atol=1e-14)
    torch.testing.assert_close(p.detach(), (1 - c) * w0 + c * w_hat, rtol=0, atol=1e-14)
    assert torch.equal(opt.state[p]["prox_point"] == 0, w_hat == 0) and bool((w_hat == 0).any())


@pytest.mark.parametrize("reg", [None, GroupLasso(2.0, dim="in"), GroupLasso(2.0, dim="out")], ids=str)
def test_empty_tensors(reg, monkeypatch):
    calls = _require_native(monkeypatch)
    shapes = ((0, 5), (4, 3), (3, 0, 3, 3))
    a, opt_a, st_a = _run("native", reg, shapes=shapes, steps=3)
    b, opt_b, st_b = _run("eager", reg, shapes=shapes, steps=3)
    assert len(calls) == 3 and st_a == st_b
    _assert_agree(a, opt_a, b, opt_b, exact=reg is None)


def test_all_groups_screened_and_restart_mid_stage(monkeypatch):
    _require_native(monkeypatch)
    a, opt_a, st_a = _run("native", GroupLasso(50.0, dim="in"), steps=3)
    b, opt_b, st_b = _run("eager", GroupLasso(50.0, dim="in"), steps=3)
    assert st_a == st_b
    assert all(bool((opt_a.state[p]["prox_point"] == 0).all()) for p in a)
    _assert_agree(a, opt_a, b, opt_b, exact=False)
    for dim in ("in", "out"):
        a, opt_a, st_a = _run("native", GroupLasso(0.4, dim=dim), steps=8, restart_at=4)
        b, opt_b, st_b = _run("eager", GroupLasso(0.4, dim=dim), steps=8, restart_at=4)
        assert st_a == st_b
        _assert_agree(a, opt_a, b, opt_b, exact=False)


@pytest.mark.parametrize("dim", ["in", "out"])
def test_nonfinite_gradients_follow_the_eager_policy(dim, monkeypatch):
    """check_finite=False: a NaN gradient makes its group's norm NaN (the group is scaled by 0, NaN stays
    NaN), an infinite one makes it infinite (scale 1), as in GroupLasso's eager prox."""
    _require_native(monkeypatch)

    def grads(k, i, p):
        out = torch.linspace(-1, 1, p.numel(), dtype=p.dtype).view(p.shape) * (k + 1)
        if k == 2 and p.dim() == 4 and p.shape[0] == 12:
            out[1, 2, 0, 0] = float("nan")
            out[3, 0, 1, 1] = float("inf")
        return out

    a, opt_a, st_a = _run("native", GroupLasso(0.05, dim=dim), steps=4, grads=grads)
    b, opt_b, st_b = _run("eager", GroupLasso(0.05, dim=dim), steps=4, grads=grads)
    assert st_a == st_b
    assert any(bool(p.isnan().any()) for p in a)
    _assert_agree(a, opt_a, b, opt_b, exact=False)


def test_thread_counts_are_deterministic(monkeypatch):
    """Tensors above the serial threshold: each thread count repeats its bits; dim="out" and MDA give the
    same bits for 1 and 2 threads, dim="in" (row split per thread) agrees to rounding."""
    _require_native(monkeypatch)
    shapes = ((70, 40, 5, 5), (300, 260))
    threads = torch.get_num_threads()
    try:
        for reg in (GroupLasso(0.3, dim="in"), GroupLasso(0.3, dim="out"), L1(0.5), None):
            runs = {}
            for n in (2, 2, 1):
                torch.set_num_threads(n)
                runs.setdefault(n, []).append(_run("native", reg, shapes=shapes, steps=2))
            (a, opt_a, st_a), (b, opt_b, st_b) = runs[2]
            c, opt_c, st_c = runs[1][0]
            assert st_a == st_b == st_c
            _assert_agree(a, opt_a, b, opt_b, exact=True)
            _assert_agree(a, opt_a, c, opt_c, exact=not isinstance(reg, GroupLasso) or reg.dim == "out")
    finally:
        torch.set_num_threads(threads)


def test_resume_is_bit_exact(monkeypatch):
    _require_native(monkeypatch)
    reg = GroupLasso(0.4, dim="in")
    full, opt_full, _ = _run("native", reg, steps=6)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    opt = RMDA(params, lr=0.1, momentum=0.1, regularizer=reg, implementation="native", check_finite=False)
    for k in range(6):
        if k == 3:
            buf = io.BytesIO()
            torch.save({"p": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
            buf.seek(0)
            saved = torch.load(buf, weights_only=True)
            params = [torch.nn.Parameter(p) for p in saved["p"]]
            opt = RMDA(
                params, lr=0.1, momentum=0.1, regularizer=reg, implementation="native", check_finite=False
            )
            opt.load_state_dict(saved["opt"])
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    _assert_agree(full, opt_full, params, opt, exact=True)


def test_state_is_unchanged_and_no_parameter_sized_temporary(monkeypatch):
    """The native step keeps the eager state (12 bytes per float32 value) and allocates nothing the size
    of a parameter (only the per-tensor layout, thresholds and counts)."""
    calls = _require_native(monkeypatch)
    p = torch.nn.Parameter(torch.randn(64, 32, 3, 3))
    opt = RMDA([p], regularizer=GroupLasso(0.01), implementation="native")
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    assert sorted(st) == ["alpha", "grad_sum", "initial_point", "prox_point", "step"]
    assert sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v)) == 12 * p.numel()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        opt.step()
    biggest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert len(calls) == 2 and biggest < p.numel()  # bytes: under a quarter of the parameter's 4·numel


def test_fallbacks_run_the_eager_step(monkeypatch):
    """Half precision, non-contiguous parameters, gathered module layouts (a grouped conv with several
    filters per group), other regularizers, pre-prox hooks and
    the per-tensor loop stay eager; ``"auto"`` runs natively from AUTO_NATIVE_NUMEL values on."""
    calls = _require_native(monkeypatch)
    _run("native", GroupLasso(0.4), dtype=torch.bfloat16, steps=2)
    _run("native", L1(0.1), dtype=torch.float16, steps=2)
    _run("native", GroupLasso(0.4, dim="in", layout="conv:2"), shapes=((6, 2, 3, 3),), steps=2)
    _run("auto", GroupLasso(0.4), steps=2)
    w = torch.nn.Parameter(torch.randn(6, 12).t())  # non-contiguous
    opt = RMDA([w], regularizer=GroupLasso(0.1), implementation="native")
    w.grad = torch.randn(12, 6)
    opt.step()
    v = torch.nn.Parameter(torch.randn(6, 12))
    opt = RMDA([v], regularizer=GroupLasso(0.1), implementation="native")
    opt.register_pre_prox_hook(lambda o: None)
    v.grad = torch.randn(6, 12)
    opt.step()
    _run("eager", GroupLasso(0.4), steps=1)
    assert not calls
    monkeypatch.setattr(rmda_module, "AUTO_NATIVE_NUMEL", 1)
    _run("auto", GroupLasso(0.4), steps=2)
    assert len(calls) == 2


def test_failed_build_warns_once_and_runs_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
    _native.kernels.cache_clear()
    try:
        reg = GroupLasso(0.4, dim="in")
        a, opt_a, _ = _run("eager", reg, steps=3)
        with pytest.warns(RuntimeWarning, match="building _rmda_kernels.cpp failed") as record:
            b, opt_b, _ = _run("native", reg, steps=3)
    finally:
        _native.kernels.cache_clear()
    assert sum("_rmda_kernels.cpp" in str(w.message) for w in record) == 1
    _assert_agree(a, opt_a, b, opt_b, exact=True)


def _kernel_args(n=1):
    ts = [[torch.randn(4, 6) for _ in range(n)] for _ in range(5)]
    lay = torch.tensor([[0, 4, 6, 3]] * n, dtype=torch.int64)
    return [
        lay,
        *ts,
        torch.full((n,), 0.1, dtype=torch.float64),
        0.1,
        -1.0,
        0.5,
        1,
        torch.zeros(n, dtype=torch.int64),
    ]


@pytest.mark.parametrize(
    "index, value, match",
    [
        (0, torch.tensor([[0, 4, 6, 4]]), "layout\\[0\\]"),  # 6 columns are no whole number of groups of 4
        (0, torch.tensor([[1, 3, 6, 1]]), "layout\\[0\\]"),  # 18 values, the tensor has 24
        (0, torch.tensor([[0, 4, 6, 3, 0]]), "layout has shape"),
        (2, [torch.randn(4, 6, dtype=torch.float64)], "v\\[0\\] has dtype"),
        (3, [torch.randn(6, 4).t()], "w0\\[0\\] is not contiguous"),
        (4, [torch.randn(4, 5)], "p\\[0\\] has shape"),
        (5, [], "w_hat has 0 tensors"),
        (6, torch.tensor([float("nan")], dtype=torch.float64), "thr must be finite"),
        (6, torch.tensor([0.1, 0.2], dtype=torch.float64), "thr has shape"),
        (9, 0.0, "c is 0.0"),
        (10, 7, "kind is 7"),
        (11, torch.zeros(1, dtype=torch.float32), "screened has dtype"),
    ],
)
def test_a_wrong_kernel_argument_raises_before_anything_changes(index, value, match):
    ops = rk._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here")
    args = _kernel_args()
    args[index] = value
    before = [t.clone() for t in args[1] + args[2] + args[4] + args[5]]
    with pytest.raises(ValueError, match=match):
        ops.rmda_step_(*args)
    assert all(torch.equal(x, y) for x, y in zip(before, args[1] + args[2] + args[4] + args[5]))


def test_build_without_openmp_runs_one_thread(monkeypatch, tmp_path):
    """A compiler without OpenMP (the build's second attempt): the same results as the threaded build."""
    if rk._ops() is None:
        pytest.skip("no working C++ compiler here")
    cxx = _native._compiler()
    wrapper = tmp_path / "cxx-no-openmp"
    wrapper.write_text(f'#!/bin/sh\nfor a; do [ "$a" = -fopenmp ] && exit 1; done\nexec {cxx} "$@"\n')
    wrapper.chmod(0o755)
    shapes = ((70, 40, 5, 5), (300, 260))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, opt_a, _ = _run("native", GroupLasso(0.3, dim="in"), shapes=shapes, steps=2)
        monkeypatch.setenv("CXX", str(wrapper))
        monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
        _native.kernels.cache_clear()
        torch.set_num_threads(2)
        b, opt_b, _ = _run("native", GroupLasso(0.3, dim="in"), shapes=shapes, steps=2)
    finally:
        torch.set_num_threads(threads)
        _native.kernels.cache_clear()
    assert list((tmp_path / "cache" / "native").glob("_rmda_kernels-*.so"))
    _assert_agree(a, opt_a, b, opt_b, exact=True)


@pytest.mark.parametrize("dim", ["in", "out"])
def test_maximize_unweighted_groups_and_skipped_tensors(dim, monkeypatch):
    """maximize=True, weighting="none", and a tensor without a gradient on some steps (its counters fall
    behind: two buckets of one group, each with its own s, β and threshold)."""
    calls = _require_native(monkeypatch)
    reg = GroupLasso(1.5, dim=dim, weighting="none")

    def run(impl):
        g = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
        opt = RMDA(params, lr=0.1, momentum=0.3, regularizer=reg, implementation=impl, maximize=True)
        stats = []
        for k in range(5):
            for i, p in enumerate(params):
                p.grad = None if (k in (1, 2) and i % 3 == 0) else torch.randn(p.shape, generator=g)
            opt.step()
            stats.append(opt.prox_stats()[0]["screened"])
        return params, opt, stats

    a, opt_a, st_a = run("native")
    b, opt_b, st_b = run("eager")
    assert st_a == st_b and st_a[-1] > 0
    assert {opt_a.state[p]["step"] for p in a} == {5, 3}
    assert len(calls) == 7  # two buckets in each of the last two steps
    _assert_agree(a, opt_a, b, opt_b, exact=False)


@pytest.mark.parametrize(
    "shape, dim, layout",
    [
        ((4, 6, 3, 3), "in", "conv_transpose:2"),
        ((4, 1, 3, 3), "in", "conv:4"),
        ((4, 1, 3, 3), "out", "conv:4"),
        ((40, 5), "out", "gates:4"),
        ((8, 5), "out", "gates:4"),  # 2 rows per gate view: GroupLasso gathers these, the kernel does not
        ((8, 5), "in", "gates:4"),
        ((10, 4), "out", "embedding"),
    ],
)
def test_module_layouts_that_reshape_match_eager(shape, dim, layout, monkeypatch):
    calls = _require_native(monkeypatch)
    reg = GroupLasso(3.0, dim=dim, layout=layout)
    a, opt_a, st_a = _run("native", reg, shapes=(shape,), steps=8)
    b, opt_b, st_b = _run("eager", reg, shapes=(shape,), steps=8)
    assert len(calls) == 8 and st_a == st_b and st_a[-1]["screened"] > 0
    _assert_agree(a, opt_a, b, opt_b, exact=False)
