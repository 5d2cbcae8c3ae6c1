"""Per-tensor ``GroupLasso(dim="in")`` against ``CoupledGroupLasso`` at matched accuracy, on digits.

Two networks, trained for real on scikit-learn's digits (``DigitsDataModule`` split 1257/270/270,
seed 0, inputs x/8 − 1) with ProxGen (proximal Adam; Yun, Lozano & Yang, 2020), batch 64, learning
rate decayed to zero on a cosine, through ``ImageClassifier``'s parameter selection (the mixin binds the coupled groups):

- the quickstart CNN (``recipes/quickstart.yaml``: LeNet-style, 16/32 channels, 64 hidden units,
  8×8 inputs, lr 1e-2);
- a CIFAR ResNet-20 (He et al., 2016, §4.2; ``in_chans=1``) on the digits upscaled bilinearly to
  ``--size``² (default 16×16), lr 3e-3.

Per network: one dense run (λ = 0, plain Adam steps) and a λ sweep of each regularizer, every run
from the same seed. Each trained network is exported with ``export_compact``; the compact model's
logits on the whole validation set must equal the original's to 1e-5 relative (the script stops
otherwise). Columns: validation and test accuracy, channels removed (of the network's coupled channel
groups: every channel a layer reads, the model's inputs and outputs excepted), parameters and MACs per
sample after/before, CPU latency before/after at batch 1 and 64: the median over ``--rounds`` rounds,
alternating the two models, of ``measure_latency(..., clock="process")`` (the process's CPU time per
forward pass at one thread: on a shared machine other jobs shift wall-clock times by factors, CPU
time much less; ``--clock wall`` times elapsed time instead).

**Matched accuracy**: for each regularizer, the run with the fewest MACs whose validation accuracy is
within ``--tol`` (default 1 point) of the dense run's; its test accuracy is shown next to it (the
selection uses the validation split only).

    python benchmarks/study_coupled_digits.py --plot docs/img/coupled_digits.png   # 15 minutes on a busy 2-core machine
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prox.data import DigitsDataModule
from lightning_prox.export import export_compact, measure_latency
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import CoupledGroupLasso, GroupLasso
from lightning_prox.structure import coupled_channel_groups

KINDS = {"dense": None, "per-tensor": GroupLasso, "coupled": CoupledGroupLasso}


@dataclasses.dataclass
class Spec:
    label: str
    backbone: str
    size: int
    lr: float
    epochs: int
    lams: list[float]
    kwargs: dict


@dataclasses.dataclass
class Run:
    kind: str
    lam: float
    val_acc: float
    test_acc: float
    removed: int
    channels: int
    params: tuple[int, int]
    macs: tuple[int, int]
    latency: dict[int, tuple[float, float]]
    rel_diff: float
    seconds: float


def load_digits(size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    out = {}
    for split, ds in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set)):
        x, y = ds.tensors
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out[split] = (x, y)
    return out


def _regularizer(kind: str, lam: float):
    if kind == "dense":
        return None
    return GroupLasso(lam, dim="in") if kind == "per-tensor" else CoupledGroupLasso(lam)


def train(spec: Spec, kind: str, lam: float, data, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    clf = ImageClassifier(
        spec.backbone,
        in_chans=1,
        img_size=spec.size,
        regularizer=_regularizer(kind, lam),
        sparsity_table=False,
        **spec.kwargs,
    )
    opt = ProxGen(clf.prox_param_groups(), lr=spec.lr)
    net = clf.net.train()
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    # cosine decay to zero: without it the last epoch's accuracy jumps by points from run to run
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.epochs * -(-len(y) // 64))
    for _ in range(spec.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            b = perm[i : i + 64]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def _accuracy(net: nn.Module, xy) -> float:
    x, y = xy
    return float((net(x).argmax(1) == y).float().mean())


def _latency(a: nn.Module, b: nn.Module, x: torch.Tensor, batch: int, args):
    rounds, ta, tb = args.rounds, [], []
    for _ in range(rounds):  # alternate the models: a load change on the shared machine hits both
        ta.append(measure_latency(a, x, batch=batch, runs=args.runs, clock=args.clock))
        tb.append(measure_latency(b, x, batch=batch, runs=args.runs, clock=args.clock))
    return sorted(ta)[rounds // 2], sorted(tb)[rounds // 2]


def evaluate(spec: Spec, kind: str, lam: float, data, args, n_channels: int) -> Run:
    t0 = time.perf_counter()
    net = train(spec, kind, lam, data, args.seed)
    seconds = time.perf_counter() - t0
    xv = data["val"][0]
    compact, rep = export_compact(net, xv[:8], latency_batches=())
    with torch.no_grad():
        ref, got = net(xv).double(), compact.eval()(xv).double()
    rel = float((ref - got).abs().max() / ref.abs().max())
    if not rel <= 1e-5:
        raise SystemExit(f"{spec.label} {kind} λ={lam}: compact logits differ by {rel:.2e} on the val set")
    latency = {b: _latency(net, compact, xv[:1], b, args) for b in (1, 64)}
    return Run(
        kind,
        lam,
        _accuracy(net, data["val"]),
        _accuracy(net, data["test"]),
        rep.removed_channels,
        n_channels,
        rep.params,
        rep.macs,
        latency,
        rel,
        seconds,
    )


def _row(r: Run) -> str:
    (p0, p1), (m0, m1) = r.params, r.macs
    (a1, c1), (a64, c64) = r.latency[1], r.latency[64]
    return (
        f"{r.kind:<10} {r.lam:>7.1e} {r.val_acc:>7.3f} {r.test_acc:>8.3f} {r.removed:>4}/{r.channels:<4} "
        f"{r.removed / r.channels:>6.1%} {p1 / p0:>7.3f} {m1 / m0:>7.3f} {a1:>7.3f} {c1:>7.3f} "
        f"{a64:>7.2f} {c64:>7.2f} {r.rel_diff:>8.1e} {r.seconds:>5.0f}s"
    )


HEADER = (
    f"{'regularizer':<10} {'λ':>7} {'val acc':>7} {'test acc':>8} {'removed':>9} {'frac':>6} "
    f"{'params':>7} {'MACs':>7} {'b1 ms':>7} {'→ ms':>7} {'b64 ms':>7} {'→ ms':>7} {'rel diff':>8} {'train':>6}"
)


def matched(runs: list[Run], tol: float) -> dict[str, Run | None]:
    dense = next(r for r in runs if r.kind == "dense")
    out: dict[str, Run | None] = {}
    for kind in ("per-tensor", "coupled"):
        ok = [r for r in runs if r.kind == kind and r.val_acc >= dense.val_acc - tol - 1e-9]
        out[kind] = min(ok, key=lambda r: (r.macs[1], -r.val_acc)) if ok else None
    return out


def plot(results: dict[str, list[Run]], tol: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    style = {"per-tensor": ("o-", "C0", 'GroupLasso(dim="in")'), "coupled": ("s-", "C3", "CoupledGroupLasso")}
    for ax, (label, runs) in zip(axes[0], results.items()):
        dense = next(r for r in runs if r.kind == "dense")
        floor = dense.val_acc - 0.05  # runs that lost more are listed in the title, not drawn
        ax.axhspan(dense.val_acc - tol, dense.val_acc, color="0.9", label=f"dense − {tol * 100:g} point")
        ax.plot([1.0], [dense.val_acc], "k*", ms=11, label="dense")
        off = []
        for kind, (fmt, color, name) in style.items():
            rs = sorted((r for r in runs if r.kind == kind), key=lambda r: r.lam)
            off += [f"{kind} λ={r.lam:g}: {r.val_acc:.2f}" for r in rs if r.val_acc < floor]
            rs = [r for r in rs if r.val_acc >= floor]
            xs = [r.macs[1] / r.macs[0] for r in rs]
            ax.plot(xs, [r.val_acc for r in rs], fmt, color=color, label=name)
            for r, xv in zip(rs, xs):
                ax.annotate(f"{r.lam:g}", (xv, r.val_acc), fontsize=6, color=color, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
        ax.set_ylim(floor, min(1.0, dense.val_acc + 0.01) + 0.002)
        ax.set_xlabel("MACs of the exported model / dense MACs")
        ax.set_ylabel("validation accuracy")
        ax.set_title(label + (f"\noff the axis: {'; '.join(off)}" if off else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("digits, ProxGen: per-tensor vs coupled channel groups (labels: λ)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16, help="ResNet-20 input size (digits upscaled)")
    ap.add_argument("--epochs-lenet", type=int, default=20)
    ap.add_argument("--epochs-resnet", type=int, default=6)
    ap.add_argument("--lams-lenet", type=float, nargs="+", default=[1e-4, 2e-4, 3e-4, 5e-4])
    ap.add_argument("--lams-resnet", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2])
    ap.add_argument("--models", nargs="+", choices=["lenet", "resnet20"], default=["lenet", "resnet20"])
    ap.add_argument("--tol", type=float, default=0.01, help="accuracy drop allowed at matched accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="alternating latency rounds per batch size")
    ap.add_argument("--runs", type=int, default=10, help="timed forward passes per round")
    ap.add_argument("--clock", choices=["process", "wall"], default="process", help="latency clock")
    ap.add_argument("--plot", default=None, help="write the accuracy-vs-MACs plot here (PNG)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = {
        "lenet": Spec(
            "quickstart CNN (8x8)",
            "lenet",
            8,
            1e-2,
            args.epochs_lenet,
            args.lams_lenet,
            {"channels": [16, 32], "hidden": [64]},
        ),
        "resnet20": Spec(
            f"CIFAR ResNet-20 ({args.size}x{args.size})",
            "resnet20",
            args.size,
            3e-3,
            args.epochs_resnet,
            args.lams_resnet,
            {},
        ),
    }
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), seed {args.seed}, latency clock {args.clock}, "
        f"matched: val acc ≥ dense − {args.tol}"
    )
    results: dict[str, list[Run]] = {}
    t_all = time.perf_counter()
    for key in args.models:
        spec = specs[key]
        data = load_digits(spec.size)
        probe = ImageClassifier(spec.backbone, in_chans=1, img_size=spec.size, **spec.kwargs).net
        n_channels = len(coupled_channel_groups(probe, data["val"][0][:1]))
        print(f"\n{spec.label}: ProxGen(lr={spec.lr}), {spec.epochs} epochs; params, MACs: after/before")
        print(HEADER)
        runs = []
        for kind, lam in [("dense", 0.0)] + [
            (k, lam) for lam in spec.lams for k in ("per-tensor", "coupled")
        ]:
            runs.append(evaluate(spec, kind, lam, data, args, n_channels))
            print(_row(runs[-1]), flush=True)
        results[spec.label] = runs
    print(f"\nmatched accuracy (fewest MACs with val acc ≥ dense − {args.tol}); ratios before/after")
    print(
        f"{'model':<26} {'regularizer':<10} {'λ':>7} {'val acc':>7} {'test acc':>8} {'removed':>7} "
        f"{'params':>7} {'MACs':>7} {'lat b1':>7} {'lat b64':>7}"
    )
    for label, runs in results.items():
        dense = next(r for r in runs if r.kind == "dense")
        print(f"{label:<26} {'dense':<10} {0:>7} {dense.val_acc:>7.3f} {dense.test_acc:>8.3f}")
        for kind, r in matched(runs, args.tol).items():
            if r is None:
                print(f"{label:<26} {kind:<10} no run within {args.tol} of the dense accuracy")
                continue
            (p0, p1), (m0, m1) = r.params, r.macs
            (a1, c1), (a64, c64) = r.latency[1], r.latency[64]
            print(
                f"{label:<26} {kind:<10} {r.lam:>7.1e} {r.val_acc:>7.3f} {r.test_acc:>8.3f} "
                f"{r.removed / r.channels:>7.1%} {p0 / p1:>6.2f}x {m0 / m1:>6.2f}x {a1 / c1:>6.2f}x {a64 / c64:>6.2f}x"
            )
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.plot:
        plot(results, args.tol, args.plot)


if __name__ == "__main__":
    main()
