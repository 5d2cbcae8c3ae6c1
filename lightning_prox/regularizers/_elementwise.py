"""Shared plumbing of the separable (elementwise) regularizers: the scale s = step/metric."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._base import Regularizer, Step, threshold_dtype

__all__ = ["chunked_map", "finite_scale"]

_Q_VALUES = (0.0, 0.5, 2.0 / 3.0, 1.0)

#: elements per chunk of :func:`chunked_map` on CPU: a dozen float32 buffers of this size (128 KiB
#: each) stay in a 1-2 MiB L2 cache, so a kernel of many elementwise passes costs about one pass of
#: memory traffic instead of one per operation.
CHUNK = 1 << 15

#: chunk of the long MCP/SCAD/Quantization/L0 kernels on CPU: with ~40 eager operations per chunk
#: the per-call overhead (a few µs) outweighs the cache misses, 64K was fastest (1 thread; 16K-256K tried)
LONG_CHUNK = 1 << 16

Kernel = Callable[[Tensor, "Tensor | None", Tensor, "list[Tensor]"], None]


def finite_scale(step: Step, metric: Tensor | None, like: Tensor, factor: float = 1.0) -> Tensor | float:
    """factor·step/metric in ``like``'s compute dtype, capped at the largest finite value (never inf)."""
    dt = threshold_dtype(like)
    big = torch.finfo(dt).max
    if metric is None:
        if isinstance(step, Tensor):
            return torch.clamp(step.to(dt) * factor, max=big)
        v = float(step) * factor
        return min(v, big) if math.isfinite(v) else big
    num = step.to(dt) * factor if isinstance(step, Tensor) else float(step) * factor
    if not isinstance(num, Tensor) and not math.isfinite(num):
        num = big
    return torch.clamp(num / metric.to(dt), max=big)


def check_q(name: str, q: float) -> float:
    """Return the canonical q ∈ {0, 1/2, 2/3, 1}; a ValueError naming the accepted values otherwise."""
    if not isinstance(q, bool) and isinstance(q, (int, float)):
        for v in _Q_VALUES:
            if abs(float(q) - v) < 1e-6:
                return v
    raise ValueError(f"{name}: q must be one of 0, 0.5, 2/3 (0.6667), 1, got {q!r}")


@dataclasses.dataclass(frozen=True)
class _Elementwise(Regularizer):
    """Separable regularizer: prox(z)_i = map(z_i, s_i) with s = factor·step/metric (float32 or wider).

    ``_factor()`` folds a constant into the one division by the metric (λ for the l_q family, 1 for
    MCP/SCAD whose maps take s = step/metric), so the scale costs one pass plus one clamp.
    """

    def _factor(self) -> float:
        return self.lam

    def _map(self, zf: Tensor, s: Tensor | float) -> Tensor:
        raise NotImplementedError

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        zf = z.to(threshold_dtype(z))
        return self._map(zf, finite_scale(step, metric, z, self._factor())).to(z.dtype)

    def _chunked_prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, out: list[Tensor] | None
    ) -> list[Tensor]:
        """:meth:`_prox` of every tensor, run chunk by chunk with :func:`chunked_map` (``out=`` honoured).

        Each chunk goes through the same ``finite_scale`` and ``_map`` operations as :meth:`_prox`, so
        every temporary is chunk-sized (cache-resident on CPU) and the result is elementwise the same.
        """
        factor = self._factor()

        def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
            o.copy_(self._map(z, finite_scale(step, m, z, factor)))

        return chunked_map(zs, metrics, kernel, 0, out, LONG_CHUNK)


def cap(v: Tensor | float, like: Tensor) -> Tensor | float:
    """Cap a threshold scale at the largest finite value of ``like``'s compute dtype."""
    big = torch.finfo(threshold_dtype(like)).max
    if isinstance(v, Tensor):
        return torch.clamp(v, max=big)
    return v if v <= big else big


def per_dtype(make: Callable[[torch.dtype], Kernel]) -> Kernel:
    """A chunk kernel that builds ``make(dtype)`` once per dtype it meets and runs it."""
    built: dict[torch.dtype, Kernel] = {}

    def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
        k = built.get(z.dtype)
        if k is None:
            k = built[z.dtype] = make(z.dtype)
        k(z, m, o, bufs)

    return kernel


def chunked_map(
    zs: list[Tensor],
    metrics: list[Tensor] | None,
    kernel: Kernel,
    nbuf: int,
    outs: list[Tensor] | None = None,
    chunk_size: int = 0,
) -> list[Tensor]:
    """``out_i = kernel(z_i, metric_i)`` for every tensor, chunk by chunk through reusable buffers.

    ``kernel(z, m, out, bufs)`` receives flat chunks in the compute dtype (``threshold_dtype``; half
    inputs are converted chunk by chunk), ``m`` is ``None`` without a metric, and must write the result
    into ``out`` using only ``bufs`` (``nbuf`` scratch buffers of the chunk's length) as temporaries, with
    ``out=``/in-place operations. On CPU the chunks are :data:`CHUNK` long (``chunk_size`` when given), so all passes of the kernel
    run on cached data and no pass allocates; on accelerators each tensor is one chunk. Returns new
    contiguous tensors in ``z``'s dtype, or ``outs`` filled in (each may be its ``z``: the kernel reads a
    chunk of ``z`` before it writes that chunk of ``out``).
    """
    results: list[Tensor] = []
    pools: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for i, z in enumerate(zs):
        given = outs[i] if outs is not None else None
        if given is not None and given.is_contiguous():
            out = given
        else:
            out = torch.empty(z.shape, dtype=z.dtype, device=z.device)
        results.append(out)
        n = z.numel()
        if n == 0:
            continue
        dt = threshold_dtype(z)
        chunk = (chunk_size or CHUNK) if z.device.type == "cpu" else n
        size = min(n, chunk)
        pool = pools.get((dt, z.device))
        if pool is None or pool[0].numel() < size:
            pool = pools[(dt, z.device)] = [
                torch.empty(size, dtype=dt, device=z.device) for _ in range(nbuf + 3)
            ]
        m = metrics[i] if metrics is not None else None
        zf = z.reshape(-1)
        mf = m.reshape(-1) if m is not None else None
        of = out.view(-1)
        convert = z.dtype != dt
        bufs = [b[:size] for b in pool] if pool[0].numel() != size else pool
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            if k != size:  # the last, shorter chunk
                bufs = [b[:k] for b in pool]
            zc = zf if k == n else zf[start : start + k]
            mc = None if mf is None else (mf if k == n else mf[start : start + k])
            oc = of if k == n else of[start : start + k]
            if convert:
                zc = bufs[-3].copy_(zc)
                if mc is not None:
                    mc = bufs[-2].copy_(mc)
                kernel(zc, mc, bufs[-1], bufs[:nbuf])
                oc.copy_(bufs[-1])
            else:
                if mc is not None and mc.dtype != dt:
                    mc = bufs[-2].copy_(mc)
                kernel(zc, mc, oc, bufs[:nbuf])
        if given is not None and out is not given:
            given.copy_(out)
            results[-1] = given
    return results
