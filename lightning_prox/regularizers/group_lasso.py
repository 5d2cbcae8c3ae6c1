"""Group lasso: closed-form group soft thresholding, screening + inexact PG under a diagonal metric.

Yuan & Lin (2006) penalty with the groupings of RAMDA (Huang & Lee, NeurIPS 2024, Algorithm 2;
public code ``ismoptgroup/RAMDA``): ``dim="in"`` = one group per input channel/feature of the module,
``dim="out"`` = one group per output channel/filter/neuron (``x[:, j, ...]`` and ``x[j, ...]`` for a
``[out, in, *k]`` weight; transposed, grouped and depthwise convs, LSTM/GRU gates and embeddings
through ``layout``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..structure import (
    check_groupable,
    from_group_view,
    group_norms,
    group_reduce_dims,
    group_size,
    group_view,
    parse_layout,
    plain_form,
)
from ._base import ProxOptions, Regularizer, Step, copy_into, threshold_dtype
from ._elementwise import cap
from ._group_solver import _Layout, _scale, _solve_newton, group_weight, solve_group_lasso

__all__ = ["GroupLasso"]


@dataclasses.dataclass(frozen=True)
class GroupLasso(Regularizer):
    r"""λ Σ_g w_g ‖x_g‖₂ over the groups of a tensor, with w_g = √|g| (``weighting="sqrt"``) or 1.

    .. math::

        R(x) = \lambda \sum_g w_g \|x_g\|_2, \qquad
        \operatorname{prox}(z)_g = \max\Big(0,\ 1 - \frac{\text{step}\cdot\lambda\, w_g}{m_g \|z_g\|_2}\Big)\, z_g
        \quad\text{(metric constant } m_g \text{ on group } g\text{)}.

    Under a metric that varies inside a group there is no closed form. Group ``g`` is zero exactly when
    ``‖metric_g ⊙ z_g‖₂ ≤ step·λ·w_g`` (the optimality condition at ``x_g = 0``), so those groups are
    screened to exact zeros (ties → zero). The surviving groups are solved by ``solver``:

    * ``"newton"`` (default, exact): the optimality condition gives ``x_g = m_g⊙z_g/(m_g + c_g)`` with
      ``c_g = step·λ·w_g/‖x_g‖``, i.e. the root of the increasing scalar function
      ``‖c·m_g⊙z_g/(m_g + c)‖ − step·λ·w_g``, bracketed by ``step·λ·w_g·[min m_g, max m_g]/(‖m_g⊙z_g‖ − step·λ·w_g)``.
      Safeguarded Newton, vectorized over all groups, reaches machine precision in a few iterations
      (stop: residual ≤ ``rtol``·step·λ·w_g, at most ``max_iters``); ``x0s`` is not needed.
    * ``"pg"``: the inexact proximal gradient of RAMDA/ProxGen (Huang & Lee, 2024, Algorithm 2):
      per-group step ``1/max(metric_g)``, warm start ``x0s``, stop when
      ``(Q_{j-1} − Q_j)/(|Q_j| + 1) < rtol`` for every tensor (at least 2, at most ``max_iters``
      iterations). It guarantees only that the objective decreases: its accuracy degrades when the
      metric varies by orders of magnitude inside a group. A solve that reaches ``max_iters`` with a
      relative duality gap above ``rtol`` warns (``RuntimeWarning`` naming the tensor, the gap and the cap).

    A metric constant within every group takes the closed form above (no iteration).

    Args:
        lam: λ ≥ 0.
        dim: ``"in"`` (slices ``x[:, j, ...]``: input channels / features) or ``"out"`` (``x[j, ...]``).
        weighting: ``"sqrt"`` (w_g = √|g|, Yuan & Lin) or ``"none"`` (w_g = 1).
        max_iters: iteration cap of the solver (≥ 1).
        rtol: solver tolerance (≥ 0): relative residual for ``"newton"``, relative objective decrease
            for ``"pg"``.
        solver: ``"newton"`` (exact, default) or ``"pg"`` (the papers' inexact proximal gradient).
        layout: how the tensors map to their module's channels: ``None`` (the tensor's own layout,
            above) or a module layout of :func:`lightning_prox.structure.group_blocks`
            (``"conv:G"``, ``"conv_transpose:G"``, ``"gates:N"``, ``"embedding"``). You rarely set it:
            :func:`lightning_prox.structure.param_groups_regularized` and ``ProxMixin`` give each
            weight its module's layout, so that ``dim="in"`` is the module's input channel/feature
            and ``dim="out"`` its output channel/unit for transposed, grouped and depthwise convs and
            LSTM/GRU gates too.

    Example:
        >>> import torch
        >>> reg = GroupLasso(lam=1.0, dim="out", weighting="none")
        >>> reg.prox(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), step=1.0)
        tensor([[2.4000, 3.2000],
                [0.0000, 0.0000]])
    """

    dim: Literal["in", "out"] = "in"
    weighting: Literal["sqrt", "none"] = "sqrt"
    max_iters: int = 100
    rtol: float = 1e-8
    solver: Literal["newton", "pg"] = "newton"
    layout: str | None = None

    inexact_under_metric: ClassVar[bool] = True
    groups_by: ClassVar[str | None] = "dim"
    _writes_out: ClassVar[bool] = True

    @property
    def warm_start(self) -> str:
        """``"solution"`` for the exact Newton solver (its start only seeds the root search),
        ``"iterate"`` for proximal gradient (the authors' choice)."""
        return "solution" if self.solver == "newton" else "iterate"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim not in ("in", "out"):
            raise ValueError(f"GroupLasso: dim must be 'in' or 'out', got {self.dim!r}")
        if self.weighting not in ("sqrt", "none"):
            raise ValueError(f"GroupLasso: weighting must be 'sqrt' or 'none', got {self.weighting!r}")
        _check_solver_args(type(self).__name__, self.max_iters, self.rtol)
        if self.solver not in ("newton", "pg"):
            raise ValueError(f"GroupLasso: solver must be 'newton' or 'pg', got {self.solver!r}")
        try:
            parse_layout(self.layout)
        except ValueError as err:
            raise ValueError(f"GroupLasso: {err}") from None

    def check_param(self, shape: tuple[int, ...], name: str = "parameter") -> None:
        try:
            check_groupable(tuple(shape), self.dim, self.layout, name)
        except ValueError as err:
            raise ValueError(f"GroupLasso cannot regularize {name}: {err}") from None

    def value(self, x: Tensor) -> Tensor:
        check_groupable(x, self.dim, self.layout)
        xf = x.to(threshold_dtype(x))
        if x.numel() == 0:
            return xf.new_zeros(())
        if self.layout is not None:
            w = group_weight(group_size(x, self.dim, self.layout), self.weighting)
            return (self.lam * w) * group_norms(xf, self.dim, self.layout).sum()
        w = group_weight(group_size(x, self.dim), self.weighting)
        nrm = torch.linalg.vector_norm(xf, dim=group_reduce_dims(x.ndim, self.dim))
        return (self.lam * w) * nrm.sum()

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        return self._prox_multi([z], step, None if metric is None else [metric], ProxOptions())[0]

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        if self.layout is not None:
            return _prox_multi_layout(self, zs, step, metrics, opts)
        x0s, max_iters, rtol, info, out = opts.x0s, opts.max_iters, opts.rtol, opts.info, opts.out
        max_iters = self.max_iters if max_iters is None else max_iters
        rtol = self.rtol if rtol is None else rtol
        if metrics is not None and self.solver == "newton":
            for z in zs:
                check_groupable(z, self.dim)
            # CPU float32/float64: the native solve, one pass per group in cache (None: not covered)
            from ..optim._group_kernels import prox_group_lasso

            res = prox_group_lasso(
                zs,
                step * self.lam,
                metrics,
                x0s,
                self.dim,
                self.weighting,
                max_iters,
                rtol,
                info,
                out,
                _PIN_METRIC,
            )
            if res is not None:
                return res
        pinned = _pinned(metrics)
        if pinned is not None:  # +inf metric entries: solve with a huge finite metric, then pin
            # in float32 or wider: _PIN_METRIC itself overflows float16
            metrics = [
                torch.where(pin, _PIN_METRIC, m.to(torch.promote_types(m.dtype, torch.float32)))
                for m, pin in zip(metrics, pinned)  # type: ignore[arg-type]
            ]
            res = self._prox_multi(zs, step, metrics, dataclasses.replace(opts, out=None))
            res = [torch.where(pin, z, x) for z, x, pin in zip(zs, res, pinned)]
            return copy_into(res, out)
        tau = step * self.lam
        if metrics is None:
            return _group_soft_threshold(self, zs, tau, info, out)
        args = (zs, tau, metrics, x0s, self.dim, self.weighting, max_iters, rtol, info)
        if self.solver == "newton":
            return _solve_newton(*args, out)
        return copy_into(solve_group_lasso(*args, self.solver), out)


def _group_soft_threshold(
    reg: GroupLasso, zs: list[Tensor], tau: Step, info: dict | None, outs: list[Tensor] | None
) -> list[Tensor]:
    """The Euclidean prox, x_g = max(0, 1 − τw/‖z_g‖)·z_g, written into ``outs`` when given (may alias zs).

    Group norms run in the tensor's own layout (:meth:`_Layout.norm`: for dim="in" down the columns
    of [out, in·k] block by block, then over each group's k columns), no strided multi-dim reduce. The
    scaling is one pass into the output, so a step reads z twice and writes x once, with no
    tensor-sized temporary.
    """
    res: list[Tensor] = []
    zero_counts = []
    for i, z in enumerate(zs):
        check_groupable(z, reg.dim)
        given = outs[i] if outs is not None else None
        if z.numel() == 0:
            res.append(z.clone() if given is None else given)
            continue
        zf = z.to(threshold_dtype(z))
        thr = cap(tau * group_weight(group_size(z, reg.dim), reg.weighting), zf)
        lay = _Layout(z, reg.dim)
        zv = lay.view(zf)
        nrm = lay.norm(zv)
        scale = lay.bcast(_scale(nrm, thr))
        if given is not None and given.dtype == zf.dtype and given.is_contiguous():
            torch.mul(zv, scale, out=lay.view(given))
            res.append(given)
        else:
            x = (zv * scale).reshape(z.shape).to(z.dtype)
            res.append(x if given is None else given.copy_(x))
        if info is not None:
            zero_counts.append((~(nrm > thr)).sum())
    if info is not None and zero_counts:
        info["screened"] = int(torch.stack([c.to(zero_counts[0].device) for c in zero_counts]).sum())
    return res


#: stands in for a metric of +inf inside the solvers: sqrt of float32's largest value, so that
#: metric·z and its square stay finite for |z| < 16; the coordinate is then set to z exactly
_PIN_METRIC = math.sqrt(torch.finfo(torch.float32).max) / 16


def _pinned(metrics: list[Tensor] | None) -> list[Tensor] | None:
    """Masks of the +inf metric entries, or None when there are none (one host read on CPU; on
    accelerators the masks are always built, to avoid a device sync)."""
    if metrics is None:
        return None
    on_cpu = all(m.device.type == "cpu" for m in metrics)
    if on_cpu:
        # a finite largest value means no +inf: one read per tensor and no mask-sized temporary in
        # the common case (a NaN max, possible only for a metric the optimizers would reject, falls
        # through to the masks)
        top = [m.amax() for m in metrics if m.numel()]
        if not top or bool(torch.isfinite(torch.stack(top).max())):
            return None
    masks = [torch.isposinf(m) for m in metrics]
    if on_cpu and not any(bool(k.any()) for k in masks):
        return None
    return masks


#: fewest rows of a dim="in" view that the layout path runs in place (fewer: gathered group-major)
_MIN_VIEW_ROWS = 16


# -- module layouts: each tensor mapped to a plain grouping (a view) or gathered group-major ----------
def _prox_multi_layout(
    reg: GroupLasso,
    zs: list[Tensor],
    step: Step,
    metrics: list[Tensor] | None,
    opts: ProxOptions,
) -> list[Tensor]:
    """The prox under ``reg.layout``: every tensor becomes a plain grouping of a reshaped view of itself
    (transposed and depthwise convs: no copy, the plain kernels run unchanged) or, for grouped convs
    with several filters per group and for gates, a gathered ``[num_groups, group_size]`` copy grouped
    by rows whose solution is scattered back. One solver call per resulting plain ``dim``."""
    dim, layout = reg.dim, reg.layout
    x0s, info, out = opts.x0s, opts.info, opts.out
    for z in zs:
        check_groupable(z, dim, layout)
    parts: dict[str, list[tuple[int, tuple[int, ...] | None]]] = {}
    for i, z in enumerate(zs):
        form = plain_form(z.shape, dim, layout)
        given = out[i] if out is not None else None
        views_ok = form is not None and z.is_contiguous() and (given is None or given.is_contiguous())
        # a plain dim="in" view with few rows (LSTM/GRU gates: 3-4) reduces down a short strided dim,
        # which torch runs slowly (gates [2048, 512]: 104 ms against 8 ms gathered): gather those
        views_ok = views_ok and not (form[1] == "in" and form[0][0] < _MIN_VIEW_ROWS)
        if views_ok and metrics is not None:
            views_ok = metrics[i].is_contiguous() and (x0s is None or x0s[i].is_contiguous())
        if views_ok:
            parts.setdefault(form[1], []).append((i, form[0]))
        else:
            parts.setdefault("gather", []).append((i, None))
    res: list[Tensor | None] = [None] * len(zs)
    for key, items in parts.items():
        plain = dataclasses.replace(reg, layout=None, dim="out" if key == "gather" else key)

        def conv(ts: list[Tensor] | None, items=items) -> list[Tensor] | None:
            if ts is None:
                return None
            return [
                ts[i].view(shp) if shp is not None else group_view(ts[i], dim, layout) for i, shp in items
            ]

        sub_out = None if out is None or key == "gather" else conv(out)
        sub_info: dict | None = {} if info is not None else None
        sub = ProxOptions(x0s=conv(x0s), max_iters=opts.max_iters, rtol=opts.rtol, info=sub_info, out=sub_out)
        got = plain._prox_multi(conv(zs), step, conv(metrics), sub)
        for (i, shp), x in zip(items, got):
            z = zs[i]
            if shp is not None:
                res[i] = out[i] if out is not None else x.reshape(z.shape)
            else:
                back = from_group_view(x, z, dim, layout)
                res[i] = out[i].copy_(back) if out is not None else back.to(z.dtype)
        if info is not None and sub_info:
            info["inner_iters"] = max(int(info.get("inner_iters", 0)), int(sub_info.get("inner_iters", 0)))
            info["screened"] = int(info.get("screened", 0)) + int(sub_info.get("screened", 0))
    return res  # type: ignore[return-value]


def _check_solver_args(name: str, max_iters: int, rtol: float) -> None:
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"{name}: max_iters must be an int >= 1, got {max_iters!r}")
    if (
        isinstance(rtol, bool)
        or not isinstance(rtol, (int, float))
        or not (rtol >= 0 and math.isfinite(rtol))
    ):
        raise ValueError(f"{name}: rtol must be a finite number >= 0, got {rtol!r}")
