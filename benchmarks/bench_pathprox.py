"""Step time of PathProx against ``torch.optim.SGD(momentum=0.9)`` on the same model, in one run.

PathProx's step is torch's SGD step, then per unit a normalization of ``w_k`` and a group soft-threshold
of ``v_k`` over the layer pairs. This script times the optimizer step alone (fixed random gradients,
interleaved, median) for:

- ``SGD``: ``torch.optim.SGD(momentum=0.9)`` with torch's default implementation (the per-tensor loop
  on CPU) and with ``foreach=True``;
- ``PathProx per-pair``: ``PathProx(foreach=False)``: torch's per-tensor SGD and the per-pair loop of
  the prox;
- ``PathProx``: the default multi-tensor path (torch's foreach SGD, the prox batched over all pairs);
- ``+ balancing``: the default with layer-wise balancing in every step;

and the prox alone (``normalize_and_prox_``, per-pair loop vs multi-tensor), on MLP-6-400 (MNIST
sizes), VGG-19 without BatchNorm (CIFAR-10) and the digits study's factorized MLP, at 1 and 2 threads.

    python benchmarks/bench_pathprox.py                       # 1 and 2 threads, 30 steps
    python benchmarks/bench_pathprox.py --threads 1 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_prox.models import MLP, FactorizedMLP, VGG19NoBN
from lightning_prox.optim import PathProx
from lightning_prox.optim.pathprox import normalize_and_prox_

MODELS: dict[str, Callable[[], nn.Module]] = {
    "MLP-6-400 (MNIST)": lambda: MLP(784, 10, hidden=[400] * 5),
    "VGG-19 no BN (CIFAR-10)": lambda: VGG19NoBN(10),
    "FactorizedMLP 64-128x5 (digits)": lambda: FactorizedMLP(64, 10, hidden=128, depth=5),
}


def _model(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return model


def _median_ms(fns: dict[str, Callable[[], object]], steps: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (the momentum buffers are created here)
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {n: statistics.median(t) for n, t in times.items()}


def bench(make: Callable[[], nn.Module], steps: int) -> dict[str, float]:
    lr, lam = 0.05, 1e-4  # a small λ: the shrink does not empty the layers while the steps repeat
    fns: dict[str, Callable[[], object]] = {}
    m = _model(make)
    fns["SGD"] = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9).step
    m = _model(make)
    fns["SGD foreach"] = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, foreach=True).step
    m = _model(make)
    opt_loop = PathProx(m.parameters(), lr=lr, lam=lam, momentum=0.9, pairs=m, foreach=False)
    fns["PathProx per-pair"] = opt_loop.step
    m = _model(make)
    opt = PathProx(m.parameters(), lr=lr, lam=lam, momentum=0.9, pairs=m)
    fns["PathProx"] = opt.step
    m = _model(make)
    fns["+ balancing"] = PathProx(m.parameters(), lr=lr, lam=lam, momentum=0.9, pairs=m, balancing=True).step
    taus = [lr * lam] * len(opt.pairs)
    fns["prox per-pair"] = lambda: normalize_and_prox_(opt_loop.pairs, taus, foreach=False)
    fns["prox multi-tensor"] = lambda: normalize_and_prox_(opt.pairs, taus)
    return _median_ms(fns, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    print(f"torch {torch.__version__}, CPU; median of {args.steps} interleaved steps (ms; ratio to SGD)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, make in MODELS.items():
            numel = sum(q.numel() for q in make().parameters())
            t = bench(make, args.steps)
            sgd = t["SGD"]
            print(f"\n{name}, {numel / 1e6:.2f} M parameters, {threads} thread(s)")
            for row, ms in t.items():
                ratio = f"{ms / sgd:6.2f}x" if not row.startswith("prox") else ""
                print(f"   {row:<20} {ms:9.3f} ms {ratio}", flush=True)
            print(f"   prox: per-pair / multi-tensor = {t['prox per-pair'] / t['prox multi-tensor']:.2f}x")


if __name__ == "__main__":
    main()
