"""SR2 against an independent float64 implementation of Algorithm 1, FISTA on digits, errors, resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from sklearn.datasets import load_digits

from lightning_prox.optim import SR2
from lightning_prox.regularizers import L0, L1

# -- an independent implementation of Algorithm 1 (Lakhmiri, Orban & Lodi 2022), plain float64 ------


def _soft(z, t):
    return torch.sign(z) * torch.clamp(z.abs() - t, min=0.0)


def _hard(z, t):  # prox of t·||x||_0: keep |z| > sqrt(2t), ties to 0
    return torch.where(z.abs() > math.sqrt(2.0 * t), z, torch.zeros_like(z))


def reference_sr2(f, x0, b0, kind, lam, sigma, sigma_min, eta1, eta2, gamma1, gamma3, steps):
    """x is regularized (l1 or l0 at lam), b is not. Returns the per-step records."""
    x, b = x0.clone(), b0.clone()
    prox = _soft if kind == "l1" else _hard

    def R(v):
        return lam * (v.abs().sum() if kind == "l1" else (v != 0).sum().double())

    out, dpsis = [], []
    for _ in range(steps):
        xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
        fx = f(xr, br)
        gx, gb = torch.autograd.grad(fx, [xr, br])
        with torch.no_grad():
            xh = prox(x - gx / sigma, lam / sigma)
            bh = b - gb / sigma
            sx, sb = xh - x, bh - b
            ss = float(sx.square().sum() + sb.square().sum())
            if ss == 0:
                out.append(("null", sigma, x.clone(), b.clone()))
                continue
            gts = float((gx * sx).sum() + (gb * sb).sum())
            dpsi = float(R(x)) - gts - float(R(xh))
            dF = float(fx) + float(R(x)) - float(f(xh, bh)) - float(R(xh))
            rho = dF / dpsi if dpsi > 0 else -math.inf
            dpsis.append(dpsi)
            if rho >= eta1:
                x, b, dec = xh, bh, "accept"
                if rho >= eta2:
                    sigma = max(sigma_min, gamma3 * sigma)
            else:
                dec = "reject"
                sigma = gamma1 * sigma
            out.append((dec, sigma, x.clone(), b.clone()))
    return out, min(dpsis)


def _problem(seed=0, n=40, d=12, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(n, generator=g, dtype=dtype)

    def f(x, b):  # a smooth nonquadratic loss (log-cosh residuals) of a linear model
        r = A @ x + b - y
        return (torch.nn.functional.softplus(2 * r) - r - math.log(2.0)).mean()

    x0 = torch.randn(d, generator=g, dtype=dtype)
    return f, x0, torch.zeros((), dtype=dtype)


def _run_sr2(f, x0, b0, kind, lam, steps, **kw):
    x = torch.nn.Parameter(x0.clone())
    b = torch.nn.Parameter(b0.clone())
    reg = L1(lam) if kind == "l1" else L0(lam)
    opt = SR2([{"params": [x], "regularizer": reg}, {"params": [b]}], **kw)

    def closure():
        opt.zero_grad()
        loss = f(x, b)
        loss.backward()
        return loss

    recs, before = [], None
    for _ in range(steps):
        before = (x.detach().clone(), b.detach().clone())
        opt.step(closure, trial_closure=lambda: f(x, b))
        st = opt.sr2_stats()
        if st["step_norm_sq"] == 0:
            dec = "null"
        else:
            dec = "accept" if st["accepted"] else "reject"
        if dec != "accept":  # rejected or null: bit-identical parameters
            assert torch.equal(x.detach(), before[0]) and torch.equal(b.detach(), before[1])
            assert x.detach().view(torch.int64).equal(before[0].view(torch.int64))
        recs.append((dec, opt.sigma, x.detach().clone(), b.detach().clone()))
    return recs, opt


CONFIGS = [
    # (kind, lam, sigma0, sigma_min, eta1, eta2, gamma1, gamma2, gamma3, steps)
    ("l1", 0.05, 0.01, 1e-6, 7.5e-4, 0.99, 5.56, 5.56, 0.8, 70),  # defaults, rejections from a small σ0
    ("l0", 0.02, 0.05, 1e-6, 7.5e-4, 0.99, 3.0, 7.0, 0.8, 25),  # γ2 ≠ γ1
    ("l1", 0.05, 200.0, 0.5, 1e-3, 0.3, 2.0, 4.0, 0.5, 40),  # σ shrinks onto a binding σ_min
    ("l0", 0.01, 0.6, 0.5, 0.1, 0.6, 10.0, 12.0, 0.7, 45),  # binding floor and rejections
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c[0]}-s0={c[2]}-smin={c[3]}")
def test_matches_independent_algorithm_1(cfg):
    kind, lam, s0, smin, e1, e2, g1, g2, g3, steps = cfg
    f, x0, b0 = _problem()
    ref, min_dpsi = reference_sr2(f, x0, b0, kind, lam, s0, smin, e1, e2, g1, g3, steps)
    assert min_dpsi > 1e-11  # short of convergence: no decision is decided by rounding
    ours, opt = _run_sr2(
        f,
        x0,
        b0,
        kind,
        lam,
        steps,
        sigma=s0,
        sigma_min=smin,
        eta1=e1,
        eta2=e2,
        gamma1=g1,
        gamma2=g2,
        gamma3=g3,
    )
    assert [r[0] for r in ours] == [r[0] for r in ref]
    for (_, s_o, x_o, b_o), (_, s_r, x_r, b_r) in zip(ours, ref):
        assert s_o == pytest.approx(s_r, rel=1e-12)
        torch.testing.assert_close(x_o, x_r, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b_o, b_r, rtol=1e-12, atol=1e-14)
    decisions = [r[0] for r in ref]
    assert decisions.count("reject") >= 2 and decisions.count("accept") >= 20
    if smin > 1e-6:  # the floor binds: σ sits on σ_min for several steps
        assert sum(r[1] == smin for r in ours) >= 5
    st = opt.sr2_stats()
    assert st["steps"] == steps
    assert st["accepted_steps"] == decisions.count("accept")
    assert st["rejected_steps"] == decisions.count("reject")
    assert st["null_steps"] == decisions.count("null")
    assert st["accept_rate"] == pytest.approx(
        st["accepted_steps"] / (st["accepted_steps"] + st["rejected_steps"])
    )
    for group in opt.param_groups:
        assert group["lr"] == 1.0 / opt.sigma


def test_one_step_quantities_by_hand():
    """ρ, Δψ ≥ ½σ‖s‖², the closure once with grad, the trial once without."""
    w = torch.nn.Parameter(torch.tensor([1.0, -0.5, 0.02], dtype=torch.float64))
    c = torch.tensor([0.3, 0.4, -0.1], dtype=torch.float64)
    opt = SR2([w], regularizer=L1(0.1), sigma=2.0)
    calls = {"closure": [], "trial": []}

    def f():
        return 0.5 * ((w - c) ** 2).sum() + (w**4).sum() / 4

    def closure():
        calls["closure"].append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    def trial():
        calls["trial"].append(torch.is_grad_enabled())
        return f()

    x = w.detach().clone()
    g = (x - c) + x**3
    xh = _soft(x - g / 2.0, 0.1 / 2.0)
    s = xh - x
    dpsi = 0.1 * (x.abs().sum() - xh.abs().sum()) - (g * s).sum()
    fx = 0.5 * ((x - c) ** 2).sum() + (x**4).sum() / 4
    fxh = 0.5 * ((xh - c) ** 2).sum() + (xh**4).sum() / 4
    dF = fx + 0.1 * x.abs().sum() - fxh - 0.1 * xh.abs().sum()
    loss = opt.step(closure, trial)
    assert calls == {"closure": [True], "trial": [False]}
    assert float(loss.detach()) == pytest.approx(float(fx))
    st = opt.sr2_stats()
    assert st["delta_psi"] == pytest.approx(float(dpsi), rel=1e-12)
    assert st["delta_psi"] >= 0.5 * 2.0 * float(s.square().sum())
    assert st["delta_F"] == pytest.approx(float(dF), rel=1e-12)
    assert st["rho"] == pytest.approx(float(dF / dpsi), rel=1e-12)
    assert st["step_norm_sq"] == pytest.approx(float(s.square().sum()), rel=1e-12)
    assert st["accepted"] and torch.equal(w.detach(), xh)


def test_null_step_keeps_sigma_and_skips_the_trial():
    w = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    opt = SR2([w], regularizer=L1(1.0), sigma=1.0)
    trials = []

    def closure():
        opt.zero_grad()
        loss = (0.1 * w).sum()  # |g| = 0.1 < λ: x = 0 is the fixed point of the prox-gradient map
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure, lambda: trials.append(1) or (0.1 * w).sum())
    st = opt.sr2_stats()
    assert st["null_steps"] == 5 and st["accepted_steps"] == st["rejected_steps"] == 0
    assert opt.sigma == 1.0 and trials == [] and math.isnan(st["rho"])


def test_guards_reject_instead_of_raising():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = SR2([w], sigma=1.0)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    opt.step(closure, lambda: torch.tensor(float("nan")))
    assert torch.equal(w.detach(), before) and opt.sr2_stats()["rho"] == -math.inf
    assert opt.sigma == pytest.approx(5.56)
    opt.step(closure, lambda: torch.tensor(float("inf")))
    assert torch.equal(w.detach(), before) and opt.sr2_stats()["rejected_steps"] == 2
    assert opt.sr2_stats()["consecutive_rejections"] == 2


def test_non_finite_gradient_raises_before_any_change():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = SR2([w])

    def closure():
        opt.zero_grad()
        w.grad = torch.tensor([float("nan"), 0.0])
        return torch.tensor(1.0)

    with pytest.raises(ValueError, match="non-finite"):
        opt.step(closure, lambda: torch.tensor(0.0))
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0])) and opt.sr2_stats()["steps"] == 0


# -- full-batch l1-logistic regression on digits: the FISTA optimum ----------------------------------


def _digits(dtype):
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X[:600] / 16.0, dtype=dtype), torch.tensor(y[:600])
    return X, y


LAM = 1e-2


def _fista(X, y, iters):
    """FISTA with function-value restart (Beck & Teboulle 2009; O'Donoghue & Candès 2015), float64."""
    n = X.shape[0]
    Xt = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], 1)
    L = 0.5 * torch.linalg.matrix_norm(Xt, 2).item() ** 2 / n  # softmax CE: Hessian ≤ ½‖X̃‖²/n

    def f(W, b):
        return torch.nn.functional.cross_entropy(X @ W.T + b, y)

    def F(W, b):
        return float(f(W, b)) + LAM * float(W.abs().sum())

    W, b = torch.zeros(10, X.shape[1], dtype=X.dtype), torch.zeros(10, dtype=X.dtype)
    Wy, by, t = W.clone(), b.clone(), 1.0
    for _ in range(iters):
        Wy.requires_grad_(True)
        by.requires_grad_(True)
        gW, gb = torch.autograd.grad(f(Wy, by), [Wy, by])
        with torch.no_grad():
            Wn, bn = _soft(Wy - gW / L, LAM / L), by - gb / L
            if F(Wn, bn) > F(W, b):  # restart the momentum
                Wy, by, t = W.clone(), b.clone(), 1.0
                continue
            tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
            Wy, by = Wn + (t - 1) / tn * (Wn - W), bn + (t - 1) / tn * (bn - b)
            W, b, t = Wn, bn, tn
    return F(W, b), W


@pytest.fixture(scope="module")
def fista_optimum():
    X, y = _digits(torch.float64)
    return _fista(X, y, 4000)


def _sr2_digits(dtype, sigma0, steps):
    X, y = _digits(dtype)
    W = torch.nn.Parameter(torch.zeros(10, 64, dtype=dtype))
    b = torch.nn.Parameter(torch.zeros(10, dtype=dtype))
    opt = SR2([{"params": [W], "regularizer": L1(LAM)}, {"params": [b]}], sigma=sigma0)

    def f():
        return torch.nn.functional.cross_entropy(X @ W.T + b, y)

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    Fs = []
    for _ in range(steps):
        opt.step(closure, f)
        with torch.no_grad():
            Fs.append(float(f().double()) + LAM * float(W.double().abs().sum()))
    return Fs, W.detach(), opt


@pytest.mark.parametrize("sigma0", [0.01, 50.0])
def test_digits_l1_logistic_reaches_fista_optimum_float64(fista_optimum, sigma0):
    F_star, W_star = fista_optimum
    Fs, W, opt = _sr2_digits(torch.float64, sigma0, 3000)
    assert all(b <= a for a, b in zip(Fs, Fs[1:]))  # F is monotone (full batch: ρ ≥ η1 > 0 means ΔF > 0)
    assert Fs[-1] - F_star <= 1e-9 * F_star and F_star - Fs[-1] <= 1e-9 * F_star
    assert ((W == 0) == (W_star == 0)).float().mean() > 0.99  # the same support, up to ties at the threshold
    assert opt.sr2_stats()["rejected_steps"] > 0


def test_digits_l1_logistic_float32_to_rounding(fista_optimum):
    F_star, _ = fista_optimum
    Fs, _, _ = _sr2_digits(torch.float32, 1.0, 800)
    # float32 losses decide ρ: F decreases up to float32 rounding of the loss
    assert all(b <= a + 1e-6 for a, b in zip(Fs, Fs[1:]))
    assert abs(Fs[-1] - F_star) <= 2e-5 * F_star


# -- sigma="hessian" -----------------------------------------------------------------------------------


def test_hessian_init_finds_the_top_eigenvalue_of_a_quadratic():
    g = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    eigs = torch.tensor([12.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    H = Q @ torch.diag(eigs) @ Q.T
    w = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    opt = SR2([w], sigma="hessian")
    assert math.isnan(opt.sigma) and opt.param_groups[0]["lr"] == 0.0

    def f():
        return 0.5 * w @ H @ w

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    rng = torch.get_rng_state()
    x0 = w.detach().clone()
    opt.step(closure, f)
    assert torch.equal(torch.get_rng_state(), rng)  # the power iteration leaves the global RNG alone
    # σ0 ≈ 12 (20 power iterations, ratio 3/12): the step from σ0 then decides σ1
    st = opt.sr2_stats()
    sigma0 = float(eigs[0])
    xh = x0 - (H @ x0) / sigma0
    assert st["accepted"]  # σ0 = λ_max: the step is a decrease on a quadratic
    torch.testing.assert_close(w.detach(), xh, rtol=1e-4, atol=1e-6)
    sig = opt.sigma / (0.8 if st["rho"] >= 0.99 else 1.0)
    assert sig == pytest.approx(12.0, rel=1e-4)


def test_hessian_init_clamps_and_falls_back():
    w = torch.nn.Parameter(torch.ones(3))
    opt = SR2([w], sigma="hessian")

    def f():  # linear: zero Hessian
        return w.sum()

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    with pytest.warns(UserWarning, match="not positive"):
        opt.step(closure, f)
    assert opt.sr2_stats()["steps"] == 1 and opt.sigma in (1.0, 5.56, 0.8)


# -- errors --------------------------------------------------------------------------------------------

BAD = [
    (dict(eta1=0.0), "0 < eta1 <= eta2 < 1"),
    (dict(eta1=0.5, eta2=0.4), "0 < eta1 <= eta2 < 1"),
    (dict(eta2=1.0), "0 < eta1 <= eta2 < 1"),
    (dict(eta1=float("nan")), "eta1 must be a finite number"),
    (dict(gamma1=1.0), "1 < gamma1 <= gamma2"),
    (dict(gamma1=5.56, gamma2=2.95), "gamma2=2.95"),
    (dict(gamma3=0.0), "0 < gamma3"),
    (dict(gamma3=1.5), "0 < gamma3"),
    (dict(gamma2="big"), "gamma2 must be a finite number"),
    (dict(sigma_min=0.0), "sigma_min must be > 0"),
    (dict(sigma=1e-7, sigma_min=1e-6), "sigma >= sigma_min"),
    (dict(sigma=-1.0), "sigma >= sigma_min"),
    (dict(sigma=float("inf")), "sigma must be a finite number"),
    (dict(sigma="adaptive"), "'hessian'"),
    (dict(sigma=True), "sigma must be a finite number"),
    (dict(distributed="yes"), "distributed must be"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=lambda v: str(v))
def test_invalid_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        SR2([torch.nn.Parameter(torch.ones(2))], **kw)


def test_group_lr_is_refused():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="SR2 has no learning rate"):
        SR2([{"params": [w], "lr": 0.1}])
    opt = SR2([w])
    with pytest.raises(ValueError, match="SR2 has no learning rate"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.1})
    with pytest.raises(ValueError, match="sigma must be >= sigma_min"):
        opt.sigma = 0.0


def test_missing_closures_raise_before_anything_runs():
    w = torch.nn.Parameter(torch.ones(2))
    opt = SR2([w])
    with pytest.raises(ValueError, match="SR2.step needs a closure that re-evaluates the loss with backward"):
        opt.step()
    ran = []
    with pytest.raises(ValueError, match="pass trial_closure= .* or train through ProxMixin"):
        opt.step(lambda: ran.append(1))
    assert ran == [] and opt.sr2_stats()["steps"] == 0
    assert opt.step(lambda: None, lambda: 0.0) is None and opt.sr2_stats()["steps"] == 0


def test_trial_closure_attribute_is_used():
    w = torch.nn.Parameter(torch.ones(2))
    opt = SR2([w])
    opt.trial_closure = lambda: (w**2).sum()

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.sr2_stats()["steps"] == 1


# -- resume --------------------------------------------------------------------------------------------


def test_resume_bit_exact_through_weights_only_state_dict():
    f, x0, b0 = _problem(seed=1)

    def make(state=None, params=None):
        x = torch.nn.Parameter(x0.clone() if params is None else params[0].clone())
        b = torch.nn.Parameter(b0.clone() if params is None else params[1].clone())
        opt = SR2([{"params": [x], "regularizer": L0(0.02)}, {"params": [b]}], sigma=0.05)
        if state is not None:
            opt.load_state_dict(state)
        return x, b, opt

    def run(x, b, opt, n):
        def closure():
            opt.zero_grad()
            loss = f(x, b)
            loss.backward()
            return loss

        for _ in range(n):
            opt.step(closure, lambda: f(x, b))

    x, b, opt = make()
    run(x, b, opt, 60)
    ref = (x.detach().clone(), b.detach().clone(), opt.sr2_stats())

    x, b, opt = make()
    run(x, b, opt, 25)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "x": x.detach(), "b": b.detach()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    x2, b2, opt2 = make(ck["opt"], (ck["x"], ck["b"]))
    assert opt2.sigma == opt.sigma and opt2.param_groups[0]["lr"] == 1.0 / opt.sigma
    run(x2, b2, opt2, 35)
    assert torch.equal(x2.detach(), ref[0]) and torch.equal(b2.detach(), ref[1])
    got, want = opt2.sr2_stats(), ref[2]
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])), k
    assert want["rejected_steps"] > 0
    # the loaded state is the optimizer's own copy
    ck["opt"]["state"]["sr2"]["sigma"] = 123.0
    assert opt2.sigma != 123.0


# -- the paper's pruning curve (benchmarks/prune_curve.py) -----------------------------------------------


def test_prune_curve_by_hand():
    from benchmarks.prune_curve import prune_curve

    model = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.05, 0.0, 2e-4], [-3e-6, 0.5, -0.2, 1e-9]]))
    trained = model.weight.detach().clone()
    x = torch.eye(4)
    y = model(x).argmax(1)
    rows = prune_curve(model, [model.weight], [(x, y)], ks=range(1, 9))
    assert [r["k"] for r in rows] == list(range(9))
    assert rows[0]["sparsity"] == 1 / 8 and rows[0]["accuracy"] == 1.0
    # zeros at α = 10^-k: |w| ≤ α
    want = {1: 5, 2: 4, 3: 4, 4: 3, 5: 3, 6: 2, 7: 2, 8: 2}
    for r in rows[1:]:
        assert r["sparsity"] == want[r["k"]] / 8, r
    assert torch.equal(model.weight.detach(), trained)  # restored


def test_the_step_is_one_over_sigma_whatever_the_lr_mirror_says():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = SR2([w], sigma=4.0)
    opt.param_groups[0]["lr"] = 123.0  # e.g. a scheduler writing lr: ignored, and re-mirrored

    def closure():
        opt.zero_grad()
        loss = 0.5 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure, lambda: 0.5 * (w**2).sum())
    assert torch.equal(w.detach(), torch.tensor([0.75, -1.5], dtype=torch.float64))  # x − x/4
    assert opt.param_groups[0]["lr"] == 1.0 / opt.sigma


@pytest.mark.parametrize(
    "reg_name",
    ["L1", "L0", "Lq", "MCP", "SCAD", "GroupLasso", "NuclearNorm", "Quantization"],
)
def test_every_exact_prox_regularizer(reg_name):
    """x̂ = reg.prox(x − g/σ, 1/σ) and Δψ ≥ ½σ‖s‖² (x̂ minimizes the model m) for every regularizer."""
    from lightning_prox import regularizers as R

    reg = {
        "L1": R.L1(0.3),
        "L0": R.L0(0.05),
        "Lq": R.Lq(0.2, q=0.5),
        "MCP": R.MCP(0.3),
        "SCAD": R.SCAD(0.3),
        "GroupLasso": R.GroupLasso(0.3, dim="in"),
        "NuclearNorm": R.NuclearNorm(0.5),
        "Quantization": R.Quantization(0.3),
    }[reg_name]
    g = torch.Generator().manual_seed(5)
    target = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(6, 4, generator=g, dtype=torch.float64))
    sigma = 3.0
    opt = SR2([w], regularizer=reg, sigma=sigma)
    seen = []

    def f():
        return 0.5 * ((w - target) ** 2).sum()

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    def trial():
        seen.append(w.detach().clone())
        return f()

    x = w.detach().clone()
    grad = x - target
    opt.step(closure, trial)
    xh = reg.prox(x - grad / sigma, 1.0 / sigma)
    torch.testing.assert_close(seen[0], xh, rtol=1e-10, atol=1e-12)
    s = seen[0] - x
    st = opt.sr2_stats()
    dpsi = float(reg.value(x) - (grad * s).sum() - reg.value(seen[0]))
    assert st["delta_psi"] == pytest.approx(dpsi, rel=1e-9, abs=1e-12)
    assert st["delta_psi"] >= 0.5 * sigma * float(s.square().sum()) - 1e-9
