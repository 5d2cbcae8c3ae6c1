"""Fit a small factorized MLP with PathProx + PathProxBalancing under ``strategy="ddp"`` on CPU.

Run as ``python tests/helpers/ddp_pathprox_fit.py OUT_DIR DEVICES BATCH_SIZE``; Lightning's DDP launcher
re-executes this script for rank 1. Each rank writes ``OUT_DIR/rank{r}.pt`` with its parameters.
"""

from __future__ import annotations

import os
import sys

import lightning.pytorch as pl
import torch
import torch.nn.functional as F


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        from lightning_prox.models import FactorizedMLP

        self.net = FactorizedMLP(64, 10, hidden=16, depth=3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        from lightning_prox.optim import PathProx

        return PathProx(self.parameters(), lr=0.2, lam=0.15, momentum=0.0, pairs=self.net)


def fit(out_dir: str, devices: int, batch_size: int) -> None:
    from lightning_prox.callbacks import PathProxBalancing
    from lightning_prox.data import DigitsDataModule

    pl.seed_everything(0)
    model = Net()
    dm = DigitsDataModule(
        batch_size=batch_size, val_fraction=0.0, test_fraction=0.0, shuffle=False, max_samples=256
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        deterministic=True,
        callbacks=[PathProxBalancing()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    torch.save(
        {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    fit(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
