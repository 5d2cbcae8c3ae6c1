"""ProxSGD and the two-stage Prox-SGD: reductions to torch SGD, the prox step by hand."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_prox.optim import ProxGen, ProxSGD, TwoStageProxSGD
from lightning_prox.regularizers import L1
from tests.cases import make_cnn, single_thread, train, weight_groups  # noqa: F401

SGD_VARIANTS = [
    dict(),
    dict(momentum=0.9),
    dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(momentum=0.5, dampening=0.3, weight_decay=1e-2),
]


@pytest.mark.parametrize(
    "impl", [{}, {"fused": False}, {"foreach": False}], ids=["fused", "foreach", "forloop"]
)
@pytest.mark.parametrize(
    "kw", SGD_VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "plain"
)
def test_reduces_to_torch_sgd_100_steps(impl, kw):
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, **kw), range(100))
    train(ours, ProxSGD(ours.parameters(), lr=0.05, **impl, **kw), range(100))
    for pa, pb in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)


def _manual_proxsgd(theta, grads, *, lr, momentum, dampening, nesterov, wd, lam):
    theta = theta.double().clone()
    buf = None
    for g in grads:
        d = g.double() + wd * theta
        if momentum:
            buf = d.clone() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        z = theta - lr * d
        theta = torch.sign(z) * torch.clamp(z.abs() - lr * lam, min=0)
    return theta


@pytest.mark.parametrize(
    "impl", [{}, {"fused": False}, {"foreach": False}], ids=["fused", "foreach", "forloop"]
)
@pytest.mark.parametrize(
    "kw", SGD_VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()) or "plain"
)
def test_l1_matches_proximal_gradient_formula(impl, kw):
    g = torch.Generator().manual_seed(5)
    theta0 = torch.randn(50, generator=g, dtype=torch.float64)
    grads = [torch.randn(50, generator=g, dtype=torch.float64) for _ in range(10)]
    expected = _manual_proxsgd(
        theta0, grads, lr=0.1, momentum=kw.get("momentum", 0.0), dampening=kw.get("dampening", 0.0),
        nesterov=kw.get("nesterov", False), wd=kw.get("weight_decay", 0.0), lam=2.0,
    )  # fmt: skip
    w = torch.nn.Parameter(theta0.clone())
    opt = ProxSGD([w], lr=0.1, regularizer=L1(2.0), **impl, **kw)
    for gr in grads:
        w.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
    assert (w == 0).any() and (w != 0).any()
    assert torch.equal(w == 0, expected == 0)


def test_groups_without_regularizer_are_plain_sgd():
    """One step from the same point: the unregularized group moves exactly as torch SGD, the other is thresholded."""
    ref = make_cnn()
    ours = copy.deepcopy(ref)
    train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9), range(1))
    train(ours, ProxSGD(weight_groups(ours, regularizer=L1(0.5)), lr=0.05, momentum=0.9), range(1))
    for (name, pa), pb in zip(ref.named_parameters(), ours.parameters()):
        if name.endswith("bias"):
            assert torch.equal(pa, pb)
        else:
            torch.testing.assert_close(pb, L1(0.5).prox(pa.detach(), 0.05), atol=1e-7, rtol=0)
            assert (pb == 0).sum() > (pa == 0).sum()


def test_prox_stats_threshold_is_lr_times_lam():
    model = make_cnn()
    opt = ProxSGD(weight_groups(model, regularizer=L1(0.03)), lr=0.2)
    train(model, opt, range(2))
    s = opt.prox_stats()
    assert float(s[0]["mean_threshold"]) == pytest.approx(0.2 * 0.03)
    assert s[0]["regularizer"] == "L1" and s[1]["regularizer"] is None
    opt.param_groups[0]["lam"] = 0.06  # what a RegularizationScheduler writes
    assert float(opt.prox_stats()[0]["mean_threshold"]) == pytest.approx(0.2 * 0.06)


def test_two_stage_matches_yang_formula():
    """θ̃ = prox^D_λ(θ − m̂/D) (no lr), θ ← θ + α(θ̃ − θ), Adam statistics (digest 000 §1.4)."""
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(30, generator=g, dtype=torch.float64)
    grads = [torch.randn(30, generator=g, dtype=torch.float64) for _ in range(8)]
    lr, b1, b2, eps, lam = 0.3, 0.9, 0.999, 1e-8, 0.4
    w = torch.nn.Parameter(theta.clone())
    opt = TwoStageProxSGD([w], lr=lr, betas=(b1, b2), eps=eps, regularizer=L1(lam))
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t, gr in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * gr
        v = b2 * v + (1 - b2) * gr * gr
        d = (v / (1 - b2**t)).sqrt() + eps
        z = theta - (m / (1 - b1**t)) / d
        tilde = torch.sign(z) * torch.clamp(z.abs() - lam / d, min=0)
        theta = theta + lr * (tilde - theta)
        w.grad = gr.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), theta, rtol=1e-12, atol=1e-12)


def test_two_stage_never_reaches_zero_from_random_init_and_stays_at_a_zero_optimum():
    """Stage 2 is a convex combination with lr < 1: θ̃ has zeros, θ does not (digest 000 §1.4, P12)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 20, generator=g)
    y = x[:, :3].sum(1)

    def loss(w):
        return 0.5 * ((x @ w - y) ** 2).mean()

    w = torch.nn.Parameter(torch.randn(20, generator=g))
    opt = TwoStageProxSGD([w], lr=0.1, regularizer=L1(0.5))
    proxgen_w = torch.nn.Parameter(w.detach().clone())
    proxgen = ProxGen([proxgen_w], lr=0.1, regularizer=L1(0.5))
    for _ in range(60):
        for p, o in ((w, opt), (proxgen_w, proxgen)):
            o.zero_grad()
            loss(p).backward()
            o.step()
    assert int((w == 0).sum()) == 0
    assert int((proxgen_w == 0).sum()) > 0  # the exact prox step does produce zeros here

    zero = torch.nn.Parameter(torch.zeros(20))
    grad0 = torch.autograd.grad(loss(zero), zero)[0]
    opt = TwoStageProxSGD([zero], lr=0.1, regularizer=L1(1.01 * float(grad0.abs().max())))
    for _ in range(20):
        opt.zero_grad()
        loss(zero).backward()
        opt.step()
    assert bool((zero == 0).all())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradient_names_the_parameter_and_changes_nothing(bad):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = ProxSGD(
        [{"params": [a], "param_names": ["a"]}, {"params": [b], "param_names": ["net.b"]}],
        lr=0.1, momentum=0.9, regularizer=L1(0.1),
    )  # fmt: skip
    a.grad, b.grad = torch.ones(2), torch.tensor([0.0, bad, 1.0])
    with pytest.raises(ValueError, match=r"param group 1, tensor 0 'net.b' \(shape \(3,\)\)"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(2)) and torch.equal(b.detach(), torch.ones(3))
    assert not any("momentum_buffer" in s for s in opt.state.values())  # no buffer was created either


def test_finite_gradients_whose_sum_overflows_pass_the_check():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = ProxSGD([w], lr=1e-40)
    w.grad = torch.full((4,), 3e38)  # finite; their float32 sum is inf
    opt.step()
    assert bool(torch.isfinite(w).all())


@pytest.mark.parametrize(
    "implementation, kw",
    [
        ("auto", dict(momentum=0.5, dampening=0.3, weight_decay=1e-2)),
        ("native", dict(momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ],
)
def test_native_sgd_l1_matches_forloop(implementation, kw, monkeypatch):
    """The single-pass native SGD+L1 kernel (built once per machine) equals the reference."""
    from lightning_prox.optim import _l1_kernels
    from lightning_prox.optim import proxsgd as proxsgd_module

    if not _l1_kernels.native_available():
        pytest.skip("no working C++ compiler here; the eager fallback runs (tests/test_native_kernels.py)")
    calls = []
    kernel = _l1_kernels.sgd_l1_
    monkeypatch.setattr(_l1_kernels, "sgd_l1_", lambda *a, **k: calls.append(len(a[0])) or kernel(*a, **k))
    monkeypatch.setattr(proxsgd_module, "AUTO_NATIVE_NUMEL", 1)
    ref = make_cnn()
    comp = copy.deepcopy(ref)
    train(
        ref,
        ProxSGD(weight_groups(ref, regularizer=L1(1e-2)), lr=0.05, **kw, foreach=False),
        range(20),
    )
    train(
        comp,
        ProxSGD(weight_groups(comp, regularizer=L1(1e-2)), lr=0.05, **kw, implementation=implementation),
        range(20),
    )
    assert len(calls) == 20  # every step, the first included (it fills the momentum buffers)
    for (name, p), q in zip(ref.named_parameters(), comp.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.equal(p == 0, q == 0), name
    assert sum(int((p == 0).sum()) for p in comp.parameters()) > 0
