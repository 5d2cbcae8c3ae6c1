"""Pruning curve without retraining: set |w| ≤ 10^-k to zero (k = 1..8) and measure accuracy and sparsity.

The post-training evaluation of Lakhmiri, Orban & Lodi (2022, arXiv:2206.06531, Section 5, Figures 2-4):
each trained network is pruned at α = 10^-k, with no retraining, and the retained accuracy is
plotted against the sparsity. The regularized weights (the ones the model's ProxMixin selection gives
a regularizer) are pruned and counted; k = 0 in the output is the unpruned network.

    python benchmarks/prune_curve.py lightning_logs/sr2_cifar10_resnet34_l1/version_0/checkpoints/last.ckpt \\
        --data lightning_prox.data.CIFAR10DataModule
    python benchmarks/prune_curve.py model.ckpt --data lightning_prox.data.DigitsDataModule --json curve.json
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x).argmax(dim=-1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


@torch.no_grad()
def prune_curve(
    model: nn.Module, weights: list[torch.Tensor], loader: Iterable[Any], ks: Iterable[int] = range(1, 9)
) -> list[dict[str, float]]:
    """Accuracy and exact-zero fraction of ``weights`` after zeroing |w| ≤ 10^-k, largest α first.

    The model is restored to its trained weights before returning. Row k = 0 is the unpruned model.
    """
    saved = [w.detach().clone() for w in weights]
    n = sum(w.numel() for w in weights)
    rows = [{"k": 0, "alpha": 0.0, "sparsity": sum(int((w == 0).sum()) for w in weights) / n}]
    rows[0]["accuracy"] = accuracy(model, loader)
    try:
        for k in sorted(ks):
            alpha = 10.0**-k
            for w, s in zip(weights, saved):
                w.copy_(torch.where(s.abs() <= alpha, torch.zeros_like(s), s))
            rows.append(
                {
                    "k": k,
                    "alpha": alpha,
                    "sparsity": sum(int((w == 0).sum()) for w in weights) / n,
                    "accuracy": accuracy(model, loader),
                }
            )
    finally:
        for w, s in zip(weights, saved):
            w.copy_(s)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument(
        "--model", default="lightning_prox.models.ImageClassifier", help="LightningModule class path"
    )
    ap.add_argument(
        "--data", default="lightning_prox.data.CIFAR10DataModule", help="LightningDataModule class path"
    )
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    def load(path: str) -> Any:
        mod, _, name = path.rpartition(".")
        return getattr(importlib.import_module(mod), name)

    model = load(args.model).load_from_checkpoint(args.checkpoint, map_location="cpu")
    dm = load(args.data)(**({"data_dir": args.data_dir} if args.data_dir else {}))
    dm.prepare_data()
    dm.setup("test")
    weights = [p for _, p in model.regularized_parameters()]
    rows = prune_curve(model, weights, dm.test_dataloader())
    print("| α | sparsity of the regularized weights | test accuracy |")
    print("|---|---|---|")
    for r in rows:
        alpha = "none" if r["k"] == 0 else f"1e-{r['k']}"
        print(f"| {alpha} | {r['sparsity']:.4f} | {r['accuracy']:.4f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh)
    return rows


if __name__ == "__main__":
    main()
