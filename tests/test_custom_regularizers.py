"""Regularizers written by a user: the documented hooks, the registry, declared structure, and the
example classes of docs/custom_regularizers.md in every optimizer, a weights_only resume and YAML."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import custom_regularizers as cr
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_regularizers import brute_force

import lightning_prox.regularizers as lpr
from lightning_prox.callbacks._counting import monitored_tensors
from lightning_prox.cli import ProxCLI
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import (
    ElementwiseRegularizer,
    NuclearNorm,
    Regularizer,
    from_spec,
    get_regularizer_class,
)

DT = torch.float64
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "custom_regularizers.md"


def _problem(seed: int = 0, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=DT) * 10 ** (torch.rand(n, generator=g, dtype=DT) * 3 - 1.5)
    m = 10 ** (torch.rand(n, generator=g, dtype=DT) * 4 - 2)
    return z, m


# -- the two hooks ------------------------------------------------------------------------------
def test_prox_override_and_elementwise_map_give_the_elastic_net_closed_form():
    z, m = _problem()
    for metric in (None, m):
        s = 0.3 * 0.5 / (1.0 if metric is None else metric)
        want = torch.sign(z) * (z.abs() - s).clamp_min(0) / (1 + 2.0 * s)
        for reg in (cr.ElasticNet(0.5, gamma=2.0), cr.FastElasticNet(0.5, gamma=2.0)):
            torch.testing.assert_close(reg.prox(z, 0.3, metric), want, rtol=1e-14, atol=1e-15)
            multi = reg.prox_multi([z, z[:7]], 0.3, None if metric is None else [metric, metric[:7]])
            torch.testing.assert_close(multi[0], want, rtol=1e-14, atol=1e-15)
            torch.testing.assert_close(multi[1], want[:7], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("step", [1e-2, 0.5, 5.0])
def test_log_sum_map_matches_brute_force(step):
    reg = cr.LogSum(0.7, eps=0.1)
    z, m = _problem(int(step * 100))
    for metric in (None, m):
        x = reg.prox(z, step, metric)
        s = step * reg.lam / (1.0 if metric is None else metric)
        s = s * torch.ones_like(z)
        pen = lambda v: torch.log1p(v.abs() / reg.eps)  # noqa: E731
        _, fb, _ = brute_force(z, s, pen, ())
        fx = s * pen(x) + 0.5 * (x - z) ** 2
        assert bool((fx <= fb + 1e-6 * fb.abs() + 1e-300).all())
        assert 0 < int((x == 0).sum()) < z.numel()


def test_base_class_checks_the_arguments_before_the_user_code_runs():
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Spy(Regularizer):
        def value(self, x):
            return x.sum()

        def prox(self, z, step, metric=None):
            calls.append(step)
            return z * 1.0

    z = torch.ones(3)
    for bad, match in (
        (dict(step=-1.0), r"step must be .*-1\.0"),
        (dict(step=0.0), r"step must be"),
        (dict(step=1.0, metric=torch.ones(4)), r"metric must be None or a tensor of shape \(3,\)"),
        (dict(step=1.0, metric=torch.tensor([1.0, 0.0, 1.0])), r"strictly positive"),
    ):
        with pytest.raises(ValueError, match=match):
            Spy(0.1).prox(z, **bad)
    assert calls == []
    out = Spy(0.0).prox(z, 1.0)  # lam = 0: the identity, without the user's code
    assert calls == [] and torch.equal(out, z) and out is not z
    Spy(0.1).prox_multi([z, z], 0.5)  # prox_multi runs the unchecked core once per tensor
    assert calls == [0.5, 0.5]
    with pytest.raises(ValueError, match="step must be"):
        Spy(0.1).prox_multi([z], -1.0)
    assert calls == [0.5, 0.5]


def test_missing_methods_say_what_to_implement():
    @dataclasses.dataclass(frozen=True)
    class NoProx(Regularizer):
        pass

    @dataclasses.dataclass(frozen=True)
    class NoMap(ElementwiseRegularizer):
        pass

    with pytest.raises(NotImplementedError, match=r"must implement prox\(self, z, step, metric=None\)"):
        NoProx(0.1).prox(torch.ones(2), 1.0)
    with pytest.raises(NotImplementedError, match=r"must implement map\(self, z, s\)"):
        NoMap(0.1).prox_multi([torch.ones(2)], 1.0)


def test_super_prox_of_a_library_subclass_does_not_recurse():
    @dataclasses.dataclass(frozen=True)
    class HalfL1(lpr.L1):
        def prox(self, z, step, metric=None):
            return 0.5 * super().prox(z, step, metric)

    z = torch.tensor([2.0, -0.1])
    assert HalfL1(0.5).prox(z, 1.0).tolist() == [0.75, 0.0]
    assert HalfL1(0.5).prox_multi([z], 1.0)[0].tolist() == [0.75, 0.0]


def test_user_elementwise_map_gets_the_non_finite_policy():
    reg = cr.LogSum(0.7)  # its map turns NaN into 0 by itself (a comparison with NaN is False)
    nan, inf = float("nan"), float("inf")
    z = torch.tensor([nan, inf, -inf, 0.05, 3.0, 0.02])
    m = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, inf])
    for x in (reg.prox(z, 1.0, m), reg.prox_multi([z], 1.0, [m])[0]):
        assert torch.isnan(x[0]) and x[1] == inf and x[2] == -inf
        assert x[3] == 0 and 0 < x[4] < 3.0 and x[5] == z[5]  # metric inf: pinned


# -- registry --------------------------------------------------------------------------------------
def test_a_user_class_named_l1_neither_replaces_nor_shadows_the_library_one():
    lib, user = lpr.L1(0.5), cr.L1(0.5)
    assert lib.spec() == {"name": "L1"}
    assert user.spec() == {"name": "helpers.custom_regularizers.L1"}
    assert type(from_spec(lib.spec(), 0.5)) is lpr.L1
    assert type(from_spec(user.spec(), 0.5)) is cr.L1
    assert get_regularizer_class("L1") is lpr.L1
    # the library L1 in an optimizer is still soft thresholding, not the user's constant 42
    p = torch.nn.Parameter(torch.tensor([1.0, -0.2, 3.0]))
    opt = ProxSGD([p], lr=1.0, regularizer=lpr.L1(0.5))
    p.grad = torch.zeros(3)
    opt.step()
    assert p.detach().tolist() == [0.5, 0.0, 2.5]
    q = torch.nn.Parameter(torch.tensor([1.0, -0.2, 3.0]))
    opt = ProxSGD([q], lr=1.0, regularizer=cr.L1(0.5))
    q.grad = torch.zeros(3)
    opt.step()
    assert q.detach().tolist() == [42.0] * 3


def test_a_subclass_that_is_not_a_frozen_dataclass_fails_clearly():
    class Forgot(Regularizer):
        eps: float = 1.0

        def value(self, x):
            return x.sum()

    with pytest.raises(TypeError, match=r"Forgot must be a frozen dataclass: decorate it with"):
        Forgot(0.1)

    class ForgotToo(cr.FastElasticNet):
        pass

    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        ForgotToo(0.1, gamma=2.0)


def test_redefining_a_class_warns_and_bare_names_resolve_only_when_unique(tmp_path, monkeypatch):
    src = "import dataclasses\nfrom lightning_prox.regularizers import L1 as _L1\n"
    src += "@dataclasses.dataclass(frozen=True)\nclass ElasticNet(_L1):\n    pass\n"
    (tmp_path / "user_regs_a.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    # a fresh process loading a checkpoint: the module of a "module.ClassName" spec is imported
    assert "user_regs_a" not in sys.modules
    cls = get_regularizer_class("user_regs_a.ElasticNet")
    assert cls.__module__ == "user_regs_a" and "user_regs_a" in sys.modules
    with pytest.raises(ValueError, match=r"'ElasticNet' is ambiguous: .*helpers\.custom_regularizers"):
        get_regularizer_class("ElasticNet")  # two user classes share the bare name
    with pytest.warns(UserWarning, match=r"'user_regs_a.ElasticNet' was defined again"):
        exec(compile(src, "user_regs_a.py", "exec"), {"__name__": "user_regs_a"})
    with pytest.raises(
        ValueError, match=r"unknown regularizer 'NoSuchThing'.*known regularizers: (.*, )?GroupLasso"
    ):
        get_regularizer_class("NoSuchThing")
    with pytest.raises(ValueError, match=r"unknown regularizer 'no_such_module.X'"):
        get_regularizer_class("no_such_module.X")


# -- declared structure --------------------------------------------------------------------------------
def test_monitors_read_declared_structure_not_names():
    w = torch.zeros(3, 4)

    @dataclasses.dataclass(frozen=True)
    class NotNuclearAtAll(lpr.L1):
        pass

    @dataclasses.dataclass(frozen=True)
    class LowRank(NuclearNorm):
        pass

    def mon(reg):
        return monitored_tensors([{"params": [w], "regularizer": reg.spec()}], [("w", w)])[0]

    assert mon(cr.BlockSparse(0.1, axis="out")).dim == "out"
    assert mon(NotNuclearAtAll(0.1)).rank is False
    assert mon(LowRank(0.1)).rank is True
    assert mon(lpr.GroupLasso(0.1, dim="in")).dim == "in"
    assert lpr.Quantization(0.1, levels=(-1, 0, 1)).quant_levels == (-1.0, 0.0, 1.0)
    assert (
        lpr.GroupLasso(0.1).warm_start == "solution"
        and lpr.GroupLasso(0.1, solver="pg").warm_start == "iterate"
    )


# -- the example classes in every optimizer ----------------------------------------------------------------
OPTIMIZERS = {
    "ProxGen": functools.partial(ProxGen, lr=1e-2),
    "ProxSGD": functools.partial(ProxSGD, lr=0.1, momentum=0.9),
    "RMDA": functools.partial(RMDA, lr=0.1, momentum=0.1),
    "RAMDA": functools.partial(RAMDA, lr=1e-2, momentum=1e-2),
}
EXAMPLES = {
    "ElasticNet": cr.ElasticNet(1e-2, gamma=0.5),
    "FastElasticNet": cr.FastElasticNet(1e-2, gamma=0.5),
    "LogSum": cr.LogSum(1e-2, eps=0.05),
}


@pytest.mark.parametrize("reg_name", list(EXAMPLES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_example_regularizers_train_in_every_optimizer(opt_name, reg_name):
    """Each optimizer steps with the example, the loss falls, and the penalty acts: the penalty of the
    trained weights is below that of the same run with lam = 0."""

    def run(reg):
        torch.manual_seed(0)
        x, y = torch.randn(64, 10), torch.randn(64, 1)
        lin = torch.nn.Linear(10, 1)
        opt = OPTIMIZERS[opt_name]([{"params": [lin.weight], "regularizer": reg}, {"params": [lin.bias]}])
        losses = []
        for _ in range(60):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(lin(x), y)
            losses.append(loss.item())
            loss.backward()
            opt.step()
        assert opt.param_groups[0]["regularizer"] == reg.spec()
        assert bool(torch.isfinite(lin.weight).all()) and losses[-1] < losses[0]
        return lin.weight.detach()

    reg = EXAMPLES[reg_name].with_lam(0.05)
    w, w_free = run(reg), run(reg.with_lam(0.0))
    assert float(reg.value(w)) < float(reg.value(w_free))


def _fit(tmp: Path, epochs: int, ckpt_path: str | None = None):
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp",
        hidden=(16,),
        optimizer=OPTIMIZERS["RAMDA"],
        regularizer=cr.LogSum(1e-4, eps=0.05),
        sparsity_table=False,
    )
    dm = DigitsDataModule(batch_size=32, max_samples=160, seed=3)
    trainer = quiet_trainer(
        max_epochs=epochs,
        deterministic=True,
        default_root_dir=tmp,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp, filename="{epoch}", save_top_k=-1, every_n_epochs=1)],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def test_example_regularizer_resumes_exactly_from_a_weights_only_checkpoint(tmp_path):
    straight, _ = _fit(tmp_path / "straight", 2)
    _fit(tmp_path / "first", 1)
    ckpt = tmp_path / "first" / "epoch=0.ckpt"
    data = torch.load(ckpt, weights_only=True)
    spec = data["optimizer_states"][0]["param_groups"][0]["regularizer"]
    assert spec == {"name": "helpers.custom_regularizers.LogSum", "eps": 0.05}
    resumed, _ = _fit(tmp_path / "resumed", 2, ckpt_path=str(ckpt))
    for (n, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize(
    ("class_path", "cls"),
    [
        ("helpers.custom_regularizers.LogSum", cr.LogSum),
        ("helpers.custom_regularizers.L1", cr.L1),
        ("lightning_prox.regularizers.L1", lpr.L1),
    ],
)
def test_regularizers_are_named_in_yaml_by_class_path(class_path, cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = ProxCLI(
        [
            "--config",
            str(ROOT / "recipes" / "quickstart.yaml"),
            f"--model.init_args.regularizer.class_path={class_path}",
            "--model.init_args.regularizer.init_args.lam=0.001",
        ],
        run=False,
    )
    assert type(cli.model.regularizer) is cls
    opt = cli.model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    specs = [g["regularizer"] for g in opt.param_groups if g.get("regularizer")]
    assert specs and all(type(from_spec(s)) is cls for s in specs)


# -- the docs page -------------------------------------------------------------------------------------------
def test_docs_page_blocks_run_and_define_the_tested_classes(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    module = types.ModuleType("custom_regularizers_doc")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ns = module.__dict__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b in blocks:
            exec(compile(b, str(DOC), "exec"), ns)
    z, m = _problem(5)
    for name in ("ElasticNet", "LogSum"):
        doc_reg, ref = ns[name](0.3), getattr(cr, name)(0.3)
        torch.testing.assert_close(doc_reg.prox(z, 0.7, m), ref.prox(z, 0.7, m), rtol=1e-12, atol=0)
