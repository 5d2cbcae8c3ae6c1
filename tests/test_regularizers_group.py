"""GroupLasso and NuclearNorm: closed forms, exact screening, the inexact PG solver, prox_multi.

References written here: an explicit per-group loop for the closed form, an exact per-group solution
under a diagonal metric (bisection on the secular equation ``x_g = m z/(m + c)``, ``c‖x_g‖ = τw``), and
a long-run plain proximal-gradient loop for the nuclear norm.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_prox.regularizers import GroupLasso, NuclearNorm

DT = torch.float64


def groups_of(x: torch.Tensor, dim: str) -> list[torch.Tensor]:
    """The groups of x, by an explicit loop (the test's own reading of DESIGN.md §3)."""
    return [x[j] for j in range(x.shape[0])] if dim == "out" else [x[:, j] for j in range(x.shape[1])]


def exact_group_prox(z: torch.Tensor, m: torch.Tensor, tw: float) -> torch.Tensor:
    """argmin_x tw·‖x‖ + ½Σ m (x − z)² for one group, to ~1e-15, by bisection on c = tw/‖x‖."""
    if float(torch.linalg.vector_norm(m * z)) <= tw:
        return torch.zeros_like(z)
    h = lambda c: float(torch.linalg.vector_norm(m * z * c / (m + c))) - tw  # noqa: E731 (increasing in c)
    lo, hi = 0.0, 1.0
    while h(hi) < 0:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if h(mid) < 0 else (lo, mid)
    c = 0.5 * (lo + hi)
    return m * z / (m + c)


def gl_objective(reg: GroupLasso, x, z, m, step) -> float:
    return float(step * reg.value(x) + 0.5 * (m * (x - z) ** 2).sum())


SHAPES = [(12, 6, 3, 3), (10, 7), (4, 9, 5)]


@pytest.mark.parametrize("weighting", ["sqrt", "none"])
@pytest.mark.parametrize("dim", ["in", "out"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_group_lasso_closed_form_matches_per_group_loop(shape, dim, weighting):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(shape, generator=g, dtype=DT)
    lam, step = 0.15, 0.7
    reg = GroupLasso(lam, dim=dim, weighting=weighting)
    gs = groups_of(z, dim)
    w = math.sqrt(gs[0].numel()) if weighting == "sqrt" else 1.0
    assert float(reg.value(z)) == pytest.approx(lam * w * sum(float(v.norm()) for v in gs), rel=1e-12)
    ref = torch.zeros_like(z)
    for j, v in enumerate(gs):
        shrunk = max(0.0, 1 - step * lam * w / float(v.norm())) * v
        if dim == "out":
            ref[j] = shrunk
        else:
            ref[:, j] = shrunk
    info: dict = {}
    out = reg.prox_multi([z], step, info=info)[0]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)
    assert info["inner_iters"] == 0
    assert info["screened"] == sum(1 for v in groups_of(ref, dim) if bool((v == 0).all()))
    # a metric constant within every group (different across groups) is still closed form
    c = 10 ** torch.linspace(-2, 2, len(gs), dtype=DT)
    m = torch.ones_like(z) * (
        c.reshape(-1, *[1] * (z.ndim - 1)) if dim == "out" else c.reshape(1, -1, *[1] * (z.ndim - 2))
    )
    info = {}
    out = reg.prox_multi([z], step, [m], info=info)[0]
    assert info["inner_iters"] == 0
    for j, (v, cj) in enumerate(zip(gs, c.tolist())):
        expect = max(0.0, 1 - step * lam * w / (cj * float(v.norm()))) * v
        torch.testing.assert_close(groups_of(out, dim)[j], expect, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lam_step", [1e-6, 1e-3, 3e-2, 0.3, 3.0])
@pytest.mark.parametrize("dim", ["in", "out"])
def test_group_lasso_under_metric_matches_exact_reference(dim, lam_step):
    """Default solver settings; metric spans one order of magnitude inside a group, scaled by 1e-2..1e2."""
    g = torch.Generator().manual_seed(int(lam_step * 1e6) % 1000)
    z = torch.randn(10, 8, 3, 3, generator=g, dtype=DT)
    scale = 10 ** (torch.randint(-2, 3, (1, 8, 1, 1), generator=g).to(DT))
    m = (torch.rand(z.shape, generator=g, dtype=DT) + 0.1) * scale
    reg = GroupLasso(lam_step, dim=dim)
    info: dict = {}
    x = reg.prox_multi([z], 1.0, [m], info=info)[0]
    w = math.sqrt(groups_of(z, dim)[0].numel())
    ref = torch.zeros_like(z)
    for j, (zg, mg) in enumerate(zip(groups_of(z, dim), groups_of(m, dim))):
        r = exact_group_prox(zg, mg, lam_step * w)
        if dim == "out":
            ref[j] = r
        else:
            ref[:, j] = r
    fx, fr = gl_objective(reg, x, z, m, 1.0), gl_objective(reg, ref, z, m, 1.0)
    assert fx <= fr * (1 + 1e-6) + 1e-300
    zero = [bool((v == 0).all()) for v in groups_of(x, dim)]
    assert zero == [bool((v == 0).all()) for v in groups_of(ref, dim)]
    assert info["screened"] == sum(zero)
    assert 0 <= info["inner_iters"] <= reg.max_iters


def test_group_lasso_autograd_optimality_on_nonzero_groups():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(9, 6, 2, generator=g, dtype=DT)
    m = torch.rand(z.shape, generator=g, dtype=DT) + 0.2
    reg = GroupLasso(1.5)
    x = reg.prox(z, 0.5, m)
    assert 0 < sum(bool((v == 0).all()) for v in groups_of(x, "in")) < 6  # both kinds present
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * reg.value(xr) + 0.5 * (m * (xr - z) ** 2).sum(), xr)
    for gg, xg, zg, mg in zip(
        groups_of(grad, "in"), groups_of(x, "in"), groups_of(z, "in"), groups_of(m, "in")
    ):
        if bool((xg != 0).any()):
            assert float(gg.norm()) <= 1e-7 * float((mg * zg).norm())


@pytest.mark.parametrize("solver", ["newton", "pg"])
def test_group_lasso_solver_knobs_warm_start_and_multi_tensor_batch(solver):
    g = torch.Generator().manual_seed(2)
    zs = [torch.randn(s, generator=g, dtype=DT) for s in [(8, 4, 3, 3), (6, 8), (8, 4, 3, 3), (5, 3, 2)]]
    ms = [torch.rand(z.shape, generator=g, dtype=DT) + 0.05 for z in zs]
    reg = GroupLasso(0.1, solver=solver)
    info: dict = {}
    reg.prox_multi(zs, 0.5, ms, max_iters=1, info=info)
    assert info["inner_iters"] == 1
    info = {}
    xs = reg.prox_multi(zs, 0.5, ms, info=info)
    assert (2 if solver == "pg" else 1) <= info["inner_iters"] <= reg.max_iters
    # the batched solve is as good as the per-tensor solves, with the same zero groups
    for z, m, x in zip(zs, ms, xs):
        alone = reg.prox(z, 0.5, m)
        assert gl_objective(reg, x, z, m, 0.5) <= gl_objective(reg, alone, z, m, 0.5) * (1 + 1e-7)
        assert [bool((v == 0).all()) for v in groups_of(x, "in")] == [
            bool((v == 0).all()) for v in groups_of(alone, "in")
        ]
        if solver == "newton":
            torch.testing.assert_close(x, alone, rtol=1e-7, atol=1e-9)  # both stop at |h| <= 1e-8·τw
    if solver == "pg":
        info = {}
        again = reg.prox_multi(zs, 0.5, ms, x0s=xs, max_iters=2, info=info)
        assert info["inner_iters"] == 2
        for a, b, z, m in zip(again, xs, zs, ms):  # warm start: PG is monotone from the previous point
            assert gl_objective(reg, a, z, m, 0.5) <= gl_objective(reg, b, z, m, 0.5) * (1 + 1e-12)
    with pytest.raises(ValueError, match="x0s"):
        reg.prox_multi(zs, 0.5, ms, x0s=xs[:2])


def test_group_lasso_screening_is_exact_and_counted():
    z = torch.zeros(3, 2, dtype=DT)
    z[:, 0] = torch.tensor([1.0, 2.0, 2.0])  # ‖m z‖ with m = (1, 1, 2): sqrt(1 + 4 + 16) = sqrt(21)
    z[:, 1] = torch.tensor([3.0, 0.0, 0.0])
    m = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 3.0]], dtype=DT)
    reg = GroupLasso(1.0, weighting="none")
    for tau, n_zero in [
        (3.0 - 1e-9, 0),
        (3.0, 1),
        (math.sqrt(21) * (1 - 1e-12), 1),
        (math.sqrt(21) * (1 + 1e-12), 2),
    ]:
        info: dict = {}
        x = reg.prox_multi([z], tau, [m], info=info)[0]
        assert info["screened"] == n_zero
        assert sum(bool((x[:, j] == 0).all()) for j in range(2)) == n_zero


@pytest.mark.parametrize("dim", ["in", "out"])
def test_group_lasso_in_place_paths_match_fresh_results(dim):
    """out= aliasing the input (how the optimizers call it) gives the same tensors as a fresh call:
    the Euclidean closed form (float32 and bfloat16) and the float32 Newton path, whose zeros and
    values also match the float64 reference solution."""
    g = torch.Generator().manual_seed(5)
    reg = GroupLasso(0.8, dim=dim)
    n = 16 if dim == "out" else 12
    spread = torch.linspace(0.2, 1.5, n).reshape((n, 1, 1, 1) if dim == "out" else (1, n, 1, 1))
    for dt in (torch.float32, torch.bfloat16):
        z = (torch.randn(16, 12, 3, 3, generator=g) * spread).to(dt)
        fresh = reg.prox_multi([z], 0.7)[0]
        given = z.clone()
        got = reg.prox_multi([given], 0.7, out=[given])[0]
        assert got is given and torch.equal(got, fresh)
        assert 0 < sum(bool((v == 0).all()) for v in groups_of(fresh, dim)) < n  # both kinds of groups
    z64 = torch.randn(16, 12, 3, 3, generator=g, dtype=DT)
    scale = 10 ** torch.randint(-2, 3, (1, 12, 1, 1), generator=g).to(DT)
    m64 = (torch.rand(z64.shape, generator=g, dtype=DT) + 0.05) * scale
    z, m = z64.float(), m64.float()
    fresh = reg.prox_multi([z], 0.7, [m])[0]
    given = z.clone()
    got = reg.prox_multi([given], 0.7, [m], out=[given])[0]
    assert got is given and torch.equal(got, fresh)
    w = math.sqrt(groups_of(z, dim)[0].numel())
    for xg, zg, mg in zip(groups_of(got, dim), groups_of(z.double(), dim), groups_of(m.double(), dim)):
        ref = exact_group_prox(zg, mg, 0.7 * 0.8 * w)
        assert bool((xg == 0).all()) == bool((ref == 0).all())
        torch.testing.assert_close(xg.double(), ref, rtol=2e-5, atol=1e-6)
    # +inf metric entries are pinned to z; the other coordinates solve the finite problem
    m_inf = m.clone()
    m_inf.view(-1)[::7] = math.inf
    x = reg.prox_multi([z], 0.7, [m_inf])[0]
    pinned = torch.isposinf(m_inf)
    assert torch.equal(x[pinned], z[pinned])
    assert bool(torch.isfinite(x).all())


def _nuclear_reference(z, m, tau, iters=4000):
    """Plain PG with step 1/max(m), run long (the test's own loop)."""
    zm, mm = z.reshape(z.shape[0], -1), m.reshape(z.shape[0], -1)
    eta = 1 / float(mm.max())
    x = zm.clone()
    for _ in range(iters):
        u, s, vh = torch.linalg.svd(x - eta * mm * (x - zm), full_matrices=False)
        x = u @ torch.diag((s - eta * tau).clamp_min(0)) @ vh
    return x.reshape(z.shape)


@pytest.mark.parametrize("lam_step", [1e-3, 0.1, 0.8, 100.0])
def test_nuclear_norm_matches_svd_shrinkage_and_long_run_reference(lam_step):
    g = torch.Generator().manual_seed(5)
    z = torch.randn(7, 3, 2, generator=g, dtype=DT)
    reg = NuclearNorm(lam_step)
    u, s, vh = torch.linalg.svd(z.reshape(7, -1), full_matrices=False)
    assert float(reg.value(z)) == pytest.approx(lam_step * float(s.sum()), rel=1e-12)
    info: dict = {}
    out = reg.prox_multi([z], 1.0, info=info)[0]
    torch.testing.assert_close(out.reshape(7, -1), u @ torch.diag((s - lam_step).clamp_min(0)) @ vh)
    info = {}
    out = reg.prox_multi([z], 1.0, [torch.full_like(z, 4.0)], info=info)[0]
    assert info["inner_iters"] == 0  # uniform metric: closed form
    torch.testing.assert_close(out.reshape(7, -1), u @ torch.diag((s - lam_step / 4).clamp_min(0)) @ vh)
    m = torch.rand(z.shape, generator=g, dtype=DT) + 0.3
    info = {}
    x = reg.prox_multi([z], 1.0, [m], info=info)[0]
    ref = _nuclear_reference(z, m, lam_step)
    obj = lambda v: float(reg.value(v) + 0.5 * (m * (v - z) ** 2).sum())  # noqa: E731
    assert obj(x) <= obj(ref) * (1 + 1e-6) + 1e-300
    rank = lambda v: int((torch.linalg.svdvals(v.reshape(7, -1)) > 1e-9).sum())  # noqa: E731
    assert rank(x) == rank(ref)
    if lam_step == 100.0:
        assert info["screened"] == 1 and bool((x == 0).all()) and info["inner_iters"] == 0


def test_nuclear_norm_batches_shapes_and_honours_knobs():
    g = torch.Generator().manual_seed(6)
    zs = [torch.randn(s, generator=g, dtype=DT) for s in [(6, 4), (6, 4), (5, 2, 2), (3, 3)]]
    ms = [torch.rand(z.shape, generator=g, dtype=DT) + 0.2 for z in zs]
    reg = NuclearNorm(0.3)
    xs = reg.prox_multi(zs, 1.0, ms)
    obj = lambda v, z, m: float(reg.value(v) + 0.5 * (m * (v - z) ** 2).sum())  # noqa: E731
    for z, m, x in zip(zs, ms, xs):  # one joint stop test: each solved at least as far as alone
        assert obj(x, z, m) <= obj(reg.prox(z, 1.0, m), z, m) * (1 + 1e-7)
    info: dict = {}
    with pytest.warns(RuntimeWarning, match="max_iters=1 on tensor"):
        reg.prox_multi(zs, 1.0, ms, max_iters=1, info=info)
    assert info["inner_iters"] == 1
    info = {}
    again = reg.prox_multi(zs, 1.0, ms, x0s=xs, max_iters=2, info=info)
    assert info["inner_iters"] == 1  # started at the solution: the duality gap stops at once
    for a, b, z, m in zip(again, xs, zs, ms):  # warm start: a first (plain) step is monotone
        assert obj(a, z, m) <= obj(b, z, m) * (1 + 1e-12)
