"""Time every regularizer's prox on a ResNet-18-sized parameter set and compare with one elementwise pass.

The parameter set is the conv and linear weights of ``torchvision.models.resnet18()`` (real shapes,
about 11.2M values). For each regularizer, ``prox_multi`` runs over all tensors at once, once with
``metric=None`` and once with an Adam-like metric ``sqrt(v) + eps``; the table gives the best time per
call over ``--repeats`` rounds and its ratio to one in-place ``torch._foreach_mul_`` pass over the same
tensors (the cost of touching every value once; timed in the same rounds, interleaved, and the ratio is
the median of the per-round ratios) and to one allocating ``torch._foreach_mul`` pass (the floor of any
prox that returns new tensors). The ``out=`` columns time ``prox_multi(...,
out=buffers)`` into preallocated tensors (what an optimizer does in place). Iterative solvers also
report the iterations they ran (``info["inner_iters"]``).

Usage::

    python benchmarks/bench_prox.py --threads 1           # CPU, float32, one thread
    python benchmarks/bench_prox.py --device cuda --repeats 20
    python benchmarks/bench_prox.py --only L1 GroupLasso --dtype bfloat16
    # a user's own classes, by import path (built with lam=1e-4 and their other defaults):
    python benchmarks/bench_prox.py --threads 1 --only L1 ElasticNet FastElasticNet \
        --extra tests.helpers.custom_regularizers.ElasticNet tests.helpers.custom_regularizers.FastElasticNet
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from lightning_prox.regularizers import (
    L0,
    L1,
    MCP,
    SCAD,
    GroupLasso,
    Lq,
    NuclearNorm,
    Quantization,
    Regularizer,
)


def resnet18_weights(device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    try:
        import torchvision

        model = torchvision.models.resnet18()
        shapes = [tuple(p.shape) for n, p in model.named_parameters() if p.ndim >= 2]
    except ImportError:  # the same shapes, written out
        shapes = [(64, 3, 7, 7)]
        for cin, cout in [(64, 64), (64, 128), (128, 256), (256, 512)]:
            shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3), (cout, cout, 3, 3), (cout, cout, 3, 3)]
            if cin != cout:
                shapes.append((cout, cin, 1, 1))
        shapes.append((1000, 512))
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(s, generator=g) * 0.05).to(device=device, dtype=dtype) for s in shapes]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up (the minimum is the least disturbed by other
    load on a shared machine)."""
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def time_interleaved(fns, device: str, repeats: int) -> list[list[float]]:
    """Times of several calls, interleaved round by round after one warm-up of each (ratios of
    calls of the same round are robust to load changes on a shared machine)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--only", nargs="*", default=None, help="regularizer class names to run")
    ap.add_argument("--nuclear-iters", type=int, default=5, help="PG cap for NuclearNorm under a metric")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument(
        "--extra", nargs="*", default=[], help="more regularizer classes as module.ClassName (lam=1e-4)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    zs = resnet18_weights(args.device, dtype)
    n = sum(z.numel() for z in zs)
    v = [
        (torch.randn_like(z, dtype=torch.float32) * 1e-3) ** 2
        * 10 ** (4 * torch.rand_like(z, dtype=torch.float32) - 2)
        for z in zs
    ]
    metrics = [(vi.sqrt() + 1e-8).to(dtype) for vi in v]  # Adam-like, spanning orders of magnitude

    scratch = [z.clone() for z in zs]
    outbuf = [torch.empty_like(z) for z in zs]
    base = time_call(lambda: torch._foreach_mul_(scratch, 1.0000001), args.device, args.repeats)
    print(
        f"ResNet-18 conv/linear weights: {len(zs)} tensors, {n / 1e6:.2f}M values, {args.dtype} on {args.device}"
    )
    # a prox returns new tensors: one allocating pass is the floor of any prox (on CPU, fresh tensors
    # of this size page-fault on first touch and cost far more than the in-place pass)
    alloc = time_call(lambda: torch._foreach_mul(zs, 1.0000001), args.device, args.repeats)
    print(
        f"one torch._foreach_mul_ pass (in place): {base * 1e3:.2f} ms; one torch._foreach_mul pass "
        f"(new tensors): {alloc * 1e3:.2f} ms  (threads: {torch.get_num_threads()}, best of {args.repeats})\n"
    )

    regs: list[tuple[Regularizer, str]] = [
        (L1(1e-4), "L1"),
        (L0(1e-6), "L0"),
        (Lq(1e-4, q=0.5), "Lq(q=1/2)"),
        (Lq(1e-4, q=2 / 3), "Lq(q=2/3)"),
        (MCP(1e-4, b=3.0), "MCP exact"),
        (MCP(1e-4, b=3.0, exact=False), "MCP paper"),
        (SCAD(1e-4, a=3.7), "SCAD exact"),
        (SCAD(1e-4, a=3.7, exact=False), "SCAD paper"),
        (Quantization(1e-4), "Quantization(-1,1), q=1"),
        (Quantization(1e-4, levels=(-1.0, 0.0, 1.0), q=0.5), "Quantization(-1,0,1), q=1/2"),
        (GroupLasso(1e-3), "GroupLasso(in) newton"),
        (GroupLasso(1e-3, solver="pg"), "GroupLasso(in) pg"),
        (GroupLasso(1e-3, dim="out"), "GroupLasso(out) newton"),
        (NuclearNorm(1e-3), f"NuclearNorm (metric: PG, max {args.nuclear_iters} it)"),
    ]
    for path in args.extra:
        module, _, cls = path.rpartition(".")
        regs.append((getattr(importlib.import_module(module), cls)(1e-4), cls))
    header = (
        f"| {'regularizer':38s} | {'metric':6s} | {'ms/call':>9s} | {'x foreach_mul_':>14s} "
        f"| {'x foreach_mul':>13s} | {'out= ms':>8s} | {'out= x mul_':>11s} | {'iters':>5s} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for reg, label in regs:
        if args.only and type(reg).__name__ not in args.only:
            continue
        for name, ms in (("None", None), ("adam", metrics)):
            info: dict = {}
            kw = {"max_iters": args.nuclear_iters} if isinstance(reg, NuclearNorm) else {}
            reps = 1 if isinstance(reg, NuclearNorm) else args.repeats
            fns = [
                lambda: torch._foreach_mul_(scratch, 1.0000001),
                lambda: reg.prox_multi(zs, args.lr, ms, info=info, **kw),  # noqa: B023
                # into preallocated tensors (what an optimizer does with out=params)
                lambda: reg.prox_multi(zs, args.lr, ms, info=info, out=outbuf, **kw),  # noqa: B023
            ]
            b, t, t_out = time_interleaved(fns, args.device, reps)
            r = statistics.median(x / y for x, y in zip(t, b))
            r_out = statistics.median(x / y for x, y in zip(t_out, b))
            print(
                f"| {label:38s} | {name:6s} | {min(t) * 1e3:9.2f} | {r:14.1f} | {min(t) / alloc:13.1f} "
                f"| {min(t_out) * 1e3:8.2f} | {r_out:11.1f} | {info.get('inner_iters', 0):5d} |"
            )


if __name__ == "__main__":
    main()
