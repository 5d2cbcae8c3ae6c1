"""Separable regularizers (L1, L0, Lq, MCP, SCAD, Quantization) and the generic contract of all of them.

The references are written here, independently of the library: every penalty below is the textbook
formula, and every prox is checked against dense 1-D grid minimization (refined around the best grid
point) of ``step·ρ(x) + ½·metric·(x − z)²`` over many orders of magnitude of step·λ/metric.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lightning_prox.optim._prox import prox_tensors_
from lightning_prox.regularizers import (
    L0,
    L1,
    MCP,
    SCAD,
    CoupledGroupLasso,
    GroupLasso,
    Lq,
    NuclearNorm,
    Quantization,
    Regularizer,
    SquaredL2,
    _base,
    from_spec,
)
from lightning_prox.regularizers.functional import prox_lhalf, prox_ltwothirds

DT = torch.float64


# -- textbook penalties (per element, λ included) ---------------------------------------------------
def lq_pen(lam: float, q: float) -> Callable[[torch.Tensor], torch.Tensor]:
    if q == 0:
        return lambda x: lam * (x != 0).to(x.dtype)
    return lambda x: lam * x.abs() ** q


def mcp_pen(lam: float, b: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x):
        ax = x.abs()
        return torch.where(ax <= b * lam, lam * ax - ax**2 / (2 * b), torch.full_like(ax, b * lam**2 / 2))

    return f


def scad_pen(lam: float, a: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x):
        ax = x.abs()
        mid = -(ax**2 - 2 * a * lam * ax + lam**2) / (2 * (a - 1))
        return torch.where(
            ax <= lam, lam * ax, torch.where(ax <= a * lam, mid, torch.full_like(ax, (a + 1) * lam**2 / 2))
        )

    return f


def quant_pen(lam: float, levels: tuple[float, ...], q: float) -> Callable[[torch.Tensor], torch.Tensor]:
    base = lq_pen(1.0, q)

    def f(x):
        lv = torch.tensor(levels, dtype=x.dtype)
        return lam * base(x.unsqueeze(-1) - lv).amin(-1)

    return f


#: (regularizer, textbook per-element penalty, id). The table drives the brute-force, autograd,
#: no-NaN, dtype, spec and prox_multi tests below.
SEPARABLE_CASES: list[tuple[Regularizer, Callable, str]] = [
    (L1(0.7), lq_pen(0.7, 1), "l1"),
    (L0(0.7), lq_pen(0.7, 0), "l0"),
    (Lq(0.7, q=0), lq_pen(0.7, 0), "lq0"),
    (Lq(0.7, q=0.5), lq_pen(0.7, 0.5), "lq1/2"),
    (Lq(0.7, q=2 / 3), lq_pen(0.7, 2 / 3), "lq2/3"),
    (Lq(0.7, q=1), lq_pen(0.7, 1), "lq1"),
    (MCP(0.7, b=3.0), mcp_pen(0.7, 3.0), "mcp-b3"),
    (MCP(0.3, b=1.2), mcp_pen(0.3, 1.2), "mcp-b1.2"),
    (MCP(0.3, b=0.5), mcp_pen(0.3, 0.5), "mcp-b0.5"),
    (SCAD(0.7, a=3.7), scad_pen(0.7, 3.7), "scad-a3.7"),
    (SCAD(0.3, a=2.2), scad_pen(0.3, 2.2), "scad-a2.2"),
    (Quantization(0.7), quant_pen(0.7, (-1.0, 1.0), 1), "quant-binary-q1"),
    (Quantization(0.7, q=0.5), quant_pen(0.7, (-1.0, 1.0), 0.5), "quant-binary-q1/2"),
    (Quantization(0.7, q=2 / 3), quant_pen(0.7, (-1.0, 1.0), 2 / 3), "quant-binary-q2/3"),
    (Quantization(0.7, q=0), quant_pen(0.7, (-1.0, 1.0), 0), "quant-binary-q0"),
    (Quantization(0.4, levels=(-1, 0, 1), q=1), quant_pen(0.4, (-1.0, 0.0, 1.0), 1), "quant-ternary-q1"),
    (
        Quantization(0.4, levels=(-1.0, -0.3, 0.2, 1.5), q=0.5),
        quant_pen(0.4, (-1.0, -0.3, 0.2, 1.5), 0.5),
        "quant-multi-q1/2",
    ),
    (
        Quantization(0.3, levels=(-2.0, -1.0, 0.0, 0.5, 3.0), q=2 / 3),
        quant_pen(0.3, (-2.0, -1.0, 0.0, 0.5, 3.0), 2 / 3),
        "quant-5levels-q2/3",
    ),
]
SEP_IDS = [c[2] for c in SEPARABLE_CASES]
ALL_REGS = [c[0] for c in SEPARABLE_CASES] + [
    GroupLasso(0.3),
    GroupLasso(0.3, dim="out", weighting="none"),
    NuclearNorm(0.3),
]


def _levels(reg: Regularizer) -> tuple[float, ...]:
    return reg.levels if isinstance(reg, Quantization) else ()


def brute_force(z: torch.Tensor, s: torch.Tensor, pen: Callable, special: tuple[float, ...]):
    """Per element: min_x s·pen(x) + ½(x − z)² on a dense grid refined 4 times around the best point.

    Returns (argmin, min, min over x ≠ 0); the grid always contains 0, z and the special points.
    """

    def f(x):  # x: [n, G]
        return s[:, None] * pen(x) + 0.5 * (x - z[:, None]) ** 2

    pts = torch.tensor((0.0, *special), dtype=DT).expand(z.numel(), -1)
    lo = torch.minimum(z, pts.amin(1))
    hi = torch.maximum(z, pts.amax(1))
    span = (hi - lo).clamp_min(1e-300)
    grid = lo[:, None] + span[:, None] * torch.linspace(0, 1, 4001, dtype=DT)
    grid = torch.cat([grid, pts, z[:, None]], 1)
    v = f(grid)
    best_nonzero = torch.where(grid != 0, v, torch.inf).amin(1)
    best = grid.gather(1, v.argmin(1, keepdim=True))
    h = span[:, None] / 4000
    for _ in range(4):
        cand = torch.cat([best + h * torch.linspace(-1, 1, 401, dtype=DT), best], 1)
        vv = f(cand)
        best_nonzero = torch.minimum(best_nonzero, torch.where(cand != 0, vv, torch.inf).amin(1))
        best = cand.gather(1, vv.argmin(1, keepdim=True))
        h = h / 100
    return best.squeeze(1), f(best).squeeze(1), best_nonzero


def _random_problem(seed: int, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=DT) * 10 ** (torch.rand(n, generator=g, dtype=DT) * 4 - 2)
    metric = 10 ** (torch.rand(n, generator=g, dtype=DT) * 6 - 3)
    return z, metric


@pytest.mark.parametrize("step", [1e-3, 0.1, 1.0, 30.0])
@pytest.mark.parametrize(("reg", "pen"), [c[:2] for c in SEPARABLE_CASES], ids=SEP_IDS)
def test_prox_matches_brute_force(reg, pen, step):
    """Objective within 1e-6 (relative) of the refined grid minimum; zeros exactly where it is zero."""
    z, metric = _random_problem(int(step * 1000) % 997)
    for m in (None, metric):
        x = reg.prox(z, step, m)
        s = step / (m if m is not None else torch.ones_like(z))  # objective divided by metric
        _, fb, f_nonzero = brute_force(z, s, pen, _levels(reg))
        fx = s * pen(x) + 0.5 * (x - z) ** 2
        tol = 1e-6 * fb.abs() + 1e-300
        assert bool((fx <= fb + tol).all()), (z[fx > fb + tol], x[fx > fb + tol])
        # exact zeros exactly where the minimizer is zero (clear-cut cases: f(0) vs best x ≠ 0)
        f0 = s * pen(torch.zeros_like(z)) + 0.5 * z**2
        nonzero_better = f_nonzero < f0 - 1e-6 * f0
        zero_better = f0 < f_nonzero - 1e-6 * f_nonzero
        assert bool((x[nonzero_better] != 0).all())
        assert bool((x[zero_better] == 0).all())


@pytest.mark.parametrize(("reg", "pen"), [c[:2] for c in SEPARABLE_CASES], ids=SEP_IDS)
def test_autograd_optimality_where_nonzero(reg, pen):
    """d/dx [step·ρ(x) + ½ m (x − z)²] = 0 at the prox wherever it is non-zero and ρ is smooth there."""
    z, metric = _random_problem(7)
    step = 0.3
    x = reg.prox(z, step, metric).requires_grad_(True)
    obj = step * reg.value(x) + 0.5 * (metric * (x - z) ** 2).sum()
    (grad,) = torch.autograd.grad(obj, x)
    smooth = x.detach() != 0
    if isinstance(reg, Quantization):
        lv = torch.tensor(reg.levels, dtype=DT)
        smooth &= (x.detach().unsqueeze(-1) - lv).abs().amin(-1) > 1e-9
    if isinstance(reg, MCP):
        smooth &= (x.detach().abs() - reg.b * reg.lam).abs() > 1e-9
    if isinstance(reg, SCAD):
        smooth &= ((x.detach().abs() - reg.lam).abs() > 1e-9) & (
            (x.detach().abs() - reg.a * reg.lam).abs() > 1e-9
        )
    if (
        isinstance(reg, (L0,))
        or (isinstance(reg, Lq) and reg.q == 0)
        or (isinstance(reg, Quantization) and reg.q == 0)
    ):
        pass  # the penalty is locally constant away from its jumps: gradient = metric·(x − z) must vanish
    scale = (metric * z.abs()).clamp_min(1.0)
    assert smooth.any()
    assert bool((grad[smooth].abs() <= 1e-8 * scale[smooth]).all()), grad[smooth]


@pytest.mark.parametrize("reg", ALL_REGS, ids=[*SEP_IDS, "glasso-in", "glasso-out", "nuclear"])
def test_lam_zero_is_identity_and_input_untouched(reg):
    z = torch.randn(6, 5, 3, dtype=DT)
    z0 = z.clone()
    m = torch.rand_like(z) + 0.1
    for metric in (None, m):
        torch.testing.assert_close(reg.with_lam(0.0).prox(z, 0.5, metric), z, rtol=0, atol=0)
        reg.prox(z, 0.5, metric)
        torch.testing.assert_close(z, z0, rtol=0, atol=0)


@pytest.mark.parametrize("reg", ALL_REGS, ids=[*SEP_IDS, "glasso-in", "glasso-out", "nuclear"])
def test_spec_round_trip_through_weights_only_checkpoint(reg, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"regularizer": reg.spec(), "lam": reg.lam}, path)
    loaded = torch.load(path, weights_only=True)
    assert from_spec(loaded["regularizer"], loaded["lam"]) == reg


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reg", ALL_REGS, ids=[*SEP_IDS, "glasso-in", "glasso-out", "nuclear"])
def test_half_precision_inputs_use_float32_math(reg, dtype):
    z = (torch.randn(8, 6, 3) * 2).to(dtype)
    m = (torch.rand(8, 6, 3) + 0.1).to(dtype)
    for metric in (None, m):
        out = reg.prox(z, 0.25, metric)
        assert out.dtype == dtype and out.shape == z.shape and bool(torch.isfinite(out).all())
        ref = reg.prox(z.float(), 0.25, None if metric is None else metric.float()).to(dtype)
        if reg.inexact_under_metric and metric is not None:
            torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
        else:
            torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("reg", ALL_REGS, ids=[*SEP_IDS, "glasso-in", "glasso-out", "nuclear"])
def test_step_as_zero_dim_tensor_and_prox_multi_match_prox(reg):
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(5, 4, 3, generator=g, dtype=DT), torch.randn(7, 2, generator=g, dtype=DT)]
    ms = [torch.rand(z.shape, generator=g, dtype=DT) + 0.05 for z in zs]
    for metrics in (None, ms):
        mlist = [None, None] if metrics is None else ms
        single = [reg.prox(z, 0.4, m) for z, m in zip(zs, mlist)]
        tens = [reg.prox(z, torch.tensor(0.4, dtype=DT), m) for z, m in zip(zs, mlist)]
        multi = reg.prox_multi(zs, 0.4, metrics)
        for z, m, a, b, c in zip(zs, mlist, single, tens, multi):
            assert c.shape == z.shape and c.dtype == z.dtype
            if reg.inexact_under_metric and metrics is not None:
                # one joint stop test for all tensors: each is solved at least as far as alone
                obj = lambda x: (0.4 * reg.value(x) + 0.5 * (m * (x - z) ** 2).sum()).item()  # noqa: E731
                assert obj(c) <= obj(a) * (1 + 1e-7)
                assert obj(b) == pytest.approx(obj(a), rel=1e-12)
                assert torch.equal(c == 0, a == 0)
            else:
                torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-12)


# -- no NaN / inf for any finite input --------------------------------------------------------------
_finite = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False)
_pos = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False, exclude_min=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from(ALL_REGS),
    zs=st.lists(st.one_of(_finite, st.sampled_from([0.0, -0.0, 1e-30, -1.0, 1.0])), min_size=6, max_size=6),
    ms=st.lists(_pos, min_size=6, max_size=6),
    lam=st.one_of(st.sampled_from([0.0, 1e-30, 1.0, 1e30]), _pos),
    step=_pos,
    use_metric=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
# regressions found by hypothesis: a scale above float32's max, m⊙z overflowing, λ² overflowing
@example(L1(0.7), [0.0] * 6, [1.0] * 6, 1e30, 340282347.0, False, torch.float32)
@example(
    GroupLasso(0.3),
    [0.0] * 5 + [9.750868117672348e29],
    [1.0] * 5 + [348976465.0],
    1e-30,
    1.0,
    True,
    torch.float32,
)
@example(MCP(0.7), [0.0] * 6, [1.0] * 6, 1e30, 1.0, False, torch.float32)
# τw/gap underflowing to 0 beside a metric entry that underflows after scaling: 0/(0 + 0)
@example(
    GroupLasso(0.3),
    [2.0] + [0.0] * 5,
    [1427247630123008.0, 1.0, 1.0, 1.0, 1e-30, 1.0],
    1e-30,
    1.0,
    True,
    torch.float32,
)
def test_no_nan_or_inf_for_finite_inputs(case, zs, ms, lam, step, use_metric, dtype):
    z = torch.tensor(zs, dtype=torch.float64).clamp(-1e30, 1e30).to(dtype).reshape(3, 2)
    m = torch.tensor(ms, dtype=torch.float64).to(dtype).clamp_min(torch.finfo(dtype).tiny).reshape(3, 2)
    reg = case.with_lam(lam)
    out = reg.prox(z, step, m if use_metric else None)
    assert bool(torch.isfinite(out).all()), (reg, z, m, step, out)
    assert bool(torch.isfinite(reg.value(z.to(torch.float64))).all()) or lam > 1e20


# -- ties and conventions -----------------------------------------------------------------------------
def test_thresholds_ties_go_to_zero():
    one = torch.tensor([1.0, -1.0], dtype=DT)
    assert bool((L1(1.0).prox(one, 1.0) == 0).all())
    assert bool((L0(0.5).prox(one, 1.0) == 0).all())  # |z| = sqrt(2·0.5)
    thr_half = 54 ** (1 / 3) / 4 * (2 * 0.5) ** (2 / 3)
    assert bool((Lq(0.5, q=0.5).prox(one * thr_half * (1 - 1e-12), 1.0) == 0).all())
    assert bool((Lq(0.5, q=0.5).prox(one * thr_half * (1 + 1e-9), 1.0) != 0).all())
    thr_23 = (2 / 3) * (3 * 1.0**3) ** 0.25
    assert bool((Lq(0.5, q=2 / 3).prox(one * thr_23 * (1 - 1e-12), 1.0) == 0).all())
    # jump sizes of digest 000 §2.5: 2/3 of the threshold for q = 1/2, 1/2 for q = 2/3
    torch.testing.assert_close(Lq(0.5, q=0.5).prox(one * thr_half * (1 + 1e-12), 1.0), one * thr_half * 2 / 3)
    torch.testing.assert_close(Lq(0.5, q=2 / 3).prox(one * thr_23 * (1 + 1e-12), 1.0), one * thr_23 / 2)


def test_quantization_ties_go_to_the_larger_level_and_levels_are_exact():
    reg = Quantization(0.1)
    assert Quantization(0.1).prox(torch.zeros(3), 1.0).tolist() == pytest.approx([0.1] * 3)
    out = Quantization(1.0, levels=(-1.0, 0.0, 2.0), q=1).prox(torch.tensor([0.5, 1.0, 1.9, -0.6]), 1.0)
    assert out.tolist() == [0.0, 2.0, 2.0, -1.0]  # exact levels; z = 1.0 is a tie between 0 and 2 → 2
    assert reg.value(torch.tensor([1.0, -1.0, 0.5])).item() == pytest.approx(0.1 * 0.5)


def test_paper_formulas_reproduce_print_and_are_not_exact():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, generator=g, dtype=DT) * 3
    m = 10 ** (torch.rand(2000, generator=g, dtype=DT) * 2 - 1)
    step, lam, b, a = 0.5, 0.8, 3.0, 3.7
    li = step * lam / m
    ref_mcp = z.sign() * torch.minimum(b * (z.abs() - li).clamp_min(0) / (b - 1), z.abs())
    torch.testing.assert_close(MCP(lam, b=b, exact=False).prox(z, step, m), ref_mcp)
    az = z.abs()
    ref_scad = z.sign() * torch.where(
        az <= 2 * li, (az - li).clamp_min(0), torch.where(az <= a * li, ((a - 1) * az - a * li) / (a - 2), az)
    )
    torch.testing.assert_close(SCAD(lam, a=a, exact=False).prox(z, step, m), ref_scad)
    for exact, paper, pen in (
        (MCP(lam, b=b), MCP(lam, b=b, exact=False), mcp_pen(lam, b)),
        (SCAD(lam, a=a), SCAD(lam, a=a, exact=False), scad_pen(lam, a)),
    ):
        obj = lambda x: step * pen(x) + 0.5 * m * (x - z) ** 2  # noqa: E731
        fe, fp = obj(exact.prox(z, step, m)), obj(paper.prox(z, step, m))
        assert bool((fe <= fp + 1e-12).all())
        assert bool((fe < fp - 1e-6).any())  # P7: the printed formula is suboptimal somewhere
        # with metric·1/step = 1 (s = 1) the two agree
        torch.testing.assert_close(exact.prox(z, 1.0), paper.prox(z, 1.0))


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: L1(-0.5), r"lam .*-0\.5"),
        (lambda: Lq(0.1, q=0.3), r"q must be one of .*0\.3"),
        (lambda: Lq(-1.0, q=0.5), r"lam .*-1\.0"),
        (lambda: MCP(0.1, b=-1.0), r"b must be .*-1\.0"),
        (lambda: MCP(0.1, b=0.9, exact=False), r"b must be a finite number > 1 .*0\.9"),
        (lambda: SCAD(0.1, a=2.0), r"a must be a finite number > 2, got 2\.0"),
        (lambda: Quantization(0.1, levels=(1.0, -1.0)), r"strictly increasing.*\(1\.0, -1\.0\)"),
        (lambda: Quantization(0.1, levels=(0.0, 0.0)), r"no duplicates.*\(0\.0, 0\.0\)"),
        (lambda: Quantization(0.1, levels=()), r"non-empty.*\(\)"),
        (lambda: Quantization(0.1, q=2.0), r"q must be one of .*2\.0"),
        (lambda: GroupLasso(0.1, dim="rows"), r"dim must be 'in' or 'out', got 'rows'"),
        (lambda: GroupLasso(0.1, weighting="l2"), r"weighting must be .*'l2'"),
        (lambda: GroupLasso(0.1, max_iters=0), r"max_iters must be an int >= 1, got 0"),
        (lambda: NuclearNorm(0.1, rtol=-1.0), r"rtol must be .*-1\.0"),
        (lambda: L1(0.1).prox(torch.ones(2), 0.0), r"step must be .*> 0, got 0\.0"),
        (lambda: L1(0.1).prox(torch.ones(2), -1.0), r"step must be .*-1\.0"),
        (lambda: L1(0.1).prox(torch.ones(2), torch.tensor(0.0)), r"step must be > 0"),
        (
            lambda: L1(0.1).prox(torch.ones(2), 1.0, torch.tensor([1.0, 0.0])),
            r"metric must be strictly positive",
        ),
        (
            lambda: L1(0.1).prox(torch.ones(2), 1.0, torch.ones(3)),
            r"metric must be None or a tensor of shape \(2,\)",
        ),
        (lambda: GroupLasso(0.1).prox(torch.ones(4), 1.0), r"dim='in' needs .*shape \(4,\)"),
        (lambda: GroupLasso(0.1).check_param((4,), "fc.bias"), r"fc\.bias.*shape \(4,\)"),
        (lambda: NuclearNorm(0.1).prox(torch.ones(4), 1.0), r"at least 2 dimensions"),
        (lambda: L1(0.1).prox_multi([torch.ones(2)], 1.0, [torch.ones(2)] * 2), r"one tensor per z"),
        (lambda: GroupLasso(0.1).prox_multi([torch.ones(2, 2)], 1.0, max_iters=0), r"max_iters .*got 0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_q_two_thirds_is_canonicalised():
    assert Lq(0.1, q=0.6666667).q == 2 / 3
    assert math.isclose(Quantization(0.1, q=0.66666667).q, 2 / 3, rel_tol=0, abs_tol=0)


# -- out= (in-place prox for optimizers) and the fast ℓ_{1/2} kernel -----------------------------------
@pytest.mark.parametrize("reg", ALL_REGS, ids=[*SEP_IDS, "glasso-in", "glasso-out", "nuclear"])
def test_prox_multi_out_may_alias_the_input(reg):
    g = torch.Generator().manual_seed(11)
    zs = [torch.randn(6, 5, 3, generator=g, dtype=DT), torch.randn(7, 4, generator=g, dtype=DT)]
    ms = [torch.rand(z.shape, generator=g, dtype=DT) + 0.05 for z in zs]
    for metrics in (None, ms):
        ref = reg.prox_multi(zs, 0.3, metrics)
        buf = [z.clone() for z in zs]
        got = reg.prox_multi(buf, 0.3, metrics, out=buf)
        assert all(a is b for a, b in zip(got, buf))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="out must hold"):
        reg.prox_multi(zs, 0.3, None, out=zs[:1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("q", "reference", "thr_unit"),
    [
        (0.5, prox_lhalf, lambda mu: 54 ** (1 / 3) / 4 * (2 * mu) ** (2 / 3)),
        (2 / 3, prox_ltwothirds, lambda mu: 2 / 3 * 3**0.25 * (2 * mu) ** 0.75),
    ],
    ids=["q=1/2", "q=2/3"],
)
def test_lq_kernels_match_the_trigonometric_closed_forms(q, reference, thr_unit, dtype):
    """Lq(q=1/2, 2/3) run polynomial + Newton kernels; Cao et al.'s arccos/cos and arccosh/cosh forms
    (functional.prox_lhalf / prox_ltwothirds) are the reference."""
    g = torch.Generator().manual_seed(12)
    z = torch.randn(200_000, generator=g, dtype=torch.float64) * 10 ** (
        torch.rand(200_000, generator=g, dtype=torch.float64) * 4 - 2
    )
    m = 10 ** (torch.rand(200_000, generator=g, dtype=torch.float64) * 6 - 3)
    zc, mc = z.to(dtype), m.to(dtype)
    for metric in (None, mc):
        x = Lq(0.7, q=q).prox(zc, 0.3, metric).double()
        mu = 0.3 * 0.7 / (metric.double() if metric is not None else 1.0)
        ref = reference(zc.double(), mu)
        both = (x != 0) & (ref != 0)
        rel = ((x - ref).abs() / ref.abs().clamp_min(1e-300))[both]
        tol = {torch.float64: 1e-13, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
        assert float(rel.max()) < tol
        # the zero pattern agrees except within rounding of the threshold
        near = (zc.double().abs() / thr_unit(mu) - 1).abs() < (1e-12 if dtype == torch.float64 else 1e-5)
        assert torch.equal((x == 0)[~near], (ref == 0)[~near])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_prox_multi_chunks_are_exact_across_boundaries_layouts_and_aliasing(dtype):
    # tensors larger than a chunk, one not a multiple of it, one non-contiguous: every entry must be
    # z − clamp(z, −t, t) with t = step·λ·(1/metric) to the bit, with +0 (never −0) inside the threshold
    g = torch.Generator().manual_seed(5)
    zs = [
        torch.randn(70_001, generator=g, dtype=dtype),
        torch.randn(300, 500, generator=g, dtype=dtype).t(),
        torch.tensor([2.0, -0.1, -3.0], dtype=dtype),
    ]
    ms = [torch.rand(z.shape, generator=g, dtype=dtype) + 0.05 for z in zs]
    ms[0][:5] = 1e-38  # a/metric overflows: the threshold saturates, never inf - inf
    reg, step = L1(0.7), 0.9
    for metrics in (None, ms):
        mlist = [None] * len(zs) if metrics is None else metrics
        want = []
        for z, m in zip(zs, mlist):
            t = step * reg.lam if m is None else torch.reciprocal(m).mul_(step * reg.lam)
            if m is not None:
                t.clamp_max_(torch.finfo(dtype).max)
            want.append(z - torch.clamp(z, -t, t))
        got = reg.prox_multi(zs, step, metrics)
        buf = [z.clone() for z in zs]
        aliased = reg.prox_multi(buf, step, metrics, out=buf)
        for w, a, b in zip(want, got, aliased):
            assert torch.equal(a, w) and torch.equal(b, w)
            assert not torch.signbit(a[a == 0]).any() and not torch.signbit(b[b == 0]).any()
            assert 0 < (a == 0).sum() < a.numel()


_CHUNKED_REGS = [
    MCP(1e-2, b=3.0),
    MCP(0.7, b=0.5),  # s ≥ b for many entries: no inner candidate
    SCAD(1e-2, a=3.7),
    SCAD(0.7, a=2.5),
    MCP(1e-2, b=3.0, exact=False),
    SCAD(1e-2, a=3.7, exact=False),
    Quantization(0.1),
    Quantization(0.1, levels=(-1.0, 0.0, 1.0), q=0.5),
    L0(0.1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reg", _CHUNKED_REGS, ids=repr)
def test_chunked_prox_multi_equals_per_tensor_prox_to_the_bit(reg, dtype):
    """prox_multi runs chunk by chunk (32K values, in-cache kernels for exact MCP/SCAD); it must equal
    the per-tensor prox to the bit, sign of zero included, on tensors larger than a chunk, a
    non-contiguous one and special values, with and without a metric, with out= aliasing the input.
    Exception: Quantization with q = 1/2 evaluates arccos/cos, whose vectorized and scalar CPU
    versions differ in the last bit, and which of them a value gets depends on its position in the
    (chunked or strided) loop: there 1 float32 ulp / 1e-12 relative in float64."""
    g = torch.Generator().manual_seed(3)
    wide = torch.float64
    zs = [
        torch.randn(70_001, generator=g, dtype=wide) * 0.05,
        (torch.randn(300, 500, generator=g, dtype=wide) * 3).t(),
        torch.tensor([2.0, -0.1, -3.0, 0.0, -0.0, 1e30, 3e-4, 3e-3, 0.5, -0.5], dtype=wide),
    ]
    zs = [z.to(dtype) for z in zs]
    ms = [
        (
            torch.rand(z.shape, generator=g, dtype=wide)
            * 10 ** (torch.rand(z.shape, generator=g, dtype=wide) * 6 - 3)
        ).to(dtype)
        for z in zs
    ]
    ms[0][:5] = 1e-38  # step/metric overflows: the scale saturates
    exact = not (isinstance(reg, Quantization) and reg.q == 0.5)
    for step in (1e-3, 0.9, 20.0):
        for metrics in (None, ms):
            mlist = [None] * len(zs) if metrics is None else metrics
            want = [reg.prox(z, step, m) for z, m in zip(zs, mlist)]
            got = reg.prox_multi(zs, step, metrics)
            buf = [z.clone() for z in zs]
            aliased = reg.prox_multi(buf, step, metrics, out=buf)
            assert all(a is b for a, b in zip(aliased, buf))
            for w, a, b in zip(want, got, aliased):
                for x in (a, b):
                    if exact:
                        assert torch.equal(x, w) and torch.equal(torch.signbit(x), torch.signbit(w))
                    else:
                        tol = {torch.float64: 1e-12, torch.float32: 2e-7, torch.bfloat16: 1e-2}[dtype]
                        torch.testing.assert_close(x, w, rtol=tol, atol=0)


@pytest.mark.parametrize("reg", [L1(0.3), Lq(0.3, q=0.0), Lq(0.3, q=1.0)], ids=["l1", "lq0", "lq1"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_chunked_fallback_of_l1_and_lq_equals_per_tensor_prox(reg, dtype):
    # half dtypes and a 0-dim tensor step leave the fast kernels: the chunked _prox path must give
    # exactly what prox gives per tensor, also into out= aliasing the input
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(70_001, generator=g).to(dtype), torch.randn(300, 500, generator=g).to(dtype).t()]
    ms = [(torch.rand(z.shape, generator=g) + 0.05).to(dtype) for z in zs]
    for step in (0.7, torch.tensor(0.7)):
        for metrics in (None, ms):
            mlist = [None, None] if metrics is None else metrics
            want = [reg.prox(z, step, m) for z, m in zip(zs, mlist)]
            got = reg.prox_multi(zs, step, metrics)
            buf = [z.clone() for z in zs]
            reg.prox_multi(buf, step, metrics, out=buf)
            for w, a, b in zip(want, got, buf):
                assert torch.equal(a, w) and torch.equal(b, w)


# -- the iterative solvers under a realistic (ill-conditioned) metric -------------------------------
def _adam_metric() -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, sqrt(v̂) + eps) of a small CNN's second conv after 5 Adam steps on random data: the
    metric spans ~three decades within the tensor, as in a trained network."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    w = net[2].weight.detach()
    v_hat = opt.state[net[2].weight]["exp_avg_sq"] / (1 - 0.999**5)
    return w.to(DT), (v_hat.sqrt() + 1e-8).to(DT)


def _metric_case(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "adam":
        return _adam_metric()
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 8, 3, 3, generator=g, dtype=DT) * 1e-2
    return z, 10 ** (4 + 3 * torch.rand(z.shape, generator=g, dtype=DT))  # log-uniform over 1e4–1e7


def _nuclear_objective(x, z, m, tau):
    mat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    return float(tau * torch.linalg.svdvals(mat(x)).sum() + 0.5 * (m * (x - z) ** 2).sum())


def _nuclear_fista_reference(z, m, tau, tol=1e-12, iters=6000):
    """The test's own solver: restarted FISTA in float64, stopped by the duality gap of the projected
    dual point m⊙(z − x) (a different certificate from the library's), run to ``tol``."""
    zm, mm = z.reshape(z.shape[0], -1), m.reshape(z.shape[0], -1)
    lip = float(mm.max())
    x, y, t = zm.clone(), zm.clone(), 1.0
    for j in range(iters):
        u, s, vh = torch.linalg.svd(y - mm * (y - zm) / lip, full_matrices=False)
        xn = (u * (s - tau / lip).clamp_min(0)) @ vh
        if float(((y - xn) * (xn - x)).sum()) > 0:
            t, y = 1.0, xn
        else:
            tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y, t = xn + (t - 1) / tn * (xn - x), tn
        x = xn
        if j % 10 == 0:
            g = mm * (zm - x)
            g = g * min(1.0, tau / float(torch.linalg.matrix_norm(g, ord=2)))
            dual = float((g * zm).sum() - 0.5 * (g * g / mm).sum())
            primal = _nuclear_objective(x, zm, mm, tau)
            if primal - dual <= tol * abs(primal):
                return x.reshape(z.shape)
    raise AssertionError("the reference did not converge")


def _rank(x: torch.Tensor, scale: float) -> int:
    return int((torch.linalg.svdvals(x.reshape(x.shape[0], -1)) > 1e-7 * scale).sum())


@pytest.mark.parametrize("kind", ["adam", "loguniform"])
@pytest.mark.parametrize("frac", [0.01, 0.1, 0.5])
def test_nuclear_norm_default_is_exact_under_a_realistic_metric(kind, frac):
    """Default solver within 1e-6 relative objective of a long-run reference, with the same rank, where
    the papers' capped PG is ~1e-2 off with too high a rank (τ = frac·‖m⊙Z‖₂)."""
    z, m = _metric_case(kind)
    tau = frac * float(torch.linalg.matrix_norm((m * z).reshape(z.shape[0], -1), ord=2))
    ref = _nuclear_fista_reference(z, m, tau)
    q_ref = _nuclear_objective(ref, z, m, tau)
    scale = float(torch.linalg.svdvals(ref.reshape(z.shape[0], -1)).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact solve never stops at its cap
        x = NuclearNorm(tau).prox(z, 1.0, m)
    assert (_nuclear_objective(x, z, m, tau) - q_ref) / q_ref <= 1e-6
    assert _rank(x, scale) == _rank(ref, scale)
    x32 = NuclearNorm(tau).prox(z.float(), 1.0, m.float()).to(DT)  # float32: within its rounding
    assert (_nuclear_objective(x32, z, m, tau) - q_ref) / q_ref <= 1e-5


@pytest.fixture
def fresh_cap_warnings(monkeypatch):
    monkeypatch.setattr(_base, "_CAP_WARNED", set())


def _reported_gap(record) -> float:
    (w,) = [w for w in record if issubclass(w.category, RuntimeWarning)]
    return float(re.search(r"relative duality gap ([0-9.e+-]+)", str(w.message)).group(1))


@pytest.mark.usefixtures("fresh_cap_warnings")
@pytest.mark.parametrize("solver", ["apg", "pg"])
def test_nuclear_norm_warns_at_its_cap_with_a_gap_that_bounds_the_error(solver):
    z, m = _metric_case("loguniform")
    tau = 0.1 * float(torch.linalg.matrix_norm((m * z).reshape(z.shape[0], -1), ord=2))
    q_ref = _nuclear_objective(_nuclear_fista_reference(z, m, tau), z, m, tau)
    small = torch.randn(3, 2, dtype=DT)
    with pytest.warns(
        RuntimeWarning, match=r"max_iters=20 on tensor 1 of the call \(shape \(16, 8, 3, 3\)\)"
    ) as rec:
        # tensor 0 converges (uniform-ish metric), tensor 1 does not
        x = NuclearNorm(tau, max_iters=20, solver=solver).prox_multi([small, z], 1.0, [small.abs() + 1, m])[1]
    err = (_nuclear_objective(x, z, m, tau) - q_ref) / q_ref
    assert 1e-6 < err <= _reported_gap(rec)
    with warnings.catch_warnings():  # once per tensor shape
        warnings.simplefilter("error")
        NuclearNorm(tau, max_iters=20, solver=solver).prox(z, 1.0, m)


@pytest.mark.usefixtures("fresh_cap_warnings")
def test_group_lasso_pg_warns_at_its_cap_with_a_gap_that_bounds_the_error():
    z, m = _metric_case("loguniform")
    reg = GroupLasso(0.0, dim="in")
    norms = torch.linalg.vector_norm((m * z).transpose(0, 1).reshape(8, -1), dim=1)
    tau = float(norms.median()) / math.sqrt(16 * 9)  # about half the groups survive
    obj = lambda x: float(tau * reg.with_lam(1.0).value(x) + 0.5 * (m * (x - z) ** 2).sum())  # noqa: E731
    exact = GroupLasso(tau, rtol=0.0, max_iters=200).prox(z, 1.0, m)  # the Newton solver
    with pytest.warns(RuntimeWarning, match=r"GroupLasso: .* max_iters=5 on tensor 0") as rec:
        x = GroupLasso(tau, solver="pg", max_iters=5).prox(z, 1.0, m)
    err = (obj(x) - obj(exact)) / obj(exact)
    assert 1e-6 < err <= _reported_gap(rec)
    with warnings.catch_warnings():  # a solve that meets rtol before the cap does not warn
        warnings.simplefilter("error")
        GroupLasso(tau, solver="pg", max_iters=20000, rtol=1e-12).prox(z, 1.0, m)


# -- the non-finite policy: NaN in → NaN out, ±inf → ±inf (closed forms) or NaN (iterative solves) ----
def _cgl(lam: float, **kw) -> CoupledGroupLasso:
    return CoupledGroupLasso.from_groups(lam, [[("a", 1, [j])] for j in range(4)], {"a": (3, 4)}, **kw)


#: (regularizer, id, kind, what ±inf gives with a non-uniform metric); groups are the columns of a
#: [3, 4] tensor (dim="in"), a matrix is the whole tensor
NONFINITE_CASES = [
    (L1(0.3), "l1", "elementwise", "inf"),
    (L0(0.3), "l0", "elementwise", "inf"),
    (Lq(0.3, q=0.5), "lq1/2", "elementwise", "inf"),
    (Lq(0.3, q=2 / 3), "lq2/3", "elementwise", "inf"),
    (MCP(0.3), "mcp", "elementwise", "inf"),
    (MCP(0.3, exact=False), "mcp-paper", "elementwise", "inf"),
    (SCAD(0.3), "scad", "elementwise", "inf"),
    (SCAD(0.3, exact=False), "scad-paper", "elementwise", "inf"),
    (Quantization(0.3), "quant", "elementwise", "inf"),
    (Quantization(0.3, levels=(-1, 0, 1), q=0.5), "quant-ternary-q1/2", "elementwise", "inf"),
    (SquaredL2(0.3), "l2", "elementwise", "inf"),
    (GroupLasso(0.3), "group", "group", "nan"),
    (GroupLasso(0.3, solver="pg"), "group-pg", "group", "nan"),
    (_cgl(0.3), "coupled", "group", "inf"),
    (NuclearNorm(0.3), "nuclear", "matrix", "nan"),
]


def _apply(reg, z, m, path):
    if path == "prox":
        return reg.prox(z, 0.7, m)
    if path == "prox_multi":
        return reg.prox_multi([z], 0.7, None if m is None else [m])[0]
    p = z.clone()  # the optimizers' in-place path (fused kernels, prox_multi(out=params))
    prox_tensors_(reg, [p], 0.7, None if m is None else [m])
    return p


@pytest.mark.parametrize("path", ["prox", "prox_multi", "optimizer"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("use_metric", [False, True], ids=["euclidean", "metric"])
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=[c[1] for c in NONFINITE_CASES])
def test_nan_stays_nan_and_inf_follows_the_documented_policy(case, use_metric, dtype, path):
    reg, _, kind, inf_metric = case
    base = torch.tensor([[0.05, 0.01, 2.0, 0.3], [0.01, -0.02, -3.0, 0.8], [0.0, 0.01, 0.5, 1.0]])
    m = torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 1.0, 9.0], [1.0, 1.0, 5.0, 1.0]]).to(dtype)
    m = m if use_metric else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a NaN solve may stop at its cap
        finite = _apply(reg, base.to(dtype), m, path)
        z = base.clone()
        z[0, 0] = float("nan")  # small: the prox of 0.05 alone is an exact zero or a level
        x = _apply(reg, z.to(dtype), m, path)
        z = base.clone()
        z[0, 3], z[1, 3] = float("inf"), float("-inf")
        xi = _apply(reg, z.to(dtype), m, path)
    assert x.dtype == dtype and xi.dtype == dtype
    assert bool(torch.isnan(x[0, 0])), x
    others = torch.ones_like(x, dtype=torch.bool)
    others[{"elementwise": (0, 0), "group": (slice(None), 0), "matrix": (slice(None), slice(None))}[kind]] = (
        False
    )
    assert torch.equal(x[others], finite[others])  # the NaN stays in its group
    if kind == "matrix":
        assert bool(torch.isnan(x).all())
    if kind == "group":  # the rest of a NaN group: NaN or zero (z·0 of the screened group)
        assert bool((torch.isnan(x[:, 0]) | (x[:, 0] == 0)).all())
    expect_inf = inf_metric == "inf" or (not use_metric and kind == "group")
    if expect_inf:
        assert xi[0, 3].item() == float("inf") and xi[1, 3].item() == float("-inf"), xi
        assert bool(torch.isfinite(xi[:, :3]).all())
        if kind == "group":  # the limit of the prox: the rest of an infinite group is not shrunk
            assert xi[2, 3].item() == z[2, 3].to(dtype).item()
    else:
        assert bool(torch.isnan(xi if kind == "matrix" else xi[:2, 3]).all()), xi


# -- the extreme ranges: at the limits of the dtype --------------------------------------------------
EXTREME_REGS = [c[0] for c in NONFINITE_CASES]
EXTREME_IDS = [c[1] for c in NONFINITE_CASES]
HALF_AND_FULL = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _both_paths(reg, z, step, m):
    """``prox`` and the optimizers' in-place multi-tensor path, which must agree to the bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an ill-posed solve may stop at its cap
        a = reg.prox(z, step, m)
        p = z.clone()
        prox_tensors_(reg, [p], step, None if m is None else [m])
    return a, p


@pytest.mark.parametrize("dtype", HALF_AND_FULL, ids=str)
@pytest.mark.parametrize("reg", EXTREME_REGS, ids=EXTREME_IDS)
def test_huge_z_up_to_the_dtype_max_stays_finite_and_both_paths_agree(reg, dtype):
    """|z| from 1e19 (z² overflows float32) to the dtype's max; MCP/SCAD's flat piece returns z."""
    big = torch.finfo(dtype).max
    vals = torch.tensor([[1e19, -3e19, 1e30, big], [2.0, -1e25, 0.5, -big], [0.1, 0.2, -0.3, 1.0]], dtype=DT)
    z = vals.clamp(-big, big).to(dtype)
    for m in (None, torch.linspace(0.5, 1.5, 12).reshape(3, 4).to(dtype)):
        a, p = _both_paths(reg, z, 1.0, m)
        assert bool(torch.isfinite(a).all()), (m, a)
        assert torch.equal(a, p)
        if isinstance(reg, (MCP, SCAD)):
            huge = z.abs() >= 1e19
            assert torch.equal(a[huge], z[huge])  # beyond b·λ / a·λ the penalty is flat: x = z


@pytest.mark.parametrize("dtype", HALF_AND_FULL, ids=str)
@pytest.mark.parametrize("reg", EXTREME_REGS, ids=EXTREME_IDS)
def test_subnormal_metric_gives_a_finite_capped_threshold(reg, dtype):
    """A subnormal metric entry: step·λ/metric overflows and is capped, never NaN or inf."""
    z = torch.tensor([[0.5, -2.0, 3.0, 0.1]] * 3, dtype=dtype)
    m = torch.full_like(z, torch.finfo(dtype).smallest_normal / 4)
    assert bool((m > 0).all()) and bool((m < torch.finfo(dtype).smallest_normal).all())  # subnormal
    m[0, 0] = 1.0
    a, p = _both_paths(reg, z, 1.0, m)
    assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(p).all())
    if isinstance(reg, (L1, GroupLasso)):  # an infinite threshold: every shrinking prox gives zero
        assert bool((a[1:] == 0).all())


@pytest.mark.parametrize("dtype", HALF_AND_FULL, ids=str)
@pytest.mark.parametrize("reg", EXTREME_REGS, ids=EXTREME_IDS)
def test_step_times_lam_below_the_smallest_float32_is_the_identity(reg, dtype):
    """step·λ = 1e-50 underflows every threshold: the prox returns z (up to the rounding of a
    quantizer's level arithmetic and of an SVD round trip)."""
    z = torch.tensor([[0.5, -2.0, 3.0, 0.1], [1e-3, 0.7, -0.2, 4.0], [0.3, 0.2, -0.3, 1.0]], dtype=dtype)
    for m in (None, torch.linspace(0.5, 1.5, 12).reshape(3, 4).to(dtype)):
        a, p = _both_paths(reg.with_lam(1e-20), z, 1e-30, m)
        assert torch.equal(a, p)
        if isinstance(reg, (NuclearNorm, Quantization)):
            # level + (z − level) and U·S·Vᵀ round off at the scale of the largest level / entry
            torch.testing.assert_close(a, z, rtol=0, atol=16 * torch.finfo(dtype).eps * float(z.abs().max()))
        else:
            assert torch.equal(a, z)


@pytest.mark.parametrize("dtype", HALF_AND_FULL, ids=str)
@pytest.mark.parametrize("solver", ["apg", "pg"])
def test_nuclear_norm_infinite_metric_entry_pins_the_whole_matrix(solver, dtype):
    """An overflowed second moment (+inf metric) pins its matrix: x = z exactly, never zeros or NaN;
    the other matrices of the call are solved as without it."""
    g = torch.Generator().manual_seed(8)
    zs = [torch.randn(4, 6, generator=g, dtype=DT).to(dtype) for _ in range(2)]
    ms = [(torch.rand(4, 6, generator=g, dtype=DT) + 0.5).to(dtype) for _ in range(2)]
    reg = NuclearNorm(0.4, solver=solver)
    alone = reg.prox(zs[1], 1.0, ms[1])
    ms[0][1, 2] = float("inf")
    assert torch.equal(reg.prox(zs[0], 1.0, ms[0]), zs[0])
    both = [z.clone() for z in zs]
    prox_tensors_(reg, both, 1.0, ms)
    assert torch.equal(both[0], zs[0])
    torch.testing.assert_close(both[1], alone)


@pytest.mark.parametrize("q", [0.5, 2.0 / 3.0])
def test_lq_chunked_kernel_is_elementwise_across_chunk_boundaries(q):
    """A tensor spanning several kernel chunks (and a shorter last one) gets bit for bit the values of
    small slices solved on their own, with and without a metric, written in place too."""
    g = torch.Generator().manual_seed(3)
    n = 2 * (1 << 18) + 12345
    z = torch.randn(n, generator=g) * 0.1
    m = torch.rand(n, generator=g) + 0.05
    reg = Lq(0.01, q=q)
    for metric in (None, m):
        full = reg.prox_multi([z], 0.5, None if metric is None else [metric])[0]
        parts = [
            reg.prox_multi([z[a : a + 50_000]], 0.5, None if metric is None else [metric[a : a + 50_000]])[0]
            for a in range(0, n, 50_000)
        ]
        assert torch.equal(full, torch.cat(parts))
        assert 0 < int((full == 0).sum()) < n
        given = z.clone()
        reg.prox_multi([given], 0.5, None if metric is None else [metric], out=[given])
        assert torch.equal(given, full)
