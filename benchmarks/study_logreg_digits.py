"""Study: group-lasso logistic regression on scikit-learn's digits with ProxSGD, ProxGen, RMDA and RAMDA.

The RAMDA paper's LogReg/MNIST setting (digest 003 Table 7, code supplement F: 500 epochs, batch 128,
milestones 100/200/300/400, λ = 1e-3 for all methods, lr 0.1 / 1e-3 / 0.1 / 1e-2, c = 0.1 / 0.01) scaled
to digits (1797 × 64, 10 classes): 100 epochs with milestones 20/40/60/80 (lr × 0.1, RMDA/RAMDA
restarted, ε × 0.1, c ramp in the final stage), batch 128, input-feature groups with w_g = √10, features
standardized, λ = 1e-2 (digits has 64 features instead of 784: λ = 1e-3 zeroes almost nothing here).
Initialized at the origin, as in the paper. Prints a table (final training accuracy, final weighted
group sparsity, the maximum over epochs, the number of pattern changes in the last 20% of epochs) and
writes the sparsity-vs-epoch plot ``docs/img/ramda_digits_sparsity.png``.

Run: ``python benchmarks/study_logreg_digits.py [--epochs 100] [--out docs/img/ramda_digits_sparsity.png]``.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits

from lightning_prox.callbacks.stage_restart import final_stage_momentum, stage_index
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import GroupLasso

METHODS = {
    "ProxSGD": (ProxSGD, {"lr": 0.1, "momentum": 0.9}),
    "ProxGen": (ProxGen, {"lr": 1e-3}),
    "RMDA": (RMDA, {"lr": 0.1, "momentum": 0.1}),
    "RAMDA": (RAMDA, {"lr": 1e-2, "momentum": 0.01}),
}


def train(name, X, y, lam, epochs, milestones, bs, seed=0):
    cls, kw = METHODS[name]
    n, d = X.shape
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, 10)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = cls(
        [{"params": [model.weight], "regularizer": GroupLasso(lam, dim="in")}, {"params": [model.bias]}], **kw
    )
    restartable = hasattr(opt, "restart")
    gen = torch.Generator().manual_seed(seed)
    stages, final_start, step, curve, changes, prev = 0, None, 0, [], [], None
    for epoch in range(epochs):
        stage = stage_index(epoch, milestones)
        while stages < stage:
            if restartable:
                opt.restart(eps_factor=0.1)
            stages += 1
            final_start = step if stages == len(milestones) else final_start
        for g in opt.param_groups:
            g["lr"] = kw["lr"] * 0.1**stage
        for idx in torch.randperm(n, generator=gen).split(bs):
            if restartable:
                c = (
                    kw["momentum"]
                    if final_start is None
                    else final_stage_momentum(kw["momentum"], step - final_start + 1)
                )
                for g in opt.param_groups:
                    g["momentum"] = c
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
            step += 1
        zero = torch.linalg.vector_norm(model.weight.detach(), dim=0) == 0
        curve.append(float(zero.float().mean()))  # all groups have |g| = 10: weighted = plain fraction
        changes.append(prev is not None and not torch.equal(zero, prev))
        prev = zero
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    tail = max(1, epochs // 5)
    return acc, curve, sum(changes[-tail:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--lam", type=float, default=1e-2)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--out", default="docs/img/ramda_digits_sparsity.png")
    args = ap.parse_args()
    Xn, yn = load_digits(return_X_y=True)
    X = torch.tensor(Xn, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    y = torch.tensor(yn)
    milestones = [round(args.epochs * f) for f in (0.2, 0.4, 0.6, 0.8)]
    print(
        f"digits {tuple(X.shape)}, lam={args.lam:g}, epochs={args.epochs}, milestones={milestones}, bs={args.bs}"
    )
    print(
        "| method | train acc | final weighted group sparsity | max sparsity over epochs | pattern changes, last 20% |"
    )
    print("|---|---|---|---|---|")
    curves = {}
    for name in METHODS:
        acc, curve, changes = train(name, X, y, args.lam, args.epochs, milestones, args.bs)
        curves[name] = curve
        print(f"| {name} | {acc:.2%} | {curve[-1]:.2%} | {max(curve):.2%} | {changes} |", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], label=name)
    for m in milestones:
        ax.axvline(m, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted group sparsity (%)")
    ax.set_title(f"group-lasso logistic regression, digits, λ={args.lam:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
