"""The native-kernel mechanism (``lightning_prox.optim._native``) and the one-pass ℓ1 kernels of ProxGen
and ProxSGD built on it: arguments are checked against each kernel's signature table before anything
reaches C++, a C++ definition that disagrees with the table does not build, native and eager steps
agree on shapes, dtypes and options drawn at random (ProxSGD to the bit; ProxGen to rounding with
the same zeros), without a compiler one warning and the eager path bit for bit, thread counts change no
bit, a resumed run continues bit for bit, and the first build logs one line.

The C++ kernels build once per machine (a few seconds, cached on disk); every test here shares them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prox.optim import ProxGen, ProxSGD, _l1_kernels, _native
from lightning_prox.optim.proxgen import _floor, _history_free_metric
from lightning_prox.regularizers import L0, L1, GroupLasso, Lq


@pytest.fixture
def ops():
    ops = _l1_kernels._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    return ops


def _adam_args(n=10, dtype=torch.float32):
    p, g, m, v = (torch.randn(n, dtype=dtype) for _ in range(4))
    scal = torch.tensor([[1e-3, 0.5, 1e-4, 1e-9, 0.0, 0.5]], dtype=torch.float64)
    return [[p], [g], [m], [v.abs()], scal, 1.0, 0.1, 0.999, 0.001, 1e-8, 0, 8]


def _lq_args(n=10):
    p, g, m, v = (torch.randn(n) for _ in range(4))
    scal = torch.tensor([[1e-3, 0.5, 0.5]], dtype=torch.float64)
    return [[p], [g], [m], [v.abs()], scal, 1.0, 0.1, 0.999, 0.001, 1e-8, 1e-3, 2, 0.0, 1.0, 8]


@pytest.mark.parametrize(
    "op, index, bad, match",
    [
        (
            "adam_l1_",
            1,
            [torch.randn(10, dtype=torch.float64)],
            r"g\[0\] has dtype torch.float64; expected torch.float32",
        ),
        (
            "adam_l1_",
            2,
            [torch.randn(11)],
            r"m\[0\] has shape \(11,\); it must have the shape of p\[0\], \(10,\)",
        ),
        ("adam_l1_", 3, [torch.rand(20)[::2]], r"v\[0\] is not contiguous \(strides \(2,\)\)"),
        (
            "adam_l1_",
            1,
            [torch.randn(10, device="meta")],
            r"g\[0\] is on meta; the native kernels run on CPU tensors only",
        ),
        ("adam_l1_", 1, [], r"g has 0 tensors, p has 1"),
        (
            "adam_l1_",
            4,
            torch.zeros(2, 6, dtype=torch.float64),
            r"scal has shape \(2, 6\); expected \(1, 6\)",
        ),
        ("adam_l1_", 4, torch.zeros(1, 6), r"scal has dtype torch.float32; expected torch.float64"),
        (
            "adam_lq_",
            4,
            torch.zeros(1, 6, dtype=torch.float64),
            r"scal has shape \(1, 6\); expected \(1, 3\)",
        ),
        ("adam_lq_", 11, 4, r"kind is 4; expected one of \[0, 1, 2, 3\]"),
        (
            "adam_lq_",
            2,
            [torch.randn(10, dtype=torch.float64)],
            r"m\[0\] has dtype torch.float64; expected torch.float32",
        ),
    ],
    ids=[
        "dtype",
        "shape",
        "stride",
        "device",
        "count",
        "rows",
        "array-dtype",
        "lq-rows",
        "lq-kind",
        "lq-dtype",
    ],
)
def test_a_wrong_argument_raises_before_the_kernel_runs(ops, op, index, bad, match):
    args = {"adam_l1_": _adam_args, "adam_lq_": _lq_args}[op]()
    written = [*args[0], *args[2], *args[3]]
    before = [t.clone() for t in written]
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        getattr(ops, op)(*args)
    assert all(torch.equal(a, b) for a, b in zip(before, written))


def test_half_precision_parameters_are_refused(ops):
    args = _adam_args(dtype=torch.float16)
    args[4] = args[4].double()
    with pytest.raises(ValueError, match=r"p\[0\] has dtype torch.float16; expected float32 or float64"):
        ops.adam_l1_(*args)


def test_the_schema_declares_what_the_kernel_writes(ops):
    schema = str(torch.ops.lightning_prox.adam_l1_.default._schema)
    assert schema.startswith(
        "lightning_prox::adam_l1_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v,"
    )
    p = torch.nn.Parameter(torch.randn(10))
    loss = (p * p).sum()  # saves p for backward
    args = _adam_args()
    args[0] = [p]
    with torch.no_grad():
        ops.adam_l1_(*args)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_definition_that_disagrees_with_the_table_does_not_build(tmp_path):
    """The prototypes generated from the table are force-included: a C++ definition with another
    argument list is a compile error, not a memory corruption at run time."""
    cxx = _native._compiler()
    if cxx is None:
        pytest.skip("no C++ compiler here")
    kernel = _native.Kernel("lp_test_", (_native.Arg("x", "tensors", out=True), _native.Arg("a", "float")))
    good = '#include <cstdint>\n#define E(T, S) extern "C" void lp_lp_test_##S(int64_t, const int64_t*, T* const*, double, int) {}\nE(float, f32) E(double, f64)\n'
    bad = good.replace("double, int) {}", "float, int) {}")  # a float where the table says double
    for name, text in (("good.cpp", good), ("bad.cpp", bad)):
        (tmp_path / name).write_text(text)
    flags = (*_native._BASE_FLAGS,)
    assert all(
        t.exists() for t in _native._build(cxx, tmp_path / "good.cpp", kernel.prototypes(), flags, tmp_path)
    )
    with pytest.raises(RuntimeError, match="conflicting declaration|conflicting types"):
        _native._build(cxx, tmp_path / "bad.cpp", kernel.prototypes(), flags, tmp_path)


_SHAPE = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


def _run(cls, impl, shapes, dtype, steps, seed, reg=L1(0.05), **kw):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    opt = cls([{"params": params, "regularizer": reg}], implementation=impl, **kw)
    for _ in range(steps):
        for p in params:
            keep = torch.rand(p.shape, generator=g) < 0.8  # exact-zero gradients: v = 0 at step 1
            p.grad = (torch.randn(p.shape, generator=g) * keep).to(dtype)
        opt.step()
    return params, opt


def _bits(t):
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


@settings(max_examples=8, deadline=None)
@given(
    shapes=st.lists(_SHAPE, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    momentum=st.sampled_from([0.0, 0.9]),
    nesterov=st.booleans(),
    dampening=st.sampled_from([0.0, 0.3]),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    seed=st.integers(0, 2**16),
)
def test_native_proxsgd_equals_eager_to_the_bit(
    shapes, dtype, momentum, nesterov, dampening, weight_decay, seed
):
    if _l1_kernels._ops() is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    nesterov = nesterov and momentum > 0
    kw = dict(lr=0.1, momentum=momentum, nesterov=nesterov, dampening=0.0 if nesterov else dampening,
              weight_decay=weight_decay)  # fmt: skip
    a, opt_a = _run(ProxSGD, "eager", shapes, dtype, 3, seed, **kw)
    b, opt_b = _run(ProxSGD, "native", shapes, dtype, 3, seed, **kw)
    for pa, pb in zip(a, b):
        assert torch.equal(_bits(pa), _bits(pb))
        if momentum:
            assert torch.equal(
                _bits(opt_a.state[pa]["momentum_buffer"]), _bits(opt_b.state[pb]["momentum_buffer"])
            )


#: the ProxGen options the native-vs-eager tests draw
_PROXGEN_OPTIONS = dict(
    shapes=st.lists(_SHAPE, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    preconditioner=st.sampled_from(["adam", "adam", "rmsprop", "adagrad"]),
    bias_correction=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]),
    threshold_cap=st.sampled_from([1.0, None]),
    seed=st.integers(0, 2**16),
)


def _assert_moments_agree(state_a, state_b, preconditioner, bias_correction, eps):
    """Adam with bias correction to the bit; otherwise within a few ulp of the tensor's scale (torch's
    multi-tensor ops round differently), with the same non-finite entries."""
    for key in ("exp_avg", "exp_avg_sq"):
        ma, mb = state_a[key], state_b[key]
        if preconditioner == "adam" and bias_correction:
            assert torch.equal(_bits(ma), _bits(mb)), key
        else:
            fin = ma.isfinite()
            assert torch.equal(fin, mb.isfinite()) and torch.equal(ma[~fin], mb[~fin]), key
            assert float((ma - mb)[fin].abs().max()) <= 8 * eps * float(ma[fin].abs().max()), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_proxsgd_zeros_carry_the_eager_signs(ops, dtype):
    """torch's softshrink gives −0 for a zeroed negative value in the elements it runs in scalar code
    (a tensor's last numel % (64 bytes / element size)) and +0 elsewhere: the native pass too."""
    for n in (1, 7, 31, 69, 100):
        out = []
        for impl in ("eager", "native"):
            p = torch.nn.Parameter(
                -0.001 * torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=dtype)
            )
            p.grad = torch.zeros(n, dtype=dtype)
            ProxSGD([{"params": [p], "regularizer": L1(0.05)}], lr=0.1, implementation=impl).step()
            out.append(p.detach())
        assert torch.equal(out[0], torch.zeros(n, dtype=dtype))
        assert torch.equal(torch.signbit(out[0]), torch.signbit(out[1])), n


@settings(max_examples=10, deadline=None)
@given(**_PROXGEN_OPTIONS)
def test_native_proxgen_equals_eager_to_rounding(
    shapes, dtype, preconditioner, bias_correction, weight_decay, threshold_cap, seed
):
    """Adam with bias correction: the moments to the bit (the fused AdamW kernel's operations);
    parameters, and the other preconditioners' moments (torch's multi-tensor ops), within a few ulp,
    with the same zeros (torch.sqrt is not correctly rounded on every CPU, the kernel's is)."""
    if _l1_kernels._ops() is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    kw = dict(lr=1e-2, weight_decay=weight_decay, threshold_cap=threshold_cap, preconditioner=preconditioner,
              bias_correction=bias_correction)  # fmt: skip
    a, opt_a = _run(ProxGen, "eager", shapes, dtype, 3, seed, **kw)
    b, opt_b = _run(ProxGen, "native", shapes, dtype, 3, seed, **kw)
    eps = torch.finfo(dtype).eps
    for pa, pb in zip(a, b):
        _assert_moments_agree(opt_a.state[pa], opt_b.state[pb], preconditioner, bias_correction, eps)
        tol = 8 * eps * float(pa.detach().abs().max())
        assert float((pa - pb).detach().abs().max()) <= tol
        assert torch.equal(pa == 0, pb == 0)


_LQ_REGS = [Lq(0.05, q=0.5), Lq(0.05, q=2 / 3), Lq(0.05, q=0.0), L0(0.05)]
#: |x|/|z| just above the zeroing threshold (Lq's docstring table; q = 0: no shrinkage)
_JUMP = {0.5: 2 / 3, 2 / 3: 0.5, 0.0: 1.0, None: 1.0}


def _metric(v, b, eps, floor, fill):
    """ProxGen's floored prox metric D̄ of one tensor, from its second moment."""
    d = v.sqrt() / b + eps
    if floor > 0:
        d = torch.where(v == 0, torch.full_like(d, fill), d.clamp_min(floor))
    return d


@settings(max_examples=16, deadline=None)
@given(reg=st.sampled_from(_LQ_REGS), **_PROXGEN_OPTIONS)
def test_native_proxgen_lq_equals_eager_to_rounding(
    reg, shapes, dtype, preconditioner, bias_correction, weight_decay, threshold_cap, seed
):
    """ℓ0 and Lq (q = 0, 1/2, 2/3): each of 3 steps from the same state (the native optimizer is reset
    to the eager one's after each step). Adam moments to the bit, the other preconditioners' to a few
    ulp; parameters to a few ulp of the tensor's scale and zero where the eager step zeroes, except at
    coordinates whose θ̂ lies within rounding of the zeroing threshold (identified from the value the
    other side kept, |x| = jump·|θ̂|, and counted: at most one in a thousand). Every tensor has a
    coordinate without gradient (v = 0: the history-free metric) and one whose second moment
    overflows (v = inf: the coordinate keeps θ̂)."""
    if _l1_kernels._ops() is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    lr = 1e-2
    kw = dict(lr=lr, weight_decay=weight_decay, threshold_cap=threshold_cap, preconditioner=preconditioner,
              bias_correction=bias_correction)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    params = {impl: [] for impl in ("eager", "native")}
    for s in shapes:
        x = torch.randn(s, generator=g, dtype=dtype) * 0.1
        for impl in params:
            params[impl].append(torch.nn.Parameter(x.clone()))
    opts = {
        i: ProxGen([{"params": ps, "regularizer": reg}], implementation=i, **kw) for i, ps in params.items()
    }
    eps, huge = torch.finfo(dtype).eps, 1e30 if dtype == torch.float32 else 1e160
    c, power = reg.zero_threshold_law
    floor = _floor(reg, lr, threshold_cap, preconditioner, "preconditioned")
    fill = _history_free_metric(reg, floor)
    near = total = 0
    for step in range(1, 4):
        for pa, pb in zip(params["eager"], params["native"]):
            grad = (torch.randn(pa.shape, generator=g) * (torch.rand(pa.shape, generator=g) < 0.8)).to(dtype)
            flat = grad.view(-1)
            flat[0] = 0.0  # never a gradient: v = 0
            if flat.numel() > 1:
                flat[1] = huge  # v overflows to inf
            pa.grad, pb.grad = grad, grad.clone()
        for opt in opts.values():
            opt.step()
        for pa, pb in zip(params["eager"], params["native"]):
            sa, sb = opts["eager"].state[pa], opts["native"].state[pb]
            _assert_moments_agree(sa, sb, preconditioner, bias_correction, eps)
            a, b = pa.detach(), pb.detach()
            if a.numel() > 1:
                assert sa["exp_avg_sq"].view(-1)[1] == torch.inf and b.view(-1)[1] != 0  # pinned: θ̂ kept
            differ = (a == 0) != (b == 0)
            if differ.any():
                adam_bc = preconditioner == "adam" and bias_correction
                bc = (1 - 0.999**step) ** 0.5 if adam_bc else 1.0  # the default betas[1]
                d = _metric(sa["exp_avg_sq"], bc, 1e-8, floor, fill)
                thr = c * (lr * reg.lam / d) ** power
                z = torch.where(a != 0, a, b).abs() / _JUMP[getattr(reg, "q", None)]
                assert torch.all(((z - thr).abs() <= 64 * eps * thr)[differ])
            near += int(differ.sum())
            total += a.numel()
            both = ~differ
            assert float((a - b)[both].abs().max()) <= 16 * eps * float(a.abs().max())
            with torch.no_grad():  # the next step starts from the same state
                pb.copy_(pa)
                sb["exp_avg"].copy_(sa["exp_avg"])
                sb["exp_avg_sq"].copy_(sa["exp_avg_sq"])
    assert near <= max(1, total // 1000)


def test_native_kind_names_exactly_the_closed_forms():
    """The native ℓ0/Lq pass runs exactly the regularizers whose prox it computes: not ℓ1 (its own
    kernel), Lq with q = 1, or a subclass (which may override the prox)."""

    @dataclasses.dataclass(frozen=True)
    class MyLq(Lq):
        pass

    kinds = [_l1_kernels.native_kind(r) for r in (L0(0.1), Lq(0.1, q=0), Lq(0.1, q=0.5), Lq(0.1, q=2 / 3))]
    assert kinds == [0, 1, 2, 3]
    assert [_l1_kernels.native_kind(r) for r in (L1(0.1), Lq(0.1, q=1), MyLq(0.1, q=0.5), None)] == [None] * 4


def test_auto_runs_the_native_lq_pass_from_the_size_threshold(ops, monkeypatch):
    from lightning_prox.optim import proxgen

    calls = []
    monkeypatch.setattr(proxgen._l1_kernels, "adam_prox_", lambda *a, **k: calls.append(1))
    for n, expected in ((proxgen.AUTO_NATIVE_NUMEL - 1, 0), (proxgen.AUTO_NATIVE_NUMEL, 1)):
        p = torch.nn.Parameter(torch.randn(n))
        p.grad = torch.randn(n)
        ProxGen([{"params": [p], "regularizer": Lq(0.05, q=0.5)}], lr=1e-2).step()
        assert len(calls) == expected


@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
def test_without_a_compiler_one_warning_and_the_eager_step_bit_for_bit(cls, monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
    _native.kernels.cache_clear()
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)
    shapes = ((6, 5), (40,))
    try:
        a, _ = _run(cls, "eager", shapes, torch.float32, 3, 0, **kw)
        with pytest.warns(RuntimeWarning, match="building _l1_kernels.cpp failed") as record:
            b, _ = _run(cls, "native", shapes, torch.float32, 3, 0, **kw)
    finally:
        _native.kernels.cache_clear()
    assert len([w for w in record if "_l1_kernels.cpp" in str(w.message)]) == 1
    for pa, pb in zip(a, b):
        assert torch.equal(_bits(pa), _bits(pb))


@pytest.mark.parametrize(
    "cls, reg",
    [(ProxGen, L1(0.05)), (ProxSGD, L1(0.05)), (ProxGen, Lq(0.05, q=0.5)), (ProxGen, Lq(0.05, q=2 / 3))],
    ids=["ProxGen-L1", "ProxSGD-L1", "ProxGen-Lq1/2", "ProxGen-Lq2/3"],
)
def test_thread_count_changes_no_bit(cls, reg, ops):
    shapes = ((300, 700),)  # several work items of the threaded pass
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a, _ = _run(cls, "native", shapes, torch.float32, 2, 3, reg, lr=1e-2)
        torch.set_num_threads(1)
        b, _ = _run(cls, "native", shapes, torch.float32, 2, 3, reg, lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(a[0]), _bits(b[0]))


@pytest.mark.parametrize("reg", [L1(0.05), Lq(0.05, q=0.5), Lq(0.05, q=2 / 3), L0(0.05)], ids=repr)
def test_native_proxgen_resumes_bit_for_bit(reg, ops):
    shapes = ((7, 9), (33,))
    full, _ = _run(ProxGen, "native", shapes, torch.float32, 4, 5, reg)
    g = torch.Generator().manual_seed(5)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    opt = ProxGen([{"params": params, "regularizer": reg}], implementation="native")
    for k in range(4):
        if k == 2:  # a fresh optimizer from the state dict, as after a restart
            sd = opt.state_dict()
            opt = ProxGen([{"params": params, "regularizer": reg}], implementation="native")
            opt.load_state_dict(sd)
        for p in params:
            keep = torch.rand(p.shape, generator=g) < 0.8
            p.grad = torch.randn(p.shape, generator=g) * keep
        opt.step()
    for pa, pb in zip(full, params):
        assert torch.equal(_bits(pa), _bits(pb))


def test_the_first_build_starts_at_construction_logs_one_line_and_a_cached_one_none(
    monkeypatch, tmp_path, caplog
):
    if _native._compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_PREFETCH", {})
    _native.kernels.cache_clear()
    p = torch.nn.Parameter(torch.randn(8))
    try:
        with caplog.at_level(logging.WARNING, logger="lightning_prox.optim._native"):
            ProxGen([p], implementation="eager", regularizer=L1(0.1))
            ProxGen([p], check_finite=False)  # neither the eager path nor a plain step builds anything
            ProxGen([p], regularizer=L1(0.1), check_finite=False)  # 8 values: "auto" runs eager
            assert not _native._PREFETCH
            ProxGen([p])  # the finite check's scan
            assert list(_native._PREFETCH) == ["_finite_kernels.cpp"]
            ProxGen([p], regularizer=L1(0.1), implementation="native")
            ProxSGD([p], lr=0.1, regularizer=L1(0.1), implementation="native")  # no second build
            assert sorted(_native._PREFETCH) == ["_finite_kernels.cpp", "_l1_kernels.cpp"]
            assert _l1_kernels._ops() is not None  # waits for the background build
            assert not _native._PREFETCH["_l1_kernels.cpp"].is_alive()
            # its float32 and float64 halves, compiled at the same time
            assert len(list((tmp_path / "native").glob("_l1_kernels-*.so"))) == 2
            _native.kernels.cache_clear()
            assert _l1_kernels._ops() is not None
    finally:
        _native.kernels.cache_clear()
    lines = [r.getMessage() for r in caplog.records if "_l1_kernels.cpp" in r.getMessage()]
    assert len(lines) == 1 and "once for this machine" in lines[0]


def test_no_compiler_at_all_warns_once_for_every_library(monkeypatch, tmp_path):
    """No C++ compiler on the machine: one warning in all (not one per library), then eager steps."""
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.setattr(_native, "_NO_COMPILER_WARNED", [])
    monkeypatch.setattr(_native, "_PREFETCH", {})
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path))
    _native.kernels.cache_clear()
    p = torch.nn.Parameter(torch.randn(300, 300))
    p.grad = torch.randn(300, 300)
    try:
        with pytest.warns(RuntimeWarning) as record:
            for reg in (L1(1e-3), Lq(1e-3, q=0.5), GroupLasso(1e-3)):
                ProxGen([p], regularizer=reg, implementation="native").step()
            ProxSGD([p], lr=0.1, regularizer=L1(1e-3), implementation="native").step()
    finally:
        _native.kernels.cache_clear()
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0]
    assert not list(tmp_path.rglob("*.so"))


def test_a_changed_shared_header_changes_the_cache_key(tmp_path):
    """A library is cached by its source and the local headers it includes: editing the header
    builds a new library instead of loading a stale one."""
    cxx = _native._compiler()
    if cxx is None:
        pytest.skip("no C++ compiler here")
    (tmp_path / "common.h").write_text("inline int lp_k() { return 1; }\n")
    (tmp_path / "k.cpp").write_text('#include "common.h"\nextern "C" int lp_value() { return lp_k(); }\n')
    flags = (*_native._BASE_FLAGS,)
    first = _native._build(cxx, tmp_path / "k.cpp", "", flags, tmp_path)
    assert first == _native._build(cxx, tmp_path / "k.cpp", "", flags, tmp_path)  # cached
    (tmp_path / "common.h").write_text("inline int lp_k() { return 2; }\n")
    second = _native._build(cxx, tmp_path / "k.cpp", "", flags, tmp_path)
    assert second != first
    assert ctypes.CDLL(str(first[0])).lp_value() == 1 and ctypes.CDLL(str(second[0])).lp_value() == 2
