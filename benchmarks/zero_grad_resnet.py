"""Zero fraction of a timm ResNet's conv weights under ProxGen: the default metric floor vs the paper's update.

timm ResNets zero-initialize the last norm layer of every block (``zero_init_last=True``), so those
blocks' convs get exactly-zero gradients at step 1, and at 32×32 input the last stage runs at 1×1,
so 8 of the 9 taps of its 3×3 convs never get a gradient. This script trains a timm ``resnet18``
(10 classes) with ProxGen (lr 1e-3, the default) on random 32×32 data (batch 8, a fixed batch
stream) with the regularizer on every conv/linear weight (the selection
:func:`lightning_prox.structure.param_groups_regularized` makes by default) and prints the
fraction of conv-weight entries that are exactly zero after 1, 10 and 100 steps, for
``threshold_cap=1`` (the default) and ``threshold_cap=None`` (the paper's update).

Run: ``python benchmarks/zero_grad_resnet.py --threads 2`` (about 7 minutes on 2 CPU cores for
the full table; ``--steps 1 10`` for a quick look).
"""

from __future__ import annotations

import argparse
import time

import torch

from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import L1, GroupLasso
from lightning_prox.structure import param_groups_regularized


def conv_zero_fraction(model: torch.nn.Module) -> float:
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            zeros += int((m.weight == 0).sum())
            total += m.weight.numel()
    return zeros / total


def run(reg_name: str, lam: float, cap: float | None, checkpoints: list[int], seed: int = 0) -> list[float]:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", num_classes=10)
    reg = L1(lam) if reg_name == "L1" else GroupLasso(lam, dim="in")
    opt = ProxGen(param_groups_regularized(model, reg), lr=1e-3, threshold_cap=cap)
    g = torch.Generator().manual_seed(seed)
    out, step = [], 0
    for target in checkpoints:
        while step < target:
            x = torch.randn(8, 3, 32, 32, generator=g)
            y = torch.randint(0, 10, (8,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
        out.append(conv_zero_fraction(model))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--lams", type=float, nargs="+", default=[1e-6, 1e-4, 1e-2])
    parser.add_argument("--regs", nargs="+", default=["L1", "GroupLasso"], choices=["L1", "GroupLasso"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in args.steps)
    print(f"| regularizer | λ | threshold_cap | {head} |")
    print("|" + " --- |" * (3 + len(args.steps)))
    start = time.perf_counter()
    for reg in args.regs:
        for lam in args.lams:
            for cap in (1.0, None):
                fr = run(reg, lam, cap, args.steps)
                cells = " | ".join(f"{100 * f:.1f}%" for f in fr)
                label = "1 (default)" if cap is not None else "None (paper)"
                print(f"| {reg} | {lam:g} | {label} | {cells} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
