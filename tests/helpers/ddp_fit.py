"""Fit a tiny ImageClassifier with ``strategy="ddp"`` on CPU and save each rank's parameters.

Run as ``python tests/helpers/ddp_fit.py OUT_DIR DEVICES BATCH_SIZE OPTIMIZER`` (``OPTIMIZER+target``
adds a ``SparsityTarget``); Lightning's DDP launcher
re-executes this script for rank 1 (it must stay runnable as a plain script). Each rank writes
``OUT_DIR/rank{r}.pt`` with its parameters and optimizer state (tensors only).
"""

from __future__ import annotations

import functools
import os
import sys

import lightning.pytorch as pl
import torch


def fit(out_dir: str, devices: int, batch_size: int, optimizer: str) -> None:
    from lightning_prox.callbacks import SparsityTarget
    from lightning_prox.data import DigitsDataModule
    from lightning_prox.models import ImageClassifier
    from lightning_prox.optim import RAMDA, ProxGen, ProxSGD
    from lightning_prox.regularizers import L1, GroupLasso

    # "<Optimizer>+target": with a SparsityTarget callback (its λ decisions must agree across ranks)
    optimizer, _, with_target = optimizer.partition("+")
    callbacks = [SparsityTarget(0.5, "unstructured", interval=2, end=0.5)] if with_target else []
    opt, reg = {
        "ProxGen": (functools.partial(ProxGen, lr=1e-2), L1(1e-3)),
        "ProxSGD": (functools.partial(ProxSGD, lr=0.1, momentum=0.9), L1(3e-2)),
        # the native kernels (built on first use: in a fresh CI run both ranks build them at once); c = 1
        # so that the parameters are the prox points, with their exact zero groups
        "RAMDA": (
            functools.partial(RAMDA, lr=1e-2, momentum=1.0, implementation="native"),
            GroupLasso(1e-2, dim="in"),
        ),
    }[optimizer]
    pl.seed_everything(0)
    model = ImageClassifier("mlp", hidden=(16,), optimizer=opt, regularizer=reg, sparsity_table=False)
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
        callbacks=callbacks,
    )
    trainer.fit(model, dm)
    opt_state = trainer.optimizers[0].state_dict()["state"]
    torch.save(
        {
            "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "opt_state": {
                k: {n: t for n, t in s.items() if isinstance(t, torch.Tensor)} for k, s in opt_state.items()
            },
            "world_size": trainer.world_size,
            "lams": [float(g["lam"]) for g in trainer.optimizers[0].param_groups],
            "target_u": callbacks[0].u if callbacks else None,
            "global_step": trainer.global_step,
        },
        os.path.join(out_dir, f"rank{trainer.global_rank}.pt"),
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    fit(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
