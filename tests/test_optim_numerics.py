"""The optimizers on what users run: timm ResNets with zero-initialized norms, float16/bfloat16
parameters, gradients whose square overflows, and learning rates of exactly 0."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD, TwoStageProxSGD
from lightning_prox.regularizers import L0, L1, MCP, SCAD, GroupLasso, Lq, NuclearNorm, Quantization
from lightning_prox.structure import param_groups_regularized
from tests.cases import single_thread  # noqa: F401

OPTIMIZERS = {
    "ProxGen": functools.partial(ProxGen, lr=1e-3),
    "ProxGen-eager": functools.partial(ProxGen, lr=1e-3, implementation="eager"),
    "ProxSGD": functools.partial(ProxSGD, lr=1e-3, momentum=0.9),
    "TwoStageProxSGD": functools.partial(TwoStageProxSGD, lr=1e-3),
}
#: the dual-averaging methods: lr = 0 is the identity only before any step (their β_t or averaging
#: still moves W later), so they share the overflow and half-precision tests, not the lr-schedule one
DUAL_AVERAGING = {
    "RMDA": functools.partial(RMDA, lr=1e-2, momentum=0.5),
    "RAMDA": functools.partial(RAMDA, lr=1e-2, momentum=0.5, implementation="eager"),
    "RAMDA-native": functools.partial(RAMDA, lr=1e-2, momentum=0.5, implementation="native"),
}
REGULARIZERS = {"L1": L1(1e-3), "Lq": Lq(1e-3, q=0.5), "GroupLasso": GroupLasso(1e-3)}
#: |g| whose square overflows the dtype of the second moment, but that is finite itself
OVERFLOWING = {torch.float32: 1e21, torch.float16: 3e4, torch.bfloat16: 1e21}


def _conv_zero_fraction(net: nn.Module) -> float:
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    return sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)


def _one_step_resnet18(reg, **kw) -> float:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)  # zero_init_last=True: timm's default
    opt = ProxGen(param_groups_regularized(net, reg), lr=1e-3, **kw)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    return _conv_zero_fraction(net)


@pytest.mark.parametrize("reg", [L1(1e-6), GroupLasso(1e-6)], ids=["L1", "GroupLasso"])
def test_proxgen_default_does_not_wipe_a_timm_resnet18_in_one_step(reg):
    """Blocks behind timm's zero-initialized last norms get exactly zero gradients at step 1; the
    metric floor keeps their weights (each moves at most lr), where the paper's update zeroes them."""
    assert _one_step_resnet18(reg) < 1e-3  # only weights that started within ~lr of zero
    assert _one_step_resnet18(reg, threshold_cap=None) > 0.9  # the paper's update, for contrast


def test_metric_floor_caps_the_threshold_at_kappa_lr():
    """A coordinate with tiny statistics shrinks by exactly κ·lr in the prox; one with no gradient
    history at all (v = 0) gets the Euclidean prox (threshold lr·λ); ordinary coordinates get the
    paper's threshold lr·λ/D unchanged."""
    lr, lam, kappa = 1e-2, 0.5, 2.0
    w = nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
    opt = ProxGen([w], lr=lr, regularizer=L1(lam), threshold_cap=kappa)
    w.grad = torch.tensor([0.0, 1e-6, 0.1])
    opt.step()
    assert float(w[0]) == pytest.approx(1.0 - lr * lam, abs=1e-7)  # v = 0: metric 1
    # D ≈ 1e-6 and D = 0.1 are both below the floor λ/κ = 0.25: threshold lr·λ/0.25 = κ·lr
    assert float(w[1]) == pytest.approx(1.0 - lr * 1e-6 / (1e-6 + 1e-8) - kappa * lr, abs=1e-6)
    assert float(w[2]) == pytest.approx(1.0 - lr - kappa * lr, abs=1e-6)
    w2 = nn.Parameter(torch.tensor([1.0]))
    opt2 = ProxGen([w2], lr=lr, regularizer=L1(lam), threshold_cap=100.0)
    w2.grad = torch.tensor([1.0])  # D = 1 + eps > λ/κ = 5e-3: the paper's threshold
    opt2.step()
    assert float(w2[0]) == pytest.approx(1.0 - lr - lr * lam / (1.0 + 1e-8), abs=1e-6)


@pytest.mark.parametrize("reg", [L0(0.5), Lq(0.5, q=0.5), Lq(0.5, q=2 / 3)], ids=["L0", "Lq1/2", "Lq2/3"])
def test_metric_floor_caps_hard_thresholds_at_kappa_lr(reg):
    """ℓ0 and Lq zero |θ̂| ≤ c·(lr·λ/D)^p, which grows faster than lr·λ/D as D → 0: the floor makes the
    zeroing threshold exactly κ·lr for tiny statistics and for coordinates without gradient history,
    where the paper's update (threshold_cap=None) zeroes weights far from zero."""
    lr, kappa = 1e-2, 1.5
    c, p = reg.zero_threshold_law
    assert c * (lr * reg.lam) ** p > kappa * lr  # the Euclidean threshold (v = 0) exceeds the cap too
    values = torch.tensor([0.5, 0.99, 1.01, 2.0]) * kappa * lr  # around the cap's threshold κ·lr
    for grad in (0.0, 1e-6):  # no gradient history (v = 0), tiny statistics
        for cap, expect_zero in ((kappa, [True, True, False, False]), (None, [True] * 4)):
            # start one Adam step (lr·g/(g + eps) at t = 1) above the values, so that θ̂ ≈ values
            w = nn.Parameter(values + lr * grad / (grad + 1e-8))
            opt = ProxGen([w], lr=lr, regularizer=reg, threshold_cap=cap)
            w.grad = torch.full_like(w, grad)
            opt.step()
            assert (w == 0).tolist() == expect_zero, (grad, cap, w.tolist())
    # the law itself: the Euclidean prox zeroes exactly |z| ≤ c·(s·λ)^p
    for s in (1e-3, 0.3):
        t = c * (s * reg.lam) ** p
        z = torch.tensor([t * (1 - 1e-9), t * (1 + 1e-9)], dtype=torch.float64)
        assert (reg.prox(z, s) == 0).tolist() == [True, False]


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_bad_threshold_cap_names_the_value(bad):
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="threshold_cap"):
        ProxGen([w], lr=1e-3, threshold_cap=bad)


@pytest.mark.parametrize("dtype", list(OVERFLOWING), ids=str)
@pytest.mark.parametrize("reg_name", list(REGULARIZERS))
@pytest.mark.parametrize("opt_name", [*OPTIMIZERS, *DUAL_AVERAGING])
def test_overflowing_second_moment_never_writes_nan(opt_name, reg_name, dtype):
    """A finite gradient whose square overflows pins its coordinate (infinite metric) or moves it by a
    finite amount; no NaN reaches the weights, as with torch.optim.Adam."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 8).to(dtype))
    ref = nn.Parameter(w.detach().clone().float())
    opt = {**OPTIMIZERS, **DUAL_AVERAGING}[opt_name]([w], regularizer=REGULARIZERS[reg_name])
    adam = torch.optim.Adam([ref], lr=1e-3)
    for step in range(3):
        g = torch.randn(4, 8)
        if step == 0:
            g[0, 0] = OVERFLOWING[dtype]
        w.grad, ref.grad = g.to(dtype), g.clone()
        opt.step()
        adam.step()
        assert torch.isfinite(ref).all()
        assert torch.isfinite(w).all(), f"{opt_name} + {reg_name} wrote non-finite weights at step {step}"
    assert w.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reg_name", list(REGULARIZERS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_half_precision_parameters_with_exact_zero_gradients(opt_name, reg_name, dtype):
    """precision="16-true": exact-zero gradient entries (eps underflows in float16) do not crash, and
    the step agrees with the float32 step to the dtype's rounding."""
    torch.manual_seed(0)
    w32 = nn.Parameter(torch.randn(6, 5))
    w16 = nn.Parameter(w32.detach().to(dtype))
    opts = [OPTIMIZERS[opt_name]([p], regularizer=REGULARIZERS[reg_name]) for p in (w32, w16)]
    for _ in range(3):
        g = torch.randn(6, 5)
        g[:, 0] = 0.0
        for p, opt in zip((w32, w16), opts):
            p.grad = g.to(p.dtype)
            opt.step()
    assert w16.dtype == dtype and torch.isfinite(w16).all()
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(w16.float(), w32.detach(), atol=tol, rtol=tol)


@pytest.mark.parametrize("reg_name", [*REGULARIZERS, "None"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_lr_zero_leaves_the_weights_and_schedules_through_zero(opt_name, reg_name):
    """A warmup from 0 and a cosine schedule to eta_min=0: lr = 0 is legal, the weights stay put."""
    reg = None if reg_name == "None" else REGULARIZERS[reg_name]
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 8))
    opt = OPTIMIZERS[opt_name]([w], regularizer=reg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 2)  # warmup from lr = 0
    before = w.detach().clone()
    w.grad = torch.randn(4, 8)
    opt.step()
    assert torch.equal(w.detach(), before)
    sched.step()
    opt.step()
    assert not torch.equal(w.detach(), before)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2, eta_min=0.0)
    for _ in range(2):
        cosine.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("solver", ["newton", "pg"])
@pytest.mark.parametrize("dim", ["in", "out"])
def test_group_lasso_infinite_metric_pins_the_coordinate(solver, dim):
    """metric = +inf pins x_i = z_i; the rest of the group solves the prox with that coordinate fixed,
    which is the limit of a huge finite metric (compared with 1e8), and no NaN appears."""
    torch.manual_seed(0)
    z = torch.randn(5, 6, 3)
    metric = torch.rand(5, 6, 3) + 0.5
    metric[0, 0, 0] = metric[2, 3, 1] = float("inf")
    z[2, 3, 1] = 0.0  # a pinned zero: 0·inf must not make the group NaN
    reg = GroupLasso(0.8, dim=dim, solver=solver, max_iters=500, rtol=1e-12)
    x = reg.prox(z, 1.0, metric=metric)
    big = reg.prox(z, 1.0, metric=torch.where(torch.isinf(metric), 1e8, metric))
    assert torch.isfinite(x).all()
    assert float(x[0, 0, 0]) == float(z[0, 0, 0]) and float(x[2, 3, 1]) == 0.0
    torch.testing.assert_close(x, big, atol=1e-5, rtol=1e-5)
    assert (x == 0).any()  # some groups without a pinned nonzero entry are still zeroed


# -- RMDA / RAMDA on the shared base --------------------------------------------------------------
@pytest.mark.parametrize("opt_name", list(DUAL_AVERAGING))
def test_dual_averaging_add_param_group_with_a_regularizer_object_steps(opt_name):
    """Lightning's BackboneFinetuning calls add_param_group with a regularizer object: it is kept as a
    spec (weights_only checkpoints) and the next step applies it."""
    torch.manual_seed(0)
    head, backbone = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4, 6))
    opt = DUAL_AVERAGING[opt_name]([head])
    opt.add_param_group({"params": [backbone], "regularizer": GroupLasso(1e3)})
    assert opt.param_groups[1]["regularizer"]["name"] == "GroupLasso" and opt.param_groups[1]["lam"] == 1e3
    head.grad, backbone.grad = torch.randn(4, 6), torch.randn(4, 6)
    opt.step()
    assert (opt.state[backbone]["prox_point"] == 0).all()  # λ = 1e3 zeroes every group of Ŵ
    assert not (opt.state[head]["prox_point"] == 0).any()


@pytest.mark.parametrize("opt_name", list(DUAL_AVERAGING))
def test_dual_averaging_misfit_regularizer_named_at_construction(opt_name):
    bias = nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match=r"param group 0, tensor 0 'head\.bias' \(shape \(5,\)\)"):
        DUAL_AVERAGING[opt_name](
            [{"params": [bias], "param_names": ["head.bias"], "regularizer": GroupLasso(0.1)}]
        )
    opt = DUAL_AVERAGING[opt_name]([nn.Parameter(torch.ones(2, 2))])
    with pytest.raises(ValueError, match=r"param group 1.*shape \(5,\)"):
        opt.add_param_group({"params": [bias], "regularizer": GroupLasso(0.1)})
    assert len(opt.param_groups) == 1  # the failed group was not kept


@pytest.mark.parametrize("reg_name", [*REGULARIZERS, "None"])
@pytest.mark.parametrize("opt_name", list(DUAL_AVERAGING))
def test_dual_averaging_lr_zero(opt_name, reg_name):
    """lr = 0 is legal: from the start (a warmup from 0) nothing moves; later (a cosine to 0) the step
    is the method's own (α stops growing) and stays finite."""
    reg = None if reg_name == "None" else REGULARIZERS[reg_name]
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 8))
    opt = DUAL_AVERAGING[opt_name]([w], regularizer=reg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / 2, 1.0))
    before = w.detach().clone()
    w.grad = torch.randn(4, 8)
    opt.step()
    assert torch.equal(w.detach(), before)
    for _ in range(3):
        sched.step()
        w.grad = torch.randn(4, 8)
        opt.step()
    assert not torch.equal(w.detach(), before)
    opt.param_groups[0]["lr"] = 0.0
    alpha = opt.state[w]["alpha"]
    opt.step()
    assert opt.state[w]["alpha"] == alpha and torch.isfinite(w).all()


@pytest.mark.parametrize("opt_name", list(DUAL_AVERAGING))
def test_dual_averaging_maximize_equals_minimizing_the_negated_gradient(opt_name):
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(4, 8)), nn.Parameter(torch.randn(4, 8))
    b.data.copy_(a.data)
    opt_a = DUAL_AVERAGING[opt_name]([a], regularizer=L1(1e-2), maximize=True)
    opt_b = DUAL_AVERAGING[opt_name]([b], regularizer=L1(1e-2))
    for _ in range(3):
        g = torch.randn(4, 8)
        a.grad, b.grad = g.clone(), -g
        opt_a.step()
        opt_b.step()
    assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("reg", [L1(1e-2), GroupLasso(1e-2)], ids=["L1", "GroupLasso"])
def test_ramda_split_at_a_pre_prox_hook_equals_the_fused_step(reg):
    """With a pre-prox hook the step runs in two halves (sums, then solve); the hook sees the sums
    updated and W not yet, and the result equals the one-call step."""
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(6, 5))
    b.data.copy_(a.data)
    opt_a = RAMDA([a], lr=0.1, momentum=0.5, regularizer=reg, implementation="eager")
    opt_b = RAMDA([b], lr=0.1, momentum=0.5, regularizer=reg, implementation="eager")
    seen = []
    opt_b.register_pre_prox_hook(lambda o: seen.append((b.detach().clone(), o.state[b]["grad_sum"].clone())))
    for _ in range(4):
        g = torch.randn(6, 5)
        a.grad, b.grad = g.clone(), g.clone()
        w_before = b.detach().clone()
        opt_a.step()
        opt_b.step()
        assert torch.equal(seen[-1][0], w_before) and torch.equal(seen[-1][1], opt_b.state[b]["grad_sum"])
    torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(b.detach() == 0, a.detach() == 0)


@pytest.mark.parametrize("opt_name", list(DUAL_AVERAGING))
def test_dual_averaging_non_finite_gradient_changes_nothing(opt_name):
    w = nn.Parameter(torch.randn(3, 4))
    opt = DUAL_AVERAGING[opt_name]([{"params": [w], "param_names": ["fc.weight"]}], regularizer=L1(1e-3))
    w.grad = torch.ones(3, 4)
    opt.step()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[w].items()}
    before = w.detach().clone()
    w.grad = torch.full((3, 4), float("nan"))
    with pytest.raises(ValueError, match="fc.weight"):
        opt.step()
    assert torch.equal(w.detach(), before)
    for k, v in state.items():
        assert torch.equal(opt.state[w][k], v) if isinstance(v, torch.Tensor) else opt.state[w][k] == v


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_proxgen_half_precision_keeps_float32_moments_and_tracks_float32(dtype):
    """(1 − β2)·g² underflows float16 for small gradients; with float16 moments the step became m/ε
    (weights 7× off after 10 steps, torch.optim.Adam gives NaN). The moments are float32, also after
    a resume through state_dict."""
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (10, 64)]
    start = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    grads = [[torch.randn(s, generator=g) * 0.05 for s in shapes] for _ in range(10)]

    def run(dt, steps, resume_at=None):
        ps = [nn.Parameter(x.clone().to(dt)) for x in start]  # clone: .to(float32) would share storage
        opt = ProxGen([{"params": ps, "regularizer": L1(1e-2)}], lr=1e-2)
        for t in range(steps):
            if t == resume_at:
                state = opt.state_dict()
                opt = ProxGen([{"params": ps, "regularizer": L1(1e-2)}], lr=1e-2)
                opt.load_state_dict(state)
            for p, gr in zip(ps, grads[t]):
                p.grad = gr.to(dt)
            opt.step()
        return ps, opt

    half, opt = run(dtype, 10)
    full, _ = run(torch.float32, 10)
    assert all(opt.state[p]["exp_avg_sq"].dtype == torch.float32 for p in half)
    for h, f in zip(half, full):
        assert h.dtype == dtype
        torch.testing.assert_close(
            h.float(), f.detach(), atol=4e-3 if dtype == torch.float16 else 1.5e-2, rtol=0
        )
    resumed, opt2 = run(dtype, 10, resume_at=5)
    assert all(opt2.state[p]["exp_avg"].dtype == torch.float32 for p in resumed)
    diffs = [float((a.detach().float() - b.detach().float()).abs().max()) for a, b in zip(half, resumed)]
    assert diffs == [0.0, 0.0], diffs


@pytest.mark.parametrize("opt_name", ["RMDA", "RAMDA"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dual_averaging_half_precision_keeps_float32_sums(opt_name, dtype):
    """V, U, W_0 and Ŵ of half-precision parameters are float32 (small s·g² underflow in float16: RAMDA
    drifted 4e-2 from the float32 run in 10 steps); a resume keeps them float32 and continues exactly."""
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (10, 64)]
    start = [torch.randn(s, generator=g) * 0.1 for s in shapes]
    grads = [[torch.randn(s, generator=g) * 0.05 for s in shapes] for _ in range(10)]
    make = DUAL_AVERAGING[opt_name]

    def run(dt, resume_at=None):
        ps = [nn.Parameter(x.clone().to(dt)) for x in start]
        opt = make([{"params": ps, "regularizer": GroupLasso(1e-2)}])
        for t in range(10):
            if t == resume_at:
                state = opt.state_dict()
                opt = make([{"params": ps, "regularizer": GroupLasso(1e-2)}])
                opt.load_state_dict(state)
            for p, gr in zip(ps, grads[t]):
                p.grad = gr.to(dt)
            opt.step()
        return ps, opt

    half, opt = run(dtype)
    full, _ = run(torch.float32)
    keys = [
        k for k, v in opt.state[half[0]].items() if isinstance(v, torch.Tensor) and v.shape == half[0].shape
    ]
    assert keys and all(opt.state[p][k].dtype == torch.float32 for p in half for k in keys)
    for h, f in zip(half, full):
        assert h.dtype == dtype
        torch.testing.assert_close(
            h.float(), f.detach(), atol=2e-3 if dtype == torch.float16 else 1e-2, rtol=0
        )
    resumed, opt2 = run(dtype, resume_at=5)
    assert all(opt2.state[p][k].dtype == torch.float32 for p in resumed for k in keys)
    assert all(torch.equal(a, b) for a, b in zip(half, resumed))


NAN_REGULARIZERS = {
    "L1": L1(1e-3),
    "L0": L0(1e-3),
    "Lq1/2": Lq(1e-3, q=0.5),
    "MCP": MCP(1e-3),
    "SCAD": SCAD(1e-3),
    "Quantization": Quantization(1e-3),
    "GroupLasso-out": GroupLasso(1e-3, dim="out"),
    "GroupLasso-in": GroupLasso(1e-3, dim="in"),
    "NuclearNorm": NuclearNorm(1e-3),
}


@pytest.mark.parametrize("reg_name", list(NAN_REGULARIZERS))
@pytest.mark.parametrize("opt_name", ["ProxGen", "ProxGen-eager", "ProxSGD", *DUAL_AVERAGING])
def test_nan_gradient_without_the_check_gives_nan_on_every_path(opt_name, reg_name):
    """``check_finite=False`` with a NaN gradient: no error halfway through the step (after the
    moments changed), and the NaN coordinate comes out NaN, never zero; native and eager agree on
    which entries are NaN."""
    reg = NAN_REGULARIZERS[reg_name]
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(6, 5))
    opt = {**OPTIMIZERS, **DUAL_AVERAGING}[opt_name]([p], regularizer=reg, check_finite=False)
    p.grad = torch.randn(6, 5)
    opt.step()
    p.grad = torch.randn(6, 5)
    p.grad[3, 2] = float("nan")
    opt.step()
    assert torch.isnan(p[3, 2])
    if reg_name == "NuclearNorm":  # no SVD with a NaN: the matrix is NaN throughout
        assert torch.isnan(p).all()
    elif reg_name.startswith("GroupLasso"):  # its group is NaN or zero, the others finite
        group = p[3] if reg_name.endswith("out") else p[:, 2]
        if opt_name not in DUAL_AVERAGING:  # there W averages the prox point with the old W
            assert bool((torch.isnan(group) | (group == 0)).all())
        assert int(torch.isnan(p).sum()) == int(torch.isnan(group).sum())
    else:
        assert int(torch.isnan(p).sum()) == 1
