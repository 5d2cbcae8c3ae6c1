"""Study: a target sparsity instead of λ, on the quickstart CNN and scikit-learn's digits.

For ProxGen (lr 1e-2) and RAMDA (lr 1e-2, momentum 1), ``GroupLasso(1e-4, dim="in")`` as the starting
point and ``SparsityTarget(target, metric="group")`` (cubic ramp to 75 % of training), targets 50, 70 and
90 % zero input groups over the two inner layers (``exclude_ends=True``), 30 epochs, seed 0:

* the group sparsity reached at the end against the target, and the validation accuracy;
* the same run with ``StructureFreeze(epoch=24)`` (the pattern is frozen after the target is held for a
  few epochs and the last 5 epochs fine-tune without the penalty; RAMDA's new stage with
  ``restart_momentum=0.01``);
* the controller's final λ fixed from the start, and the fixed λ that reaches the target within 0.02,
  searched by hand (bisection in log λ over full runs, at most 8);
* Lightning's ``ModelPruning("ln_structured")`` on the same layers and input-channel groups
  (``pruning_dim=1``, L2 norm), pruning the target fraction at epoch 22 (75 % of training, where the
  target is reached above) and fine-tuning to epoch 30 with Adam (lr 1e-2), the same model otherwise.

Prints one table and writes the reached-sparsity-over-epochs plot.

Run: ``python benchmarks/study_sparsity_target.py [--epochs 30] [--out docs/img/sparsity_target_digits.png]``
(about 5 CPU minutes).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import time
import warnings

import lightning.pytorch as pl
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import ModelPruning

from lightning_prox.callbacks import SparsityTarget, StructureFreeze
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, ProxGen
from lightning_prox.structure import model_sparsity

OPTIMIZERS = {
    "ProxGen": functools.partial(ProxGen, lr=1e-2),
    "RAMDA": functools.partial(RAMDA, lr=1e-2, momentum=1.0),
}


def _model(optimizer, regularized: bool = True, lam: float = 1e-4) -> ImageClassifier:
    from lightning_prox.regularizers import GroupLasso

    pl.seed_everything(0, verbose=False)
    return ImageClassifier(
        backbone="lenet",
        num_classes=10,
        in_chans=1,
        img_size=8,
        channels=[16, 32],
        hidden=[64],
        optimizer=optimizer,
        regularizer=GroupLasso(lam, dim="in") if regularized else None,
        exclude_ends=True,
        sparsity_table=False,
    )


def _group_sparsity(model: ImageClassifier) -> float:
    # the modules' effective weights (under ModelPruning, `weight` is the masked copy of `weight_orig`)
    named = [("features.3", model.net.features[3].weight), ("classifier.1", model.net.classifier[1].weight)]
    return model_sparsity(named, "in")["group"]


class _Curve(pl.Callback):
    def __init__(self) -> None:
        self.points: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.points.append(_group_sparsity(pl_module))


def _fit(model, callbacks, epochs: int) -> tuple[float, float, list[float], float]:
    curve = _Curve()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=[*callbacks, curve],
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    lam = float(trainer.optimizers[0].param_groups[0].get("lam", 0.0))
    return _group_sparsity(model), float(trainer.callback_metrics["val/acc"]), curve.points, lam


def _by_hand(opt, target: float, lam: float, epochs: int, runs: int = 8) -> tuple[float, float, float]:
    """The fixed λ that gives ``target`` zero groups at the end, searched by hand: bisection in log λ
    over full runs, from the controller's final λ (sparsity rises with λ; the closest run is kept)."""
    lo, hi = None, None
    best = None
    for _ in range(runs):
        s, acc, _, _ = _fit(_model(opt, lam=lam), [], epochs)
        if best is None or abs(s - target) < abs(best[1] - target):
            best = (lam, s, acc)
        if abs(s - target) <= 0.02:
            break
        if s < target:
            lo = lam
            lam = lam * 4 if hi is None else math.sqrt(lam * hi)
        else:
            hi = lam
            lam = lam / 4 if lo is None else math.sqrt(lo * lam)
    return best  # type: ignore[return-value]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--out", default="docs/img/sparsity_target_digits.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    t0 = time.time()
    freeze_epoch, prune_epoch = int(0.8 * args.epochs), int(0.75 * args.epochs)
    rows, curves = [], {}
    for target in args.targets:
        for opt_name, opt in OPTIMIZERS.items():
            s, acc, curve, lam = _fit(_model(opt), [SparsityTarget(target, interval=5)], args.epochs)
            rows.append((target, opt_name, "SparsityTarget", s, acc))
            curves[(opt_name, target)] = curve
            # by hand: the controller's final λ, fixed from the start, then the fixed λ that hits the target
            s, acc, _, _ = _fit(_model(opt, lam=lam), [], args.epochs)
            rows.append((target, opt_name, f"fixed λ = {lam:.2e} (the controller's final)", s, acc))
            hand, s, acc = _by_hand(opt, target, lam, args.epochs)
            rows.append((target, opt_name, f"fixed λ = {hand:.2e} (searched by hand)", s, acc))
            # RAMDA's fine-tuning stage restarts at the freeze; c = 0.01 (its paper's first-stage value)
            freeze = StructureFreeze(
                epoch=freeze_epoch, restart_momentum=0.01 if opt_name == "RAMDA" else None
            )
            s, acc, _, _ = _fit(_model(opt), [SparsityTarget(target, interval=5), freeze], args.epochs)
            rows.append((target, opt_name, f"+ StructureFreeze(epoch={freeze_epoch})", s, acc))
        model = _model(functools.partial(torch.optim.Adam, lr=1e-2), regularized=False)
        params = [(model.net.features[3], "weight"), (model.net.classifier[1], "weight")]
        pruning = ModelPruning(
            "ln_structured",
            parameters_to_prune=params,
            amount=lambda epoch, t=target: t if epoch == prune_epoch else 0.0,
            pruning_dim=1,
            pruning_norm=2,
            use_global_unstructured=False,
            make_pruning_permanent=True,
            verbose=0,
        )
        s, acc, curve, _ = _fit(model, [pruning], args.epochs)
        rows.append((target, "Adam", f"ModelPruning(ln_structured) at epoch {prune_epoch}", s, acc))
        curves[("ModelPruning", target)] = curve
    print(f"{'target':>6}  {'optimizer':<8} {'method':<42} {'zero groups':>11} {'val acc':>8}")
    for target, opt_name, method, s, acc in rows:
        print(f"{target:6.2f}  {opt_name:<8} {method:<42} {s:11.3f} {acc:8.3f}")
    print(f"total {time.time() - t0:.0f} s")

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"ProxGen": "-", "RAMDA": "--", "ModelPruning": ":"}
    colors = dict(zip(args.targets, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for (who, target), curve in curves.items():
        ax.plot(
            range(1, len(curve) + 1),
            curve,
            styles[who],
            color=colors[target],
            label=f"{who}, target {target:.0%}",
        )
    for target in args.targets:
        ax.axhline(target, color=colors[target], lw=0.5, alpha=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("zero input groups (inner layers)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    ax.set_title("SparsityTarget on the quickstart CNN (digits)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
