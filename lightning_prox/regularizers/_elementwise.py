"""Shared plumbing of the separable (elementwise) regularizers: the scale s = step/metric."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from ._base import ProxOptions, Regularizer, Step, threshold_dtype

__all__ = ["ElementwiseRegularizer", "chunked_map", "finite_scale", "guarded", "pin_nonfinite"]

_Q_VALUES = (0.0, 0.5, 2.0 / 3.0, 1.0)

#: elements per chunk of :func:`chunked_map` on CPU: a dozen float32 buffers of this size (128 KiB
#: each) stay in a 1-2 MiB L2 cache, so a kernel of many elementwise passes costs about one pass of
#: memory traffic instead of one per operation.
CHUNK = 1 << 15

#: chunk of the long MCP/SCAD/Quantization/L0 kernels on CPU: with ~40 eager operations per chunk
#: the per-call overhead (a few µs) outweighs the cache misses, 64K was fastest (1 thread; 16K-256K tried)
LONG_CHUNK = 1 << 16

#: chunk of the generic :meth:`ElementwiseRegularizer.map` path on CPU: a map allocates its
#: temporaries, and at 64K values (256 KiB in float32) the allocation cost is amortized while the
#: data still comes from cache; 256K-value temporaries are mmap-allocated and page-fault on every
#: call (16K-256K tried, one thread)
MAP_CHUNK = 1 << 16

Kernel = Callable[[Tensor, "Tensor | None", Tensor, "list[Tensor]"], None]


def finite_scale(step: Step, metric: Tensor | None, like: Tensor, factor: float = 1.0) -> Tensor | float:
    """factor·step/metric in ``like``'s compute dtype, capped at the largest finite value (never inf)."""
    dt = threshold_dtype(like)
    big = torch.finfo(dt).max
    # the numerator is capped first: an infinite metric then gives 0, never 0·inf = NaN
    if isinstance(step, Tensor):
        num: Tensor | float = torch.clamp(step.to(dt) * factor, max=big)
    else:
        v = float(step) * factor
        num = min(v, big) if math.isfinite(v) else big
    if metric is None:
        return num
    return torch.clamp(num / metric.to(dt), max=big)


def check_q(name: str, q: float) -> float:
    """Return the canonical q ∈ {0, 1/2, 2/3, 1}; a ValueError naming the accepted values otherwise."""
    if not isinstance(q, bool) and isinstance(q, (int, float)):
        for v in _Q_VALUES:
            if abs(float(q) - v) < 1e-6:
                return v
    raise ValueError(f"{name}: q must be one of 0, 0.5, 2/3 (0.6667), 1, got {q!r}")


@dataclasses.dataclass(frozen=True)
class ElementwiseRegularizer(Regularizer):
    r"""Base class of separable regularizers R(x) = Σ_i ρ(x_i): implement :meth:`value` and :meth:`map`.

    The prox of a separable penalty is one scalar problem per coordinate,

    .. math::

        \operatorname{prox}(z)_i = \operatorname{map}(z_i, s_i), \qquad
        \operatorname{map}(z, s) = \operatorname{argmin}_x \; s\,\rho(x)/\lambda + \tfrac12 (x - z)^2,
        \qquad s_i = \text{step}\cdot\lambda/\text{metric}_i ,

    so a subclass writes only ``map(z, s)`` with elementwise torch operations (``s`` is a float or a
    tensor shaped like ``z``). The base class does the rest: ``s`` is computed in float32 for half
    inputs and capped at the largest finite value (a tiny metric never gives inf; an infinite metric
    gives ``s = 0``, which ``map`` must return ``z`` for), and :meth:`prox_multi` runs ``map`` chunk
    by chunk over cache-sized slices of every tensor, writing into ``out=`` directly (about the cost
    of the library's hand-written kernels for a map of a few operations).

    Example:
        >>> import dataclasses, torch
        >>> @dataclasses.dataclass(frozen=True)
        ... class ElasticNet(ElementwiseRegularizer):
        ...     gamma: float = 1.0  # R(x) = λ(|x| + γ/2 x²)
        ...
        ...     def value(self, x):
        ...         x = x.double()
        ...         return self.lam * (x.abs().sum() + 0.5 * self.gamma * x.square().sum())
        ...
        ...     def map(self, z, s):
        ...         return (z - z.clamp(-s, s)) / (1 + self.gamma * s)
        >>> ElasticNet(0.5, gamma=2.0).prox(torch.tensor([2.0, 0.1]), step=1.0)
        tensor([0.7500, 0.0000])
    """

    _writes_out: ClassVar[bool] = True
    _base_class: ClassVar[bool] = True  # a base to subclass, not a regularizer to name in a spec

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "map" in cls.__dict__ and "_prox_multi" not in cls.__dict__ and "prox" not in cls.__dict__:
            # a parent's hand-written kernel would bypass this map: use the generic chunked path
            cls._prox_multi = ElementwiseRegularizer._prox_multi  # type: ignore[method-assign]
            cls._writes_out = True

    def _factor(self) -> float:
        """The constant folded into s = factor·step/metric (λ; MCP and SCAD take s = step/metric)."""
        return self.lam

    def map(self, z: Tensor, s: Tensor | float) -> Tensor:
        """The prox of each coordinate of ``z`` (float32 or wider) with scale ``s`` = step·λ/metric."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement map(self, z, s): the minimizer of "
            "s*rho(x)/lam + 0.5*(x - z)**2 per coordinate, with s = step*lam/metric"
        )

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        zf = z.to(threshold_dtype(z))
        r = self.map(zf, finite_scale(step, metric, z, self._factor()))
        return pin_nonfinite(zf, metric, r).to(z.dtype)

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        return self._chunked_prox_multi(zs, step, metrics, opts.out)

    def _chunked_prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, out: list[Tensor] | None
    ) -> list[Tensor]:
        """:meth:`_prox` of every tensor, run chunk by chunk with :func:`chunked_map` (``out=`` honoured).

        Each chunk goes through the same ``finite_scale`` and ``map`` operations as :meth:`_prox`, so
        every temporary is chunk-sized (cache-resident on CPU) and the result is elementwise the same.
        The scale of a chunk is written into a reused buffer (one allocation fewer per chunk).
        """
        factor = self._factor()
        if isinstance(step, Tensor):

            def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
                o.copy_(self.map(z, finite_scale(step, m, z, factor)))

            return chunked_map(zs, metrics, guarded(kernel), 0, out, MAP_CHUNK)
        num = float(step) * factor

        def kernel(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
            s = finite_scale(step, None, z, factor) if m is None else _scale_into(bufs[0], m, num)
            o.copy_(self.map(z, s))

        return chunked_map(zs, metrics, guarded(kernel), 1, out, MAP_CHUNK)


def _bad(z: Tensor, m: Tensor | None) -> Tensor:
    bad = ~torch.isfinite(z)
    if m is not None:
        bad |= m == math.inf
    return bad


def pin_nonfinite(zf: Tensor, metric: Tensor | None, r: Tensor) -> Tensor:
    """``r`` with the non-finite policy applied: ``z`` itself where ``z`` is NaN or ±inf or the metric
    is +inf, NaN where the metric is NaN (metrics on the CPU never are: they are checked)."""
    m = None if metric is None else metric.to(zf.dtype)
    r = torch.where(_bad(zf, m), zf, r)
    if m is not None and m.device.type != "cpu":
        r = torch.where(torch.isnan(m), m, r)
    return r


def guarded(kernel: Kernel) -> Kernel:
    """A chunk kernel with :func:`pin_nonfinite`'s policy, whatever ``kernel`` computes there.

    On CPU the common case (every value finite, no infinite metric) costs one cache-resident
    reduction per input and chunk; only chunks with such values keep a copy of ``z`` (``out`` may
    alias it) and select with masks.
    """

    def k(z: Tensor, m: Tensor | None, o: Tensor, bufs: list[Tensor]) -> None:
        cpu = z.device.type == "cpu"
        # one reduction (no temporary) tells that every value is finite; a finite sum that overflows
        # only sends the chunk down the exact path below
        if cpu and math.isfinite(float(z.sum())) and (m is None or float(m.amax()) < math.inf):
            kernel(z, m, o, bufs)
            return
        bad = _bad(z, m)
        keep = z.clone()
        kernel(z, m, o, bufs)
        torch.where(bad, keep, o, out=o)
        if m is not None and not cpu:
            torch.where(torch.isnan(m), m.to(o.dtype), o, out=o)

    return k


#: the private name the library's classes used before the base class was public
_Elementwise = ElementwiseRegularizer


def _scale_into(s_buf: Tensor, m: Tensor, num: float) -> Tensor:
    """s = num/m capped at the largest finite value, rounded as ``finite_scale`` rounds it."""
    big = torch.finfo(s_buf.dtype).max
    num = min(num, big) if math.isfinite(num) else big
    torch.reciprocal(m, out=s_buf)
    return s_buf.mul_(num).clamp_max_(big)


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
