"""Shared pieces of ``bench_optim.py`` and ``bench_ramda.py``: ResNet-18 shapes, interleaved timing,
the peak-memory measurement and the per-pass profile.

**Peak extra memory of a step.** ``torch.profiler`` with ``profile_memory=True`` records one instant
event per allocation and per free of torch's CPU allocator (``c10``), each carrying the running total
of allocated bytes (``"Total Allocated"`` in the exported trace), including the temporaries that an
operator allocates and frees inside itself. ``peak`` is the largest running total during one step
after warm-up, minus the total before the step: the transient memory a step needs on top of the
parameters, gradients, optimizer state and any buffers the optimizer keeps between steps. ``kept``
is what the *first* step allocated and did not free, minus the optimizer state: buffers cached
between steps (scratch). Not counted: numpy arrays (the group solvers' per-group bookkeeping, a few
KB) and the allocations of a C++ library that bypasses torch's allocator.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def resnet18_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's / timm's resnet18 (62 tensors, 11.69M values)."""
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


def resnet18_params(seed: int = 0, grad_scale: float = 1e-3) -> list[torch.nn.Parameter]:
    """ResNet-18-shaped parameters (weights ~ N(0, 0.05²)) holding fixed random gradients."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.05) for s in resnet18_shapes()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * grad_scale
    return params


def split_groups(params: list[torch.nn.Parameter], reg) -> list[dict]:
    """Conv/linear weights carry ``reg``, biases and norm parameters none (as ``ProxMixin`` groups them)."""
    return [
        {"params": [p for p in params if p.ndim > 1], "regularizer": reg},
        {"params": [p for p in params if p.ndim <= 1], "regularizer": None},
    ]


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state."""
    return sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v)
    )


def _memory_trace(fn: Callable[[], object]) -> list[int]:
    """Running totals of allocated bytes after each allocation/free during ``fn()``, the total before
    the first event first."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    mem = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not mem:
        return [0]
    a = mem[0]["args"]
    return [a["Total Allocated"] - a["Bytes"]] + [e["args"]["Total Allocated"] for e in mem]


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Largest allocated total during ``fn()`` above the total before it (see the module docstring)."""
    totals = _memory_trace(fn)
    return max(totals) - totals[0]


def kept_bytes(fn: Callable[[], object]) -> int:
    """Bytes ``fn()`` allocated and did not free."""
    totals = _memory_trace(fn)
    return totals[-1] - totals[0]


def profile_table(fn: Callable[[], object], rows: int = 14) -> str:
    """Per-operator (per-pass) CPU time of ``fn()``: the ``torch.profiler`` table by self time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def interleaved(
    steps: list[Callable[[], object]], n: int, before: Callable[[int], None] | None = None
) -> list[list[float]]:
    """Times (ms) of ``n`` calls of each step function, interleaved call by call.

    Interleaving keeps the paired ratios robust to load changes on a shared machine. ``before(i)``
    runs untimed before round i (e.g. to hand out new gradients).
    """
    times: list[list[float]] = [[] for _ in steps]
    for i in range(n):
        if before is not None:
            before(i)
        for fn, ts in zip(steps, times):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return times


def paired_ratio(t: list[float], parent: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(t, parent))


def select(names: list[str], patterns: list[str]) -> list[str]:
    """The names that contain one of ``patterns`` (all when there are none), case-insensitive."""
    return [n for n in names if not patterns or any(p.lower() in n.lower() for p in patterns)]


MB = 1 << 20


def header(threads: int, steps: int, extra: str = "") -> None:
    n = sum(torch.Size(s).numel() for s in resnet18_shapes())
    print(
        f"\nthreads={threads} torch={torch.__version__} params={n / 1e6:.2f}M timed steps={steps} "
        f"(interleaved with the parent; medians of times and of paired ratios){extra}"
    )
    print(
        f"| {'step':<52} | {'ms':>8} | {'parent':<13} | {'parent ms':>9} | {'ratio':>6} "
        f"| {'peak MB':>7} | {'kept MB':>7} | {'state B/p':>9} |"
    )
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 15}|{'-' * 11}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 11}|")


def row(name: str, t: list[float], parent: str, tp: list[float], mem: tuple[int, int, float] | None) -> None:
    """One table line; ``mem`` None prints no memory columns (rows too slow to trace)."""
    cols = "| {:>7} | {:>7} | {:>9} |".format("-", "-", "-")
    if mem is not None:
        peak, kept, per_param = mem
        cols = f"| {peak / MB:7.1f} | {kept / MB:7.1f} | {per_param:9.2f} |"
    print(
        f"| {name:<52} | {statistics.median(t):8.2f} | {parent:<13} | {statistics.median(tp):9.2f} "
        f"| {paired_ratio(t, tp):5.2f}x {cols}"
    )


def first_steps(threads: int, steps: int = 4) -> None:
    """Print, as one JSON line, the time of each of the first ``steps`` steps (ms) of ProxGen + L1,
    ProxSGD + L1 and RAMDA + GroupLasso on ResNet-18 parameters, in this (fresh) process: the first
    step pays any one-time cost (kernel build or load, compilation)."""
    from lightning_prox.optim import RAMDA, ProxGen, ProxSGD
    from lightning_prox.regularizers import L1, GroupLasso

    torch.set_num_threads(threads)
    makes = {
        "ProxGen + L1": lambda ps: ProxGen(split_groups(ps, L1(1e-4)), lr=1e-3),
        "ProxSGD + L1": lambda ps: ProxSGD(split_groups(ps, L1(1e-4)), lr=1e-2, momentum=0.9),
        "RAMDA + GroupLasso": lambda ps: RAMDA(split_groups(ps, GroupLasso(2e-4)), lr=1e-2, momentum=1e-2),
    }
    out = {}
    for name, make in makes.items():
        opt = make(resnet18_params())
        out[name] = [t for (t,) in (interleaved([opt.step], 1)[0] for _ in range(steps))]
    print(json.dumps(out))


def print_first_steps(threads: int) -> None:
    """Run :func:`first_steps` in a fresh interpreter and print first-step vs later-step times."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import _bench; _bench.first_steps({threads})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    times = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"first steps in a fresh process (threads={threads}), ResNet-18 parameters, step() only:")
    for name, ts in times.items():
        later = statistics.median(ts[1:])
        print(
            f"  {name:<20} first {ts[0]:8.1f} ms, later {later:7.1f} ms (median of {len(ts) - 1}): "
            f"first-step extra {(ts[0] - later) / 1e3:.2f} s"
        )
