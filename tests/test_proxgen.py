"""ProxGen: reductions to torch's Adam/AdamW/RMSprop/Adagrad, the prox step by hand, convex optimum."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lightning_prox.optim import ProxAdam, ProxGen
from lightning_prox.regularizers import L1
from tests.cases import make_cnn, single_thread, train, weight_groups  # noqa: F401

#: the round-1 implementation names of these tests, in the current vocabulary
IMPL = {
    "fast": {"implementation": "eager"},
    "forloop": {"foreach": False},
    "native": {"implementation": "native"},
    "auto": {},
}


def _assert_models_close(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("implementation", ["fast", "forloop"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_reduces_to_adamw_100_steps(implementation, weight_decay):
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    torch_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=weight_decay)
    opt = ProxGen(ours.parameters(), lr=1e-2, weight_decay=weight_decay, **IMPL[implementation])
    train(ref, torch_opt, range(100))
    train(ours, opt, range(100))
    _assert_models_close(ref, ours)


def test_lam_zero_group_is_plain_adam_and_alias():
    assert ProxAdam is ProxGen
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    torch_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    opt = ProxGen(weight_groups(ours, regularizer=L1(0.0)), lr=1e-2)
    train(ref, torch_opt, range(20))
    train(ours, opt, range(20))
    _assert_models_close(ref, ours)


@pytest.mark.parametrize("implementation", ["fast", "forloop"])
def test_rmsprop_reduces_to_torch_rmsprop(implementation):
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    torch_opt = torch.optim.RMSprop(ref.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    opt = ProxGen(
        ours.parameters(), lr=1e-3, betas=(0.0, 0.9), preconditioner="rmsprop", **IMPL[implementation]
    )
    train(ref, torch_opt, range(50))
    train(ours, opt, range(50))
    _assert_models_close(ref, ours)


@pytest.mark.parametrize("implementation", ["fast", "forloop"])
def test_adagrad_reduces_to_torch_adagrad(implementation):
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    torch_opt = torch.optim.Adagrad(ref.parameters(), lr=1e-2, eps=1e-8)
    opt = ProxGen(
        ours.parameters(), lr=1e-2, betas=(0.0, 0.9), preconditioner="adagrad", **IMPL[implementation]
    )
    train(ref, torch_opt, range(50))
    train(ours, opt, range(50))
    _assert_models_close(ref, ours)


def _manual_proxgen(theta, grads, *, lr, beta1, beta2, eps, wd, lam, bias_correction, metric, precond):
    """Algorithm 1/2 of the paper written out in float64 with an explicit soft threshold."""
    theta = theta.double().clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        theta = theta * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        m_hat = m / (1 - beta1**t) if bias_correction else m
        if precond == "adam":
            v = beta2 * v + (1 - beta2) * g * g
            c = (v / (1 - beta2**t)).sqrt() if bias_correction else v.sqrt()
            d = c + eps
        elif precond == "adagrad":
            v = v + g * g
            d = v.sqrt() + eps
        else:  # identity
            d = torch.ones_like(theta)
        theta_hat = theta - lr * m_hat / d
        thr = lr * lam / (d if metric == "preconditioned" else torch.ones_like(d))
        theta = torch.sign(theta_hat) * torch.clamp(theta_hat.abs() - thr, min=0)
    return theta


@pytest.mark.parametrize("implementation", ["fast", "forloop"])
@pytest.mark.parametrize(
    "bias_correction,prox_metric,precond",
    [
        (True, "preconditioned", "adam"),
        (False, "preconditioned", "adam"),
        (True, "euclidean", "adam"),
        (True, "preconditioned", "adagrad"),
        (True, "preconditioned", "identity"),
    ],
)
def test_l1_step_matches_paper_formula(implementation, bias_correction, prox_metric, precond):
    g = torch.Generator().manual_seed(3)
    theta0 = torch.randn(40, generator=g, dtype=torch.float64)
    grads = [torch.randn(40, generator=g, dtype=torch.float64) for _ in range(12)]
    kw = dict(lr=0.05, beta1=0.8, beta2=0.99, eps=1e-3, wd=0.1, lam=0.5)
    expected = _manual_proxgen(
        theta0, grads, **kw, bias_correction=bias_correction, metric=prox_metric, precond=precond
    )
    w = torch.nn.Parameter(theta0.clone())
    opt = ProxGen(
        [w], lr=0.05, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1, regularizer=L1(0.5),
        bias_correction=bias_correction, prox_metric=prox_metric, preconditioner=precond,
        threshold_cap=None, **IMPL[implementation],
    )  # fmt: skip
    for gr in grads:
        w.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
    assert (w == 0).any() and (w != 0).any()  # the test exercises both branches of the prox
    assert torch.equal(w == 0, expected == 0)


def test_bias_correction_off_thresholds_are_larger_early():
    """Digest P1: raw C_1 = sqrt(1-β)|g| makes the first thresholds ~30x larger."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(1000, generator=g) * 0.05
    grad = torch.randn(1000, generator=g)
    zeros = {}
    for bc in (True, False):
        w = torch.nn.Parameter(theta.clone())
        opt = ProxGen([w], lr=1e-3, regularizer=L1(0.5), bias_correction=bc, threshold_cap=None)
        w.grad = grad.clone()
        opt.step()
        zeros[bc] = int((w == 0).sum())
        stats = opt.prox_stats()[0]
        d = opt.denoms(opt.param_groups[0])[0]
        torch.testing.assert_close(
            stats["mean_threshold"].float(), (1e-3 * 0.5 / d).mean(), rtol=1e-5, atol=0
        )
    assert zeros[False] > zeros[True]


def test_prox_stats_keys_and_counts():
    model = make_cnn()
    opt = ProxGen(weight_groups(model, regularizer=L1(1e-2)), lr=1e-2)
    train(model, opt, range(5))
    stats = opt.prox_stats()
    assert [s["regularizer"] for s in stats] == ["L1", None]
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    assert int(stats[0]["zeros"]) == sum(int((p == 0).sum()) for p in weights) > 0
    assert stats[0]["numel"] == sum(p.numel() for p in weights)
    assert float(stats[1]["mean_threshold"]) == 0.0
    assert float(stats[0]["mean_threshold"]) > 1e-2 * 1e-2  # 1/D > 1 on average for small gradients


def test_nonfinite_gradient_raises_before_update():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ProxGen([w], lr=0.1, regularizer=L1(0.1))
    w.grad = torch.tensor([0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"non-finite gradient .* param group 0, tensor 0 \(shape \(3,\)\)"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3))
    opt.check_finite = False
    opt.step()  # no check: the NaN goes through
    assert torch.isnan(w).any()


def test_half_precision_falls_back_to_regularizer_prox():
    w = torch.nn.Parameter(torch.linspace(-1, 1, 64, dtype=torch.bfloat16))
    ref = torch.nn.Parameter(w.detach().clone())
    opts = [ProxGen([p], lr=0.1, regularizer=L1(0.5), **IMPL[i]) for p, i in ((w, "fast"), (ref, "forloop"))]
    for _ in range(3):
        for p, opt in zip((w, ref), opts):
            p.grad = torch.full_like(p, 0.01)
            opt.step()
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w, ref, atol=1e-2, rtol=0)
    assert torch.equal(w == 0, ref == 0) and (w == 0).sum() > 0


def test_setstate_defaults_for_old_checkpoints():
    w = torch.nn.Parameter(torch.ones(2))
    opt = ProxGen([w], lr=0.1)
    state = opt.__getstate__()
    for group in state["param_groups"]:
        for key in ("preconditioner", "bias_correction", "prox_metric"):
            del group[key]
    opt2 = ProxGen([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt2.__setstate__(state)
    assert opt2.param_groups[0]["preconditioner"] == "adam"
    assert math.isclose(opt2.param_groups[0]["lr"], 0.1)


@pytest.fixture(scope="module")
def digits_l1_logreg():
    """scikit-learn's l1 multinomial logistic regression on digits (saga, tiny tol) and our objective."""
    datasets = pytest.importorskip("sklearn.datasets")
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = datasets.load_digits(return_X_y=True)
    x = x / 16.0
    c = 0.05
    clf = linear_model.LogisticRegression(l1_ratio=1.0, C=c, solver="saga", tol=1e-10, max_iter=100_000)
    clf.fit(x, y)
    # sklearn minimizes C·Σ_i CE_i + ‖W‖₁; ours is mean CE + λ‖W‖₁, hence λ = 1/(C·n).
    lam = 1.0 / (c * len(y))
    xt, yt = torch.tensor(x), torch.tensor(y)

    def objective(w, b):
        return float(torch.nn.functional.cross_entropy(xt @ w.T + b, yt) + lam * w.abs().sum())

    w_sk, b_sk = torch.tensor(clf.coef_), torch.tensor(clf.intercept_)
    return xt, yt, lam, objective, w_sk, objective(w_sk, b_sk)


@pytest.mark.parametrize("which", ["ProxGen-identity", "ProxSGD"])
def test_l1_logistic_regression_reaches_sklearn_optimum(digits_l1_logreg, which):
    from lightning_prox.optim import ProxSGD

    xt, yt, lam, objective, w_sk, f_sk = digits_l1_logreg
    w = torch.nn.Parameter(torch.zeros(10, 64, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    groups = [{"params": [w], "regularizer": L1(lam)}, {"params": [b]}]  # the intercept is not penalized
    if which == "ProxSGD":
        opt = ProxSGD(groups, lr=2.0)
    else:
        opt = ProxGen(groups, lr=2.0, betas=(0.0, 0.999), preconditioner="identity")
    for _ in range(1500):  # full batch, fixed step: the proximal gradient method
        opt.zero_grad()
        torch.nn.functional.cross_entropy(xt @ w.T + b, yt).backward()
        opt.step()
    f = objective(w.detach(), b.detach())
    assert abs(f - f_sk) / f_sk < 1e-4
    assert torch.equal(w == 0, w_sk == 0)
    assert 0.5 < float((w == 0).double().mean()) < 0.99  # a genuinely sparse, non-trivial solution


@pytest.mark.parametrize("implementation", ["native", "auto"])
def test_native_implementation_matches_forloop(implementation, monkeypatch):
    """The single-pass native Adam+L1 kernel (built once per machine; "auto" picks it for large
    regularized groups, here every group) equals the reference."""
    from lightning_prox.optim import _l1_kernels
    from lightning_prox.optim import proxgen as proxgen_module

    if not _l1_kernels.native_available():
        pytest.skip("no working C++ compiler here; the eager fallback runs (tests/test_native_kernels.py)")
    calls = []
    kernel = _l1_kernels.adam_l1_
    monkeypatch.setattr(_l1_kernels, "adam_l1_", lambda *a, **k: calls.append(len(a[0])) or kernel(*a, **k))
    monkeypatch.setattr(proxgen_module, "AUTO_NATIVE_NUMEL", 1)
    ref = make_cnn()
    comp = copy.deepcopy(ref)
    kw = dict(lr=1e-2, weight_decay=0.1)
    train(ref, ProxGen(weight_groups(ref, regularizer=L1(1e-2)), **kw, foreach=False), range(20))
    train(
        comp,
        ProxGen(weight_groups(comp, regularizer=L1(1e-2)), **kw, **IMPL[implementation]),
        range(20),
    )
    assert len(calls) == 20  # regularized groups only: plain groups run torch's fused Adam
    _assert_models_close(ref, comp, atol=1e-6)
    weights = [p for n, p in comp.named_parameters() if n.endswith("weight")]
    assert sum(int((p == 0).sum()) for p in weights) > 0


def test_chunked_l1_kernel_on_a_tensor_larger_than_one_chunk():
    from lightning_prox.regularizers import _fused

    g = torch.Generator().manual_seed(11)
    n = 2 * _fused.CHUNK + 1234  # three chunks, the last one partial
    theta = torch.randn(n, generator=g) * 1e-2
    grads = [torch.randn(n, generator=g) * 1e-2 for _ in range(3)]
    ws = [torch.nn.Parameter(theta.clone()) for _ in range(2)]
    opts = [ProxGen([w], lr=1e-3, regularizer=L1(0.05), **IMPL[i]) for w, i in zip(ws, ("fast", "forloop"))]
    for gr in grads:
        for w, opt in zip(ws, opts):
            w.grad = gr.clone()
            opt.step()
    torch.testing.assert_close(ws[0], ws[1], atol=1e-7, rtol=1e-6)
    assert torch.equal(ws[0] == 0, ws[1] == 0)
    assert 0 < int((ws[0] == 0).sum()) < n


def test_group_lasso_under_adam_metric_uses_the_inexact_solver():
    """ProxGen + GroupLasso: θ = GroupLasso.prox(θ̂, α, D) with Adam's D, ≥ 2 inner iterations, zero groups."""
    from lightning_prox.regularizers import GroupLasso

    g = torch.Generator().manual_seed(4)
    theta = torch.randn(6, 8, generator=g) * 0.1
    theta[:, :3] *= 0.01  # three weak input columns
    grad = torch.randn(6, 8, generator=g)
    reg = GroupLasso(2.0, dim="in")  # zero iff ‖D⊙θ̂_g‖ ≤ α·λ·√6 ≈ 0.049: the weak columns only
    w = torch.nn.Parameter(theta.clone())
    opt = ProxGen([w], lr=0.01, regularizer=reg, threshold_cap=None)  # the paper's update
    w.grad = grad.clone()
    opt.step()
    d = grad.abs() + 1e-8  # first Adam step: m̂ = g, sqrt(v̂) = |g|
    theta_hat = theta - 0.01 * grad / d
    expected = reg.prox(theta_hat, 0.01, d)
    torch.testing.assert_close(w.detach(), expected, atol=1e-6, rtol=1e-5)
    stats = opt.prox_stats()[0]
    assert stats["inner_iters"] >= 2
    zero_cols = (w == 0).all(dim=0)
    assert 0 < int(zero_cols.sum()) < 8


def test_native_implementation_on_one_element_tensors():
    """Tensors of one element (no SIMD body at all) take the native kernel like any other."""
    from lightning_prox.optim import _l1_kernels

    if not _l1_kernels.native_available():
        pytest.skip("no working C++ compiler here; the eager fallback runs")
    g = torch.Generator().manual_seed(5)
    inits = [torch.randn(1, generator=g), torch.randn(7, 3, generator=g), torch.randn(1, 1, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in inits] for _ in range(6)]
    outs = {}
    for impl in ("forloop", "native"):
        ws = [torch.nn.Parameter(t.clone()) for t in inits]
        opt = ProxGen(ws, lr=0.1, regularizer=L1(0.3), **IMPL[impl])
        for gs in grads:
            for w, gr in zip(ws, gs):
                w.grad = gr.clone()
            opt.step()
        outs[impl] = ws
    for a, b in zip(outs["forloop"], outs["native"]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        assert torch.equal(a == 0, b == 0)
