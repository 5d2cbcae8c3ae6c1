"""Group sparsity and accuracy against λ, per optimizer, on the quickstart model (plot for docs/choosing.md).

The quickstart's LeNet-style CNN (``recipes/quickstart.yaml``: two 3×3 convs with 16 and 32 channels, a
64-unit hidden layer) on scikit-learn's 8×8 digits, with ``GroupLasso(lam, dim="in")`` on every conv and
linear weight, trained by ProxGen, ProxSGD, RMDA and RAMDA over a grid of λ per optimizer. For each run it
reports the fraction of input groups (input channels of a conv, input features of a linear layer) that
are exactly zero at the end, and the validation accuracy of that model.

Settings: ProxGen lr 1e-2 (the quickstart's); ProxSGD lr 0.1 with momentum 0.9; RMDA lr 0.1 and RAMDA
lr 1e-2 with ε = 1e-6 (the learning rates of Huang & Lee's CIFAR scripts), both with ``momentum=1``
(c = 1: no averaging, so the trained iterate is the proximal solution and carries the structure; the
papers' c < 1 needs the stage-wise schedule of ``StageRestart``, whose final stage ramps c to 1, and a
longer run). Batch 64, ``--epochs`` epochs (default 15), seed 0, one CPU thread, no schedule.

    python docs/scripts/lam_sweep.py --out docs/img/lam_sweep.png     # about 2 CPU minutes
"""

from __future__ import annotations

import argparse
import functools
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import GroupLasso

OPTIMIZERS = {
    "ProxGen": (functools.partial(ProxGen, lr=1e-2), [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    "ProxSGD": (functools.partial(ProxSGD, lr=0.1, momentum=0.9), [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]),
    "RMDA": (functools.partial(RMDA, lr=0.1, momentum=1.0), [1e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2]),
    "RAMDA": (
        functools.partial(RAMDA, lr=1e-2, momentum=1.0, eps=1e-6),
        [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    ),
}


def group_counts(weights: list[torch.Tensor]) -> tuple[int, int]:
    """Zero input groups and all input groups (``dim="in"``: the slice ``w[:, j]``) of the weights."""
    zero = total = 0
    for w in weights:
        norms = w.detach().transpose(0, 1).reshape(w.shape[1], -1).abs().amax(dim=1)
        zero += int((norms == 0).sum())
        total += norms.numel()
    return zero, total


def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    model.train()
    return correct / n


def run(name: str, lam: float, epochs: int, data: DigitsDataModule) -> tuple[float, float]:
    torch.manual_seed(0)
    module = ImageClassifier(
        backbone="lenet",
        num_classes=10,
        in_chans=1,
        img_size=8,
        channels=[16, 32],
        hidden=[64],
        regularizer=GroupLasso(lam, dim="in"),
    )
    groups = module.prox_param_groups()
    make, _ = OPTIMIZERS[name]
    opt = make(groups)
    net = module.net
    regularized = [p for g in groups if g.get("regularizer") is not None for p in g["params"]]
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = data.train_set.tensors
    for _ in range(epochs):
        perm = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x_train[idx]), y_train[idx]).backward()
            opt.step()
    zero, total = group_counts(regularized)
    return zero / total, accuracy(net, data.val_dataloader())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=None, help="write the plot here (PNG)")
    parser.add_argument("--only", nargs="*", default=None, help="optimizer names to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = DigitsDataModule(batch_size=64)
    data.setup()
    results: dict[str, list[tuple[float, float, float]]] = {}
    t0 = time.perf_counter()
    print(f"quickstart CNN on digits, GroupLasso(dim='in'), {args.epochs} epochs, seed 0")
    print(f"{'optimizer':10s} {'lam':>8s} {'zero groups':>12s} {'val acc':>8s}")
    for name, (_, lams) in OPTIMIZERS.items():
        if args.only and name not in args.only:
            continue
        for lam in lams:
            sparsity, acc = run(name, lam, args.epochs, data)
            results.setdefault(name, []).append((lam, sparsity, acc))
            print(f"{name:10s} {lam:8.0e} {sparsity:12.1%} {acc:8.3f}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.out:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
        for name, rows in results.items():
            lams, sp, acc = zip(*rows, strict=True)
            ax1.plot(lams, sp, marker="o", label=name)
            ax2.plot(lams, acc, marker="o", label=name)
        ax1.set(xscale="log", xlabel="λ", ylabel="zero input groups", title="group sparsity at the end")
        ax2.set(xscale="log", xlabel="λ", ylabel="validation accuracy", title="accuracy", ylim=(0, 1.02))
        ax1.grid(alpha=0.3)
        ax2.grid(alpha=0.3)
        ax1.legend()
        fig.suptitle(f"quickstart CNN on digits, GroupLasso(dim='in'), {args.epochs} epochs")
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
