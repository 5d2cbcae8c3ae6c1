"""Study: group-lasso logistic regression on scikit-learn's digits with ProxSGD, ProxGen, RMDA and RAMDA.

The LogReg/MNIST setting of Huang & Lee (NeurIPS 2024), Appendix C, Table 7, with the hyperparameters of
the authors' experiment scripts (ismoptgroup/ramda_exp): 500 epochs, batch
128, milestones 100/200/300/400 (lr × 0.1; RMDA/RAMDA restarted, RAMDA's ε × 0.1), lr 0.1 / 1e-3 / 0.1 /
1e-2, c0 = 0.1 (RMDA) / 0.01 (RAMDA), ProxSGD with the authors' averaged momentum
buf ← 0.9·buf + 0.1·g (``momentum=0.9, dampening=0.9``), input-feature groups (w_g = √10), initialized
at the origin. Scaled to digits (1797 × 64, 10 classes), with two changes only:

* λ = 1e-2 instead of 1e-3 (digits has 64 standardized features instead of 784: 1e-3 zeroes almost
  nothing here);
* the final-stage ramp c = min(c0·√i, 1) runs on the paper's clock: digits has 15 steps per epoch where
  MNIST has 469, so the i-th final-stage step here counts as i·(469/15) paper steps, and c reaches 1 at
  the same fraction of the final stage as in the paper (RAMDA: 10⁴ of 46 900 steps, about 21%; RMDA:
  100 steps). Without this, RAMDA's c would end the run at 0.39 and its iterate W_t stay dense.

Prints a table (final training accuracy, final weighted group sparsity of W_t, the maximum over epochs,
the number of epochs in the last 20% whose zero pattern differs from the previous epoch's) and writes
the sparsity-vs-epoch plot ``docs/img/ramda_digits_sparsity.png``.

Run: ``python benchmarks/study_logreg_digits.py [--epochs 500] [--out docs/img/ramda_digits_sparsity.png]``.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits

from lightning_prox.callbacks.stage_restart import final_stage_momentum, stage_index
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import GroupLasso

METHODS = {
    "ProxSGD": (ProxSGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.9}),
    "ProxGen": (ProxGen, {"lr": 1e-3}),
    "RMDA": (RMDA, {"lr": 0.1, "momentum": 0.1}),
    "RAMDA": (RAMDA, {"lr": 1e-2, "momentum": 0.01}),
}


#: steps per epoch of the paper's MNIST runs (60000 / 128, rounded up): the clock of the c ramp
PAPER_STEPS_PER_EPOCH = 469


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
    clock = PAPER_STEPS_PER_EPOCH / -(-n // bs)  # paper steps per step here
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
                    else final_stage_momentum(kw["momentum"], round((step - final_start + 1) * clock))
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
    ap.add_argument("--epochs", type=int, default=500)
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
