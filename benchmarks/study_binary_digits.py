"""Binary networks on scikit-learn's digits: BinaryConnect (STE) vs original vs revised ProxQuant.

A small MLP (64 → 256 → 256 → 10, batch norm after every layer) has all three weight matrices binary
(±1). Three ways to get there, each trained for ``--epochs`` epochs with Adam-type steps at lr 0.01:

- **BinaryConnect** (Courbariaux et al. 2015), the STE baseline: latent real weights, the forward pass
  uses sign(w), gradients pass straight through, latent weights are clipped to [-1, 1] after every step.
- **ProxQuant** (Bai, Wang & Liberty, ICLR 2019): ``ProxGen(prox_metric="euclidean")`` + ``Quantization(λ)``.
- **revised ProxQuant** (Yun, Lozano & Yang, ICLR 2021 submission, Section 2, Table 2): ``ProxGen(prox_metric="preconditioned")``.

Both ProxQuant variants use the homotopy λ_epoch = λ·epoch (``RegularizationScheduler``) and are
hard-quantized and frozen after ``--freeze`` epochs (``HardQuantization``); batch norms keep training.
λ is chosen per variant on the validation split from a grid (the two variants' λ are not comparable:
the revised prox divides it by sqrt(v̂)+δ); the table reports test accuracy *after the freeze* (the
final, binary model), mean ± std over seeds, and the full-precision accuracy right before the freeze.

    python benchmarks/study_binary_digits.py                       # 3 seeds, 30 epochs, freeze at 20
    python benchmarks/study_binary_digits.py --plot docs/img/proxquant_digits.png
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_prox.callbacks import HardQuantization, RegularizationScheduler
from lightning_prox.data import DigitsDataModule
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import Quantization

LAMS = {"proxquant": [1e-3, 1e-2, 1e-1], "revised": [1e-6, 1e-5, 1e-4]}


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


class BinLinear(nn.Linear):
    """Linear layer whose forward pass uses sign(weight) when ``ste`` (BinaryConnect)."""

    def __init__(self, *args, ste: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.ste = ste

    def forward(self, x: Tensor) -> Tensor:
        w = _SignSTE.apply(self.weight) if self.ste else self.weight
        return nn.functional.linear(x, w, self.bias)


class BinaryMLP(pl.LightningModule):
    def __init__(self, method: str, lam: float, lr: float = 0.01, width: int = 256):
        super().__init__()
        self.method, self.lam, self.lr = method, lam, lr
        ste = method == "binaryconnect"
        dims = [64, width, width, 10]
        self.linears = nn.ModuleList(BinLinear(a, b, bias=False, ste=ste) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in dims[1:])
        for lin in self.linears:  # start inside [-1, 1], as binary nets usually do
            nn.init.uniform_(lin.weight, -1.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        for i, (lin, bn) in enumerate(zip(self.linears, self.norms)):
            h = bn(lin(h))
            if i < len(self.linears) - 1:
                h = torch.relu(h)
        return h

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.method == "binaryconnect":
            with torch.no_grad():
                for lin in self.linears:
                    lin.weight.clamp_(-1.0, 1.0)

    def configure_optimizers(self):
        weights = [lin.weight for lin in self.linears]
        rest = [p for bn in self.norms for p in bn.parameters()]
        if self.method == "binaryconnect":
            return torch.optim.Adam([*weights, *rest], lr=self.lr)
        metric = "euclidean" if self.method == "proxquant" else "preconditioned"
        groups = [
            {"params": weights, "regularizer": Quantization(self.lam, levels=(-1.0, 1.0))},
            {"params": rest},
        ]
        return ProxGen(groups, lr=self.lr, prox_metric=metric)


@torch.no_grad()
def accuracy(model: BinaryMLP, loader, binarize: bool) -> float:
    """Accuracy in eval mode; ``binarize`` evaluates with sign(w) (the deployable binary model)."""
    model.eval()
    saved = [lin.weight.detach().clone() for lin in model.linears]
    if binarize:
        for lin in model.linears:
            lin.weight.copy_(torch.where(lin.weight >= 0, 1.0, -1.0))
    ste = [lin.ste for lin in model.linears]
    for lin in model.linears:
        lin.ste = False
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += len(y)
    for lin, w, s in zip(model.linears, saved, ste):
        lin.weight.copy_(w)
        lin.ste = s
    model.train()
    return correct / total


class Curves(Callback):
    """Per epoch: test accuracy of the binary model and of the real-valued weights."""

    def __init__(self, dm: DigitsDataModule):
        self.dm = dm
        self.binary: list[float] = []
        self.real: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module):
        loader = self.dm.test_dataloader()
        self.binary.append(accuracy(pl_module, loader, binarize=True))
        self.real.append(accuracy(pl_module, loader, binarize=pl_module.method == "binaryconnect"))


def run(method: str, lam: float, seed: int, epochs: int, freeze: int) -> dict:
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    model = BinaryMLP(method, lam)
    curves = Curves(dm)
    callbacks: list[Callback] = [curves]
    if method != "binaryconnect":
        callbacks += [RegularizationScheduler("linear", interval="epoch"), HardQuantization(epoch=freeze)]
    with tempfile.TemporaryDirectory() as d:
        trainer = pl.Trainer(
            default_root_dir=d,
            max_epochs=epochs,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(model, dm.train_dataloader())
    weights = torch.cat([lin.weight.flatten() for lin in model.linears])
    return {
        "val": accuracy(model, dm.val_dataloader(), binarize=True),
        "test": accuracy(model, dm.test_dataloader(), binarize=True),
        "is_binary": bool(((weights == 1) | (weights == -1)).all()),
        "real_before_freeze": curves.real[freeze - 1],
        "binary_curve": curves.binary,
        "real_curve": curves.real,
    }


def _ms(xs: list[float]) -> str:
    return f"{100 * statistics.mean(xs):5.1f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0):3.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--freeze", type=int, default=20)
    ap.add_argument("--plot", type=str, default=None, help="write a PNG of the test-accuracy curves here")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a tiny MLP: threads only add contention
    t0 = time.perf_counter()
    configs = [("binaryconnect", 0.0)] + [(m, lam) for m in ("proxquant", "revised") for lam in LAMS[m]]
    results = {
        (m, lam): [run(m, lam, s, args.epochs, args.freeze) for s in range(args.seeds)] for m, lam in configs
    }
    print(
        f"\nbinary MLP 64-256-256-10 on digits (sklearn), {args.epochs} epochs, ProxQuant freeze after "
        f"{args.freeze}, {args.seeds} seeds, {time.perf_counter() - t0:.0f} s"
    )
    print(
        f"{'method':<14} {'λ':>7} {'val acc %':>12} {'test acc % (binary)':>20} {'fp before freeze %':>19} {'binary':>6}"
    )
    for (m, lam), rs in results.items():
        lam_s = "-" if m == "binaryconnect" else f"{lam:.0e}"
        fp = "-" if m == "binaryconnect" else _ms([r["real_before_freeze"] for r in rs])
        print(
            f"{m:<14} {lam_s:>7} {_ms([r['val'] for r in rs]):>12} {_ms([r['test'] for r in rs]):>20} "
            f"{fp:>19} {'-' if m == 'binaryconnect' else str(all(r['is_binary'] for r in rs)):>6}"
        )
    best = {
        m: max(
            (cfg for cfg in results if cfg[0] == m),
            key=lambda c: statistics.mean(r["val"] for r in results[c]),
        )
        for m in ("binaryconnect", "proxquant", "revised")
    }
    print("\nλ chosen on validation; test accuracy of the final binary model:")
    for m, cfg in best.items():
        print(f"  {m:<14} λ={cfg[1]:.0e}  test {_ms([r['test'] for r in results[cfg]])} %")
    if args.plot:
        _plot(args.plot, results, best, args)


def _plot(path: str, results, best, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = list(range(1, args.epochs + 1))
    colors = {"binaryconnect": "tab:gray", "proxquant": "tab:blue", "revised": "tab:red"}
    labels = {
        "binaryconnect": "BinaryConnect (STE)",
        "proxquant": "ProxQuant",
        "revised": "revised ProxQuant",
    }
    for m, cfg in best.items():
        curves = torch.tensor([r["binary_curve"] for r in results[cfg]]) * 100
        mean = curves.mean(0)
        lab = labels[m] + ("" if m == "binaryconnect" else f" (λ={cfg[1]:.0e})")
        ax.plot(epochs, mean, color=colors[m], label=lab)
        if len(curves) > 1:
            sd = curves.std(0)
            ax.fill_between(epochs, mean - sd, mean + sd, color=colors[m], alpha=0.15)
    ax.axvline(args.freeze, color="k", ls=":", lw=1)
    ax.text(args.freeze + 0.3, ax.get_ylim()[1] - 6, "hard quantization", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy of sign(w) model [%]")
    ax.set_title(f"binary MLP on digits, mean ± std over {args.seeds} seeds")
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
