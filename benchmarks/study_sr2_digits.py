"""SR2 vs the two-stage Prox-SGD of the SR2 paper's tables vs plain ProxSGD, on scikit-learn's digits.

Lakhmiri, Orban & Lodi (2022, arXiv:2206.06531, Tables 2-3) compare SR2 with "ProxSGD" (the two-stage
method of Yang et al. 2020) and ProxGEN on CIFAR. This study runs the same comparison on a CPU scale:

- data: digits split 1257 / 270 / 270 (seed 0), inputs x/8 − 1; an MLP 64-128-64-10 (ReLU), batch 64,
  ``--epochs`` epochs (default 40); ℓ1 or ℓ0 on the three weight matrices (biases unregularized);
- SR2 with the paper's Table 1 defaults and σ0 = 1 (no learning rate to tune);
- ``TwoStageProxSGD`` (identity preconditioner, no momentum: the paper's ProxSGD baseline; ℓ1 only)
  and plain ``ProxSGD(momentum=0)``, each at lr ∈ {0.03, 0.1, 0.3};
- λ ∈ {1e-4, 3e-4, 1e-3, 3e-3}, ``--seeds`` seeds (default 3: the initialization and batch order).

For each method and each validation-accuracy floor (0.95, 0.96, 0.97) the table reports, over the
λ (and lr) grid, the run with the highest exact-zero fraction of the weights among those whose
validation accuracy reaches the floor, averaged over seeds: exact zeros, |w| ≤ 1e-3, test accuracy.
For SR2 it also reports the final σ and the fraction of rejected steps.

    python benchmarks/study_sr2_digits.py                 # 3 seeds, 40 epochs (a few CPU minutes)
    python benchmarks/study_sr2_digits.py --seeds 1 --epochs 10
    python benchmarks/study_sr2_digits.py --plot docs/img/sr2_digits_sigma.png --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

from lightning_prox.optim import SR2, ProxSGD, TwoStageProxSGD
from lightning_prox.regularizers import L0, L1

LAMS = [1e-4, 3e-4, 1e-3, 3e-3]
LRS = [0.03, 0.1, 0.3]
FLOORS = [0.95, 0.96, 0.97]


def split() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 8.0 - 1.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = {"train": perm[:1257], "val": perm[1257:1527], "test": perm[1527:]}
    return {k: (X[v], y[v]) for k, v in idx.items()}


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def run(data: dict, method: str, reg_name: str, lam: float, lr: float | None, seed: int, epochs: int) -> dict:
    torch.manual_seed(seed)
    model = mlp()
    reg = (L1 if reg_name == "l1" else L0)(lam)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    biases = [m.bias for m in model if isinstance(m, nn.Linear)]
    groups = [{"params": weights, "regularizer": reg}, {"params": biases}]
    if method == "SR2":
        opt: torch.optim.Optimizer = SR2(groups, sigma=1.0)
    elif method == "TwoStageProxSGD":
        opt = TwoStageProxSGD(groups, lr=lr, preconditioner="identity", betas=(0.0, 0.999))
    else:
        opt = ProxSGD(groups, lr=lr, momentum=0.0)
    X, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    sigmas = []
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            xb, yb = X[perm[i : i + 64]], y[perm[i : i + 64]]

            def loss_fn(xb=xb, yb=yb):
                return nn.functional.cross_entropy(model(xb), yb)

            def closure(loss_fn=loss_fn):
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss

            if method == "SR2":
                opt.step(closure, trial_closure=loss_fn)
            else:
                closure()
                opt.step()
        if method == "SR2":
            sigmas.append(opt.sigma)  # type: ignore[attr-defined]
    with torch.no_grad():
        acc = {
            k: float((model(v[0]).argmax(1) == v[1]).float().mean()) for k, v in data.items() if k != "train"
        }
    n = sum(w.numel() for w in weights)
    out = {
        "method": method,
        "reg": reg_name,
        "lam": lam,
        "lr": lr,
        "seed": seed,
        "val": acc["val"],
        "test": acc["test"],
        "zeros": sum(int((w == 0).sum()) for w in weights) / n,
        "small": sum(int((w.abs() <= 1e-3).sum()) for w in weights) / n,
    }
    if method == "SR2":
        st = opt.sr2_stats()  # type: ignore[attr-defined]
        out.update(sigmas=sigmas, rejected=st["rejected_steps"] / st["steps"])
    return out


def best(runs: list[dict], floor: float) -> dict | None:
    ok = [r for r in runs if r["val"] >= floor]
    return max(ok, key=lambda r: (r["zeros"], r["val"])) if ok else None


def table(results: list[dict], seeds: list[int]) -> str:
    lines = [
        "| reg | method | val floor | exact zeros | abs(w) ≤ 1e-3 | test acc | seeds reaching the floor | SR2 final σ | SR2 rejected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for reg in ("l1", "l0"):
        for method in ("SR2", "TwoStageProxSGD", "ProxSGD"):
            for floor in FLOORS:
                picks = []
                for seed in seeds:
                    runs = [
                        r for r in results if r["reg"] == reg and r["method"] == method and r["seed"] == seed
                    ]
                    if not runs:
                        break
                    b = best(runs, floor)
                    if b is not None:
                        picks.append(b)
                if not picks and not any(r["reg"] == reg and r["method"] == method for r in results):
                    continue
                if not picks:
                    lines.append(f"| {reg} | {method} | {floor} | – | – | – | 0/{len(seeds)} | | |")
                    continue

                def mean(key: str, picks: list[dict] = picks) -> str:
                    return f"{statistics.mean(p[key] for p in picks):.3f}"

                extra = "| – | – |"
                if method == "SR2":
                    sig = statistics.mean(p["sigmas"][-1] for p in picks)
                    extra = f"| {sig:.3g} | {mean('rejected')} |"
                cfg = ", ".join(
                    sorted({f"λ={p['lam']:g}" + (f" lr={p['lr']:g}" if p["lr"] else "") for p in picks})
                )
                lines.append(
                    f"| {reg} | {method} | {floor} | {mean('zeros')} | {mean('small')} | {mean('test')} | "
                    f"{len(picks)}/{len(seeds)} ({cfg}) {extra}"
                )
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, reg in zip(axes, ("l1", "l0")):
        for r in results:
            if r["method"] == "SR2" and r["reg"] == reg and r["seed"] == results[0]["seed"]:
                ax.plot(range(1, len(r["sigmas"]) + 1), r["sigmas"], label=f"λ={r['lam']:g}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"SR2 on digits, {reg}: σ at the end of each epoch")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("σ (the step is 1/σ)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--plot", default=None, help="write the σ-over-training figure here")
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = split()
    seeds = list(range(args.seeds))
    results = []
    t0 = time.perf_counter()
    for seed in seeds:
        for reg in ("l1", "l0"):
            for lam in LAMS:
                results.append(run(data, "SR2", reg, lam, None, seed, args.epochs))
                for lr in LRS:
                    if reg == "l1":
                        results.append(run(data, "TwoStageProxSGD", reg, lam, lr, seed, args.epochs))
                    results.append(run(data, "ProxSGD", reg, lam, lr, seed, args.epochs))
        print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = table(results, seeds)
    print(text)
    if args.plot:
        plot(results, args.plot)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh)
    return {"results": results, "table": text}


if __name__ == "__main__":
    main()
