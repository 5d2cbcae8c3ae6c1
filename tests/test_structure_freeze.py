"""StructureFreeze: the frozen zeros stay exactly zero at every later step (also after a resume), the prox
is off afterwards, patience counts unchanged epochs, and bad input is refused."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch

from lightning_prox.callbacks import StructureFreeze
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso
from tests.cases import quickstart_cnn, quiet_trainer

OPTIMIZERS = {
    "ProxGen": functools.partial(ProxGen, lr=1e-2, weight_decay=1e-2),
    "ProxSGD": functools.partial(ProxSGD, lr=0.1, momentum=0.9),
    "RAMDA": functools.partial(RAMDA, lr=1e-2, momentum=1.0),  # c = 1: W carries the prox zeros
}
REGS = {
    "ProxGen": GroupLasso(3e-3, dim="in"),
    "ProxSGD": GroupLasso(2e-2, dim="in"),
    "RAMDA": GroupLasso(5e-4),
}


def _model(opt="ProxGen", reg=None):
    return quickstart_cnn(OPTIMIZERS[opt], REGS[opt] if reg is None else reg)


_trainer = quiet_trainer


class _CheckZeros(pl.Callback):
    """Placed before StructureFreeze: it sees the parameters right after each optimizer step, before the
    freeze callback re-applies its mask, so the zeros must survive the step itself."""

    def __init__(self, freeze: StructureFreeze) -> None:
        self.freeze, self.checked, self.lams, self.at_freeze = freeze, 0, set(), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.freeze.frozen or trainer.global_step <= self.freeze.freeze_step:
            return
        if self.at_freeze is None:
            self.at_freeze = [e.param.detach().clone() for e in self.freeze._entries]
        for e in self.freeze._entries:
            mask = self.freeze._masks[e.name]
            assert (e.param.detach()[mask] == 0).all(), f"{e.name} drifted at step {trainer.global_step}"
        self.lams |= {g["lam"] for g in trainer.optimizers[0].param_groups if g.get("regularizer")}
        self.checked += 1


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_frozen_zeros_stay_exactly_zero_and_the_prox_is_off(opt):
    freeze = StructureFreeze(epoch=2)
    check = _CheckZeros(freeze)
    model = _model(opt)
    _trainer(5, [check, freeze]).fit(model, DigitsDataModule(batch_size=64, max_samples=800))
    assert freeze.frozen and check.checked > 0
    frozen = sum(int(m.sum()) for m in freeze._masks.values())
    assert frozen > 0, f"{opt}: no zero group to freeze; raise λ in the test"
    assert check.lams == {0.0}  # the prox is the identity after the freeze: fine-tuning
    moved = [
        not torch.equal(e.param.detach()[~freeze._masks[e.name]], before[~freeze._masks[e.name]])
        for e, before in zip(freeze._entries, check.at_freeze)
    ]
    assert all(moved), moved  # the weights outside the pattern kept training


def test_patience_counts_unchanged_epochs():
    # lr = 0: nothing moves, so the pattern never changes and patience 2 freezes after epoch 1
    freeze = StructureFreeze(patience=2)
    trainer = _trainer(4, [freeze])
    model_lr0 = ImageClassifier(
        backbone="mlp",
        hidden=(16,),
        optimizer=functools.partial(ProxGen, lr=0.0),
        regularizer=GroupLasso(1e-3, dim="in"),
        sparsity_table=False,
    )
    trainer.fit(model_lr0, DigitsDataModule(batch_size=64, max_samples=200))
    assert freeze.changes[:2] == [0, 0] and freeze.frozen
    assert freeze.freeze_step == 2 * trainer.num_training_batches


def test_resume_after_the_freeze_keeps_the_zeros(tmp_path):
    def run(epochs, callbacks, ckpt_path=None, **kw):
        model = _model()
        trainer = _trainer(epochs, callbacks, **kw)
        trainer.fit(model, DigitsDataModule(batch_size=64, max_samples=800), ckpt_path=ckpt_path)
        return model

    straight_freeze = StructureFreeze(epoch=1)
    straight = run(5, [straight_freeze])
    run(3, [StructureFreeze(epoch=1)], enable_checkpointing=True, default_root_dir=tmp_path)
    (ckpt,) = tmp_path.rglob("*.ckpt")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # saved after the freeze
    resumed_freeze = StructureFreeze(epoch=1)
    check = _CheckZeros(resumed_freeze)
    resumed = run(5, [check, resumed_freeze], ckpt_path=ckpt)
    assert check.checked > 0 and resumed_freeze.freeze_step == straight_freeze.freeze_step
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_elementwise_regularizer_freezes_exact_zeros():
    freeze = StructureFreeze(epoch=1)
    check = _CheckZeros(freeze)
    _trainer(3, [check, freeze]).fit(_model(reg=L1(1e-3)), DigitsDataModule(batch_size=64, max_samples=800))
    assert freeze.frozen and check.checked > 0
    assert sum(int(m.sum()) for m in freeze._masks.values()) > 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"patience": 0}, "patience must be an int >= 1"),
        ({"epoch": -1}, "epoch must be an int >= 0"),
        ({"min_epoch": 1.5}, "min_epoch must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        StructureFreeze(**kwargs)
    assert words in str(err.value)


def test_needs_a_regularizer():
    model = ImageClassifier(backbone="mlp", hidden=(16,), regularizer=None, sparsity_table=False)
    with pytest.raises(ValueError, match="no structure to freeze"):
        _trainer(1, [StructureFreeze()]).fit(model, DigitsDataModule(batch_size=64, max_samples=200))
