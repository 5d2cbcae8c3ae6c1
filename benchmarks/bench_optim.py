"""Step time and memory of ProxGen / ProxSGD on ResNet-18-sized parameters, against torch's own steps.

Run: ``python benchmarks/bench_optim.py [--steps 15] [--threads 1 2] [--rows L1 Lq ...] [--profile]``

Parameters have the 62 shapes of ResNet-18 (11.69M values); conv/linear weights carry the
regularizer, biases and norm parameters are plain (as ``ProxMixin`` groups them). Gradients are fixed
random tensors, so only ``optimizer.step()`` is timed. Every row is stepped interleaved with its torch
parent (``torch.optim.Adam(fused=True)`` for the Adam-preconditioned rows, ``torch.optim.SGD(momentum=0.9,
fused=True)`` for ProxSGD), each on its own parameters, after 3 warm-up steps; the ratio is the median
of the paired per-step ratios. ``--threads`` runs the whole table once per thread count.

Columns ``peak MB``, ``kept MB`` and ``state B/p``: the transient memory of one step after warm-up, the
buffers the first step kept beyond the optimizer state, and the state's bytes per parameter value
(measured with ``torch.profiler``'s allocator events, see ``benchmarks/_bench.py``).

The row "authors' AdamL1" is a reference for the ProxGen authors' code (Yun, Lozano & Yang, 2020,
public repository): their optimizer is a per-parameter loop of plain torch operations (Adam moments,
bias-corrected denominator, a gradient step and soft thresholding by lr·λ/denominator, each a new
tensor). It is written here from that math, not copied. The last lines time the first steps of
ProxGen, ProxSGD and RAMDA in a fresh process (one-time kernel build or load on the first step).
``--profile`` prints the per-operator (per-pass) CPU profile of one step of every selected row.
"""

from __future__ import annotations

import argparse

import torch
from _bench import (
    header,
    interleaved,
    kept_bytes,
    peak_extra_bytes,
    print_first_steps,
    profile_table,
    resnet18_params,
    row,
    select,
    split_groups,
    state_bytes,
)

from lightning_prox.optim import ProxGen, ProxSGD
from lightning_prox.regularizers import L1, MCP, SCAD, GroupLasso, Lq, Quantization

LR_ADAM, LR_SGD, LAM = 1e-3, 1e-2, 1e-4


class AuthorsAdamL1(torch.optim.Optimizer):
    """Per-parameter Adam + ℓ1 prox in plain torch operations (the ProxGen authors' code style)."""

    def __init__(self, params, lr: float, lam: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "lam": lam, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st["step"], st["exp_avg"], st["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                t, g = st["step"], p.grad
                st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
                st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
                denom = (st["exp_avg_sq"] / (1 - b2**t)).sqrt() + group["eps"]
                z = p - group["lr"] * (st["exp_avg"] / (1 - b1**t)) / denom
                if p.ndim > 1:  # the regularized weights
                    z = torch.sign(z) * torch.clamp(z.abs() - group["lr"] * group["lam"] / denom, min=0.0)
                p.copy_(z)


ROWS = {
    "ProxGen + L1 (default, finite check on)": (
        "Adam",
        lambda ps: ProxGen(split_groups(ps, L1(LAM)), lr=LR_ADAM),
    ),
    "ProxGen + L1, check_finite=False": (
        "Adam",
        lambda ps: ProxGen(split_groups(ps, L1(LAM)), lr=LR_ADAM, check_finite=False),
    ),
    "ProxSGD + L1 (default)": (
        "SGD",
        lambda ps: ProxSGD(split_groups(ps, L1(LAM)), lr=LR_SGD, momentum=0.9),
    ),
    "ProxSGD + L1, check_finite=False": (
        "SGD",
        lambda ps: ProxSGD(split_groups(ps, L1(LAM)), lr=LR_SGD, momentum=0.9, check_finite=False),
    ),
    "ProxGen, no regularizer (finite check on)": ("Adam", lambda ps: ProxGen(ps, lr=LR_ADAM)),
    "ProxGen + Lq(1/2)": ("Adam", lambda ps: ProxGen(split_groups(ps, Lq(LAM, q=0.5)), lr=LR_ADAM)),
    "ProxGen + GroupLasso (Adam metric, exact Newton)": (
        "Adam",
        lambda ps: ProxGen(split_groups(ps, GroupLasso(LAM)), lr=LR_ADAM),
    ),
    "ProxGen + MCP": ("Adam", lambda ps: ProxGen(split_groups(ps, MCP(LAM)), lr=LR_ADAM)),
    "ProxGen + SCAD": ("Adam", lambda ps: ProxGen(split_groups(ps, SCAD(LAM)), lr=LR_ADAM)),
    "ProxGen + Quantization": (
        "Adam",
        lambda ps: ProxGen(split_groups(ps, Quantization(LAM, levels=(-0.05, 0.0, 0.05))), lr=LR_ADAM),
    ),
    "ProxSGD + Lq(1/2)": (
        "SGD",
        lambda ps: ProxSGD(split_groups(ps, Lq(LAM, q=0.5)), lr=LR_SGD, momentum=0.9),
    ),
    "authors' AdamL1 (per-tensor loop, from the math)": (
        "Adam",
        lambda ps: AuthorsAdamL1(ps, lr=LR_ADAM, lam=LAM),
    ),
}

PARENTS = {
    "Adam fused": lambda ps: torch.optim.Adam(ps, lr=LR_ADAM, fused=True),
    "SGD fused": lambda ps: torch.optim.SGD(ps, lr=LR_SGD, momentum=0.9, fused=True),
}


def memory(make) -> tuple[int, int, float]:
    """(peak extra bytes of a later step, bytes kept by the first step beyond the state, state bytes per value)."""
    params = resnet18_params()
    opt = make(params)
    kept = kept_bytes(opt.step)
    st = state_bytes(opt)
    for _ in range(2):
        opt.step()
    peak = peak_extra_bytes(opt.step)
    return peak, kept - st, st / sum(p.numel() for p in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per row (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run")
    ap.add_argument("--rows", nargs="*", default=[], help="run only rows whose name contains one of these")
    ap.add_argument("--profile", action="store_true", help="print a per-operator profile of each row's step")
    args = ap.parse_args()
    names = select(list(ROWS), args.rows)
    mems = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        header(threads, args.steps)
        for name in names:
            parent, make = ROWS[name]
            if name not in mems:
                mems[name] = memory(make)
            pname = f"{parent} fused"
            opt, ref = make(resnet18_params()), PARENTS[pname](resnet18_params())
            interleaved([opt.step, ref.step], 3)
            t, tp = interleaved([opt.step, ref.step], args.steps)
            row(name, t, pname, tp, mems[name])
        for pname, make in PARENTS.items():
            peak, kept, per = memory(make)
            print(
                f"  {pname}: peak {peak / 2**20:.1f} MB, kept {kept / 2**20:.1f} MB, state {per:.2f} B/value"
            )
        if args.profile:
            for name in names:
                opt = ROWS[name][1](resnet18_params())
                interleaved([opt.step], 3)
                print(f"\nprofile of one step: {name} (threads={threads})")
                print(profile_table(opt.step))
        if not args.rows or select(["first steps"], args.rows):
            print_first_steps(threads)


if __name__ == "__main__":
    main()
