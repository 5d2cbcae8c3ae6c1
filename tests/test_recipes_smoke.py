"""Every recipe built on a ResNet or DenseNet backbone trains: a few steps of the recipe's own model,
optimizer, regularizer and schedule on random CIFAR-shaped data keep the loss finite and the conv
weights alive (a preconditioned prox that divides by a near-zero metric wiped whole networks at
step 1, behind zero-initialized norm layers, while the loss still fell through the skip paths).

Marked slow: the recipes' full-size networks (ResNet-34, DenseNet-121, ResNet-20) are built and
stepped on one core, 1–12 s per recipe, and SR2's Hessian-based σ makes its two ResNet-34 recipes
~20 s per step (about 3 minutes in all on a loaded 2-core machine); a smaller stand-in would not
test the recipes' own initialization, which is what wiped them.
"""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox.cli import ProxCLI
from lightning_prox.optim import ProxGen
from tests.cases import quiet_trainer, single_thread  # noqa: F401

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
BACKBONE_RECIPES = [r for r in RECIPES if re.search(r"backbone:\s*(resnet|densenet)", r.read_text())]
STEPS = 3
BATCH = 2
#: the wipe-out this guards against zeroed 84-99% of the conv weights at step 1; a recipe's λ may
#: still shrink many small weights to zero within a few steps (ProxGen's ℓ1/ℓ0/ℓq at λ = 0.01 zero
#: 5-7% by step 3, SR2's ℓ0 16%), which is regularization, not a wipe-out
MAX_ZERO = 0.20
#: Adam's bias-corrected step |m̂/D| stays below ~2 in the first steps: with the metric floor's cap κ
#: on the prox's zeroing threshold, no weight can reach zero from farther than STEPS·lr·(κ + ADAM_REACH)
ADAM_REACH = 2.0


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_the_backbone_recipes_are_found():
    names = {r.stem for r in BACKBONE_RECIPES}
    assert {"proxgen_cifar10_resnet34_l1", "proxquant_original", "sr2_cifar10_densenet121_l1"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.stem) for r in BACKBONE_RECIPES])
def test_backbone_recipe_trains_without_wiping_its_convs(recipe):
    cli = ProxCLI(["--config", str(recipe), "--seed_everything=0"], run=False)
    model = cli.model
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(BATCH * STEPS, 3, 32, 32, generator=g),
        torch.randint(0, 10, (BATCH * STEPS,), generator=g),
    )
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))

    # the recipe's own callbacks (stage schedules, monitors) except those that need a logger or disk
    keep = [c for c in cli.trainer.callbacks if type(c).__module__.startswith("lightning_prox")]
    trainer = quiet_trainer(
        1, [*keep, Losses()], max_steps=STEPS, limit_val_batches=0, num_sanity_val_steps=0
    )
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    start = [w.detach().clone() for w in convs]
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=BATCH))
    assert trainer.global_step == STEPS and len(losses) == STEPS
    assert all(torch.isfinite(torch.tensor(losses))), losses
    zero = sum(int((w == 0).sum()) for w in convs) / sum(w.numel() for w in convs)
    assert zero < MAX_ZERO, f"{zero:.1%} of the conv weights are exactly zero after {STEPS} steps"
    opt = trainer.optimizers[0]
    if isinstance(opt, ProxGen):  # the metric floor bounds how far from zero a weight can be zeroed
        zeroed = [w0[(w == 0) & (w0 != 0)].abs() for w0, w in zip(start, convs)]
        reach = max((float(z.amax()) for z in zeroed if z.numel()), default=0.0)
        for group in opt.param_groups:
            if group.get("regularizer") is not None:
                assert group["threshold_cap"] is not None, "the recipe turned the metric floor off"
                bound = STEPS * group["lr"] * (group["threshold_cap"] + ADAM_REACH)
                assert reach <= bound, f"a weight {reach:.2e} from zero was zeroed (bound {bound:.2e})"
