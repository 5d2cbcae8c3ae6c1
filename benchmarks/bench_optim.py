"""Step time of the proximal optimizers on ResNet-18-sized parameters, relative to torch's own steps.

Run: ``python benchmarks/bench_optim.py [--steps 20] [--threads N] [--device cpu] [--compiled]``

Parameters are the 62 tensors of ``timm``'s ResNet-18 (11.7 M values); conv/linear weights carry the
regularizer, biases and norm parameters are plain (as ``ProxMixin`` groups them). Gradients are
fixed random tensors, so only the optimizer step is timed (median of ``--steps`` after 3 warm-up
steps). Each row is divided by the fastest torch step of the same parent (fused) and also by the
foreach one. Rows marked ``check_finite=False`` skip the finite-gradient check (one read of the gradients and one
host read). ProxGen/ProxSGD + L1 run their default ``implementation="auto"`` (one compiled Adam/SGD + ℓ1 pass
per tensor of a regularized group of ≥ 2^20 values, compiled during the warm-up steps) unless the row
says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lightning_prox.optim import ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso, Lq


def resnet18_params(device: str) -> list[torch.nn.Parameter]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    params = [torch.nn.Parameter(p.detach().to(device).clone()) for p in model.parameters()]
    g = torch.Generator(device=device).manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=device) * 1e-3
    return params


def groups(params: list[torch.nn.Parameter], reg) -> list[dict]:
    return [
        {"params": [p for p in params if p.ndim > 1], "regularizer": reg},
        {"params": [p for p in params if p.ndim <= 1], "regularizer": None},
    ]


def time_steps(makes: list[Callable], device: str, steps: int) -> list[list[float]]:
    """Step times (ms) of several optimizers, interleaved step by step (each on its own parameters).

    Interleaving makes the paired ratios robust to load changes on a shared machine.
    """
    opts = [make(resnet18_params(device)) for make in makes]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for opt in opts:
        for _ in range(3):
            opt.step()
    sync()
    times: list[list[float]] = [[] for _ in opts]
    for _ in range(steps):
        for opt, ts in zip(opts, times):
            t0 = time.perf_counter()
            opt.step()
            sync()
            ts.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--compiled", action="store_true", help="also time ProxGen + L1 with implementation='native' (CPU)"
    )
    ap.add_argument("--only", default="", help="time only rows whose name contains this text (e.g. L1)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    lr_a, lr_s = 1e-3, 1e-2
    adam_kw = {"fused": True} if dev == "cpu" or dev.startswith("cuda") else {}
    parents = {
        "Adam fused": lambda ps: torch.optim.Adam(ps, lr=lr_a, **adam_kw),
        "Adam foreach": lambda ps: torch.optim.Adam(ps, lr=lr_a, foreach=True),
        "SGD fused": lambda ps: torch.optim.SGD(ps, lr=lr_s, momentum=0.9, fused=True),
        "SGD foreach": lambda ps: torch.optim.SGD(ps, lr=lr_s, momentum=0.9, foreach=True),
    }
    rows: list[tuple[str, str, Callable]] = [
        ("ProxGen (no regularizer)", "Adam", lambda ps: ProxGen(ps, lr=lr_a)),
        (
            "ProxGen (no regularizer), check_finite=False",
            "Adam",
            lambda ps: ProxGen(ps, lr=lr_a, check_finite=False),
        ),
        ("ProxGen + L1", "Adam", lambda ps: ProxGen(groups(ps, L1(1e-4)), lr=lr_a)),
        (
            "ProxGen + L1, check_finite=False",
            "Adam",
            lambda ps: ProxGen(groups(ps, L1(1e-4)), lr=lr_a, check_finite=False),
        ),
        (
            "ProxGen + L1, eager (implementation='eager')",
            "Adam",
            lambda ps: ProxGen(groups(ps, L1(1e-4)), lr=lr_a, implementation="eager"),
        ),
        ("ProxGen + Lq(1/2)", "Adam", lambda ps: ProxGen(groups(ps, Lq(1e-4, q=0.5)), lr=lr_a)),
        (
            "ProxGen + GroupLasso (exact Newton, Adam metric)",
            "Adam",
            lambda ps: ProxGen(groups(ps, GroupLasso(1e-4)), lr=lr_a),
        ),
        ("ProxSGD (no regularizer)", "SGD", lambda ps: ProxSGD(ps, lr=lr_s, momentum=0.9)),
        (
            "ProxSGD (no regularizer), check_finite=False",
            "SGD",
            lambda ps: ProxSGD(ps, lr=lr_s, momentum=0.9, check_finite=False),
        ),
        ("ProxSGD + L1", "SGD", lambda ps: ProxSGD(groups(ps, L1(1e-4)), lr=lr_s, momentum=0.9)),
        (
            "ProxSGD + L1, check_finite=False",
            "SGD",
            lambda ps: ProxSGD(groups(ps, L1(1e-4)), lr=lr_s, momentum=0.9, check_finite=False),
        ),
        (
            "ProxSGD + L1, eager (implementation='eager')",
            "SGD",
            lambda ps: ProxSGD(groups(ps, L1(1e-4)), lr=lr_s, momentum=0.9, implementation="eager"),
        ),
    ]
    if args.compiled:
        for i, cf in ((5, True), (5, False)):
            rows.insert(
                i,
                (
                    f"ProxGen + L1, compiled, check_finite={cf}",
                    "Adam",
                    lambda ps, cf=cf: ProxGen(
                        groups(ps, L1(1e-4)), lr=lr_a, implementation="native", check_finite=cf
                    ),
                ),
            )
    print(f"device={dev} threads={torch.get_num_threads()} torch={torch.__version__} steps={args.steps}")
    print(
        "each row is timed interleaved with its fused and foreach parents; ratios are medians of paired steps"
    )
    print(f"{'step':50s} {'ms':>9s} {'/ fused':>8s} {'/ foreach':>9s} {'fused ms':>9s} {'foreach ms':>10s}")
    med = statistics.median
    for name, parent, make in rows:
        if args.only not in name:
            continue
        t, fused, foreach = time_steps(
            [make, parents[f"{parent} fused"], parents[f"{parent} foreach"]], dev, args.steps
        )
        r_fused = med(a / b for a, b in zip(t, fused))
        r_foreach = med(a / b for a, b in zip(t, foreach))
        print(
            f"{name:50s} {med(t):9.2f} {r_fused:7.2f}x {r_foreach:8.2f}x {med(fused):9.2f} {med(foreach):10.2f}"
        )


if __name__ == "__main__":
    main()
