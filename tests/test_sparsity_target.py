"""SparsityTarget: the target schedule, the controller on the quickstart model, resume, refusals, guard."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import pytest
import torch

from lightning_prox.callbacks import RegularizationScheduler, SparsityTarget
from lightning_prox.callbacks._counting import count
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, ProxGen
from lightning_prox.regularizers import L1, GroupLasso
from tests.cases import quickstart_cnn, quiet_trainer

OPTIMIZERS = {
    "ProxGen": functools.partial(ProxGen, lr=1e-2),
    "RAMDA": functools.partial(RAMDA, lr=1e-2, momentum=1.0),
}


def _model(opt: str = "ProxGen", reg=None) -> ImageClassifier:
    return quickstart_cnn(OPTIMIZERS[opt], reg if reg is not None else GroupLasso(1e-4, dim="in"))


_trainer = quiet_trainer


# -- the target schedule -----------------------------------------------------------------------------
def test_target_ramps():
    cubic = SparsityTarget(0.8, ramp="cubic", start=0.2, end=0.6, initial=0.1)
    for f in (0.0, 0.2, 0.3, 0.45, 0.6, 0.9):
        x = min(max((f - 0.2) / 0.4, 0.0), 1.0)
        assert cubic.target_at(f) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - x) ** 3)  # Zhu & Gupta, Eq. 1
    linear = SparsityTarget(0.8, ramp="linear", end=0.5)
    assert [linear.target_at(f) for f in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 0.4, 0.8, 0.8])
    assert SparsityTarget(0.3, ramp="constant").target_at(0.0) == 0.3


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"target": 1.0}, "target must be < 1"),
        ({"target": -0.1}, "target must be a number >= 0.0"),
        ({"target": 0.5, "metric": "groups"}, "metric must be one of"),
        ({"target": 0.5, "ramp": "exp"}, "ramp must be one of"),
        ({"target": 0.5, "start": 0.8, "end": 0.5}, "start (0.8) must be before end"),
        ({"target": 0.5, "interval": 0}, "interval must be an int >= 1"),
        ({"target": 0.5, "by_epoch": 0}, "by_epoch must be an int >= 1"),
        ({"target": 0.5, "ki": 0}, "ki must be a number > 0.0"),
        ({"target": 0.5, "max_step": float("inf")}, "max_step must be"),
        ({"target": 0.5, "guard_metric": "val/acc"}, "guard_metric and guard_min together"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, words):
    with pytest.raises(ValueError, match=None) as err:
        SparsityTarget(**kwargs)
    assert words in str(err.value)


# -- the controller on the quickstart model ------------------------------------------------------------
@pytest.mark.parametrize(("opt", "target"), [("ProxGen", 0.7), ("RAMDA", 0.5)])
def test_reaches_the_target_group_sparsity(opt, target):
    cb = SparsityTarget(target, interval=5)
    trainer = _trainer(30, [cb])
    model = _model(opt)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    measured = count(cb._entries)[0]["group"]
    assert abs(measured - target) <= 0.03, f"{opt}: group sparsity {measured:.3f}, target {target}"
    assert float(trainer.callback_metrics["val/acc"]) > 0.8  # not collapsed
    lam = trainer.optimizers[0].param_groups[0]["lam"]
    assert lam == pytest.approx(1e-4 * cb.lam_factor) and cb.lam_factor > 1  # it raised λ from 1e-4
    logged = trainer.callback_metrics
    assert float(logged["sparsity_target/target"]) == pytest.approx(target)
    assert float(logged["prox/lambda"]) == pytest.approx(lam)


class _StopAfter(pl.Callback):
    """Interrupt a fit at the end of an epoch (a job that is killed after its epoch's checkpoint)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resume_takes_the_same_decisions(tmp_path):
    def run(callbacks, ckpt_path=None, **kw):
        model = _model(reg=GroupLasso(1e-3, dim="in"))
        trainer = _trainer(8, callbacks, **kw)
        trainer.fit(model, DigitsDataModule(batch_size=64), ckpt_path=ckpt_path)
        return model

    us = []

    class _Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            us.append(straight_cb.u)

    straight_cb = SparsityTarget(0.4, interval=5)
    straight = run([straight_cb, _Record()])
    steps = [round(b - a, 12) for a, b in zip(us, us[1:]) if b != a]
    assert steps and any(abs(abs(d) - straight_cb.max_step) > 1e-9 for d in steps)  # not only clipped steps

    run(
        [SparsityTarget(0.4, interval=5), _StopAfter(4)], enable_checkpointing=True, default_root_dir=tmp_path
    )
    (ckpt,) = tmp_path.rglob("*.ckpt")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3
    resumed_cb = SparsityTarget(0.4, interval=5)
    resumed = run([resumed_cb], ckpt_path=ckpt)
    assert resumed_cb.u == straight_cb.u and resumed_cb.last_step == straight_cb.last_step
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


# -- refusals and the guard --------------------------------------------------------------------------
def test_refuses_a_regularization_scheduler():
    trainer = _trainer(1, [SparsityTarget(0.5), RegularizationScheduler("linear")])
    with pytest.raises(ValueError, match="both write group\\['lam'\\]"):
        trainer.fit(_model(), DigitsDataModule(batch_size=64, max_samples=200))


def test_refuses_a_zero_starting_lambda():
    trainer = _trainer(1, [SparsityTarget(0.5)])
    with pytest.raises(ValueError, match="starts at lam=0.0"):
        trainer.fit(_model(reg=GroupLasso(0.0, dim="in")), DigitsDataModule(batch_size=64, max_samples=200))


def test_group_metric_needs_groups():
    trainer = _trainer(1, [SparsityTarget(0.5, metric="group")])
    with pytest.raises(ValueError, match="use metric='unstructured'"):
        trainer.fit(_model(reg=L1(1e-4)), DigitsDataModule(batch_size=64, max_samples=200))


def test_unstructured_target_with_l1():
    cb = SparsityTarget(0.6, metric="unstructured", interval=5)
    trainer = _trainer(20, [cb])
    trainer.fit(_model(reg=L1(1e-5)), DigitsDataModule(batch_size=64))
    assert abs(count(cb._entries)[0]["unstructured"] - 0.6) <= 0.03


def test_guard_halves_lambda_and_warns():
    # an unreachable floor: every decision after the first validation backs off
    cb = SparsityTarget(0.9, interval=5, guard_metric="val/acc", guard_min=1.01)
    trainer = _trainer(3, [cb])
    with pytest.warns(UserWarning, match=r"val/acc = .* < 1.01 at step \d+; halving λ"):
        trainer.fit(_model(), DigitsDataModule(batch_size=64, max_samples=600))
    assert cb.backoffs > 0
    assert cb.lam_factor <= math.exp(cb.max_step * 8)  # held back, not the free climb of 0.25 per update


@pytest.mark.parametrize("name", ["ProxSGD", "RMDA", "SR2", "PathProx"])
def test_every_optimizer_takes_the_controllers_lambda(name):
    """The controller writes group["lam"] and each optimizer steps with it (a short run: λ moves, the
    groups hold initial_lam · e^u, and the fit ends)."""
    from lightning_prox.optim import RMDA, SR2, PathProx, ProxSGD

    factories = {
        "ProxSGD": (functools.partial(ProxSGD, lr=0.05, momentum=0.9), GroupLasso(1e-4, dim="in"), "group"),
        "RMDA": (functools.partial(RMDA, lr=0.1, momentum=1.0), GroupLasso(1e-4, dim="in"), "group"),
        "SR2": (functools.partial(SR2), GroupLasso(1e-4, dim="in"), "group"),
        "PathProx": (functools.partial(PathProx, lr=0.05, lam=1e-4), None, "active_units"),
    }
    opt, reg, metric = factories[name]
    pl.seed_everything(0)
    model = ImageClassifier(
        backbone="mlp", hidden=(32,), optimizer=opt, regularizer=reg, sparsity_table=False
    )
    cb = SparsityTarget(0.5 if metric == "group" else 0.8, metric=metric, interval=2)
    trainer = _trainer(2, [cb])
    trainer.fit(model, DigitsDataModule(batch_size=64, max_samples=400))
    assert cb.u != 0.0
    groups = [g for g in trainer.optimizers[0].param_groups if "initial_lam" in g]
    assert groups and all(g["lam"] == pytest.approx(g["initial_lam"] * cb.lam_factor) for g in groups)
