"""Fit a tiny ImageClassifier with SR2 and ``strategy="ddp"`` on CPU; save each rank's result.

Run as ``python tests/helpers/ddp_fit_sr2.py OUT_DIR DEVICES BATCH_SIZE``; Lightning's DDP launcher
re-executes this script for rank 1. Each rank writes ``OUT_DIR/rank{r}.pt`` with its parameters, SR2's
state (plain numbers) and the shapes of the float64 all-reduces SR2 issued.
"""

from __future__ import annotations

import functools
import os
import sys

import lightning.pytorch as pl
import torch
import torch.distributed as dist


def fit(out_dir: str, devices: int, batch_size: int) -> None:
    from lightning_prox.data import DigitsDataModule
    from lightning_prox.models import ImageClassifier
    from lightning_prox.optim import SR2
    from lightning_prox.regularizers import L1

    reduces: list[tuple[str, int]] = []
    original = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        if tensor.dtype == torch.float64:
            reduces.append((str(tensor.dtype), tensor.numel()))
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp",
        hidden=(16,),
        optimizer=functools.partial(SR2, sigma=0.05),  # small σ0: rejections early on
        regularizer=L1(3e-2),
        sparsity_table=False,
    )
    dm = DigitsDataModule(
        batch_size=batch_size, val_fraction=0.0, test_fraction=0.0, shuffle=False, max_samples=256
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        deterministic=True,
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
            "sr2": dict(trainer.optimizers[0].state_dict()["state"]["sr2"]),
            "reduces": reduces,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    fit(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
