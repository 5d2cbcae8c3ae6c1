"""Checkpoints as users meet them: CLI checkpoints load with ``load_from_checkpoint`` in a fresh process,
an inference load leaves the caller's RNGs alone, and ``fit(ckpt_path=...)`` still restores them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_prox.cli import ProxCLI
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.regularizers import GroupLasso

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _cli_checkpoint(tmp: Path) -> Path:
    ProxCLI(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.num_sanity_val_steps=0",
            "--data.init_args.max_samples=128",
            "--model.init_args.channels=[4,8]",
            "--model.init_args.hidden=[16]",
            "--model.init_args.sparsity_table=false",
        ]
    )
    (ckpt,) = sorted(tmp.rglob("last.ckpt"))
    return ckpt


FRESH = textwrap.dedent(
    """
    import random, sys
    import numpy as np, torch

    def draws():
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])

    def seed():
        torch.manual_seed(123); np.random.seed(123); random.seed(123)

    seed(); expected = draws()
    from lightning_prox.models import ImageClassifier
    seed()
    model = ImageClassifier.load_from_checkpoint(sys.argv[1])
    after = draws()
    print(type(model).__name__, type(model.regularizer).__name__, model.regularizer.lam)
    print("RNG-UNCHANGED" if after == expected else f"RNG-CHANGED {after} != {expected}")
    """
)


def test_cli_checkpoint_loads_in_a_fresh_process_and_leaves_the_rngs_alone(tmp_path):
    ckpt = _cli_checkpoint(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", FRESH, str(ckpt)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "ImageClassifier GroupLasso 0.001"
    assert lines[-1] == "RNG-UNCHANGED"


def _fit(tmp: Path, epochs: int, ckpt_path: str | None = None) -> tuple[ImageClassifier, pl.Trainer]:
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp", hidden=(16,), drop_rate=0.3, regularizer=GroupLasso(1e-3), sparsity_table=False
    )
    trainer = quiet_trainer(
        max_epochs=epochs,
        deterministic=True,
        default_root_dir=tmp,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp, filename="{epoch}", save_top_k=-1)],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32, max_samples=160), ckpt_path=ckpt_path)
    return model, trainer


def test_in_process_load_keeps_rngs_and_fit_resume_restores_them(tmp_path):
    straight, _ = _fit(tmp_path / "a", 2)
    _fit(tmp_path / "b", 1)
    ckpt = tmp_path / "b" / "epoch=0.ckpt"

    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    ImageClassifier.load_from_checkpoint(ckpt)
    assert torch.equal(torch.rand(4), expected), "load_from_checkpoint changed the caller's torch RNG"

    # validate(ckpt_path=...) draws what a validate without a checkpoint draws (its loaders seed
    # themselves from the global RNG), not what the checkpoint's RNG state would give
    def validate_then_draw(ckpt_path):
        torch.manual_seed(7)
        model = ImageClassifier.load_from_checkpoint(ckpt)
        quiet_trainer(limit_val_batches=1).validate(
            model, DigitsDataModule(max_samples=160), ckpt_path=ckpt_path
        )
        return torch.rand(4)

    assert torch.equal(validate_then_draw(ckpt), validate_then_draw(None))

    # dropout makes the second epoch depend on the restored RNG: resume is bit-exact only with it
    torch.manual_seed(999)
    resumed, _ = _fit(tmp_path / "c", 2, ckpt_path=str(ckpt))
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{n} differs after resume"


def _fit_steps(tmp: Path, ckpt_path: str | None = None, shuffle: bool = True):
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp", hidden=(16,), drop_rate=0.3, regularizer=GroupLasso(1e-3), sparsity_table=False
    )
    trainer = quiet_trainer(
        max_epochs=2,
        deterministic=True,
        default_root_dir=tmp,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp, filename="{step}", every_n_train_steps=3, save_top_k=-1)],
        num_sanity_val_steps=0,
    )
    dm = DigitsDataModule(batch_size=32, max_samples=320, seed=5, shuffle=shuffle)  # 7 batches an epoch
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("shuffle", [True, False])
def test_mid_epoch_resume_from_a_step_checkpoint_is_bit_exact(tmp_path, shuffle, recwarn):
    straight, t_straight = _fit_steps(tmp_path / "a", shuffle=shuffle)
    for step in (3, 9):  # inside epoch 0 and inside epoch 1
        ckpt = tmp_path / "a" / f"step={step}.ckpt"
        state = torch.load(ckpt, weights_only=True)
        assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
            {"epoch": step // 7, "batches": step % 7}
        ]
        resumed, t_resumed = _fit_steps(tmp_path / f"r{step}", ckpt_path=str(ckpt), shuffle=shuffle)
        assert t_resumed.global_step == t_straight.global_step == 14
        for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), f"{n} differs after resuming from step {step}"
        sa, sb = t_straight.optimizers[0].state_dict()["state"], t_resumed.optimizers[0].state_dict()["state"]
        assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa if "exp_avg" in sa[k])
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
