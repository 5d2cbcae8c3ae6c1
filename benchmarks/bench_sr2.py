"""Step cost of SR2 against a ProxSGD step of the same model (one forward more, by design).

An SR2 step is the closure (forward + backward) at x, the prox step, and one extra forward at the trial
point on the same batch (plus a parameter copy for the exact restore and float64 reductions). A
ProxSGD step is the closure and the prox step. This script times both, and a forward alone, on a
small CNN and a CIFAR ResNet in train mode (BatchNorm), and prints the ratio of the step times and the
ratio expected from one extra forward, (fwd+bwd + fwd) / (fwd+bwd).

    python benchmarks/bench_sr2.py                  # 1 thread, small CNN and ResNet-20
    python benchmarks/bench_sr2.py --threads 2 --steps 30 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_prox.models.resnet_cifar import CifarResNet
from lightning_prox.optim import SR2, ProxSGD
from lightning_prox.regularizers import L1


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip


def _groups(model: nn.Module) -> list[dict]:
    w = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return [{"params": w, "regularizer": L1(1e-4)}, {"params": rest}]


def _setup(make: Callable[[], nn.Module], opt_name: str, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.manual_seed(0)
    model = make().train()
    opt = SR2(_groups(model), sigma=10.0) if opt_name == "SR2" else ProxSGD(_groups(model), lr=0.1)

    def loss_fn() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    def fwd() -> None:
        with torch.no_grad():
            loss_fn()

    if opt_name == "SR2":
        return {"SR2": lambda: opt.step(closure, trial_closure=loss_fn)}
    return {"ProxSGD": lambda: opt.step(closure), "fwd+bwd": closure, "fwd": fwd}


def bench(name: str, make: Callable[[], nn.Module], batch: int, steps: int) -> dict[str, float]:
    """Median times; the four measurements alternate within every round (a busy machine drifts)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    fns = {**_setup(make, "ProxSGD", x, y), **_setup(make, "SR2", x, y)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(steps + 3):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= 3:  # warm-up rounds
                times[k].append(time.perf_counter() - t)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["ratio"] = out["SR2"] / out["ProxSGD"]
    out["expected"] = (out["fwd+bwd"] + out["fwd"]) / out["fwd+bwd"]
    print(
        f"| {name} | {batch} | {1e3 * out['ProxSGD']:.1f} | {1e3 * out['SR2']:.1f} | {out['ratio']:.2f} | "
        f"{1e3 * out['fwd']:.1f} | {out['expected']:.2f} |",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.steps} steps")
    print(
        "| model | batch | ProxSGD step ms | SR2 step ms | SR2 / ProxSGD | forward ms | (fwd+bwd+fwd)/(fwd+bwd) |"
    )
    print("|---|---|---|---|---|---|---|")
    bench("small CNN (2 conv + BN, 1 linear)", small_cnn, args.batch, args.steps)
    bench("ResNet-20 (CIFAR, 0.27M params)", lambda: CifarResNet(20), args.batch, args.steps)


if __name__ == "__main__":
    main()
