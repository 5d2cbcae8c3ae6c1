"""Benchmark: per-tensor ``GroupLasso(dim="in")`` against ``CoupledGroupLasso`` at the same λ on a ResNet.

A CIFAR ResNet-20 (``in_chans=1``) is trained with ProxGen on scikit-learn's digits (8×8, the whole
training split) once per regularizer and λ, through ``ImageClassifier`` (the mixin binds the coupled
groups to the network). Each trained network is then exported with ``export_compact`` on 32×32
random inputs (the network is fully convolutional up to its global pooling, so the compact model is
exact at any resolution; 32×32 is the CIFAR size the latency is meant for).

Columns: validation accuracy; coupled channel groups whose every slice is zero (``zero groups``, of
the network's 448: 112 residual-stream channels and 336 block-internal ones), of which residual-stream
channels; channels ``export_compact`` removed; parameters, MACs per sample and CPU latency (median,
batch 1 and 64) before/after, as ratios.

Run: ``python benchmarks/bench_coupled.py [--epochs 15] [--lams 2e-3 5e-3] [--threads 2]``
(about 4 minutes at the defaults on a 2-core machine).

``--prox``: instead, the time of one prox over the conv and linear weights of a timm ResNet-18 (no
pretrained weights, its initial values) under a random diagonal metric (as ProxGen's) and under the
Euclidean one: ``GroupLasso(dim="in")`` (one group per input channel of each tensor) against
``CoupledGroupLasso`` (the network's coupled channel groups), median of ``--reps`` calls, and the
Newton iterations each took.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import time
import warnings

import lightning.pytorch as pl
import torch

from lightning_prox.data import DigitsDataModule
from lightning_prox.export import export_compact
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import CoupledGroupLasso, GroupLasso
from lightning_prox.structure import coupled_channel_groups


def _zero_groups(net: torch.nn.Module, groups: list) -> tuple[int, int]:
    """(coupled groups whose every slice is zero, of which spanning more than one slice: stream channels)."""
    params = dict(net.named_parameters())
    zero = stream = 0
    for g in groups:
        if all(bool((params[n].index_select(d, torch.tensor(ix)) == 0).all()) for n, d, ix in g):
            zero += 1
            stream += len(g) > 1
    return zero, stream


def run(reg, lam: float, epochs: int, seed: int, lr: float) -> tuple[float, torch.nn.Module, float]:
    pl.seed_everything(seed, verbose=False)
    model = ImageClassifier(
        "resnet20",
        in_chans=1,
        img_size=8,
        optimizer=lambda groups: ProxGen(groups, lr=lr),
        regularizer=reg,
        sparsity_table=False,
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    dm = DigitsDataModule(batch_size=64, seed=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, dm)
    acc = float(trainer.callback_metrics["val/acc"])
    return acc, model.net.eval(), time.perf_counter() - t0


def prox_speed(lam: float, reps: int) -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)
    coupled = CoupledGroupLasso.from_model(net, torch.zeros(1, 3, 32, 32), lam=lam)
    params = dict(net.named_parameters())
    zs = [params[n].detach().clone() for n in coupled.names]
    gen = torch.Generator().manual_seed(1)
    metrics = [0.1 + 10 * torch.rand(z.shape, generator=gen) for z in zs]
    n = sum(z.numel() for z in zs)
    print(f"timm resnet18: {len(zs)} tensors, {n:,} entries, {coupled.num_groups} coupled groups, λ={lam:g}")
    for label, metric in (("diagonal metric", metrics), ("Euclidean", None)):
        for name, reg in (
            ('GroupLasso(dim="in")', GroupLasso(lam, dim="in")),
            ("CoupledGroupLasso", coupled),
        ):
            info: dict = {}
            reg.prox_multi(zs, 0.1, metric, info=info)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                reg.prox_multi(zs, 0.1, metric)
                times.append(time.perf_counter() - t0)
            ms = 1e3 * sorted(times)[reps // 2]
            print(f"{label:<16} {name:<22} {ms:8.0f} ms  iterations {info.get('inner_iters', 0)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lams", type=float, nargs="+", default=[2e-3, 5e-3])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed forward passes per batch size")
    ap.add_argument("--prox", action="store_true", help="time the prox on a timm ResNet-18 instead")
    ap.add_argument("--reps", type=int, default=5, help="timed prox calls (--prox)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.prox:
        prox_speed(args.lams[0], args.reps)
        return
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    x32 = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    print(
        f"CIFAR ResNet-20 (in_chans=1) on digits, ProxGen(lr={args.lr}), {args.epochs} epochs; "
        f"export_compact on 32x32 inputs, {args.threads} CPU thread(s)"
    )
    head = (
        f"{'regularizer':<26} {'λ':>7} {'val acc':>7} {'zero groups':>11} {'stream':>6} {'removed':>7} "
        f"{'params':>7} {'MACs':>7} {'lat b1':>7} {'lat b64':>7}  max rel diff"
    )
    print(head)
    groups = None
    for lam in args.lams:
        for label, reg in (
            ('GroupLasso(dim="in")', GroupLasso(lam, dim="in")),
            ("CoupledGroupLasso", CoupledGroupLasso(lam)),
        ):
            acc, net, _ = run(reg, lam, args.epochs, args.seed, args.lr)
            if groups is None:
                groups = coupled_channel_groups(net, x32[:1])
            zero, stream = _zero_groups(net, groups)
            _, rep = export_compact(net, x32, latency_batches=(1, 64), latency_runs=args.runs)
            (p0, p1), (m0, m1) = rep.params, rep.macs
            (a1, c1), (a64, c64) = rep.latency_ms[1], rep.latency_ms[64]
            print(
                f"{label:<26} {lam:>7.0e} {acc:>7.3f} {zero:>5} / {len(groups):<3} {stream:>6} "
                f"{rep.removed_channels:>7} {p0 / p1:>6.2f}x {m0 / m1:>6.2f}x {a1 / c1:>6.2f}x "
                f"{a64 / c64:>6.2f}x  {rep.max_rel_diff:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
