"""ProxMixin: a user's own LightningModule, parameter selection, subgradient baseline, bad configuration."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.trainers import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox import ProxMixin
from lightning_prox.optim import ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso, registered_names


class TinyNet(ProxMixin, pl.LightningModule):
    """A user's own module: the mixin plus the two init arguments is all it takes."""

    def __init__(self, optimizer=None, regularizer=None, **prox_kwargs):
        super().__init__(optimizer=optimizer, regularizer=regularizer, sparsity_table=False, **prox_kwargs)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)


def _fit(model, steps):
    x, y = _data()
    trainer = quiet_trainer(max_steps=steps)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=20))
    return trainer


def _soft(z, t):
    return torch.sign(z) * torch.clamp(z.abs() - t, min=0)


def _reference(model, steps, lr, lam, mode):
    """Full-batch gradient steps by hand: soft threshold (prox) or L1 subgradient on the weights only."""
    x, y = _data()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}

    def loss_fn():
        h = torch.tanh(x @ params["fc1.weight"].T + params["fc1.bias"])
        loss = F.cross_entropy(h @ params["fc2.weight"].T + params["fc2.bias"], y)
        if mode == "subgradient":
            loss = loss + lam * (params["fc1.weight"].abs().sum() + params["fc2.weight"].abs().sum())
        return loss

    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(), list(params.values()))
        with torch.no_grad():
            for (n, p), g in zip(params.items(), grads):
                z = p - lr * g
                p.copy_(_soft(z, lr * lam) if mode == "prox" and n.endswith("weight") else z)
    return {n: p.detach() for n, p in params.items()}


def test_users_module_gains_proximal_training_from_two_init_args():
    torch.manual_seed(0)
    lr, lam, steps = 0.5, 0.05, 6
    model = TinyNet(optimizer=functools.partial(ProxSGD, lr=lr), regularizer=L1(lam))
    ref = _reference(model, steps, lr, lam, "prox")
    trainer = _fit(model, steps)
    opt = trainer.optimizers[0]
    assert isinstance(opt, ProxSGD)
    assert [g["param_names"] for g in opt.param_groups] == [
        ["fc1.weight", "fc2.weight"],
        ["fc1.bias", "fc2.bias"],
    ]
    assert opt.param_groups[0]["regularizer"] == {"name": "L1"} and opt.param_groups[0]["lam"] == lam
    assert opt.param_groups[1]["regularizer"] is None
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=0, atol=1e-6, msg=n)
    n_zero = int((model.fc1.weight == 0).sum() + (model.fc2.weight == 0).sum())
    assert n_zero > 0, "the prox should have produced exact zeros in the weights"
    assert bool((model.fc1.bias != 0).all())  # biases are not regularized


def test_subgradient_mode_adds_penalty_to_loss_and_uses_plain_optimizer():
    torch.manual_seed(0)
    lr, lam, steps = 0.5, 0.05, 4
    model = TinyNet(
        optimizer=functools.partial(torch.optim.SGD, lr=lr), regularizer=L1(lam), penalty_mode="subgradient"
    )
    ref = _reference(model, steps, lr, lam, "subgradient")
    before_last = _reference(model, steps - 1, lr, lam, "subgradient")
    trainer = _fit(model, steps)
    assert type(trainer.optimizers[0]) is torch.optim.SGD
    assert all("regularizer" not in g for g in trainer.optimizers[0].param_groups)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref[n], rtol=0, atol=1e-6, msg=n)
    w = torch.cat([model.fc1.weight.flatten(), model.fc2.weight.flatten()])
    # the logged penalty is R at the parameters the last step started from
    expected = lam * (before_last["fc1.weight"].abs().sum() + before_last["fc2.weight"].abs().sum())
    torch.testing.assert_close(trainer.callback_metrics["train/penalty"], expected, rtol=0, atol=1e-6)
    assert bool((w != 0).all())  # a subgradient method does not reach exact zeros


def test_subgradient_penalty_follows_group_lam():
    model = TinyNet(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1), regularizer=L1(0.5), penalty_mode="subgradient"
    )
    expected = 0.5 * (model.fc1.weight.abs().sum() + model.fc2.weight.abs().sum())
    torch.testing.assert_close(model.prox_penalty(), expected)


def test_default_optimizer_is_proxgen_with_plain_data_groups():
    opt = TinyNet(regularizer=GroupLasso(1e-3, dim="in")).configure_optimizers()
    assert isinstance(opt, ProxGen) and opt.param_groups[0]["lr"] == 1e-3
    for g in opt.param_groups:
        assert g["regularizer"] is None or isinstance(g["regularizer"], dict)
    assert opt.param_groups[0]["regularizer"]["name"] == "GroupLasso"


class Zoo(ProxMixin, pl.LightningModule):
    def __init__(self, **kw):
        super().__init__(regularizer=L1(1e-3), sparsity_table=False, **kw)
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.emb = nn.Embedding(5, 4)
        self.lstm = nn.LSTM(4, 4)
        self.head = nn.Linear(4, 2)


def _selected(**kw):
    return [n for n, _ in Zoo(**kw).regularized_parameters()]


def test_parameter_selection_defaults_and_include_exclude():
    assert _selected() == ["conv.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "head.weight"]
    assert "head.bias" in _selected(include=[r"head\.bias"])
    assert "emb.weight" in _selected(include=["^emb"])
    assert _selected(exclude=["lstm"]) == ["conv.weight", "head.weight"]
    assert _selected(include_types=["Linear"]) == ["head.weight"]


def test_regularizer_that_cannot_apply_fails_before_training_naming_the_parameter():
    model = TinyNet(
        optimizer=functools.partial(ProxSGD, lr=0.1),
        regularizer=GroupLasso(0.1, dim="in"),
        include=[r"fc1\.bias"],
    )
    before = model.fc1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"fc1\.bias"):
        _fit(model, 2)
    assert torch.equal(model.fc1.weight, before)


def test_plain_optimizer_with_regularizer_in_prox_mode_is_rejected_at_construction():
    with pytest.raises(ValueError, match="SGD does not apply a proximal step"):
        TinyNet(optimizer=functools.partial(torch.optim.SGD, lr=0.1), regularizer=L1(0.1))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="penalty_mode"):
        TinyNet(penalty_mode="proximal")
    with pytest.raises(ValueError, match="NoSuchReg"):
        TinyNet(regularizer={"name": "NoSuchReg", "lam": 0.1})
    with pytest.raises(ValueError, match="NoSuchOpt"):
        TinyNet(optimizer={"class_path": "lightning_prox.optim.NoSuchOpt"})


@pytest.mark.skipif("L0" not in registered_names(), reason="L0 not available")
def test_subgradient_mode_rejects_l0():
    from lightning_prox.regularizers import L0

    with pytest.raises(ValueError, match="subgradient"):
        TinyNet(regularizer=L0(0.1), penalty_mode="subgradient")


def test_lr_scheduler_and_class_path_dicts():
    model = TinyNet(
        optimizer={"class_path": "lightning_prox.optim.ProxSGD", "init_args": {"lr": 0.5}},
        regularizer={"class_path": "lightning_prox.regularizers.L1", "init_args": {"lam": 0.01}},
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1], gamma=0.1),
    )
    x, y = _data()
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=10))
    assert model.regularizer == L1(0.01)
    assert [g["lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([0.05, 0.05])


def test_subgradient_of_lq_at_exact_zero_is_zero_not_nan():
    from lightning_prox.regularizers import Lq

    model = TinyNet(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        regularizer=Lq(0.1, q=0.5),
        penalty_mode="subgradient",
    )
    with torch.no_grad():
        model.fc1.weight[0, :3] = 0.0
    model.prox_penalty().backward()
    g = model.fc1.weight.grad
    assert bool(torch.isfinite(g).all()) and bool((g[0, :3] == 0).all())
    w = model.fc1.weight[1, 0].detach()
    torch.testing.assert_close(g[1, 0], 0.1 * 0.5 * torch.sign(w) * w.abs() ** -0.5)


def test_default_optimizer_is_announced_when_training_starts(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = _fit(TinyNet(regularizer=L1(1e-3)), 1)
    assert isinstance(trainer.optimizers[0], ProxGen) and trainer.optimizers[0].defaults["lr"] == 1e-3
    assert [r.getMessage() for r in caplog.records if "optimizer=None" in r.getMessage()] == [
        "ProxMixin: optimizer=None, training with ProxGen(lr=1e-3) (proximal Adam)"
    ]
