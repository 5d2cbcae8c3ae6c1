"""Exact resume: 2 epochs straight == 1 epoch + checkpoint + 1 resumed epoch (params and optimizer state).

Through ``Trainer.fit(ckpt_path=...)`` for every proximal optimizer and through the ``lightning-prox``
CLI; checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prox.cli import ProxCLI
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso

RECIPES = Path(__file__).resolve().parent.parent / "recipes"

CASES = {
    "ProxGen": (functools.partial(ProxGen, lr=1e-2), L1(1e-3)),
    "ProxSGD": (functools.partial(ProxSGD, lr=0.1, momentum=0.9), L1(3e-2)),
    "RMDA": (functools.partial(RMDA, lr=0.1, momentum=0.1), GroupLasso(1e-3, dim="in")),
    "RAMDA": (functools.partial(RAMDA, lr=1e-2, momentum=1e-2), GroupLasso(1e-4, dim="in")),
}


def _fit(tmp: Path, name: str, epochs: int, ckpt_path: str | None = None):
    opt, reg = CASES[name]
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp", hidden=(16,), drop_rate=0.1, optimizer=opt, regularizer=reg, sparsity_table=False
    )
    dm = DigitsDataModule(batch_size=32, max_samples=320, seed=3)  # shuffled, per-epoch seeded order
    trainer = quiet_trainer(
        max_epochs=epochs,
        deterministic=True,
        default_root_dir=tmp,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp, filename="{epoch}", save_top_k=-1, every_n_epochs=1)],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def _assert_same(model_a, opt_a, model_b, opt_b):
    for (n, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), f"parameter {n} differs after resume"
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for key, v in sa["state"][k].items():
            w = sb["state"][k][key]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, f"optimizer state {k}/{key}"


@pytest.mark.parametrize("name", list(CASES))
def test_trainer_fit_resume_is_exact(tmp_path, name):
    straight, t_straight = _fit(tmp_path / "straight", name, 2)
    first, _ = _fit(tmp_path / "first", name, 1)
    ckpt = tmp_path / "first" / "epoch=0.ckpt"

    data = torch.load(ckpt, weights_only=True)  # torch's safe loader: plain data only
    groups = data["optimizer_states"][0]["param_groups"]
    assert [g["regularizer"] for g in groups][1] is None and isinstance(groups[0]["regularizer"], dict)
    assert data["hyper_parameters"]["optimizer"]["class_path"].endswith(name)

    resumed, t_resumed = _fit(tmp_path / "resumed", name, 2, ckpt_path=str(ckpt))
    assert t_resumed.global_step == t_straight.global_step == 2 * 7  # 224 training images, batch 32
    _assert_same(straight, t_straight.optimizers[0], resumed, t_resumed.optimizers[0])
    moved = any(
        not torch.equal(a, b) for a, b in zip(first.state_dict().values(), resumed.state_dict().values())
    )
    assert moved, "the resumed epoch did not train"


def test_load_from_checkpoint_rebuilds_the_proximal_configuration(tmp_path):
    _fit(tmp_path, "ProxSGD", 1)
    model = ImageClassifier.load_from_checkpoint(tmp_path / "epoch=0.ckpt")
    assert model.regularizer == L1(3e-2)
    opt = model.configure_optimizers()
    assert isinstance(opt, ProxSGD) and opt.param_groups[0]["momentum"] == 0.9


def _cli(tmp: Path, epochs: int, ckpt_path: str | None = None):
    args = [
        "fit",
        "--config",
        str(RECIPES / "quickstart.yaml"),
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={tmp}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        "--data.init_args.max_samples=320",
        "--model.init_args.channels=[4,8]",
        "--model.init_args.hidden=[16]",
        "--model.init_args.sparsity_table=false",
    ]
    if ckpt_path:
        args.append(f"--ckpt_path={ckpt_path}")
    return ProxCLI(args)


def test_cli_resume_is_exact(tmp_path):
    straight = _cli(tmp_path / "straight", 2)
    _cli(tmp_path / "first", 1)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    torch.load(last, weights_only=True)
    resumed = _cli(tmp_path / "resumed", 2, str(last))
    assert resumed.trainer.global_step == straight.trainer.global_step > 0
    _assert_same(straight.model, straight.trainer.optimizers[0], resumed.model, resumed.trainer.optimizers[0])
