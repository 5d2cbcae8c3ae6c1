"""PathProx vs weight decay on scikit-learn's digits (Yang et al., 2022, Section 5.1 and Table 3 in small).

A factorized MLP (``FactorizedMLP(64, 10, hidden=128, depth=3)``: 64-128×5-10, PathProx pairs
``(1, 2), (3, 4), (5, fc)``), Kaiming-normal weights and zero biases, batch 64, plain SGD at lr 0.1,
trained for ``--steps`` steps three ways with the same λ:

- **PathProx** (``lightning_prox.optim.PathProx``) with layer-wise balancing in every step;
- **PathProx without balancing** (the ablation of the paper's Table 3);
- **weight decay**: SGD on ``loss + (λ/2)‖W‖²`` over the weights (biases excluded, as the authors'
  ``--with-loss-term`` baseline).

Every ``--every`` steps, on the full training set: the active-unit fraction of the PathProx pairs
(``‖w_k‖·‖v_k‖ > 0``), the rebalanced weight-decay objective ``loss + λ Σ_k ‖w_k‖‖v_k‖`` (for weight decay
a lower bound of its raw ``loss + (λ/2)‖W‖²``, equal at balance, as the authors plot it), and the
validation accuracy; at the end the test accuracy. Digits split 1257/270/270 (``DigitsDataModule``,
seed 0), inputs x/8 − 1. Mean ± std over seeds.

    python benchmarks/study_pathprox_digits.py                     # λ ∈ {1e-3, 3e-3}, 3 seeds, 6000 steps
    python benchmarks/study_pathprox_digits.py --plot docs/img/pathprox_digits.png
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lightning_prox.data import DigitsDataModule
from lightning_prox.models import FactorizedMLP
from lightning_prox.optim import PathProx
from lightning_prox.optim.pathprox import path_norms
from lightning_prox.structure import pathprox_pairs, unit_stats

METHODS = ("pathprox", "pathprox_no_balancing", "weight_decay")


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = FactorizedMLP(64, 10, hidden=128, depth=3)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return net


@torch.no_grad()
def evaluate(
    net: nn.Module, lam: float, data: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    pairs = pathprox_pairs(net)
    x, y = data["train"]
    loss = float(nn.functional.cross_entropy(net(x), y))
    pn = float(sum(path_norms(pairs)))
    units = sum(int(unit_stats(p.w, p.v, p.block)["units"]) for p in pairs)
    active = sum(int(unit_stats(p.w, p.v, p.block)["active_units"]) for p in pairs)
    sq = sum(float(p.double().square().sum()) for p in net.parameters() if p.ndim >= 2)
    out = {
        "active_units": active / units,
        "wd_objective": loss + lam * pn,
        "wd_objective_raw": loss + 0.5 * lam * sq,
    }
    for split in ("val", "test"):
        xs, ys = data[split]
        out[f"{split}_acc"] = float((net(xs).argmax(1) == ys).float().mean())
    return out


def run(
    method: str, lam: float, seed: int, steps: int, every: int, data, lr: float = 0.1
) -> list[dict[str, float]]:
    net = make_model(seed)
    if method == "weight_decay":
        weights = [p for p in net.parameters() if p.ndim >= 2]
        biases = [p for p in net.parameters() if p.ndim < 2]
        # coupled weight decay on the weights = the gradient of (λ/2)‖W‖² in the loss
        opt = torch.optim.SGD([{"params": weights, "weight_decay": lam}, {"params": biases}], lr=lr)
    else:
        opt = PathProx(net.parameters(), lr=lr, lam=lam, pairs=net, balancing=method == "pathprox")
    x, y = data["train"]
    g = torch.Generator().manual_seed(1000 + seed)
    history = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        if step % every == 0:
            history.append({"step": step, **evaluate(net, lam, data)})
    return history


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lams", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="write the curves of the largest λ to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    data = {
        name: (ds.tensors[0], ds.tensors[1])
        for name, ds in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set))
    }
    t0 = time.time()
    results: dict[tuple[float, str], list[list[dict[str, float]]]] = {}
    for lam in args.lams:
        for method in METHODS:
            results[lam, method] = [
                run(method, lam, s, args.steps, args.every, data) for s in range(args.seeds)
            ]

    def ms(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    print(
        f"digits, FactorizedMLP 64-128x5-10, lr 0.1, batch 64, {args.seeds} seeds ({time.time() - t0:.0f} s)\n"
    )
    print("| λ | method | step | active units | WD objective (rebalanced) | val acc | test acc |")
    print("|---|---|---|---|---|---|---|")
    for (lam, method), runs in results.items():
        for k in range(len(runs[0])):
            if k not in (len(runs[0]) // 2 - 1, len(runs[0]) - 1):
                continue
            rows = [r[k] for r in runs]
            print(
                f"| {lam:g} | {method} | {rows[0]['step']} | {ms([r['active_units'] for r in rows])} | "
                f"{ms([r['wd_objective'] for r in rows])} | {ms([r['val_acc'] for r in rows])} | "
                f"{ms([r['test_acc'] for r in rows])} |"
            )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lam = max(args.lams)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for method in METHODS:
            runs = results[lam, method]
            steps = [r["step"] for r in runs[0]]
            for ax, key in zip(axes, ("active_units", "wd_objective", "val_acc")):
                vals = torch.tensor([[r[key] for r in run_] for run_ in runs])
                mean, sd = vals.mean(0), vals.std(0) if len(runs) > 1 else torch.zeros(len(steps))
                ax.plot(steps, mean, marker="o", label=method.replace("_", " "))
                ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
                ax.set_title(key.replace("_", " ") + ("" if key != "wd_objective" else " (rebalanced)"))
                ax.set_xlabel("step")
        axes[0].legend()
        fig.suptitle(f"digits, factorized MLP, λ = {lam:g}, lr 0.1, {args.seeds} seeds (mean ± std)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
