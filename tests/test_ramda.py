"""RAMDA: MADGRAD reduction, the inexact subproblem solver, restarts, checkpoints, and the convex
digits group-lasso logistic regression for RMDA and RAMDA against a FISTA solution computed here."""

import io
import math

import pytest
import torch

from lightning_prox.optim import RAMDA, RMDA
from lightning_prox.regularizers import L1, GroupLasso

SHAPES = ((5, 3), (4, 6, 2, 2), (7,))


def _problem(seed=0, shapes=SHAPES, dtype=torch.float64, steps=30):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    targets = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    scales = [torch.rand(s, generator=g, dtype=dtype) + 0.5 for s in shapes]
    noise = [[torch.randn(s, generator=g, dtype=dtype) * 0.3 for s in shapes] for _ in range(steps)]
    return ws, targets, scales, noise


def _grads(ws, targets, scales, noise_k):
    return [s * (w - t) + n for w, t, s, n in zip(ws, targets, scales, noise_k)]


def _run(opt_factory, ws0, targets, scales, noise, steps, start=0, params=None, opt=None):
    if params is None:
        params = [torch.nn.Parameter(w.clone()) for w in ws0]
        opt = opt_factory(params)
    for k in range(start, start + steps):
        for p, g in zip(params, _grads([p.detach() for p in params], targets, scales, noise[k])):
            p.grad = g
        opt.step()
    return params, opt


def _madgrad_reference(ws0, targets, scales, noise, steps, lr, c, eps):
    """MADGRAD (Defazio & Jelassi 2021, Algorithm 1) written out: λ_k = lr·√(k+1), ν, s, x0; momentum 1 − c."""
    x0 = [w.clone() for w in ws0]
    x = [w.clone() for w in ws0]
    s = [torch.zeros_like(w) for w in ws0]
    nu = [torch.zeros_like(w) for w in ws0]
    for k in range(steps):
        lamb = lr * math.sqrt(k + 1)
        for i, g in enumerate(_grads(x, targets, scales, noise[k])):
            s[i] = s[i] + lamb * g
            nu[i] = nu[i] + lamb * g * g
            z = x0[i] - s[i] / (nu[i] ** (1.0 / 3.0) + eps)
            x[i] = (1.0 - c) * x[i] + c * z
    return x


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_no_regularizer_is_madgrad(foreach, c):
    ws0, targets, scales, noise = _problem(dtype=torch.float32)
    params, _ = _run(
        lambda p: RAMDA(p, lr=0.05, momentum=c, eps=1e-6, foreach=foreach), ws0, targets, scales, noise, 30
    )
    ref = _madgrad_reference(ws0, targets, scales, noise, 30, 0.05, c, 1e-6)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-6)


def _soft(z, thr):
    return torch.sign(z) * torch.clamp(z.abs() - thr, min=0)


@pytest.mark.parametrize("foreach", [True, False])
def test_l1_is_the_exact_preconditioned_prox(foreach):
    """ψ = λ‖·‖₁ is separable: Ŵ = soft(W0 − V/P, α·λ/P) in closed form, no inner iterations."""
    ws0, targets, scales, noise = _problem(1)
    lam, lr, c, eps = 0.05, 0.1, 0.5, 1e-6
    params, opt = _run(
        lambda p: RAMDA(p, lr=lr, momentum=c, eps=eps, regularizer=L1(lam), foreach=foreach),
        ws0,
        targets,
        scales,
        noise,
        15,
    )
    x0 = [w.clone() for w in ws0]
    x = [w.clone() for w in ws0]
    V = [torch.zeros_like(w) for w in ws0]
    U = [torch.zeros_like(w) for w in ws0]
    alpha = 0.0
    for t in range(1, 16):
        s = lr * math.sqrt(t)
        alpha += s
        grads = _grads(x, targets, scales, noise[t - 1])
        V = [v + s * g for v, g in zip(V, grads)]
        U = [u + s * g * g for u, g in zip(U, grads)]
        P = [u ** (1 / 3) + eps for u in U]
        hat = [_soft(a - v / p, alpha * lam / p) for a, v, p in zip(x0, V, P)]
        x = [(1 - c) * w + c * h for w, h in zip(x, hat)]
    for p, r, h in zip(params, x, hat):
        torch.testing.assert_close(p.detach(), r, rtol=1e-9, atol=1e-9)
        assert torch.equal(opt.prox_points()[p] == 0, h == 0)
    assert sum(int((h == 0).sum()) for h in hat) > 0


# -- the inexact subproblem solver ------------------------------------------------------------------


def _group_rows(x):
    """[G, -1] view of an input-channel grouping (dim="in")."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _exact_group_prox(z, m, tau_w):
    """argmin_x τw‖x‖ + ½Σ m(x − z)² per row by bisection on r = ‖x‖ (float64, to machine precision).

    x = 0 iff ‖m⊙z‖ ≤ τw; otherwise x_i = m_i z_i r / (m_i r + τw) with Σ_i (m_i z_i/(m_i r + τw))² = 1,
    a strictly decreasing function of r whose root lies in (0, ‖z‖].
    """
    z, m = z.double(), m.double()
    alive = torch.linalg.vector_norm(m * z, dim=1) > tau_w
    lo = torch.zeros(z.shape[0], dtype=torch.float64)
    hi = torch.linalg.vector_norm(z, dim=1)
    for _ in range(200):
        r = 0.5 * (lo + hi)
        phi = ((m * z / (m * r[:, None] + tau_w)) ** 2).sum(dim=1)
        lo = torch.where(phi > 1, r, lo)
        hi = torch.where(phi > 1, hi, r)
    r = 0.5 * (lo + hi)
    x = m * z * r[:, None] / (m * r[:, None] + tau_w)
    return torch.where(alive[:, None], x, 0.0), alive


def _subproblem_objective(xs, zs, ms, tau):
    total = 0.0
    for x, z, m in zip(xs, zs, ms):
        rows = _group_rows(x.double())
        total += tau * math.sqrt(rows.shape[1]) * float(torch.linalg.vector_norm(rows, dim=1).sum())
        total += 0.5 * float((m.double() * (x.double() - z.double()) ** 2).sum())
    return total


def _random_subproblem(seed, dtype, shapes=((16, 8, 3, 3), (10, 20), (32, 16, 1, 1))):
    g = torch.Generator().manual_seed(seed)
    # per-group scales in [0, 2) so that some groups are zero at the solution and some are not
    zs = [
        torch.randn(s, generator=g, dtype=dtype)
        * 2
        * torch.rand((1, s[1], 1, 1)[: len(s)], generator=g, dtype=dtype)
        for s in shapes
    ]
    # strongly non-uniform diagonal metric, like ∛U + ε: a spread of e^3 ≈ 20 inside a group
    ms = [torch.exp(3 * torch.rand(s, generator=g, dtype=dtype) - 1.5) for s in shapes]
    x0s = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    return zs, ms, x0s


@pytest.mark.parametrize(
    ("seed", "dtype", "tol"), [(0, torch.float64, 1e-6), (1, torch.float64, 1e-6), (2, torch.float32, 1e-5)]
)
def test_inner_solver_matches_exact_solution_and_optimality_zeros(seed, dtype, tol):
    zs, ms, x0s = _random_subproblem(seed, dtype)
    step, lam = 0.7, 1.5
    info = {}
    out = GroupLasso(lam, dim="in").prox_multi(zs, step, ms, x0s, max_iters=100, rtol=1e-8, info=info)
    tau = step * lam
    refs, predicted_zero = [], 0
    for x, z, m in zip(out, zs, ms):
        ref_rows, alive = _exact_group_prox(
            _group_rows(z), _group_rows(m), tau * math.sqrt(_group_rows(z).shape[1])
        )
        refs.append(ref_rows)
        rows = _group_rows(x)
        # exactly the zero groups the optimality condition ‖m_g ⊙ z_g‖ ≤ τ w_g implies
        assert torch.equal((rows == 0).all(dim=1), ~alive)
        assert bool((rows[alive] != 0).any(dim=1).all())
        assert 0 < int((~alive).sum()) < alive.numel()
        predicted_zero += int((~alive).sum())
    assert info["screened"] == predicted_zero  # the screened groups are the exact zeros
    assert 2 <= info["inner_iters"] <= 100
    ref_x = [r.reshape(z.shape[1], z.shape[0], -1).transpose(0, 1).reshape(z.shape) for r, z in zip(refs, zs)]
    q_ref = _subproblem_objective(ref_x, zs, ms, tau)
    q = _subproblem_objective(out, zs, ms, tau)
    assert q_ref <= q + 1e-12 * abs(q_ref)
    assert (q - q_ref) / abs(q_ref) < tol


def test_ramda_step_solves_the_subproblem_of_algorithm_1():
    """One RAMDA step from W0 (c = 1): Ŵ = argmin α·ψ(W) + ⟨V, W⟩ + ½⟨W − W0, P(W − W0)⟩ with s = α = η."""
    g = torch.Generator().manual_seed(3)
    shapes = ((16, 8, 3, 3), (10, 20))
    w0 = [torch.randn(s, generator=g, dtype=torch.float64) * 0.3 for s in shapes]
    # per-input-channel scales in [0, 1): some groups end up zero, some not
    grads = [
        torch.randn(s, generator=g, dtype=torch.float64)
        * torch.rand((1, s[1], 1, 1)[: len(s)], generator=g, dtype=torch.float64)
        for s in shapes
    ]
    w0 = [w * torch.rand((1, w.shape[1], 1, 1)[: w.ndim], generator=g, dtype=torch.float64) for w in w0]
    lr, lam, eps = 0.5, 0.1, 1e-6
    params = [torch.nn.Parameter(w.clone()) for w in w0]
    opt = RAMDA(params, lr=lr, momentum=1.0, eps=eps, regularizer=GroupLasso(lam, dim="in"))
    for p, gr in zip(params, grads):
        p.grad = gr
    opt.step()
    assert opt.solver_info and opt.solver_info[0]["inner_iters"] >= 2
    for p, w, gr in zip(params, w0, grads):
        V, P = lr * gr, (lr * gr * gr) ** (1 / 3) + eps
        z = w - V / P
        ref, alive = _exact_group_prox(
            _group_rows(z), _group_rows(P), lr * lam * math.sqrt(_group_rows(z).shape[1])
        )
        rows = _group_rows(p.detach())
        assert torch.equal((rows == 0).all(dim=1), ~alive)
        assert 0 < int((~alive).sum()) < alive.numel()
        # the PG answer is close to the exact solution (relative objective is checked above)
        torch.testing.assert_close(rows, ref, rtol=0, atol=1e-3 * float(ref.abs().max()))
        assert torch.equal(opt.prox_points()[p], p.detach())


# -- multi-tensor path, restarts, checkpoints ---------------------------------------------------------


def test_foreach_matches_for_loop():
    ws0, targets, scales, noise = _problem(4)
    runs = []
    for foreach in (True, False):
        runs.append(
            _run(
                lambda p, f=foreach: RAMDA(
                    [{"params": p[:2], "regularizer": L1(0.02)}, {"params": p[2:]}],
                    lr=0.05,
                    momentum=0.3,
                    foreach=f,
                ),
                ws0,
                targets,
                scales,
                noise,
                12,
            )
        )
    for a, b in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_foreach_matches_for_loop_group_lasso_objective():
    """With group lasso the batched solver stops on all tensors at once, the loop on each one: same answer
    to solver tolerance."""
    ws0, targets, scales, noise = _problem(5, shapes=((6, 8), (4, 6, 3, 3)))
    finals = []
    for foreach in (True, False):
        ps, _ = _run(
            lambda p, f=foreach: RAMDA(p, lr=0.05, momentum=1.0, regularizer=GroupLasso(0.05), foreach=f),
            ws0,
            targets,
            scales,
            noise,
            10,
        )
        finals.append(ps)
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_state_dict_round_trip_is_exact_and_loads_weights_only():
    ws0, targets, scales, noise = _problem(6)
    reg = GroupLasso(0.02, dim="out")
    factory = lambda p: RAMDA(p, lr=0.05, momentum=0.3, eps=1e-5, regularizer=reg)  # noqa: E731
    params, opt = _run(factory, ws0, targets, scales, noise, 6)
    opt.restart(eps_factor=0.1)
    _run(None, ws0, targets, scales, noise, 3, start=6, params=params, opt=opt)
    opt.param_groups[0]["momentum"] = 0.7  # what StageRestart writes in the final stage
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params2 = [torch.nn.Parameter(w) for w in ckpt["w"]]
    opt2 = RAMDA(params2)
    opt2.load_state_dict(ckpt["opt"])
    g2 = opt2.param_groups[0]
    assert g2["eps"] == pytest.approx(1e-6, rel=1e-12) and g2["momentum"] == 0.7 and g2["lr"] == 0.05
    for a, b in zip(params, params2):
        sa, sb = opt.state[a], opt2.state[b]
        assert sa["step"] == sb["step"] == 3 and sa["alpha"] == sb["alpha"]
    _run(None, ws0, targets, scales, noise, 6, start=9, params=params, opt=opt)
    _run(None, ws0, targets, scales, noise, 6, start=9, params=params2, opt=opt2)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
        for key in ("initial_point", "grad_sum", "grad_sq_sum", "prox_point"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key])


def test_restart_resets_stage_and_scales_eps():
    ws0, targets, scales, noise = _problem(7)
    reg = GroupLasso(0.02)
    factory = lambda p: RAMDA(p, lr=0.05, momentum=0.3, eps=1e-4, regularizer=reg)  # noqa: E731
    params, opt = _run(factory, ws0[:2], targets, scales, noise, 6)
    opt.restart(eps_factor=0.1)
    group = opt.param_groups[0]
    assert group["eps"] == pytest.approx(1e-5) and group["lr"] == 0.05 and group["momentum"] == 0.3
    for p in params:
        st = opt.state[p]
        assert st["step"] == 0 and st["alpha"] == 0.0
        assert torch.equal(st["initial_point"], p.detach())
        assert not st["grad_sum"].any() and not st["grad_sq_sum"].any()
    fresh = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fopt = RAMDA(fresh, lr=0.05, momentum=0.3, eps=group["eps"], regularizer=reg)
    _run(None, ws0, targets, scales, noise, 5, start=6, params=params, opt=opt)
    _run(None, ws0, targets, scales, noise, 5, start=6, params=fresh, opt=fopt)
    for a, b in zip(params, fresh):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, r"eps must be .*0\.0"),
        ({"max_inner_iters": 1}, r"max_inner_iters must be .*1"),
        ({"inner_rtol": -1e-3}, r"inner_rtol must be .*-0\.001"),
        ({"momentum": 2.0}, r"momentum must be .*2\.0"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RAMDA([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_restart_rejects_bad_eps_factor():
    opt = RAMDA([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"eps_factor must be .*-1"):
        opt.restart(eps_factor=-1)


# -- convex problem: group-lasso logistic regression on scikit-learn's digits ------------------------

LAM = 1e-2  # λ of Σ_j √10 ‖W[:, j]‖ (input-feature groups, |g| = 10 classes)


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X, dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-12)  # standardized; constant pixels stay exactly 0
    return X, torch.tensor(y)


def _objective(X, y, W, b):
    loss = torch.nn.functional.cross_entropy(X @ W.T + b, y)
    return float(loss + LAM * math.sqrt(10) * torch.linalg.vector_norm(W, dim=0).sum())


def _fista(X, y, iters=3000):
    """Accelerated proximal gradient (FISTA with adaptive restart) in float64, to a tight tolerance."""
    n, d = X.shape
    Xt = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], 1)
    Y = torch.nn.functional.one_hot(y, 10).double()
    L = 0.5 * float(torch.linalg.matrix_norm(Xt, 2)) ** 2 / n  # softmax-CE Hessian ⪯ ½·XᵀX/n
    theta = torch.zeros(d + 1, 10, dtype=X.dtype)
    yk, tk, f_prev = theta.clone(), 1.0, math.inf
    for _ in range(iters):
        grad = Xt.T @ (torch.softmax(Xt @ yk, 1) - Y) / n
        new = yk - grad / L
        nrm = torch.linalg.vector_norm(new[:d], dim=1, keepdim=True)
        new[:d] *= torch.clamp(1 - LAM * math.sqrt(10) / L / nrm.clamp_min(1e-300), min=0)
        f_new = _objective(X, y, new[:d].T, new[d])
        if f_new > f_prev:
            tk, yk = 1.0, theta.clone()
            continue
        tn = (1 + math.sqrt(1 + 4 * tk * tk)) / 2
        yk = new + (tk - 1) / tn * (new - theta)
        theta, tk, f_prev = new, tn, f_new
    return theta[:d].T, theta[d], f_prev


@pytest.fixture(scope="module")
def digits_reference():
    X, y = _digits()
    W, b, f_star = _fista(X, y)
    # optimality check of the reference: ‖∇_g f‖ ≤ λw on zero groups, = λw (aligned) on the others
    G = (torch.softmax(X @ W.T + b, 1) - torch.nn.functional.one_hot(y, 10)).T @ X / X.shape[0]
    nz = torch.linalg.vector_norm(W, dim=0) > 0
    assert float(torch.linalg.vector_norm(G[:, ~nz], dim=0).max()) <= LAM * math.sqrt(10) * (1 + 1e-6)
    resid = G[:, nz] + LAM * math.sqrt(10) * W[:, nz] / torch.linalg.vector_norm(W[:, nz], dim=0)
    assert float(resid.abs().max()) < 1e-6
    return X, y, f_star


@pytest.mark.parametrize(
    ("cls", "kwargs"), [(RMDA, {"lr": 1.0, "momentum": 0.1}), (RAMDA, {"lr": 0.03, "momentum": 0.1})]
)
def test_digits_group_lasso_logreg_reaches_fista_objective_with_stable_structure(
    digits_reference, cls, kwargs
):
    from lightning_prox.callbacks.stage_restart import final_stage_momentum, stage_index

    X, y, f_star = digits_reference
    Xf = X.float()
    n, d = X.shape
    epochs, milestones, bs, gamma = 150, [50, 90], 600, 0.1
    model = torch.nn.Linear(d, 10)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = cls(
        [{"params": [model.weight], "regularizer": GroupLasso(LAM, dim="in")}, {"params": [model.bias]}],
        **kwargs,
    )
    lr0, c0 = kwargs["lr"], kwargs["momentum"]
    gen = torch.Generator().manual_seed(0)
    stages, final_start, step, patterns = 0, None, 0, []
    for epoch in range(epochs):  # the StageRestart schedule, driven by hand
        stage = stage_index(epoch, milestones)
        while stages < stage:
            opt.restart(eps_factor=gamma)
            stages += 1
            final_start = step if stages == len(milestones) else final_start
        for group in opt.param_groups:
            group["lr"] = lr0 * gamma**stage
        for idx in torch.randperm(n, generator=gen).split(bs):
            c = c0 if final_start is None else final_stage_momentum(c0, step - final_start + 1)
            for group in opt.param_groups:
                group["momentum"] = c
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xf[idx]), y[idx]).backward()
            opt.step()
            step += 1
        patterns.append((torch.linalg.vector_norm(model.weight.detach(), dim=0) == 0).clone())
    f_final = _objective(X, y, model.weight.detach().double(), model.bias.detach().double())
    assert f_final <= f_star * 1.01, (f_final, f_star)
    tail = patterns[-epochs // 5 :]
    assert all(torch.equal(p, tail[0]) for p in tail), "zero-group pattern changed in the final 20% of epochs"
    assert 10 < int(tail[0].sum()) < d  # a real structure: many exactly-zero input features
