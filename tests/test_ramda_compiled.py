"""RAMDA's compiled CPU step (``implementation="compiled"``/``"auto"``): the division-free cube root, agreement
with the eager step (values, zeros, solver iterations), exact resume, eager fallback and the auto threshold.

The kernels compile once per process (about ten graphs, a couple of minutes on this machine when the
inductor cache is cold); every test here shares them.
"""

import io
import warnings

import pytest
import torch

from lightning_prox.optim import RAMDA
from lightning_prox.optim import _ramda_compiled as rc
from lightning_prox.optim import ramda as ramda_module
from lightning_prox.regularizers import L1, GroupLasso, _fused

# [out, in, k] with k > 1 (axis 2), linear and 1×1 conv (axis 0), and degenerate views run eagerly
SHAPES_IN = ((12, 6, 3, 3), (9, 6), (5, 4, 1, 1), (1, 7))
SHAPES_OUT = ((12, 6, 3, 3), (9, 6), (1, 7), (7,))


def _opt_run(impl, reg, shapes, steps=8, momentum=0.3, seed=0, restart_at=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    opt = RAMDA(params, lr=0.1, momentum=momentum, eps=1e-6, regularizer=reg, implementation=impl)
    infos = []
    for k in range(steps):
        if k == restart_at:
            opt.restart(eps_factor=0.1)
        for p in params:
            # per-element scales spanning decades: the metric P varies inside every group
            p.grad = (torch.randn(p.shape, generator=g) * torch.rand(p.shape, generator=g) ** 3).to(dtype)
        opt.step()
        infos.append([dict(i) for i in opt.solver_info])
    return params, opt, infos


def _require_compiled(monkeypatch):
    """Count compiled-kernel runs; skip when torch.compile cannot work here (the eager path then runs)."""
    calls = []
    run = rc._run
    monkeypatch.setattr(
        rc, "_run", lambda name, args, regular: calls.append((name, regular)) or run(name, args, regular)
    )
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cbrt_is_accurate_on_the_whole_range(dtype):
    """The bit-guess + Newton cube root (run eagerly here) against a float64/float128-free reference:
    ≤ 1 ulp in float32 over 1e-44…1e38 including subnormals; in float64 y³ reproduces u to a few ulp."""
    lo = -44 if dtype == torch.float32 else -320
    hi = 38 if dtype == torch.float32 else 307
    u = torch.cat(
        [torch.logspace(lo, hi, 20001, dtype=torch.float64).to(dtype), torch.rand(5000, dtype=dtype)]
    )
    u = torch.cat([u, torch.zeros(3, dtype=dtype), torch.tensor([torch.finfo(dtype).tiny / 3], dtype=dtype)])
    y = rc.cbrt(u)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y[u == 0] == 0).all() and (y[u > 0] > 0).all()
    eps = torch.finfo(dtype).eps
    if dtype == torch.float32:
        ref = u.double().pow(1.0 / 3.0)
        rel = ((y.double() - ref).abs() / ref.clamp_min(1e-300))[u > 0]
        assert rel.max() <= eps
    else:
        pos = u > 1e-290  # y³ stays normal
        rel = ((y[pos] ** 3 - u[pos]) / u[pos]).abs()
        assert rel.max() <= 8 * eps


@pytest.mark.parametrize(
    ("reg", "shapes"),
    [
        (None, SHAPES_OUT),
        (L1(0.05), SHAPES_OUT),
        (GroupLasso(0.05, dim="in"), SHAPES_IN),
        (GroupLasso(0.3, dim="in"), SHAPES_IN),  # some groups screened to exact zeros
        (GroupLasso(0.05, dim="out"), SHAPES_OUT),
    ],
    ids=["none", "l1", "group-in", "group-in-screened", "group-out"],
)
def test_compiled_step_matches_eager(reg, shapes, monkeypatch):
    """Compiled and eager steps agree to float32 rounding over 8 steps and a restart: parameters and Ŵ within
    1e-6 of their scale, the same exact zeros, and the same solver iterations and screened groups."""
    calls = _require_compiled(monkeypatch)
    a, opt_a, info_a = _opt_run("fast", reg, shapes, restart_at=5)
    b, opt_b, info_b = _opt_run("compiled", reg, shapes, restart_at=5)
    if not _fused.compiled_available():
        pytest.skip("torch.compile is not usable here; the eager fallback ran")
    assert any(regular for _, regular in calls), "the compiled kernels did not run"
    for pa, pb in zip(a, b):
        for x, y in ((pa, pb), (opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])):
            scale = y.abs().max().clamp_min(1.0)
            assert (x - y).abs().max() <= 1e-6 * scale
            assert torch.equal(x == 0, y == 0)
        for key in ("grad_sum", "grad_sq_sum"):
            x, y = opt_a.state[pa][key], opt_b.state[pb][key]
            assert (x - y).abs().max() <= 1e-6 * y.abs().max().clamp_min(1e-30)
    assert info_a == info_b
    if isinstance(reg, GroupLasso):
        screened = sum(i["screened"] for step in info_b for i in step)
        if reg.lam == 0.3:  # the case meant to exercise screening does
            assert screened > 0


def test_compiled_resume_is_bit_exact(monkeypatch):
    """A checkpoint (weights_only load) taken mid-stage resumes the compiled step bit for bit, including
    the cached group norms of Ŵ that seed the next solve."""
    calls = _require_compiled(monkeypatch)
    reg = GroupLasso(0.05, dim="in")
    params, opt, _ = _opt_run("compiled", reg, SHAPES_IN, steps=5)
    if not _fused.compiled_available():
        pytest.skip("torch.compile is not usable here")
    assert calls and all(opt.state[p]["prox_point_norms"].numel() for p in params)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": [p.detach().clone() for p in params]}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    params2 = [torch.nn.Parameter(w) for w in ckpt["w"]]
    opt2 = RAMDA(params2, implementation="compiled")
    opt2.load_state_dict(ckpt["opt"])
    g = torch.Generator().manual_seed(99)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(4)]
    for o, ps in ((opt, params), (opt2, params2)):
        for step_grads in grads:
            for p, gr in zip(ps, step_grads):
                p.grad = gr.clone()
            o.step()
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
        for key in ("initial_point", "grad_sum", "grad_sq_sum", "prox_point", "prox_point_norms"):
            assert torch.equal(opt.state[a][key], opt2.state[b][key]), key


def test_failed_compile_falls_back_to_eager_and_changes_nothing(monkeypatch):
    """A compiler failure warns once and the step runs eagerly: results equal the eager step to the bit."""
    monkeypatch.setattr(_fused, "_compile_failed", False)
    monkeypatch.setattr(rc, "_ready", set())

    def broken(name):
        def kernel(*args):
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(rc, "_compiled", broken)
    reg = GroupLasso(0.05, dim="in")
    a, opt_a, _ = _opt_run("fast", reg, SHAPES_IN, steps=3)
    with pytest.warns(UserWarning, match="failed"):
        b, opt_b, _ = _opt_run("compiled", reg, SHAPES_IN, steps=3)
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        assert torch.equal(opt_a.state[pa]["prox_point"], opt_b.state[pb]["prox_point"])


def test_auto_compiles_large_buckets_only(monkeypatch):
    """``"auto"`` leaves a small model eager and compiles once a bucket reaches AUTO_COMPILE_NUMEL."""
    calls = _require_compiled(monkeypatch)
    reg = GroupLasso(0.05, dim="in")
    _opt_run("auto", reg, SHAPES_IN, steps=2)
    assert not calls
    monkeypatch.setattr(ramda_module, "AUTO_COMPILE_NUMEL", 1)
    params, opt, _ = _opt_run("auto", reg, SHAPES_IN, steps=2)
    if not _fused.compiled_available():
        pytest.skip("torch.compile is not usable here")
    assert calls and all(opt.state[p]["prox_point_norms"].numel() for p in params)
    opt.implementation = "fast"  # an eager step drops the cached norms, which it does not maintain
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(opt.state[p]["prox_point_norms"].numel() == 0 for p in params)


def test_compiling_does_not_touch_the_global_rng(monkeypatch):
    """The first compiled step (probe compiles included) leaves torch's random stream where it was."""
    monkeypatch.setattr(rc, "_ready", set())  # force the probes to run again
    w = torch.nn.Parameter(torch.linspace(-1, 1, 24).view(4, 6))
    opt = RAMDA([w], regularizer=GroupLasso(0.01, dim="in"), implementation="compiled")
    w.grad = torch.linspace(-0.5, 0.5, 24).view(4, 6)
    state = torch.get_rng_state()
    opt.step()
    assert torch.equal(torch.get_rng_state(), state)


def test_compiled_path_rejects_ungroupable_tensors_before_any_change():
    w = torch.nn.Parameter(torch.randn(5))
    opt = RAMDA([w], regularizer=GroupLasso(0.1, dim="in"), implementation="compiled")
    w.grad = torch.ones(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"dim='in' needs a tensor with at least 2 dimensions"):
            opt.step()
    assert not opt.state[w]["grad_sum"].any() and not opt.state[w]["grad_sq_sum"].any()


def test_invalid_implementation_is_named():
    with pytest.raises(ValueError, match="implementation must be one of .*'jit'"):
        RAMDA([torch.nn.Parameter(torch.ones(2))], implementation="jit")
