"""RAMDA's native CPU step (``implementation="native"``/``"auto"``): the division-free cube root, agreement
with the eager step (values, zeros, solver iterations), exact resume, thread-count determinism, the
native build and its eager fallback, and the auto threshold.

The C++ kernels build once per machine (a few seconds, cached on disk); every test here shares them.
"""

import io
import os
import tempfile
import warnings
from types import SimpleNamespace

import pytest
import torch

from lightning_prox.optim import RAMDA, _native
from lightning_prox.optim import _ramda_kernels as rc
from lightning_prox.optim import ramda as ramda_module
from lightning_prox.regularizers import L1, GroupLasso

# convolutions (groups of k = 9 columns), linear and 1×1 conv (k = 1), a single row, and more than
# 64 rows (several float sums added in float64)
SHAPES_IN = ((12, 6, 3, 3), (9, 6), (5, 4, 1, 1), (1, 7), (70, 4, 3, 3))
# rows longer than 256 (several partial-sum lanes per element), 1-D groups of one element, and more
# than 2^14 elements (several chunks of the elementwise pass)
SHAPES_OUT = ((12, 6, 3, 3), (9, 6), (1, 7), (7,), (70, 300))


def _opt_run(impl, reg, shapes, steps=8, momentum=0.3, seed=0, restart_at=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    opt = RAMDA(params, lr=0.1, momentum=momentum, eps=1e-6, regularizer=reg, implementation=impl)
    infos = []
    for k in range(steps):
        if k == restart_at:
            opt.restart(eps_factor=0.1)
        for p in params:
            # per-element scales spanning decades: the metric P varies inside every group
            p.grad = (torch.randn(p.shape, generator=g) * torch.rand(p.shape, generator=g) ** 3).to(dtype)
        opt.step()
        infos.append([dict(i) for i in opt.solver_info])
    return params, opt, infos


def _require_native(monkeypatch):
    """Count native-kernel runs; skip when the kernels cannot be built here (the eager path then runs)."""
    ops = rc._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    calls = []

    def counted(name):
        op = getattr(ops, name)
        return lambda *args: calls.append(name) or op(*args)

    monkeypatch.setattr(rc, "_ops", lambda: SimpleNamespace(**{k.name: counted(k.name) for k in rc.KERNELS}))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cbrt_is_accurate_on_the_whole_range(dtype):
    """The kernels' bit-guess + Newton cube root against a float64/float128-free reference:
    ≤ 1 ulp in float32 over 1e-44…1e38 including subnormals; in float64 y³ reproduces u to a few ulp."""
    lo = -44 if dtype == torch.float32 else -320
    hi = 38 if dtype == torch.float32 else 307
    u = torch.cat(
        [torch.logspace(lo, hi, 20001, dtype=torch.float64).to(dtype), torch.rand(5000, dtype=dtype)]
    )
    u = torch.cat([u, torch.zeros(3, dtype=dtype), torch.tensor([torch.finfo(dtype).tiny / 3], dtype=dtype)])
    if rc._ops() is None:
        pytest.skip("no working C++ compiler here")
    y = rc.cbrt(u)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y[u == 0] == 0).all() and (y[u > 0] > 0).all()
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32:
        ref = u.double().pow(1.0 / 3.0)
        rel = ((y.double() - ref).abs() / ref.clamp_min(1e-300))[u > 0]
        assert rel.max() <= eps
    else:
        pos = u > 1e-290  # y³ stays normal
        rel = ((y[pos] ** 3 - u[pos]) / u[pos]).abs()
        assert rel.max() <= 8 * eps


@pytest.mark.parametrize(
    ("reg", "shapes"),
    [
        (None, SHAPES_OUT),
        (L1(0.05), SHAPES_OUT),
        (GroupLasso(0.05, dim="in"), SHAPES_IN),
        (GroupLasso(0.3, dim="in"), SHAPES_IN),  # some groups screened to exact zeros
        (GroupLasso(0.05, dim="out"), SHAPES_OUT),
    ],
    ids=["none", "l1", "group-in", "group-in-screened", "group-out"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_step_matches_eager(reg, shapes, dtype, monkeypatch):
    """Native and eager steps agree to rounding over 8 steps and a restart: parameters and Ŵ within
    1e-6 of their scale, the same exact zeros and screened groups, both solvers converged."""
    calls = _require_native(monkeypatch)
    a, opt_a, info_a = _opt_run("eager", reg, shapes, restart_at=5, dtype=dtype)
    b, opt_b, info_b = _opt_run("native", reg, shapes, restart_at=5, dtype=dtype)
    assert calls, "the native kernels did not run"
    for pa, pb in zip(a, b):
        for x, y in ((pa, pb), (opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])):
            scale = y.abs().max().clamp_min(1.0)
            assert (x - y).abs().max() <= 1e-6 * scale
            assert torch.equal(x == 0, y == 0)
        for key in ("grad_sum", "grad_sq_sum"):
            x, y = opt_a.state[pa][key], opt_b.state[pb][key]
            assert (x - y).abs().max() <= 1e-6 * y.abs().max().clamp_min(1e-30)
    # the same screened groups and the same Newton iterations: both start at the same point (the warm
    # start τw/‖Ŵ_{t−1,g}‖ or the lower end τw/‖z_g‖, clamped into the same bracket). In float64 the
    # sums' rounding is far below the stop tolerance: equal counts. In float32 (tolerance 16·eps) a
    # group whose residual lands within rounding of the stop test may take one iteration more on one side
    assert [[i["screened"] for i in st] for st in info_a] == [[i["screened"] for i in st] for st in info_b]
    iters_a = [i["inner_iters"] for st in info_a for i in st]
    iters_b = [i["inner_iters"] for st in info_b for i in st]
    if dtype == torch.float64:
        assert iters_a == iters_b
    else:
        assert len(iters_a) == len(iters_b) and all(abs(x - y) <= 1 for x, y in zip(iters_a, iters_b))
        assert sum(x == y for x, y in zip(iters_a, iters_b)) >= len(iters_a) - 1
    cap = getattr(reg, "max_iters", None)
    if cap is not None:
        assert all(i["inner_iters"] < cap for st in (*info_a, *info_b) for i in st)
    if isinstance(reg, GroupLasso):
        screened = sum(i["screened"] for step in info_b for i in step)
        if reg.lam == 0.3:  # the case meant to exercise screening does
            assert screened > 0


def test_native_resume_is_bit_exact(monkeypatch):
    """A checkpoint (weights_only load) taken mid-stage resumes the native step bit for bit, including
    the cached group norms of Ŵ that seed the next solve."""
    calls = _require_native(monkeypatch)
    reg = GroupLasso(0.05, dim="in")
    params, opt, _ = _opt_run("native", reg, SHAPES_IN, steps=5)
    assert calls and all(opt.state[p]["prox_point_norms"].numel() for p in params)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params2 = [torch.nn.Parameter(w) for w in ckpt["w"]]
    opt2 = RAMDA(params2, implementation="native")
    opt2.load_state_dict(ckpt["opt"])
    g = torch.Generator().manual_seed(99)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(4)]
    for o, ps in ((opt, params), (opt2, params2)):
        for step_grads in grads:
            for p, gr in zip(ps, step_grads):
                p.grad = gr.clone()
            o.step()
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
        for key in ("initial_point", "grad_sum", "grad_sq_sum", "prox_point", "prox_point_norms"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key]), key


def test_failed_build_falls_back_to_eager_and_changes_nothing(monkeypatch, tmp_path):
    """No working compiler: one warning, and the step runs eagerly, equal to the eager step to the bit."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
    _native.kernels.cache_clear()
    try:
        reg = GroupLasso(0.05, dim="in")
        a, opt_a, _ = _opt_run("eager", reg, SHAPES_IN, steps=3)
        with pytest.warns(RuntimeWarning, match="building _ramda_kernels.cpp failed"):
            b, opt_b, _ = _opt_run("native", reg, SHAPES_IN, steps=3)
    finally:
        _native.kernels.cache_clear()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])


def test_native_build_is_cached_on_disk(monkeypatch, tmp_path):
    """The first load builds into the cache directory; a new process (here: a cleared cache) reuses it."""
    if _native._compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path))
    _native.kernels.cache_clear()
    try:
        assert rc._ops() is not None
        built = sorted((tmp_path / "native").glob("_ramda_kernels-*.so"))
        assert len(built) == 2  # the float32 and float64 halves
        stamps = [b.stat().st_mtime_ns for b in built]
        _native.kernels.cache_clear()
        assert rc._ops() is not None
        assert sorted((tmp_path / "native").glob("*")) == built
        assert [b.stat().st_mtime_ns for b in built] == stamps
    finally:
        _native.kernels.cache_clear()


def test_native_fallback_cache_must_be_private(monkeypatch, tmp_path):
    """A read-only cache directory falls back to a per-user temporary one, which is refused when others
    can write to it (a library found there would be loaded and run)."""
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX only")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"lightning_prox-{os.getuid()}"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="not private"):
        _native._private_tmp_dir()
    shared.chmod(0o700)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(blocker))  # the cache cannot be created there
    assert _native._out_dir() == shared


@pytest.mark.parametrize("dim", ["in", "out"])
def test_results_do_not_depend_on_the_thread_count(dim, monkeypatch):
    """Tensors large enough for the threaded pass: two runs with 2 threads and one with 1 thread are
    equal to the bit (the threads split the tiles; every group is computed within its tile in a fixed
    order)."""
    _require_native(monkeypatch)
    reg = GroupLasso(0.02, dim=dim)
    shapes = ((256, 64, 3, 3), (300, 260))  # above the 2^16-element serial threshold, several tiles
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a, _, info_a = _opt_run("native", reg, shapes, steps=3)
        b, _, info_b = _opt_run("native", reg, shapes, steps=3)
        torch.set_num_threads(1)
        c, _, _ = _opt_run("native", reg, shapes, steps=3)
    finally:
        torch.set_num_threads(threads)
    assert info_a == info_b
    for pa, pb, pc in zip(a, b, c):
        assert torch.equal(pa, pb)
        assert torch.equal(pa, pc)


def test_auto_goes_native_for_large_buckets_only(monkeypatch):
    """``"auto"`` leaves a small model eager and runs native once a bucket reaches AUTO_NATIVE_NUMEL."""
    calls = _require_native(monkeypatch)
    reg = GroupLasso(0.05, dim="in")
    _opt_run("auto", reg, SHAPES_IN, steps=2)
    assert not calls
    monkeypatch.setattr(ramda_module, "AUTO_NATIVE_NUMEL", 1)
    params, opt, _ = _opt_run("auto", reg, SHAPES_IN, steps=2)
    assert calls and all(opt.state[p]["prox_point_norms"].numel() for p in params)
    opt.implementation = "eager"  # an eager step drops the cached norms, which it does not maintain
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(opt.state[p]["prox_point_norms"].numel() == 0 for p in params)


def test_native_step_does_not_touch_the_global_rng(monkeypatch):
    """The native step (the build included) leaves torch's random stream where it was."""
    _native.kernels.cache_clear()
    w = torch.nn.Parameter(torch.linspace(-1, 1, 24).view(4, 6))
    opt = RAMDA([w], regularizer=GroupLasso(0.01, dim="in"), implementation="native")
    w.grad = torch.linspace(-0.5, 0.5, 24).view(4, 6)
    state = torch.get_rng_state()
    opt.step()
    assert torch.equal(torch.get_rng_state(), state)


def test_native_step_bumps_autograd_versions(monkeypatch):
    """The kernels write through raw pointers; autograd still sees the in-place update of W, as with a
    torch op: a backward through a graph that saved the old W raises instead of using the new values."""
    calls = _require_native(monkeypatch)
    w = torch.nn.Parameter(torch.randn(4, 6))
    opt = RAMDA([w], regularizer=GroupLasso(0.01, dim="in"), implementation="native")
    loss = (w * w).sum()  # saves w for backward
    w.grad = torch.ones_like(w)
    opt.step()
    assert calls
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_ungroupable_tensors_are_rejected_at_construction():
    # the base checks the regularizer against every tensor when the group is added: no optimizer exists
    # that could fail at its first step after updating its sums
    w = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match=r"param group 0, tensor 0 \(shape \(5,\)\).*at least 2 dimensions"):
        RAMDA([w], regularizer=GroupLasso(0.1, dim="in"), implementation="native")


def test_invalid_implementation_is_named():
    with pytest.raises(ValueError, match="implementation must be one of .*'jit'"):
        RAMDA([torch.nn.Parameter(torch.ones(2))], implementation="jit")


@pytest.mark.parametrize("dim", ["in", "out"])
def test_overflowed_second_moment_pins_its_coordinate_as_the_eager_step(dim, monkeypatch):
    """A finite gradient whose square overflows U (P = +inf): the native group solve pins that coordinate
    (Ŵ = z = W0 there, exactly) and agrees with the eager step elsewhere; nothing becomes NaN."""
    calls = _require_native(monkeypatch)
    reg = GroupLasso(1e-3, dim=dim)
    out = {}
    for impl in ("eager", "native"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 8))
        opt = RAMDA([w], lr=1e-2, momentum=0.5, regularizer=reg, implementation=impl)
        g = torch.randn(4, 8)
        g[0, 0] = 1e21
        w.grad = g
        opt.step()
        out[impl] = (w.detach().clone(), opt.state[w]["prox_point"].clone(), opt.state[w]["initial_point"])
    assert calls
    (wa, xa, w0), (wb, xb, _) = out["eager"], out["native"]
    assert torch.isfinite(wb).all() and xb[0, 0] == w0[0, 0]
    torch.testing.assert_close(xb, xa, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(wb, wa, atol=1e-6, rtol=1e-5)
    assert torch.equal(xa == 0, xb == 0)


def test_round2_names_still_work_and_warn():
    """``AUTO_COMPILE_NUMEL`` and the functional's ``"fast"``/``"compiled"`` are the old spellings of
    ``AUTO_NATIVE_NUMEL``, ``"eager"`` and ``"native"``: same values and results, plus a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="AUTO_NATIVE_NUMEL"):
        assert ramda_module.AUTO_COMPILE_NUMEL == ramda_module.AUTO_NATIVE_NUMEL
    with pytest.raises(AttributeError, match="no_such_name"):
        ramda_module.no_such_name
    results = {}
    for impl in ("eager", "fast", "native", "compiled"):
        w = torch.linspace(-1.0, 1.0, 24).view(4, 6)
        w0, v, u, x = w.clone(), torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
        g = torch.linspace(-0.5, 0.7, 24).view(4, 6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alpha = ramda_module.ramda(
                [w], [g], [w0], [v], [u], [x], step=1, alpha=0.0, lr=0.1, momentum=0.5, eps=1e-6,
                regularizer=GroupLasso(0.1, dim="in"), implementation=impl, prox_point_norms=[w.new_empty(0)],
            )  # fmt: skip
        old = impl in ("fast", "compiled")
        assert any(issubclass(c.category, DeprecationWarning) for c in caught) == old
        results[impl] = (alpha, w, x)
    for old, new in (("fast", "eager"), ("compiled", "native")):
        assert results[old][0] == results[new][0]
        assert all(torch.equal(a, b) for a, b in zip(results[old][1:], results[new][1:]))
    with pytest.warns(DeprecationWarning, match="scratch"):
        ramda_module.ramda([w], [g], [w0], [v], [u], [x], step=2, alpha=alpha, lr=0.1, momentum=0.5, eps=1e-6,
                           scratch=object())  # fmt: skip
    with pytest.raises(ValueError, match="implementation must be one of .*'jit'"):
        ramda_module.ramda([w], [g], [w0], [v], [u], [x], step=1, alpha=0.0, lr=0.1, momentum=0.5, eps=1e-6,
                           implementation="jit")  # fmt: skip


@pytest.mark.parametrize("reg", [GroupLasso(0.05, dim="in"), L1(0.05), None], ids=["group", "l1", "none"])
def test_eager_step_builds_p_and_z_one_tensor_at_a_time(reg, monkeypatch):
    """The eager step's P and z exist for one tensor at a time where the regularizer solves each tensor
    on its own, with results equal to the bit to one call over the whole bucket."""
    calls = []
    precondition = ramda_module._precondition

    def spy(us, vs, w0s, eps):
        calls.append(len(us))
        return precondition(us, vs, w0s, eps)

    monkeypatch.setattr(ramda_module, "_precondition", spy)
    a, opt_a, info_a = _opt_run("eager", reg, SHAPES_IN, steps=3)
    assert calls and set(calls) == {1}
    monkeypatch.setattr(ramda_module, "_solves_per_tensor", lambda r: False)
    calls.clear()
    b, opt_b, info_b = _opt_run("eager", reg, SHAPES_IN, steps=3)
    assert set(calls) == {len(SHAPES_IN)}
    assert info_a == info_b
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])


def test_native_step_allocates_nothing_of_the_parameters_size(monkeypatch):
    """Every operator of a native group-lasso step (after the first, which sizes the cached norms)
    allocates less than a tenth of the largest tensor: no P, z or other parameter-sized buffer."""
    _require_native(monkeypatch)
    shapes = ((64, 32, 3, 3), (200, 100))
    params, opt, _ = _opt_run("native", GroupLasso(0.02, dim="in"), shapes, steps=2)
    for p in params:
        p.grad = torch.randn_like(p)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        opt.step()
    largest = max(p.numel() * p.element_size() for p in params)
    allocated = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert max(allocated, default=0) < largest / 10


# numel not a multiple of the vector width, 1-element tensors and groups, a tile boundary inside a
# tensor (more groups than one tile holds), wide rows (several lane runs), an empty tensor
ODD_IN = ((1, 1), (3, 5, 2), (7, 13), (2, 33, 5), (300, 40), (0, 4))
ODD_OUT = ((1,), (5,), (3, 5, 2), (17, 301), (1, 1, 1), (0, 3))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dim", ["in", "out"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_matches_eager_on_odd_shapes(dim, dtype, threads, monkeypatch):
    """Odd shapes, both dtypes, 1 and 2 threads: native and eager agree to rounding with the same
    zeros, screened groups and (in float64) solver iterations, also after a restart."""
    calls = _require_native(monkeypatch)
    shapes = ODD_IN if dim == "in" else ODD_OUT
    reg = GroupLasso(0.25, dim=dim)  # large enough to screen some groups to exact zeros
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        a, opt_a, info_a = _opt_run("eager", reg, shapes, steps=5, restart_at=3, dtype=dtype)
        b, opt_b, info_b = _opt_run("native", reg, shapes, steps=5, restart_at=3, dtype=dtype)
    finally:
        torch.set_num_threads(before)
    assert calls
    for pa, pb in zip(a, b):
        for x, y in ((pa, pb), (opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])):
            if x.numel():
                assert (x - y).abs().max() <= 1e-6 * y.abs().max().clamp_min(1.0)
            assert torch.equal(x == 0, y == 0)
    assert [[i["screened"] for i in s] for s in info_a] == [[i["screened"] for i in s] for s in info_b]
    assert sum(i["screened"] for s in info_b for i in s) > 0
    iters_a = [i["inner_iters"] for s in info_a for i in s]
    iters_b = [i["inner_iters"] for s in info_b for i in s]
    if dtype == torch.float64:
        assert iters_a == iters_b
    else:
        assert all(abs(x - y) <= 1 for x, y in zip(iters_a, iters_b))


def test_non_contiguous_parameters_fall_back_to_eager(monkeypatch):
    """A non-contiguous parameter sends its bucket to the eager step: the native kernels do not run and
    the result equals the eager step to the bit."""
    calls = _require_native(monkeypatch)
    out = {}
    for impl in ("eager", "native"):
        base = torch.linspace(-1.0, 1.0, 48).view(6, 8)
        w = torch.nn.Parameter(base.t())  # (8, 6), strides (1, 8)
        opt = RAMDA([w], lr=0.1, momentum=0.5, regularizer=GroupLasso(0.05, dim="in"), implementation=impl)
        for k in range(3):
            w.grad = torch.cos(torch.arange(48.0) * (k + 1)).view(6, 8).t()
            opt.step()
        out[impl] = w.detach().clone()
    assert not calls
    assert torch.equal(out["eager"], out["native"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_gradient_with_check_off_stays_nan(dtype, monkeypatch):
    """``check_finite=False`` and a NaN gradient entry (the eager solver refuses the NaN metric): the
    native step keeps that entry NaN in Ŵ and W, never an exact zero, and leaves the other groups
    as a step without the NaN's group computes them."""
    calls = _require_native(monkeypatch)
    out = []
    for poison in (True, False):
        w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 24, dtype=dtype).view(4, 6))
        opt = RAMDA([w], lr=0.1, momentum=0.5, regularizer=GroupLasso(0.01, dim="in"), implementation="native",
                    check_finite=False)  # fmt: skip
        g = torch.linspace(-0.5, 0.5, 24, dtype=dtype).view(4, 6)
        if poison:
            g[1, 2] = float("nan")
        w.grad = g
        opt.step()
        out.append((w.detach().clone(), opt.state[w]["prox_point"].clone()))
    assert calls
    others = [0, 1, 3, 4, 5]
    for x, ref in zip(out[0], out[1]):
        assert x[1, 2].isnan() and torch.equal(x[:, others], ref[:, others])


def _group_args(dtype=torch.float32):
    w = [torch.randn(4, 6, dtype=dtype)]
    tensors = [w, [torch.randn_like(w[0])], [w[0].clone()], [torch.zeros_like(w[0])], [torch.zeros_like(w[0])],
               [torch.zeros_like(w[0])]]  # fmt: skip
    layout = torch.tensor([[0, 4, 6, 1, 0]], dtype=torch.int64)
    arrays = [torch.full((6,), 0.01, dtype=torch.float64), torch.zeros(6, dtype=torch.float64),
              torch.empty(6, dtype=torch.float64)]  # fmt: skip
    return [layout, *tensors, 0.1, 1e-6, 0.5, arrays[0], arrays[1], arrays[2], 1e-6, 100]


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (0, torch.tensor([[0, 4, 5, 1, 0]]), "layout\\[0\\].*does not describe"),  # wrong N
        (0, torch.tensor([[0, 4, 6, 1, 3]]), "fit arrays of 6 values"),  # groups past the arrays' end
        (2, [torch.randn(6, 4)], "g\\[0\\] has shape"),
        (4, [torch.zeros(4, 6, dtype=torch.float64)], "v\\[0\\] has dtype"),
        (6, [torch.zeros(6, 4).t()], "x\\[0\\] is not contiguous"),
        (11, torch.zeros(6, dtype=torch.float32), "norms has dtype"),
    ],
    ids=["layout-shape", "layout-offset", "shape", "dtype", "stride", "array-dtype"],
)
def test_a_wrong_argument_to_the_group_kernel_raises(index, bad, match, monkeypatch):
    """``ramda_group_`` checks its arguments against the signature table and the layout rule: a wrong
    shape, dtype, stride or layout raises ValueError naming it, and nothing is written."""
    _require_native(monkeypatch)
    args = _group_args()
    if index == 0:
        bad = bad.to(torch.int64)
    args[index] = bad
    before = [t.clone() for t in args[1]]
    with pytest.raises(ValueError, match=match):
        torch.ops.lightning_prox.ramda_group_(*args)
    assert all(torch.equal(a, b) for a, b in zip(args[1], before))
    good = _group_args()
    torch.ops.lightning_prox.ramda_group_(*good)  # the same call with the right arguments runs
    assert torch.isfinite(good[1][0]).all() and (good[12] >= -1).all()
