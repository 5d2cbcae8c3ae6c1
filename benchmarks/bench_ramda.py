"""RAMDA step time on ResNet-18-sized parameters with input-channel group lasso, against fused Adam.

Prints one table per optimizer state: median step time of ``torch.optim.Adam(fused=True)``, RMDA and
RAMDA (after warm-up; the three are stepped in turn, each on its own parameters), the median of the
per-round ratios to Adam, and RAMDA's mean number of inner solver iterations and screened
groups per step. Parameters have the shapes of torchvision's ``resnet18`` (11.7M weights; 4-D conv and
2-D linear weights regularized by ``GroupLasso(dim="in")``, 1-D parameters unregularized). Gradients are
synthetic: g = μ + σ·ξ with a per-(out, in)-channel scale σ, so the preconditioner P = ∛U + ε varies
inside every group, as in a real network.

States:
  * ``fresh``: RAMDA/RMDA start at t = 0 (the first steps of training or of a stage);
  * ``mid``: the state after ``--t0`` steps (default 1000) of a stage, written directly into the optimizer
    state from the gradient statistics (α = Σ η√k, V = α·μ + noise, U = α·E[g²]), so the subproblems
    have the scale they have mid-training without running 1000 steps here.

RAMDA runs twice: with its default ``implementation="auto"`` (on CPU at this size: the compiled step,
native kernels built, or loaded from the on-disk cache, during the warm-up steps) and with ``implementation="eager"``; the last line gives the
largest difference between their parameters.

Run: ``python benchmarks/bench_ramda.py [--steps 10] [--device cpu|cuda] [--threads N] [--lam 2e-4]
[--dim in|out]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from lightning_prox.optim import RAMDA, RMDA
from lightning_prox.regularizers import GroupLasso


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet18 (no torchvision import needed)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for b in range(2):
            c_in = cin if b == 0 else cout
            shapes += [(cout, c_in, 3, 3), (cout,), (cout,), (cout, cout, 3, 3), (cout,), (cout,)]
            if b == 0 and (stride != 1 or c_in != cout):
                shapes += [(cout, c_in, 1, 1), (cout,), (cout,)]
        cin = cout
    shapes += [(num_classes, 512), (num_classes,)]
    return shapes


def make_params(device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) * 0.05).to(device)) for s in resnet18_shapes()]


def grad_stats(shapes, seed: int = 1):
    """Per-element gradient mean μ and scale σ (σ varies per (out, in) channel pair: non-uniform P)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mus, sigmas = [], []
    for s in shapes:
        sig = torch.rand(s[:2] if len(s) >= 2 else s, generator=g) * 2e-3 + 1e-4
        sig = sig.reshape(sig.shape + (1,) * (len(s) - sig.dim())).expand(s).contiguous()
        mus.append(0.3 * sig * torch.randn(s, generator=g))
        sigmas.append(sig)
    return mus, sigmas


def grad_pool(mus, sigmas, device, k: int = 3, seed: int = 2) -> list[list[torch.Tensor]]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return [
        [(m + s * torch.randn(m.shape, generator=g)).to(device) for m, s in zip(mus, sigmas)]
        for _ in range(k)
    ]


def groups(params, lam, dim="in"):
    reg = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    return [{"params": reg, "regularizer": GroupLasso(lam, dim=dim)}, {"params": other}]


def set_mid_state(opt, params, mus, sigmas, t0: int, seed: int = 3) -> None:
    """Write the state of step t0 of a stage (statistics of t0 gradients) into ``opt``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    lr = opt.param_groups[0]["lr"]
    alpha = sum(lr * math.sqrt(k) for k in range(1, t0 + 1))
    s2 = math.sqrt(sum((lr * math.sqrt(k)) ** 2 for k in range(1, t0 + 1)))
    for p, m, s in zip(params, mus, sigmas):
        st = opt._init_state(p)
        st["step"], st["alpha"] = t0, alpha
        st["grad_sum"].copy_((alpha * m + s2 * s * torch.randn(m.shape, generator=g)).to(p.device))
        if "grad_sq_sum" in st:
            st["grad_sq_sum"].copy_((alpha * (m * m + s * s)).to(p.device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(opts, params_list, pool, steps, warmup, device, afters):
    """Step times of several optimizers, interleaved step by step (each on its own parameters).

    Returns per optimizer the list of timed steps (seconds). Interleaving makes the paired ratios
    robust to load changes on a shared machine.
    """
    times: list[list[float]] = [[] for _ in opts]
    for i in range(warmup + steps):
        for k, (opt, params) in enumerate(zip(opts, params_list)):
            for p, gr in zip(params, pool[i % len(pool)]):
                p.grad = gr
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            _sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
                if afters[k] is not None:
                    afters[k]()
    return times


def run(state: str, args, device) -> None:
    shapes = resnet18_shapes()
    mus, sigmas = grad_stats(shapes)
    pool = grad_pool(mus, sigmas, device)
    p_adam, p_rmda, p_ramda = make_params(device), make_params(device), make_params(device)
    adam = torch.optim.Adam(p_adam, lr=1e-3, fused=True)
    p_eager = make_params(device)
    rmda = RMDA(groups(p_rmda, args.lam, args.dim), lr=0.1, momentum=0.1)
    # default implementation="auto": native kernels on CPU for this size (built or loaded during warm-up)
    ramda = RAMDA(groups(p_ramda, args.lam, args.dim), lr=1e-2, momentum=1e-2)
    eager = RAMDA(groups(p_eager, args.lam, args.dim), lr=1e-2, momentum=1e-2, implementation="eager")
    if state == "mid":
        set_mid_state(rmda, p_rmda, mus, sigmas, args.t0)
        set_mid_state(ramda, p_ramda, mus, sigmas, args.t0)
        set_mid_state(eager, p_eager, mus, sigmas, args.t0)
    stats: dict[str, tuple[list[int], list[int]]] = {"ramda": ([], []), "eager": ([], [])}

    def recorder(opt, key):
        def record() -> None:
            for info in opt.solver_info:
                stats[key][0].append(int(info["inner_iters"]))
                stats[key][1].append(int(info["screened"]))

        return record

    t_adam, t_rmda, t_ramda, t_eager = time_interleaved(
        [adam, rmda, ramda, eager],
        [p_adam, p_rmda, p_ramda, p_eager],
        pool,
        args.steps,
        args.warmup,
        device,
        [None, None, recorder(ramda, "ramda"), recorder(eager, "eager")],
    )
    med = statistics.median
    n_groups = sum(p.shape[1 if args.dim == "in" else 0] for p in p_ramda if p.ndim >= 2)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(p_ramda, p_eager))
    scale = max(float(b.detach().abs().max()) for b in p_eager)

    def row(name, t, key=None):
        it, sc = ("-", "-") if key is None else stats[key]
        if key is not None:
            it, sc = f"{statistics.mean(it):.1f}", f"{statistics.mean(sc):.0f}/{n_groups}"
        return (name, med(t), med(a / b for a, b in zip(t, t_adam)), it, sc)

    rows = [
        row("Adam(fused=True)", t_adam),
        row("RMDA (exact prox)", t_rmda),
        row("RAMDA (auto: compiled)", t_ramda, "ramda"),
        row("RAMDA (fast: eager)", t_eager, "eager"),
    ]
    n = sum(p.numel() for p in p_ramda)
    t0 = f" t0={args.t0}" if state == "mid" else ""
    print(
        f"\nstate={state}{t0} device={device} threads={torch.get_num_threads()} params={n / 1e6:.2f}M "
        f"timed steps={args.steps} (interleaved; medians of times and of paired ratios) lam={args.lam:g} "
        f"dim={args.dim}"
    )
    print(f"| {'optimizer':<26} | {'step ms':>9} | {'/ Adam':>7} | {'inner it':>8} | {'screened':>10} |")
    print(f"|{'-' * 28}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 12}|")
    for name, t, r, it, sc in rows:
        print(f"| {name:<26} | {t * 1e3:>9.1f} | {r:>7.2f} | {it:>8} | {sc:>10} |")
    print(
        f"compiled vs eager RAMDA parameters after {args.warmup + args.steps} steps: max |diff| {diff:.2e} (max |W| {scale:.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--lam", type=float, default=2e-4)
    ap.add_argument("--t0", type=int, default=1000)
    ap.add_argument("--dim", choices=["in", "out"], default="in", help="GroupLasso grouping")
    ap.add_argument("--state", choices=["fresh", "mid", "both"], default="both")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for state in ("fresh", "mid") if args.state == "both" else (args.state,):
        run(state, args, device)


if __name__ == "__main__":
    main()
