r"""Group lasso over the channels of a network: groups that span several tensors.

Each group is one channel of the network, the union of every slice that must be zero for that
channel to be removable (every consumer's input slice, across residual adds and concatenations; see
:func:`lightning_prox.structure.coupled_channel_groups`). The penalty is Yuan & Lin's (2006) group
lasso on these unions; the exact prox under a diagonal metric is the same secular equation as
:class:`~lightning_prox.regularizers.GroupLasso`'s Newton solver, with every group sum taken over the
slices of all tensors of the group (segment sums, vectorized over all groups).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ._base import ProxOptions, Regularizer, Step
from ._group_solver import _Layout, _newton_update
from .group_lasso import _PIN_METRIC, _check_solver_args, _pinned

__all__ = ["CoupledGroupLasso"]

_F64 = torch.float64


@dataclasses.dataclass(frozen=True)
class CoupledGroupLasso(Regularizer):
    r"""λ Σ_g w_g ‖x_g‖₂ where a group g is a set of slices of *several* tensors (one network channel).

    .. math::

        R(x_1, \dots, x_T) = \lambda \sum_g w_g \Big(\sum_{(t, j) \in g} \|x_t[\dots, j, \dots]\|_2^2\Big)^{1/2},
        \qquad w_g = \sqrt{|g|}\ (\text{elements of the group; } \texttt{weighting="sqrt"}) \text{ or } 1.

    The prox of one param group (its tensors ``names``, in that order), with τ = step·λ:

    * Euclidean metric: block soft thresholding on the union norm,
      :math:`x_g = \max(0, 1 - \tau w_g / \|z_g\|)\, z_g`.
    * Diagonal metric ``m``: group g is zero iff :math:`\|m_g \odot z_g\| \le \tau w_g` (exact
      screening; ties → zero); otherwise :math:`x_g = m_g \odot z_g / (m_g + c_g)` where :math:`c_g > 0`
      is the root of the secular equation :math:`c\,\|m_g \odot z_g / (m_g + c)\| = \tau w_g`, solved by
      the safeguarded Newton iteration of :class:`~lightning_prox.regularizers.GroupLasso` inside the
      bracket :math:`\tau w_g [\min m_g, \max m_g] / (\|m_g \odot z_g\| - \tau w_g)` (closed form when
      ``m`` is constant on the group), in float64, all groups at once: every per-group sum is a
      segment sum (``index_add_``) over the slices of all tensors. Stop: residual ≤
      ``rtol``·τw_g for every group, at most ``max_iters`` iterations. ``metric = +inf`` pins
      a coordinate (x = z).

    Elements in no group (e.g. the input channels of the first conv) are not regularized.

    **Which tensor is which.** The coupling is plain data in the fields below (a checkpoint stores it
    in the optimizer's param group like any spec; it loads with ``weights_only=True``): ``names``
    lists the tensors of the param group in order, ``dims[t]`` the dim that tensor ``t`` is sliced
    along and ``slice_groups[t][j]`` the group of slice ``j`` (``-1``: none). It is built from the
    model by :meth:`from_model` (which traces it) and rebuilt from the model by ``ProxMixin`` each
    time the optimizer is configured; :meth:`param_group` gives the optimizer group with its tensors
    in that order. The optimizers call the prox on all tensors of a group at once; the per-tensor
    reference loops (``foreach=False``) and a group where only some tensors have gradients are
    refused with a ``ValueError``. :meth:`value` of the whole group is :meth:`value_multi`.

    Args:
        lam: λ ≥ 0.
        names: the tensors of the param group, in the order the optimizer holds them.
        dims: per tensor, the dim its slices run along (``1``: input channels of ``[out, in, *k]``).
        slice_groups: per tensor, the group index of each slice along ``dims[t]`` (``-1``: none).
        weighting: ``"sqrt"`` (w_g = √|g|, as GroupLasso) or ``"none"``.
        max_iters: Newton iteration cap (≥ 1).
        rtol: Newton tolerance (≥ 0), relative to τw_g.

    Example:
        >>> import torch
        >>> # one group made of column 0 of a and column 1 of b; column 1 of a and 0 of b: another
        >>> reg = CoupledGroupLasso(1.0, names=("a", "b"), dims=(1, 1), slice_groups=((0, 1), (1, 0)),
        ...                         weighting="none")
        >>> a, b = torch.tensor([[3.0, 0.1]]), torch.tensor([[0.2, 4.0]])
        >>> [x.round(decimals=4) for x in reg.prox_multi([a, b], step=1.0)]
        [tensor([[2.4000, 0.0000]]), tensor([[0.0000, 3.2000]])]
    """

    joint: ClassVar[bool] = True  # its groups span the tensors of its param group

    names: tuple[str, ...] = ()
    dims: tuple[int, ...] = ()
    slice_groups: tuple[tuple[int, ...], ...] = ()
    weighting: Literal["sqrt", "none"] = "sqrt"
    max_iters: int = 100
    rtol: float = 1e-8

    groups_by: ClassVar[str | None] = "slice_dim"

    def __post_init__(self) -> None:
        super().__post_init__()
        names = tuple(str(n) for n in self.names)
        dims = tuple(int(d) for d in self.dims)
        groups = tuple(tuple(int(i) for i in row) for row in self.slice_groups)
        if not (len(names) == len(dims) == len(groups)):
            raise ValueError(
                f"CoupledGroupLasso: names, dims and slice_groups need one entry per tensor, got "
                f"{len(names)}, {len(dims)} and {len(groups)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"CoupledGroupLasso: names must be distinct, got {list(names)}")
        if any(d not in (0, 1) for d in dims):
            raise ValueError(f"CoupledGroupLasso: dims must be 0 or 1, got {list(dims)}")
        if any(i < -1 for row in groups for i in row):
            raise ValueError(
                "CoupledGroupLasso: slice_groups entries must be group indices >= 0 or -1 (none)"
            )
        if self.weighting not in ("sqrt", "none"):
            raise ValueError(f"CoupledGroupLasso: weighting must be 'sqrt' or 'none', got {self.weighting!r}")
        _check_solver_args(type(self).__name__, self.max_iters, self.rtol)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "slice_groups", groups)

    # -- building the coupling ----------------------------------------------------------------------
    @classmethod
    def from_groups(
        cls,
        lam: float,
        groups: Sequence[Sequence[tuple[str, int, Sequence[int]]]],
        shapes: dict[str, Sequence[int]],
        names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> CoupledGroupLasso:
        """From groups of ``(name, dim, indices)`` slices (:func:`~lightning_prox.structure.coupled_channel_groups`)
        and the tensors' shapes; ``names`` fixes the tensor order and drops the slices of other tensors.

        Example:
            >>> reg = CoupledGroupLasso.from_groups(0.1, [[("a", 1, [0]), ("b", 1, [1])]], {"a": (2, 2), "b": (3, 2)})
            >>> reg.names, reg.slice_groups
            (('a', 'b'), ((0, -1), (-1, 0)))
        """
        from ..coupling import coupled_slice_groups

        n, d, s = coupled_slice_groups(groups, dict(shapes), names)
        return cls(lam, names=n, dims=d, slice_groups=s, **kwargs)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        lam: float,
        *,
        names: Sequence[str] | None = None,
        on_unknown: Literal["raise", "skip"] = "raise",
        **kwargs: Any,
    ) -> CoupledGroupLasso:
        """Trace ``model`` on ``example_inputs`` and couple its channels (``names``: the tensors allowed,
        default every one a group reads). Needs Torch-Pruning (the ``export`` extra).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
            >>> reg = CoupledGroupLasso.from_model(net, torch.zeros(1, 3), lam=0.1)
            >>> reg.names, reg.num_groups
            (('2.weight',), 4)
        """
        from ..coupling import coupled_channel_groups

        groups = coupled_channel_groups(model, example_inputs, on_unknown=on_unknown)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        if names is None:  # the model's order
            used = {n for g in groups for n, _, _ in g}
            names = [n for n in shapes if n in used]
        return cls.from_groups(lam, groups, shapes, names, **kwargs)

    def param_group(self, model: nn.Module) -> dict[str, Any]:
        """The optimizer param group of this regularizer: ``model``'s tensors in :attr:`names` order.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> from lightning_prox.optim import ProxSGD
            >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
            >>> reg = CoupledGroupLasso.from_model(net, torch.zeros(1, 3), lam=0.1)
            >>> coupled = reg.param_group(net)
            >>> rest = [(n, p) for n, p in net.named_parameters() if n not in reg.names]
            >>> opt = ProxSGD([coupled, {"params": [p for _, p in rest], "param_names": [n for n, _ in rest]}], lr=0.1)
        """
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(
                f"CoupledGroupLasso: the model has no parameter {missing[0]!r}; rebuild it from this model"
            )
        return {
            "params": [params[n] for n in self.names],
            "param_names": list(self.names),
            "regularizer": self,
        }

    @functools.cached_property
    def num_groups(self) -> int:
        """Number of coupled groups."""
        return 1 + max((i for row in self.slice_groups for i in row), default=-1)

    @property
    def slice_dim(self) -> str | None:
        """``"in"`` when every tensor is sliced along dim 1 (what monitors count per tensor), ``"out"``
        along dim 0, else ``None``."""
        if self.dims and all(d == 1 for d in self.dims):
            return "in"
        if self.dims and all(d == 0 for d in self.dims):
            return "out"
        return None

    # -- checks -------------------------------------------------------------------------------------
    def check_param(self, shape: tuple[int, ...], name: str = "parameter") -> None:
        if not self.names:
            return  # unbound: ProxMixin binds it to the model
        fits = any(len(shape) > d and shape[d] == len(row) for d, row in zip(self.dims, self.slice_groups))
        if not fits:
            raise ValueError(
                f"CoupledGroupLasso cannot regularize {name}: shape {tuple(shape)} matches none of its "
                f"tensors {list(self.names)[:4]}...; build the param group with param_group(model)"
            )

    def _check(self, zs: list[Tensor]) -> None:
        if not self.names:
            raise ValueError(
                "CoupledGroupLasso has no coupling yet: build it with CoupledGroupLasso.from_model(model, "
                "example_inputs, lam) (or let ProxMixin bind it to the model)"
            )
        if len(zs) != len(self.names):
            raise ValueError(
                f"CoupledGroupLasso couples {len(self.names)} tensors ({', '.join(self.names[:3])}, ...) and "
                f"needs all of them in one call, in that order; got {len(zs)}. Its groups span tensors, so "
                "the prox cannot run tensor by tensor: do not use foreach=False, and give every tensor of "
                "the group a gradient"
            )
        for z, n, d, row in zip(zs, self.names, self.dims, self.slice_groups):
            if z.ndim <= d or z.shape[d] != len(row):
                raise ValueError(
                    f"CoupledGroupLasso: tensor {n!r} must have {len(row)} slices along dim {d}, got shape "
                    f"{tuple(z.shape)}; the tensors must come in the order of names"
                )

    # -- segment-sum plumbing -----------------------------------------------------------------------
    def _plan(self, zs: list[Tensor]) -> tuple[list[Tensor], list[_Layout], Tensor]:
        """Per tensor: slice → group index (``G`` = the no-group bucket) and its layout (per-slice
        reductions and broadcasts in the tensor's own memory order, as GroupLasso's ``dim="out"`` /
        ``dim="in"``); the group sizes (float64), cached per device and shapes."""
        key = (zs[0].device, tuple(tuple(z.shape) for z in zs))
        cache = self.__dict__.get("_plans")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_plans", cache)
        hit = cache.get(key)
        if hit is not None:
            return hit
        G = self.num_groups
        dev = zs[0].device
        idx, lays = [], []
        sizes = torch.zeros(G + 1, dtype=_F64, device=dev)
        for z, d, row in zip(zs, self.dims, self.slice_groups):
            i = torch.tensor(row, dtype=torch.int64, device=dev)
            i = torch.where(i < 0, G, i)
            lays.append(_Layout(z, "out" if d == 0 else "in"))
            per_slice = float(z.numel() // max(z.shape[d], 1))
            sizes.index_add_(0, i, torch.full((len(row),), per_slice, dtype=_F64, device=dev))
            idx.append(i)
        cache.clear()  # one entry: the shapes of a model do not change
        cache[key] = (idx, lays, sizes)
        return idx, lays, sizes

    def _weights(self, sizes: Tensor) -> Tensor:
        return sizes.sqrt() if self.weighting == "sqrt" else torch.ones_like(sizes)

    @staticmethod
    def _seg(G1: int, idx: list[Tensor], parts: list[Tensor]) -> Tensor:
        out = torch.zeros(G1, dtype=_F64, device=idx[0].device)
        for i, p in zip(idx, parts):
            out.index_add_(0, i, p.to(_F64))
        return out

    # -- value ----------------------------------------------------------------------------------------
    def value_multi(self, xs: Sequence[Tensor]) -> Tensor:
        """λ Σ_g w_g ‖x_g‖ over the tensors of :attr:`names` (in order), a float64 0-dim tensor.

        Example:
            >>> import torch
            >>> reg = CoupledGroupLasso(1.0, names=("a", "b"), dims=(1, 1), slice_groups=((0,), (0,)), weighting="none")
            >>> float(reg.value_multi([torch.tensor([[3.0]]), torch.tensor([[4.0]])]))
            5.0
        """
        xs = list(xs)
        self._check(xs)
        idx, lays, sizes = self._plan(xs)
        G = self.num_groups
        sq = self._seg(G + 1, idx, [lay.sum(lay.view(x.to(_F64)).square()) for x, lay in zip(xs, lays)])
        return self.lam * (self._weights(sizes)[:G] * sq[:G].sqrt()).sum()

    def value(self, x: Tensor) -> Tensor:
        """The penalty when the coupling holds one tensor; several: use :meth:`value_multi`."""
        if len(self.names) != 1:
            raise ValueError(
                "CoupledGroupLasso.value(x) of one tensor is not defined when groups span several tensors: "
                "use value_multi(xs) with every tensor of names (penalty_mode='subgradient' is not supported)"
            )
        return self.value_multi([x])

    # -- prox -----------------------------------------------------------------------------------------
    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        return self._prox_multi([z], step, None if metric is None else [metric], ProxOptions())[0]

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        self._check(zs)
        pinned = _pinned(metrics)
        if pinned is not None:  # +inf metric entries: solve with a huge finite metric, then x = z there
            metrics = [torch.where(p, _PIN_METRIC, m.to(_F64)) for m, p in zip(metrics, pinned)]  # type: ignore[arg-type]
            res = self._prox_multi(zs, step, metrics, dataclasses.replace(opts, out=None))
            return [torch.where(p, z, x) for z, x, p in zip(zs, res, pinned)]
        idx, lays, sizes = self._plan(zs)
        G = self.num_groups
        dev = zs[0].device
        tau = torch.as_tensor(step, dtype=_F64, device=dev) * self.lam
        thr = torch.clamp(tau * self._weights(sizes), max=torch.finfo(_F64).max)
        info = opts.info
        if metrics is None:
            zv = [lay.view(z) for z, lay in zip(zs, lays)]
            dts = [torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype for z in zs]
            nrm = self._seg(
                G + 1, idx, [lay.sum(z.to(dt).square()) for z, dt, lay in zip(zv, dts, lays)]
            ).sqrt()
            tiny = torch.finfo(_F64).tiny
            scale = torch.where(nrm > thr, 1.0 - thr / nrm.clamp_min(tiny), 0.0)
            scale = torch.where(torch.isnan(nrm), torch.nan, scale)  # NaN never becomes an exact zero
            scale[G] = 1.0
            if info is not None:
                info["screened"] = int(info.get("screened", 0)) + int((~(nrm[:G] > thr[:G])).sum())
            return [
                (z.to(dt) * lay.bcast(scale[i].to(dt))).reshape(z0.shape).to(z0.dtype)
                for z, z0, i, dt, lay in zip(zv, zs, idx, dts, lays)
            ]
        return self._newton(zs, metrics, opts, idx, lays, thr, G)

    def _newton(
        self,
        zs: list[Tensor],
        metrics: list[Tensor],
        opts: ProxOptions,
        idx: list[Tensor],
        lays: list[_Layout],
        thr: Tensor,
        G: int,
    ) -> list[Tensor]:
        tiny, big = torch.finfo(_F64).tiny, torch.finfo(_F64).max
        G1 = G + 1
        zv = [lay.view(z.to(_F64)) for z, lay in zip(zs, lays)]
        mv = [lay.view(m.to(_F64)) for m, lay in zip(metrics, lays)]
        av = [m * z for m, z in zip(mv, zv)]  # a = m ⊙ z
        dev = zv[0].device
        # two scratch buffers shared by all tensors and iterations (no parameter-sized allocation per pass)
        largest = max(a.numel() for a in av)
        tbuf = torch.empty(largest, dtype=_F64, device=dev)
        ubuf = torch.empty(largest, dtype=_F64, device=dev)

        def sq_sums(xs: list[Tensor]) -> Tensor:
            parts = []
            for x, lay in zip(xs, lays):
                t = tbuf[: x.numel()].view(x.shape)
                parts.append(lay.sum(torch.mul(x, x, out=t)))
            return self._seg(G1, idx, parts)

        norm_a = sq_sums(av).sqrt()
        mx = torch.full((G1,), -math.inf, dtype=_F64, device=dev)
        mn = torch.full((G1,), math.inf, dtype=_F64, device=dev)
        for i, m, lay in zip(idx, mv, lays):
            mx.scatter_reduce_(0, i, lay.amax(m), "amax")
            mn.scatter_reduce_(0, i, lay.amin(m), "amin")
        finite = torch.isfinite(norm_a)
        alive = finite & (norm_a > thr)  # zero iff ‖m⊙z‖ ≤ τw (ties → zero)
        alive[G] = False
        gap = (norm_a - thr).clamp_min(tiny)
        hi = torch.where(alive, torch.clamp(thr * mx / gap, max=big), 1.0).clamp_min(tiny)
        lo = torch.minimum(torch.where(alive, torch.clamp(thr * mn / gap, max=big), 1.0).clamp_min(tiny), hi)
        uniform = alive & (mn == mx)
        c = torch.where(uniform, hi, torch.sqrt(lo) * torch.sqrt(hi))
        if opts.x0s is not None:  # warm start: a solution x0 has c = τw/‖x0_g‖, clamped into the bracket
            x0n = sq_sums([lay.view(x.to(_F64)) for x, lay in zip(opts.x0s, lays)]).sqrt()
            warm = torch.clamp(thr / x0n.clamp_min(tiny), max=big)
            c = torch.where((x0n > 0) & alive & ~uniform, torch.minimum(torch.maximum(warm, lo), hi), c)
        done = ~alive | uniform
        tol = max(self.rtol if opts.rtol is None else opts.rtol, 16 * torch.finfo(_F64).eps)
        max_iters = self.max_iters if opts.max_iters is None else opts.max_iters
        prev = torch.full_like(c, math.inf)
        ops = (torch.where, torch.sqrt, torch.clamp_min)
        j = 0
        while not bool(done.all()) and j < max_iters:
            j += 1
            p2, p3 = [], []
            for i, m, a, lay in zip(idx, mv, av, lays):
                t, u = tbuf[: a.numel()].view(a.shape), ubuf[: a.numel()].view(a.shape)
                torch.add(m, lay.bcast(c[i]), out=t)
                torch.div(a, t, out=u)
                u.mul_(u)  # a²/(m + c)²
                p2.append(lay.sum(u))
                p3.append(lay.sum(u.div_(t)))  # a²/(m + c)³
            c_new, lo, hi, done, prev = _newton_update(
                ops, c, self._seg(G1, idx, p2), self._seg(G1, idx, p3), lo, hi, thr, done, prev, tol, tiny
            )
            c = torch.where(alive & ~uniform, c_new, c)
        # x = z⊙m/(m + c): screened groups take c = inf (exact zeros), the no-group bucket and groups
        # with an infinite entry c = 0 (unshrunk), a NaN group c = NaN (NaN never becomes a zero)
        cf = torch.where(alive, c, torch.inf)
        cf = torch.where(torch.isinf(norm_a), 0.0, cf)
        cf = torch.where(torch.isnan(norm_a), torch.nan, cf)
        cf[G] = 0.0
        if opts.info is not None:
            opts.info["inner_iters"] = max(int(opts.info.get("inner_iters", 0)), j)
            opts.info["screened"] = int(opts.info.get("screened", 0)) + int((~alive[:G] & finite[:G]).sum())
        out = []
        for z, m, i, z0, lay in zip(zv, mv, idx, zs, lays):
            t = tbuf[: z.numel()].view(z.shape)
            torch.add(m, lay.bcast(cf[i]), out=t)
            torch.div(m, t, out=t)
            out.append(t.mul_(z).reshape(z0.shape).to(z0.dtype, copy=True))  # the buffer is reused
        return out
