"""RMDA: MDA reduction, exact prox structure, foreach = for-loop, restarts, checkpoints, errors.

The convex digits group-lasso check for RMDA and RAMDA is in ``test_ramda.py``.
"""

import io
import math

import pytest
import torch

from lightning_prox.optim import RMDA
from lightning_prox.regularizers import L1, GroupLasso


def _quadratic_grads(ws, targets, scales):
    """Gradient of Σ ½ scale·(w − target)² at each w (a deterministic, trajectory-dependent oracle)."""
    return [s * (w - t) for w, t, s in zip(ws, targets, scales)]


def _problem(seed=0, shapes=((5, 3), (4, 6, 2, 2), (7,))):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    targets = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    scales = [torch.rand(s, generator=g, dtype=torch.float64) + 0.5 for s in shapes]
    noise = [[torch.randn(s, generator=g, dtype=torch.float64) * 0.1 for s in shapes] for _ in range(30)]
    return ws, targets, scales, noise


def _run(opt_factory, ws0, targets, scales, noise, steps):
    params = [torch.nn.Parameter(w.clone()) for w in ws0]
    opt = opt_factory(params)
    for k in range(steps):
        for p, g, n in zip(params, _quadratic_grads([p.detach() for p in params], targets, scales), noise[k]):
            p.grad = g + n
        opt.step()
    return params, opt


def _reference_rmda(ws0, targets, scales, noise, steps, lr, c, prox):
    """RMDA written out from the paper: s = η√t, β = √t, α = Σs, V = Σ s g, Ŵ = prox_{α/β}(W0 − V/β)."""
    w0 = [w.clone() for w in ws0]
    ws = [w.clone() for w in ws0]
    V = [torch.zeros_like(w) for w in ws0]
    alpha = 0.0
    for t in range(1, steps + 1):
        grads = [g + n for g, n in zip(_quadratic_grads(ws, targets, scales), noise[t - 1])]
        s = lr * math.sqrt(t)
        beta = math.sqrt(t)
        alpha += s
        V = [v + s * g for v, g in zip(V, grads)]
        w_hat = [prox(a - v / beta, alpha / beta) for a, v in zip(w0, V)]
        ws = [(1 - c) * w + c * h for w, h in zip(ws, w_hat)]
    return ws, w_hat


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("c", [0.3, 1.0])
def test_no_regularizer_is_mda(foreach, c):
    ws0, targets, scales, noise = _problem()
    params, _ = _run(lambda p: RMDA(p, lr=0.05, momentum=c, foreach=foreach), ws0, targets, scales, noise, 25)
    ref, _ = _reference_rmda(ws0, targets, scales, noise, 25, 0.05, c, lambda z, step: z)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-10)


def _soft(z, thr):
    return torch.sign(z) * torch.clamp(z.abs() - thr, min=0)


@pytest.mark.parametrize("foreach", [True, False])
def test_l1_matches_reference_and_prox_point_is_exactly_sparse(foreach):
    ws0, targets, scales, noise = _problem(1)
    lam = 0.4
    params, opt = _run(
        lambda p: RMDA(p, lr=0.05, momentum=0.2, regularizer=L1(lam), foreach=foreach),
        ws0,
        targets,
        scales,
        noise,
        20,
    )
    ref, ref_hat = _reference_rmda(
        ws0, targets, scales, noise, 20, 0.05, 0.2, lambda z, st: _soft(z, st * lam)
    )
    hats = opt.prox_points()
    for p, r, h in zip(params, ref, ref_hat):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(hats[p], h, rtol=1e-10, atol=1e-10)
        assert torch.equal(hats[p] == 0, h == 0)
    assert sum(int((h == 0).sum()) for h in hats.values()) > 0  # the test exercises exact zeros


def test_group_lasso_structure_reaches_iterate_when_c_is_one():
    ws0, targets, scales, noise = _problem(2, shapes=((6, 8), (3, 8, 3, 3)))
    ws0 = [w * 0.1 for w in ws0]
    targets = [t * 0.1 for t in targets]  # small optimum and start: some zero input groups
    reg = GroupLasso(0.1, dim="in")
    params, opt = _run(
        lambda p: RMDA(p, lr=0.1, momentum=1.0, regularizer=reg), ws0, targets, scales, noise, 15
    )
    for p in params:
        hat = opt.prox_points()[p]
        assert torch.equal(p.detach(), hat)
        zero_groups = (hat.transpose(0, 1).reshape(hat.shape[1], -1) == 0).all(dim=1)
        assert 0 < int(zero_groups.sum()) < hat.shape[1]
        # Euclidean group soft threshold is exact: zero groups are exactly zero, the rest fully nonzero
        assert bool((hat.transpose(0, 1).reshape(hat.shape[1], -1)[~zero_groups] != 0).all())


def test_foreach_matches_for_loop_with_groups_and_skipped_grads():
    ws0, targets, scales, noise = _problem(3, shapes=((6, 8), (3, 8, 3, 3), (8,)))

    def make(foreach):
        params = [torch.nn.Parameter(w.clone()) for w in ws0]
        opt = RMDA(
            [
                {"params": params[:2], "regularizer": GroupLasso(0.02, dim="in")},
                {"params": params[2:], "lr": 0.02},
            ],
            lr=0.05,
            momentum=0.5,
            foreach=foreach,
        )
        return params, opt

    runs = [make(True), make(False)]
    for k in range(12):
        for params, opt in runs:
            for i, p in enumerate(params):
                # tensor 1 gets no gradient on every third step: its counters lag behind the others
                p.grad = (
                    None if (i == 1 and k % 3 == 0) else scales[i] * (p.detach() - targets[i]) + noise[k][i]
                )
            opt.step()
    (pa, oa), (pb, ob) = runs
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert oa.state[pa[1]]["step"] == 8 and oa.state[pa[0]]["step"] == 12


def test_state_dict_round_trip_is_exact_and_loads_weights_only():
    ws0, targets, scales, noise = _problem(4)
    reg = GroupLasso(0.01, dim="out")
    params, opt = _run(
        lambda p: RMDA(p, lr=0.05, momentum=0.3, regularizer=reg), ws0, targets, scales, noise, 7
    )
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params2 = [torch.nn.Parameter(w) for w in ckpt["w"]]
    opt2 = RMDA(params2, lr=1.0, momentum=1.0)  # hyperparameters come from the checkpoint
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["regularizer"] == reg.spec() and opt2.param_groups[0]["lam"] == 0.01
    for k in range(7, 14):
        for ps, o in ((params, opt), (params2, opt2)):
            for p, t, s, n in zip(ps, targets, scales, noise[k]):
                p.grad = s * (p.detach() - t) + n
            o.step()
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    for a, b in zip(params, params2):
        sa, sb = opt.state[a], opt2.state[b]
        assert sa["step"] == sb["step"] == 14 and sa["alpha"] == sb["alpha"]
        for key in ("initial_point", "grad_sum", "prox_point"):
            assert torch.equal(sa[key], sb[key])


def test_restart_starts_a_fresh_stage_at_the_current_point():
    ws0, targets, scales, noise = _problem(5)
    reg = L1(0.1)
    params, opt = _run(
        lambda p: RMDA(p, lr=0.05, momentum=0.3, regularizer=reg), ws0, targets, scales, noise, 6
    )
    opt.restart()
    for p in params:
        st = opt.state[p]
        assert st["step"] == 0 and st["alpha"] == 0.0
        assert torch.equal(st["initial_point"], p.detach()) and not st["grad_sum"].any()
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.3
    fresh_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fresh = RMDA(fresh_params, lr=0.05, momentum=0.3, regularizer=reg)
    for k in range(6, 12):
        for ps, o in ((params, opt), (fresh_params, fresh)):
            for p, t, s, n in zip(ps, targets, scales, noise[k]):
                p.grad = s * (p.detach() - t) + n
            o.step()
    for a, b in zip(params, fresh_params):
        assert torch.equal(a, b)


def test_group_lam_is_read_at_step_time():
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = RMDA([w], lr=0.1, momentum=1.0, regularizer=L1(0.0))
    opt.param_groups[0]["lam"] = 5.0  # what a RegularizationScheduler writes
    w.grad = torch.zeros(2)
    opt.step()  # threshold (α/β)·λ = 0.1·5
    assert torch.equal(w.detach(), torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -0.1}, r"lr must be .*-0\.1"),
        ({"lr": 0.1, "momentum": 0.0}, r"momentum must be .*0\.0"),
        ({"lr": 0.1, "momentum": 1.5}, r"momentum must be .*1\.5"),
        ({"lr": float("nan")}, r"lr must be .*nan"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RMDA([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_non_finite_gradient_raises_before_any_update():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = RMDA([a, b], lr=0.1, regularizer=L1(0.1))
    a.grad = torch.ones(3)
    b.grad = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"non-finite .*param group 0, tensor 1 \(shape \(2,\)\)"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and torch.equal(b.detach(), torch.ones(2))


def test_ramda_non_finite_gradient_names_the_parameter():
    from lightning_prox.optim import RAMDA

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = RAMDA([{"params": [a]}, {"params": [b], "regularizer": L1(0.1)}], lr=0.1)
    a.grad = torch.ones(3)
    b.grad = torch.tensor([float("inf"), 1.0])
    with pytest.raises(ValueError, match=r"non-finite .*param group 1, tensor 0 \(shape \(2,\)\)"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3)) and torch.equal(b.detach(), torch.ones(2))
