"""Benchmark: how much smaller and faster ``export_compact`` makes group-sparse models, on this CPU.

Two parts, one table each:

1. **Trained**: the quickstart CNN (``recipes/quickstart.yaml``: ProxGen + ``GroupLasso(dim="in")`` on
   scikit-learn's digits) trained through the CLI at several λ, then exported. Columns: validation
   accuracy of the exported model (equal to the original's: the outputs agree to ``max rel diff``),
   parameters, MACs per sample and CPU latency (median of repeated runs) before → after, as ratios.
2. **Speed only**: a CIFAR ResNet-20 (32×32 inputs, random weights) whose block-internal channels —
   the output channels of each block's first conv, read only by the block's second conv — are zeroed
   at a given fraction in the second conv's input slices, as ``GroupLasso(dim="in")`` would leave them.
   These channels are not shared by a residual add, so each one's zero slice makes it removable. It
   shows how latency follows (or does not follow) MACs at a given structured sparsity.

Run: ``python benchmarks/bench_export.py [--epochs 30] [--lams 5e-4 1e-3 1.5e-3] [--threads 1]``
(about 2 minutes at the defaults on a 2-core machine).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from lightning_prox.cli import ProxCLI
from lightning_prox.export import export_compact
from lightning_prox.models import CifarResNet, ImageClassifier

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def _accuracy(net: nn.Module, loader) -> float:
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _row(label: str, acc: str, report) -> str:
    (p0, p1), (m0, m1) = report.params, report.macs
    lat = "  ".join(f"b{b}: {a / c:4.2f}x" for b, (a, c) in sorted(report.latency_ms.items()))
    return (
        f"{label:<24} {acc:>6} {p0:>9,} → {p1:<9,} {p0 / p1:5.2f}x {m0:>11,} → {m1:<11,} {m0 / m1:5.2f}x  "
        f"{lat}  {report.max_rel_diff:.1e}"
    )


HEADER = (
    f"{'model':<24} {'acc':>6} {'parameters':^22} {'ratio':>6} {'MACs / sample':^26} {'ratio':>6}  "
    f"{'latency ratio (before/after)':<28} max rel diff"
)


def trained(epochs: int, lams: list[float], runs: int) -> None:
    print(f"\n1. quickstart CNN on digits, ProxGen + GroupLasso(dim='in'), {epochs} epochs, exported")
    print(HEADER)
    for lam in lams:
        quiet = io.StringIO()  # the fit's own tables and warnings: only this benchmark's rows are printed
        with tempfile.TemporaryDirectory() as tmp:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                cli = ProxCLI(
                    [
                        "fit",
                        "--config",
                        str(QUICKSTART),
                        f"--trainer.max_epochs={epochs}",
                        "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false",
                        f"--trainer.logger.init_args.save_dir={tmp}",
                        f"--model.init_args.regularizer.init_args.lam={lam}",
                    ]
                )
            best = cli.trainer.checkpoint_callback.best_model_path
            net = ImageClassifier.load_from_checkpoint(best, map_location="cpu").net.eval()
            loader = cli.datamodule.val_dataloader()
            x = next(iter(loader))[0][:8]
            compact, report = export_compact(net, x, latency_batches=(1, 64), latency_runs=runs)
            acc = _accuracy(compact, loader)
            print(_row(f"lenet λ={lam:g}", f"{acc:.3f}", report), flush=True)


def speed_only(fractions: list[float], runs: int) -> None:
    print("\n2. CIFAR ResNet-20, 32x32, block-internal channels zeroed at a fraction (random weights)")
    print(HEADER)
    for frac in fractions:
        torch.manual_seed(0)
        net = CifarResNet(depth=20, num_classes=10).eval()
        with torch.no_grad():
            for block in (m for m in net.modules() if hasattr(m, "conv2") and hasattr(m, "conv1")):
                k = int(round(frac * block.conv2.in_channels))
                block.conv2.weight[:, :k] = 0
        x = torch.randn(8, 3, 32, 32)
        compact, report = export_compact(net, x, latency_batches=(1, 64), latency_runs=runs)
        print(_row(f"resnet20 {frac:.0%} zero", "-", report), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lams", type=float, nargs="+", default=[5e-4, 1e-3, 1.5e-3])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50, help="timed forward passes per batch size")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sys.argv = sys.argv[:1]  # LightningCLI reads its own arguments from ProxCLI(args) only
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    trained(args.epochs, args.lams, args.runs)
    speed_only(args.fractions, args.runs)


if __name__ == "__main__":
    main()
