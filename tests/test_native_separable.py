"""The native passes of ProxGen + MCP / SCAD / Quantization and ProxSGD + ℓ0 / Lq / MCP / SCAD /
Quantization (``lightning_prox.optim._l1_kernels``): against the eager step (the regularizers' chunk
kernels after torch's smooth step) on random shapes, dtypes and options, on points at and next to
every threshold and kink of each prox, with non-finite values, at 1 and 2 threads; resumed runs
continue bit for bit; a wrong argument to a kernel raises before anything is written; the dispatch
table names exactly the proxes the kernels compute.

Bit-equal to eager where the operations are the same: ProxSGD (all but Lq with q = 1/2 and 2/3, whose
square root is correctly rounded and cube root computed by Newton steps), and ProxGen's prox given the same θ̂ and metric. ProxGen rebuilds
the metric √v/√bc2 + eps with a correctly rounded square root (torch.sqrt is not, on every CPU), and
RMSprop/AdaGrad moments round as torch's multi-tensor ops do not: there the parameters agree with the
eager step to a few ulp of the tensor's scale, with the same quantization levels, but for rare
coordinates where an ulp crosses a threshold of the prox.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prox.optim import ProxGen, ProxSGD, _l1_kernels
from lightning_prox.optim.proxgen import _floor, _history_free_metric
from lightning_prox.regularizers import L0, MCP, SCAD, Lq, Quantization
from lightning_prox.regularizers.functional import _C_HALF, _C_TWOTHIRDS
from tests.test_native_kernels import _bits


@pytest.fixture
def ops():
    ops = _l1_kernels._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    return ops


_ADAM_REGS = [MCP(0.05, b=3.0), SCAD(0.05, a=3.7), Quantization(0.05, levels=(-0.1, 0.0, 0.1)),
              Quantization(0.02), Quantization(0.05, levels=(-0.2, -0.05, 0.1, 0.3))]  # fmt: skip
_SGD_REGS = [L0(0.05), Lq(0.05, q=0.0), Lq(0.05, q=0.5), Lq(0.05, q=2 / 3), *_ADAM_REGS]
_SHAPE = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)


def _levels_agree(reg, a, b):
    if isinstance(reg, Quantization):
        assert torch.equal(reg._nearest(a), reg._nearest(b))


def _assert_close(reg, a, b, dtype, exact):
    """Bit-equal when ``exact``, else a few ulp of the tensor's scale with the same zeros and levels."""
    if exact:
        assert torch.equal(_bits(a), _bits(b))
        return
    fin = a.isfinite()
    assert torch.equal(fin, b.isfinite()) and torch.equal(_bits(a[~fin]), _bits(b[~fin]))
    assert torch.equal(a == 0, b == 0)
    if fin.any():
        tol = 16 * torch.finfo(dtype).eps * float(a[fin].abs().max())
        assert float((a - b)[fin].abs().max()) <= tol
    _levels_agree(reg, a, b)


def _pair(shapes, dtype, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(s, generator=g, dtype=dtype) * scale for s in shapes]
    return {impl: [torch.nn.Parameter(x.clone()) for x in xs] for impl in ("eager", "native")}, g


def _reference_prox(reg, z, v, lr, floor, fill, bc2, dtype):
    """Eager ProxGen's prox of θ̂ = ``z`` under its floored metric D̄ from ``v``, the square root correctly
    rounded (torch.sqrt is not on every CPU; numpy's and the native kernel's are)."""
    d = torch.from_numpy(np.sqrt(v.numpy())) / bc2 + 1e-8
    if floor > 0:
        d = d.clamp_min(floor).masked_fill(v == 0, fill)
    out = z.clone()
    reg.prox_multi([out], lr, [d], out=[out])
    return out


@settings(max_examples=24, deadline=None)
@given(
    reg=st.sampled_from(_ADAM_REGS),
    shapes=st.lists(_SHAPE, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    preconditioner=st.sampled_from(["adam", "adam", "rmsprop", "adagrad"]),
    bias_correction=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]),
    threshold_cap=st.sampled_from([1.0, None]),
    lr=st.sampled_from([1e-2, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_native_proxgen_equals_eager(
    reg, shapes, dtype, preconditioner, bias_correction, weight_decay, threshold_cap, lr, seed
):
    """Each of 3 steps from the same state (the native optimizer is reset to the eager one's after each
    step). Every tensor has a coordinate without gradient (v = 0: the history-free metric) and one
    whose second moment overflows (v = inf: the coordinate keeps θ̂).

    Adam with bias correction (torch's fused AdamW step, whose bits the native smooth step has): the
    eager prox of the same θ̂ under the metric with a correctly rounded square root, to the bit. The
    eager step itself (torch.sqrt is not correctly rounded in float32 nor float64 on every CPU, and
    RMSprop, AdaGrad and Adam without bias correction run torch's multi-tensor ops, which round θ̂
    differently by an ulp): a few ulp of the tensor's scale, except at most one coordinate in a
    thousand where that ulp crosses a threshold of the prox or is amplified by its slope b/(b − s)
    (MCP) or (a − 1)/(a − 1 − s) (SCAD)."""
    if _l1_kernels._ops() is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    _check_proxgen(reg, shapes, dtype, preconditioner, bias_correction, weight_decay, threshold_cap, lr, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold_cap", [1.0, None])
@pytest.mark.parametrize("preconditioner", ["adam", "rmsprop", "adagrad"])
@pytest.mark.parametrize("reg", _ADAM_REGS[:3], ids=repr)
def test_native_proxgen_equals_eager_every_combination(reg, preconditioner, threshold_cap, dtype, ops):
    """Every regularizer × preconditioner × metric floor × dtype, at 1 and 2 threads, on a tensor the
    threaded pass splits (70001 values: not a multiple of the vector width), a 1-value one and a
    small matrix; checked as in test_native_proxgen_equals_eager."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _check_proxgen(
                reg, [(70001,), (1,), (37, 3)], dtype, preconditioner, True, 0.0, threshold_cap, 1e-2, n
            )
    finally:
        torch.set_num_threads(threads)


def _check_proxgen(
    reg, shapes, dtype, preconditioner, bias_correction, weight_decay, threshold_cap, lr, seed
):
    """The checks of :func:`test_native_proxgen_equals_eager` for one set of options."""
    kw = dict(lr=lr, weight_decay=weight_decay, threshold_cap=threshold_cap, preconditioner=preconditioner,
              bias_correction=bias_correction)  # fmt: skip
    params, g = _pair(shapes, dtype, seed)
    params["smooth"] = [torch.nn.Parameter(p.detach().clone()) for p in params["eager"]]
    opts = {i: ProxGen([{"params": ps, "regularizer": None if i == "smooth" else reg}], implementation=i
                       if i != "smooth" else "eager", **kw) for i, ps in params.items()}  # fmt: skip
    huge = 1e30 if dtype == torch.float32 else 1e160
    adam_bc = preconditioner == "adam" and bias_correction
    floor = _floor(reg, lr, threshold_cap, preconditioner, "preconditioned")
    fill = _history_free_metric(reg, floor)
    for step in range(1, 4):
        for pa, pb, pc in zip(*params.values()):
            grad = (torch.randn(pa.shape, generator=g) * (torch.rand(pa.shape, generator=g) < 0.8)).to(dtype)
            flat = grad.view(-1)
            flat[0] = 0.0
            if flat.numel() > 1:
                flat[1] = huge
            pa.grad, pb.grad, pc.grad = grad, grad.clone(), grad.clone()
        for opt in opts.values():
            opt.step()
        for pa, pb, pc in zip(*params.values()):
            sa, sb, sc = (opts[i].state[p] for i, p in zip(params, (pa, pb, pc)))
            a, b = pa.detach(), pb.detach()
            if pa.numel() > 1:
                assert sa["exp_avg_sq"].view(-1)[1] == torch.inf and b.view(-1)[1] == pc.detach().view(-1)[1]
            if adam_bc:
                bc2 = (1 - 0.999**step) ** 0.5
                ref = _reference_prox(reg, pc.detach(), sc["exp_avg_sq"], lr, floor, fill, bc2, dtype)
                assert torch.equal(_bits(ref), _bits(b))
            far = (a - b).abs() > 16 * torch.finfo(dtype).eps * float(a.abs().max())
            assert int(far.sum()) <= max(1, a.numel() // 1000)
            _levels_agree(reg, a[~far], b[~far])
            with torch.no_grad():  # the next step starts from the same state
                for p, state in ((pb, sb), (pc, sc)):
                    p.copy_(pa)
                    state["exp_avg"].copy_(sa["exp_avg"])
                    state["exp_avg_sq"].copy_(sa["exp_avg_sq"])


def _sgd_close(reg, a, b, dtype):
    """To the bit, except Lq with q = 1/2 and 2/3 (|θ̂|^{1/2} correctly rounded, torch.sqrt's is not on
    every CPU; |θ̂|^{1/3} by Newton steps): a few ulp, and a coordinate within rounding of the zeroing
    threshold on either side (at most one in a thousand)."""
    if type(reg) is not Lq or reg.q not in (0.5, 2 / 3):
        assert torch.equal(_bits(a), _bits(b))
        return
    differ = (a == 0) != (b == 0)
    assert int(differ.sum()) <= max(1, a.numel() // 1000)
    both = ~differ
    assert float((a - b)[both].abs().max()) <= 16 * torch.finfo(dtype).eps * float(a.abs().max())


@settings(max_examples=24, deadline=None)
@given(
    reg=st.sampled_from(_SGD_REGS),
    shapes=st.lists(_SHAPE, min_size=1, max_size=3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    momentum=st.sampled_from([0.0, 0.9]),
    nesterov=st.booleans(),
    dampening=st.sampled_from([0.0, 0.3]),
    weight_decay=st.sampled_from([0.0, 1e-2]),
    lr=st.sampled_from([0.1, 5.0]),
    seed=st.integers(0, 2**16),
)
def test_native_proxsgd_equals_eager(
    reg, shapes, dtype, momentum, nesterov, dampening, weight_decay, lr, seed
):
    """3 steps, the parameters and momentum buffers compared after each (lr = 5: MCP's s ≥ b and
    SCAD's s ≥ a − 1, where their proxes jump)."""
    if _l1_kernels._ops() is None:
        pytest.skip("no working C++ compiler here: the eager path runs")
    _check_proxsgd(reg, shapes, dtype, momentum, nesterov and momentum > 0, dampening, weight_decay, lr, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("reg", _SGD_REGS[:7], ids=repr)
def test_native_proxsgd_equals_eager_every_combination(reg, momentum, nesterov, dtype, ops):
    """Every regularizer × momentum (none, heavy ball, Nesterov) × dtype at 1 and 2 threads, on a tensor
    the threaded pass splits (70001 values), a 1-value one and a small matrix."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _check_proxsgd(reg, [(70001,), (1,), (37, 3)], dtype, momentum, nesterov, 0.0, 1e-2, 0.1, n)
    finally:
        torch.set_num_threads(threads)


def _check_proxsgd(reg, shapes, dtype, momentum, nesterov, dampening, weight_decay, lr, seed):
    """The checks of :func:`test_native_proxsgd_equals_eager` for one set of options."""
    kw = dict(lr=lr, momentum=momentum, nesterov=nesterov, dampening=0.0 if nesterov else dampening,
              weight_decay=weight_decay)  # fmt: skip
    params, g = _pair(shapes, dtype, seed)
    opts = {
        i: ProxSGD([{"params": ps, "regularizer": reg}], implementation=i, **kw) for i, ps in params.items()
    }
    for _ in range(3):
        for pa, pb in zip(params["eager"], params["native"]):
            grad = (torch.randn(pa.shape, generator=g) * 0.05 * (torch.rand(pa.shape, generator=g) < 0.8)).to(
                dtype
            )
            pa.grad, pb.grad = grad, grad.clone()
        for opt in opts.values():
            opt.step()
        for pa, pb in zip(params["eager"], params["native"]):
            _sgd_close(reg, pa.detach(), pb.detach(), dtype)
            if momentum:
                ba, bb = (
                    opts["eager"].state[pa]["momentum_buffer"],
                    opts["native"].state[pb]["momentum_buffer"],
                )
                assert torch.equal(_bits(ba), _bits(bb))
            with torch.no_grad():
                pb.copy_(pa)


def _kinks(reg, s):
    """|θ̂| at the thresholds and kinks of ``reg``'s Euclidean prox with step s (λ̃ = 2sλ for Lq)."""
    lam = reg.lam
    if isinstance(reg, MCP):
        b = reg.b
        return [s * lam, b * lam, lam * math.sqrt(b * s), b * lam * (1 - s / b) + s * lam]
    if isinstance(reg, SCAD):
        a = reg.a
        return [s * lam, lam + s * lam, lam, a * lam, ((a - 1 - s) * a * lam + s * a * lam) / (a - 1)]
    if isinstance(reg, Quantization):
        lv = reg.levels
        mids = [0.5 * (x + y) for x, y in zip(lv, lv[1:])]
        return [*mids, *lv, *(v + d for v in (*lv, *mids) for d in (s * lam, -s * lam))]
    if isinstance(reg, L0):
        return [math.sqrt(2 * s * lam)]
    q = reg.q
    lt = 2 * s * lam
    return [{0.0: math.sqrt(lt), 0.5: _C_HALF * lt ** (2 / 3), 2 / 3: _C_TWOTHIRDS * lt**0.75}[q]]


def _around(points, dtype, n=3):
    """Each point, its n neighbours on either side in ``dtype``, and their negatives; ±0 and the
    smallest normal number; a 1-element tensor and an odd-length one."""
    out = [0.0, -0.0, torch.finfo(dtype).tiny]
    for x in points:
        t = torch.tensor(x, dtype=dtype)
        up = down = t
        out.append(float(t))
        for _ in range(n):
            up = torch.nextafter(up, torch.tensor(math.inf, dtype=dtype))
            down = torch.nextafter(down, torch.tensor(-math.inf, dtype=dtype))
            out += [float(up), float(down)]
    vals = torch.tensor(out, dtype=dtype)
    return torch.cat([vals, -vals])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr", [0.1, 5.0])
@pytest.mark.parametrize("reg", _SGD_REGS, ids=repr)
def test_at_and_around_every_threshold_native_equals_eager(reg, lr, dtype, ops):
    """Zero gradients leave θ̂ = θ exactly, so θ sits on the kinks: ProxSGD (the Euclidean prox at
    s = lr), and ProxGen on its first step, where v = 0 gives the history-free metric (1 under the
    default floor: s = lr; eps without a floor: s = lr/eps) — to the bit (no square root rounds at
    v = 0), Lq with q = 1/2 and 2/3 aside (ProxSGD only)."""
    x = _around(_kinks(reg, lr), dtype)
    cases = [(ProxSGD, {})]
    if _l1_kernels.native_kind(reg) >= _l1_kernels.MCP_KIND:
        cases += [(ProxGen, {}), (ProxGen, {"threshold_cap": None}), (ProxGen, {"preconditioner": "adagrad"})]
    for cls, kw in cases:
        for shape in ((x.numel(),), (1,)):
            out = []
            for impl in ("eager", "native"):
                p = torch.nn.Parameter(x[: shape[0]].clone())
                p.grad = torch.zeros_like(p)
                cls([{"params": [p], "regularizer": reg}], lr=lr, implementation=impl, **kw).step()
                out.append(p.detach())
            a, b = out
            if type(reg) is Lq and reg.q in (0.5, 2 / 3):  # only within rounding of the threshold
                thr = _kinks(reg, lr)[0]
                differ = (a == 0) != (b == 0)
                z = x[: shape[0]].abs()
                assert torch.all(((z - thr).abs() <= 64 * torch.finfo(dtype).eps * thr)[differ])
                both = ~differ
                assert float((a - b)[both].abs().max()) <= 16 * torch.finfo(dtype).eps * float(a.abs().max())
            else:
                assert torch.equal(_bits(a), _bits(b))


@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
@pytest.mark.parametrize("reg", _ADAM_REGS[:3], ids=repr)
def test_non_finite_policy_unchanged(cls, reg, ops):
    """A NaN or inf gradient raises before anything changes (check_finite). Without the check, the
    native and eager steps agree: the same non-finite entries (θ̂ kept where it is not finite or the
    metric is inf), the others to a few ulp (ProxGen) or the bit (ProxSGD). (ProxGen's eager prox
    refuses a NaN metric, which a NaN gradient gives, after the smooth step; the native pass writes
    θ̂, NaN, there: only inf gradients are compared for it.)"""
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)
    for bad in (math.nan, math.inf):
        res = []
        for impl in ("eager", "native"):
            p = torch.nn.Parameter(torch.linspace(-0.3, 0.3, 37))
            p.grad = torch.full((37,), 0.01)
            p.grad[5] = bad
            before = p.detach().clone()
            opt = cls([{"params": [p], "regularizer": reg}], implementation=impl, **kw)
            with pytest.raises(ValueError, match="non-finite gradient"):
                opt.step()
            assert torch.equal(p.detach(), before) and not opt.state[p]
            if cls is ProxGen and math.isnan(bad):
                continue
            opt = cls([{"params": [p], "regularizer": reg}], implementation=impl, check_finite=False, **kw)
            opt.step()
            res.append(p.detach().clone())
        if not res:
            continue
        a, b = res
        assert not a[5].isfinite() and torch.equal(_bits(a[~a.isfinite()]), _bits(b[~a.isfinite()]))
        _assert_close(reg, a, b, torch.float32, exact=cls is ProxSGD)


@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
@pytest.mark.parametrize(
    "reg", [MCP(0.05), SCAD(0.05), Quantization(0.05, levels=(-0.1, 0.0, 0.1))], ids=repr
)
def test_thread_count_changes_no_bit_and_matches_eager(cls, reg, ops):
    """A tensor split into several work items of the threaded pass: 1 and 2 threads give the same
    bits, and each agrees with the eager step at that thread count."""
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)
    threads = torch.get_num_threads()
    res = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for impl in ("eager", "native"):
                g = torch.Generator().manual_seed(3)
                p = torch.nn.Parameter(torch.randn(300, 701, generator=g) * 0.1)
                opt = cls([{"params": [p], "regularizer": reg}], implementation=impl, **kw)
                for _ in range(2):
                    p.grad = torch.randn(p.shape, generator=g)
                    opt.step()
                res[n, impl] = p.detach()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(res[1, "native"]), _bits(res[2, "native"]))
    for n in (1, 2):
        _assert_close(reg, res[n, "eager"], res[n, "native"], torch.float32, exact=cls is ProxSGD)


@pytest.mark.parametrize(
    "cls, reg",
    [*((c, r) for c in (ProxGen, ProxSGD) for r in (MCP(0.05), SCAD(0.05), Quantization(0.05))),
     (ProxSGD, Lq(0.05, q=0.5)), (ProxSGD, L0(0.05))],
    ids=lambda v: getattr(v, "__name__", repr(v)),
)  # fmt: skip
def test_native_resumes_bit_for_bit(cls, reg, ops):
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)

    def run(restart):
        g = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in ((7, 9), (33,))]
        opt = cls([{"params": params, "regularizer": reg}], implementation="native", **kw)
        for k in range(4):
            if restart and k == 2:  # a fresh optimizer from the state dict, as after a restart
                sd = opt.state_dict()
                opt = cls([{"params": params, "regularizer": reg}], implementation="native", **kw)
                opt.load_state_dict(sd)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g) * (torch.rand(p.shape, generator=g) < 0.8)
            opt.step()
        return params

    for pa, pb in zip(run(False), run(True)):
        assert torch.equal(_bits(pa), _bits(pb))


def _sep_args(kind=_l1_kernels.MCP_KIND, n=10):
    p, g, m, v = (torch.randn(n) for _ in range(4))
    scal = torch.tensor([[1e-3, 0.5]], dtype=torch.float64)
    prm = torch.tensor([0.1, 3.0], dtype=torch.float64)
    return [[p], [g], [m], [v.abs()], scal, 1.0, 0.1, 0.999, 0.001, 1e-8, kind, 1e-3, 2, prm, 0.0, 1.0, 8]


def _sgd_args(kind=_l1_kernels.QUANT_KIND, n=10):
    p, g, b = (torch.randn(n) for _ in range(3))
    prm = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    return [[p], [g], [b], 0.0, 0.9, 1.0, 0.1, 0, 0, 8, kind, 1e-3, 3, prm]


@pytest.mark.parametrize(
    "op, index, bad, match",
    [
        ("adam_sep_", 10, 2, r"kind is 2; expected one of \[4, 5, 6\]"),
        (
            "adam_sep_",
            4,
            torch.zeros(1, 3, dtype=torch.float64),
            r"scal has shape \(1, 3\); expected \(1, 2\)",
        ),
        ("adam_sep_", 12, 3, r"prm has shape \(2,\) and nprm is 3"),
        ("adam_sep_", 2, [torch.randn(10, dtype=torch.float64)], r"m\[0\] has dtype torch.float64"),
        ("adam_sep_", 13, torch.zeros(2), r"prm has dtype torch.float32; expected torch.float64"),
        ("sgd_sep_", 10, 7, r"kind is 7; expected one of \[0, 1, 2, 3, 4, 5, 6\]"),
        ("sgd_sep_", 13, torch.zeros(5, dtype=torch.float64), r"prm has shape \(5,\) and nprm is 3"),
        ("sgd_sep_", 2, [torch.randn(11)], r"buf\[0\] has shape \(11,\)"),
    ],
    ids=["kind", "rows", "nprm", "dtype", "prm-dtype", "sgd-kind", "sgd-levels", "sgd-shape"],
)
def test_a_wrong_argument_raises_before_the_kernel_runs(ops, op, index, bad, match):
    args = {"adam_sep_": _sep_args, "sgd_sep_": _sgd_args}[op]()
    written = [*args[0], *args[2], *(args[3] if op == "adam_sep_" else [])]
    before = [t.clone() for t in written]
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        getattr(ops, op)(*args)
    assert all(torch.equal(a, b) for a, b in zip(before, written))


def test_native_kind_table_names_exactly_the_kernels_proxes():
    """Exact types and the parameters the kernels implement; the paper's MCP/SCAD formulas,
    Quantization with q ≠ 1 or more than 4 levels and subclasses keep the eager path."""

    @dataclasses.dataclass(frozen=True)
    class MyMCP(MCP):
        pass

    kind = _l1_kernels.native_kind
    assert [kind(MCP(0.1)), kind(SCAD(0.1)), kind(Quantization(0.1, levels=(-1.0, 0.0, 0.5, 1.0)))] == [
        4,
        5,
        6,
    ]
    others = [MCP(0.1, b=3.0, exact=False), SCAD(0.1, exact=False), Quantization(0.1, q=0.5),
              Quantization(0.1, levels=(-2.0, -1.0, 0.0, 1.0, 2.0)), MyMCP(0.1)]  # fmt: skip
    assert [kind(r) for r in others] == [None] * len(others)


@pytest.mark.parametrize("cls, fn", [(ProxGen, "adam_prox_"), (ProxSGD, "sgd_prox_")])
def test_auto_runs_the_native_pass_from_the_size_threshold(cls, fn, ops, monkeypatch):
    from lightning_prox.optim import proxgen

    calls = []
    monkeypatch.setattr(_l1_kernels, fn, lambda *a, **k: calls.append(1))
    for n, expected in ((proxgen.AUTO_NATIVE_NUMEL - 1, 0), (proxgen.AUTO_NATIVE_NUMEL, 1)):
        p = torch.nn.Parameter(torch.randn(n))
        p.grad = torch.randn(n)
        cls([{"params": [p], "regularizer": SCAD(0.05)}], lr=1e-2).step()
        assert len(calls) == expected


@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
def test_a_non_contiguous_parameter_takes_the_eager_step(cls, ops, monkeypatch):
    """The native pass needs contiguous tensors: a transposed parameter runs the eager step, to the bit."""
    calls = []
    fn = "adam_prox_" if cls is ProxGen else "sgd_prox_"
    monkeypatch.setattr(_l1_kernels, fn, lambda *a, **k: calls.append(1))
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)
    out = []
    for impl in ("eager", "native"):
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(40, 30, generator=g).t())
        opt = cls([{"params": [p], "regularizer": SCAD(0.05)}], implementation=impl, **kw)
        for _ in range(2):
            p.grad = torch.randn(30, 40, generator=g)
            opt.step()
        out.append(p.detach())
    assert not calls and torch.equal(_bits(out[0].contiguous()), _bits(out[1].contiguous()))
