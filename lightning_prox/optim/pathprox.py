"""PathProx: SGD, then the proximal step of the path-norm form of weight decay on layer pairs.

Yang, Zhang, Shenouda, Papailiopoulos, Lee and Nowak (2022), "PathProx: A Proximal Gradient
Algorithm for Weight Decay Regularized Deep Neural Networks" (arXiv 2210.03069), Algorithm 1 and
Lemma 4.3; layer-wise balancing as in the authors' code (``Leiay/PathProx``, ``layerwise_balance``),
here in closed form per chain. The pure functions :func:`layerwise_balance_` and
:func:`normalize_and_prox_` work on :class:`~lightning_prox.structure.PathProxPair` lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.sgd import sgd

from ..regularizers._base import Regularizer
from ..structure import PathProxPair, pathprox_pairs
from ._base import ProxOptimizer, _check_finite_doc
from .proxsgd import _check_hparams

__all__ = ["PathNorm", "PathProx", "layerwise_balance_", "normalize_and_prox_", "path_norms"]


@dataclasses.dataclass(frozen=True)
class PathNorm(Regularizer):
    r"""The marker regularizer of :class:`PathProx`'s param groups: :math:`\lambda \sum_k \lVert w_k \rVert \lVert v_k \rVert`.

    PathProx's groups carry ``regularizer = {"name": "PathNorm"}`` and ``lam`` as plain data, so that
    :class:`~lightning_prox.callbacks.RegularizationScheduler` schedules λ, ``prox/lambda`` is logged
    and :class:`~lightning_prox.callbacks.SparsityMonitor` treats the groups as regularized. The
    penalty couples two layers, so it has no value or prox on one tensor: use :class:`PathProx`
    (its :meth:`PathProx.penalty` is the value).

    Example:
        >>> PathNorm(1e-3).spec()
        {'name': 'PathNorm'}
    """

    def value(self, x: Tensor) -> Tensor:
        raise ValueError(
            "PathNorm couples two layers (Σ_k ‖w_k‖·‖v_k‖ over a layer pair) and has no value on one "
            "tensor; use lightning_prox.optim.PathProx and its penalty()"
        )

    def prox(self, z: Tensor, step: Any, metric: Tensor | None = None) -> Tensor:
        raise ValueError(
            "PathNorm couples two layers and has no prox on one tensor; train with "
            "lightning_prox.optim.PathProx, which applies it to whole layer pairs"
        )


#: elements of one chunk of the squared ``v`` in :func:`_v_norms`
_CHUNK = 1 << 20


def _w_norms(p: PathProxPair, dtype: torch.dtype = torch.float32, out: Tensor | None = None) -> Tensor:
    """``‖w_k‖`` of every unit (rows or filters of ``w``), in ``dtype`` at least, reduced over the
    dims in place of a reshape (no copy of a channels_last weight). A wider ``dtype`` is reached
    in row chunks of at most ``_CHUNK`` elements (``vector_norm(dtype=)`` casts its whole input)."""
    dt = torch.promote_types(p.w.dtype, dtype)
    dims = tuple(range(1, p.w.ndim))
    if dt == p.w.dtype or p.w.numel() <= _CHUNK:
        return torch.linalg.vector_norm(p.w, dim=dims, dtype=dt, out=out)
    rows = max(1, _CHUNK // max(1, p.w[0].numel()))
    parts = [torch.linalg.vector_norm(c, dim=dims, dtype=dt) for c in p.w.split(rows)]
    return torch.cat(parts) if out is None else torch.cat(parts, out=out)


def _v_norms(p: PathProxPair, dtype: torch.dtype = torch.float32, out: Tensor | None = None) -> Tensor:
    """``‖v_k‖`` of every unit: ``v`` seen as ``[out, units, ...]`` (``block`` columns per unit).

    A sum of squares over dim 0 first, in row chunks of at most ``_CHUNK`` elements (the only
    temporary): CPU runs a norm over the outer dim 0 5-20x slower than this (``vector_norm(dim=0)``
    on a 512×4608 matrix: 5.1 ms against 1.4 ms on one thread)."""
    v = p.v if p.block == 1 else p.v.unflatten(1, (p.w.shape[0], p.block))
    dt = torch.promote_types(v.dtype, dtype)
    chunks = v.split(max(1, _CHUNK // max(1, v[0].numel())))
    sq = chunks[0].to(dt).square().sum(0)
    for chunk in chunks[1:]:
        sq.add_(chunk.to(dt).square().sum(0))
    return torch.sqrt(sq.flatten(1).sum(1) if sq.ndim > 1 else sq, out=out)


def _w_shape(p: PathProxPair) -> tuple[int, ...]:
    """Shape that broadcasts a per-unit vector over ``w``."""
    return (p.w.shape[0],) + (1,) * (p.w.ndim - 1)


def _v_factor(p: PathProxPair, f: Tensor) -> Tensor:
    """A per-unit vector laid out to broadcast over ``v`` (the tensor itself is scaled, never a
    reshaped copy, so channels_last weights and non-viewable layouts are updated in place)."""
    if p.v.ndim == 2:
        return (f if p.block == 1 else f.repeat_interleave(p.block)).view(1, -1)
    return f.view(1, -1, *([1] * (p.v.ndim - 2)))


@torch.no_grad()
def path_norms(pairs: Sequence[PathProxPair]) -> list[Tensor]:
    r"""Path norm :math:`P_g = \sum_k \lVert w_k \rVert_2 \lVert v_k \rVert_2` of every pair (weights only).

    Computed in float64 (no underflow of tiny units); 0-dim tensors on each pair's device (no host sync).

    Example:
        >>> from lightning_prox.structure import pathprox_pairs
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        ...     _ = net[2].weight.copy_(torch.tensor([[2.0, 5.0]]))
        >>> [float(p) for p in path_norms(pathprox_pairs(net))]  # 5·2 + 1·5
        [15.0]
    """
    return [(_w_norms(p, torch.float64) * _v_norms(p, torch.float64)).sum() for p in pairs]


@torch.no_grad()
def layerwise_balance_(pairs: Sequence[PathProxPair]) -> list[float]:
    r"""Rescale the pairs of each balancing chain to the chain's geometric-mean path norm, in place.

    For a chain of pairs :math:`g = 1..G` with path norms :math:`P_g` (:func:`path_norms`), target
    :math:`\bar P = \exp(\frac1G \sum_g \log P_g)` and scales (float64, log domain)

    .. math::

        c_0 = 1,\qquad c_g = \bar P^{\,g} \Big/ \prod_{h \le g} P_h,\qquad c_G := 1,

    ``v_g ← v_g·c_g/c_{g−1}``, ``v_bias_g ← v_bias_g·c_g`` and ``w_bias_g ← w_bias_g·c_{g−1}``; the
    ``w`` weights are untouched. Layer g's output is then scaled by :math:`c_g` and the next pair
    undoes it (positive scalars pass through ReLU-like units and pooling), the last output is
    unchanged, so the network function is preserved, and every :math:`P_g` becomes :math:`\bar P`.
    A chain with a zero or non-finite :math:`P_g`, or whose scales would not fit the parameters' dtype
    (beyond the square root of its largest value), is left as is. A missing bias has nothing to scale.

    Returns:
        :math:`c_g` of every pair (1.0 in skipped chains and single-pair chains); one host read.

    Example:
        >>> from lightning_prox.structure import pathprox_pairs
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(*[m for _ in range(2) for m in (nn.Linear(3, 3), nn.ReLU())], nn.Linear(3, 3),
        ...                     nn.ReLU(), nn.Linear(3, 1)).double()
        >>> pairs = pathprox_pairs(net)
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> y = net(x)
        >>> scales = layerwise_balance_(pairs)
        >>> torch.allclose(net(x), y, rtol=1e-12, atol=0), scales[-1]
        (True, 1.0)
        >>> a, b = path_norms(pairs)
        >>> bool(torch.isclose(a, b, rtol=1e-12))
        True
    """
    if not pairs:
        return []
    norms = path_norms(pairs)
    chains: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        chains.setdefault(p.chain, []).append(i)
    scales: list[Tensor] = [torch.ones((), dtype=torch.float64, device=p.w.device) for p in pairs]
    for idx in chains.values():
        if len(idx) < 2:
            continue
        dev = pairs[idx[0]].w.device
        P = torch.stack([norms[i].to(dev) for i in idx])
        ok = (torch.isfinite(P) & (P > 0)).all()
        logp = torch.log(torch.where(ok, P, torch.ones_like(P)))
        g = torch.arange(1, len(idx) + 1, dtype=torch.float64, device=dev)
        logc = g * logp.mean() - torch.cumsum(logp, 0)
        logc[-1] = 0.0  # c_G = 1 exactly: the chain's output is untouched
        # scales that would overflow the parameters' dtype (a nearly dead pair next to a live one)
        # would turn exact zeros into 0·inf = NaN: such a chain is skipped too
        logprev = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), logc[:-1]])
        lim = min(math.log(torch.finfo(t.dtype).max) for i in idx for t in (pairs[i].v, pairs[i].w)) / 2
        ok = ok & (torch.maximum(logc.abs(), (logc - logprev).abs()).amax() < lim)
        c = torch.where(ok, torch.exp(logc), torch.ones_like(logc))
        prev = torch.cat([torch.ones(1, dtype=torch.float64, device=dev), c[:-1]])
        for j, i in enumerate(idx):
            p = pairs[i]
            p.v.mul_((c[j] / prev[j]).to(p.v.dtype))
            if p.v_bias is not None:
                p.v_bias.mul_(c[j].to(p.v_bias.dtype))
            if p.w_bias is not None:
                p.w_bias.mul_(prev[j].to(p.w_bias.dtype))
            scales[i] = c[j]
    return [float(s) for s in torch.stack([s.cpu() for s in scales]).tolist()]


@torch.no_grad()
def normalize_and_prox_(
    pairs: Sequence[PathProxPair],
    taus: Sequence[float],
    regularize_bias: bool = False,
    *,
    foreach: bool | None = None,
) -> None:
    r"""PathProx's projection and prox on every pair, in place.

    Per unit k: :math:`n_k = \lVert w_k \rVert_2` (with ``regularize_bias``:
    :math:`\sqrt{\lVert w_k \rVert^2 + b_k^2}`); when :math:`n_k > 0`, ``w_k ← w_k/n_k`` and
    ``b_k ← b_k/n_k`` (a unit with :math:`n_k = 0` is left as is); then the group soft-threshold

    .. math::

        v_k \leftarrow \max\!\Big(0,\ \frac{\lVert v_k \rVert_2 - \tau}{\lVert v_k \rVert_2}\Big)\, v_k ,

    exactly zero when :math:`\lVert v_k \rVert_2 \le \tau` (the prox of :math:`\tau \lVert\cdot\rVert_2`).
    Norms and factors are computed in float32 at least (float64 for float64 weights) and applied to
    the weights in that precision (one rounding to a float16/bfloat16 weight); a NaN norm gives NaN,
    never an exact zero, and a NaN in ``w_k`` leaves that unit's input weights as they are.

    Args:
        pairs: the layer pairs.
        taus: threshold τ = λ·lr of each pair (τ = 0: the pair is left as is).
        regularize_bias: include the unit's input bias in :math:`n_k`.
        foreach: ``None``/``True``: the multi-tensor path (pairs batched per device and dtype, no
            host read); ``False``: the per-pair reference loop. Both give identical results.

    Example:
        >>> from lightning_prox.structure import pathprox_pairs
        >>> net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        ...     _ = net[2].weight.copy_(torch.tensor([[2.0, 0.5]]))
        >>> normalize_and_prox_(pathprox_pairs(net), [1.0])
        >>> net[0].weight.data, net[2].weight.data
        (tensor([[0.6000, 0.8000],
                [0.0000, 1.0000]]), tensor([[1., 0.]]))
    """
    if len(taus) != len(pairs):
        raise ValueError(f"taus must hold one threshold per pair: got {len(taus)} for {len(pairs)} pairs")
    if foreach is not None and not isinstance(foreach, bool):
        raise ValueError(f"foreach must be None, True or False, got {foreach!r}")
    live = [(p, float(t)) for p, t in zip(pairs, taus) if t > 0]
    if not live:
        return
    if foreach is False:
        for p, tau in live:
            _single_pair_prox_(p, tau, regularize_bias)
        return
    for idx in _buckets([p.w for p, _ in live]):
        _multi_normalize_([live[i][0] for i in idx], regularize_bias)
    for idx in _buckets([p.v for p, _ in live]):
        _multi_shrink_([live[i][0] for i in idx], [live[i][1] for i in idx])


def _single_pair_prox_(p: PathProxPair, tau: float, regularize_bias: bool) -> None:
    """The readable reference of one pair (the multi-tensor path runs the same ops on lists)."""
    n = _w_norms(p)
    if regularize_bias and p.w_bias is not None:
        n = torch.hypot(n, p.w_bias.to(n.dtype))
    n = torch.where(n > 0, n, 1.0)  # zero-norm (and NaN) units are left as they are
    p.w.div_(n.view(_w_shape(p)))
    if p.w_bias is not None:
        p.w_bias.div_(n)
    m = _v_norms(p)
    f = m.sub(tau).div_(m).clamp_min_(0.0)  # ‖v_k‖ ≤ τ: ≤ 0 exactly, then 0; m = 0: -inf -> 0; NaN stays
    p.v.mul_(_v_factor(p, f))


def _buckets(tensors: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), in order (the foreach fast paths need it)."""
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault((t.device, t.dtype), []).append(i)
    return list(out.values())


def _unit_buffer(pairs: Sequence[PathProxPair], like: Tensor) -> tuple[Tensor, list[int]]:
    sizes = [p.w.shape[0] for p in pairs]
    dt = torch.promote_types(like.dtype, torch.float32)
    return torch.empty(sum(sizes), dtype=dt, device=like.device), sizes


def _multi_normalize_(pairs: Sequence[PathProxPair], regularize_bias: bool) -> None:
    """``w_k ← w_k/n_k`` for the pairs of one (device, dtype) of ``w``: the norms of all units are
    reduced into one buffer, its elementwise ops are single kernels, the scaling is one foreach op."""
    n, sizes = _unit_buffer(pairs, pairs[0].w)
    parts = n.split(sizes)
    for p, part in zip(pairs, parts):
        _w_norms(p, out=part)  # one reduction per tensor: there is no foreach reduction over dims
    with_bias = [i for i, p in enumerate(pairs) if p.w_bias is not None]
    if regularize_bias and with_bias:
        b = torch.zeros_like(n)
        bparts = b.split(sizes)
        torch._foreach_copy_([bparts[i] for i in with_bias], [pairs[i].w_bias for i in with_bias])
        n = torch.hypot(n, b)  # hypot(n, 0) = n: pairs without a bias are unchanged
    n = torch.where(n > 0, n, 1.0)
    parts = n.split(sizes)
    torch._foreach_div_([p.w for p in pairs], [part.view(_w_shape(p)) for p, part in zip(pairs, parts)])
    if with_bias:
        torch._foreach_div_([pairs[i].w_bias for i in with_bias], [parts[i] for i in with_bias])


def _multi_shrink_(pairs: Sequence[PathProxPair], taus: Sequence[float]) -> None:
    """The group soft-threshold of ``v_k`` for the pairs of one (device, dtype) of ``v``."""
    m, sizes = _unit_buffer(pairs, pairs[0].v)
    parts = m.split(sizes)
    for p, part in zip(pairs, parts):
        _v_norms(p, out=part)
    f = torch._foreach_sub(parts, list(taus))
    torch._foreach_div_(f, parts)
    torch._foreach_clamp_min_(f, 0.0)
    torch._foreach_mul_([p.v for p in pairs], [_v_factor(p, x) for p, x in zip(pairs, f)])


class PathProx(ProxOptimizer):
    r"""PathProx (Yang et al., 2022, Algorithm 1): SGD, then per unit normalize ``w_k`` and shrink ``v_k``.

    Weight decay :math:`\frac\lambda2\lVert\theta\rVert^2` on a layer pair equals, after rebalancing
    each unit, the path norm :math:`\lambda\sum_k \lVert w_k\rVert\lVert v_k\rVert` (Theorem 4.1),
    and under :math:`\lVert w_k\rVert = 1` its prox is a group soft-threshold on :math:`v_k`
    (Lemma 4.3). With the pairs of :func:`~lightning_prox.structure.pathprox_pairs`, per step:

    .. math::

        \begin{aligned}
        &\textbf{input: } \gamma \text{ (lr)},\ \lambda \text{ (lam)},\ \mu \text{ (momentum)},\
            \tau_d \text{ (dampening)},\ \zeta \text{ (other\_weight\_decay, None} = \lambda) \\
        &g_t = \nabla f(\theta_{t-1}) + \zeta\,\theta_{t-1}\ [\text{weights in no pair}],\quad
            b_t = \mu b_{t-1} + (1-\tau_d) g_t\ (b_1 = g_1),\quad
            \hat\theta_t = \theta_{t-1} - \gamma\,(g_t + \mu b_t \text{ if nesterov else } b_t) \\
        &\text{(pre-prox hooks, e.g. layer-wise balancing; } \texttt{balancing=True} \text{ runs }
            \texttt{layerwise\_balance\_}) \\
        &n_k = \lVert \hat w_k \rVert_2,\quad w_k = \hat w_k / n_k,\quad b_k = \hat b_k / n_k
            \quad (n_k > 0;\ \text{else unchanged}) \\
        &v_k = \max\big(0,\ 1 - \gamma\lambda / \lVert \hat v_k \rVert_2\big)\, \hat v_k
        \end{aligned}

    Unit k is output channel k of the pair's first layer: ``w_k = W[k]`` (row or filter) with bias
    ``b_k``, ``v_k`` the matching input slice of the next layer (a column, ``V[:, k]`` for convs, or
    ``block`` columns behind a flatten). γ and λ are those of the param group holding ``V``, read at
    every step (LR schedulers and :class:`~lightning_prox.callbacks.RegularizationScheduler` apply).
    Biases and 1-d parameters get no weight decay (as the authors' code); weights in no pair get
    coupled weight decay ζ ("standard weight decay on the remaining weights"). The threshold is
    λ·γ for the ``(λ/2)‖θ‖²`` convention. With γ = 0 or λ = 0 a pair is left after the SGD step.

    .. note::
        Momentum buffers are not rescaled by the normalization or the balancing, as in the authors'
        code; the paper analyses plain SGD (``momentum=0``, the authors' setting), momentum is a
        heuristic here: with balancing, pairs whose path norms are far apart (a nearly collapsed chain
        at a large λ) are rescaled by large factors while their buffers are not, which can make
        training diverge. Units with ``v_k = 0`` keep ``‖w_k‖ = 1`` and can come back.

    Memory: the state is 0 bytes per parameter value (4 with momentum: ``momentum_buffer`` in the
    parameter's dtype, for float32 parameters).

    Args:
        params: iterable of parameters, ``(name, parameter)`` pairs or param-group dicts; every
            tensor of every pair must be in it.
        lr: learning rate γ ≥ 0.
        lam: λ ≥ 0, the weight-decay strength (each group may set its own ``lam``).
        momentum: μ ≥ 0 (torch SGD semantics).
        pairs: the model (``pathprox_pairs(model, strict)`` is called) or a list of
            :class:`~lightning_prox.structure.PathProxPair`.
        dampening: τ_d for momentum.
        nesterov: Nesterov momentum.
        other_weight_decay: ζ ≥ 0 on weights (ndim ≥ 2) in no pair; ``None``: the group's λ.
        regularize_bias: include the unit's input bias in ``n_k`` (Yang et al., Appendix A.1);
            layer-wise balancing is then refused.
        balancing: run :func:`layerwise_balance_` in every step between the SGD step and the prox
            (:class:`~lightning_prox.callbacks.PathProxBalancing` does it from Lightning instead).
        strict: passed to ``pathprox_pairs`` when ``pairs`` is a model.
        {check_finite}
        foreach: ``None``/``True``: torch's multi-tensor SGD and the prox batched over all pairs
            (per device and dtype, no host read); ``False``: torch's per-tensor SGD loop and the
            per-pair reference loop of the prox (identical results). Per param group; a pair
            follows the group of its ``v`` tensor.

    Raises:
        ValueError: for an invalid hyperparameter (naming it), missing or overlapping pairs, or a
            pair tensor that is not among ``params``, before anything is changed.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> opt = PathProx(net.parameters(), lr=0.1, lam=3.0, pairs=net)
        >>> net(torch.randn(8, 4)).square().mean().backward()
        >>> opt.step()
        >>> torch.linalg.vector_norm(net[0].weight.detach(), dim=1)  # unit-norm input weights
        tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
        >>> (net[2].weight == 0).all(dim=0).tolist()  # units with ‖v_k‖ ≤ λ·γ = 0.3 are exactly zero
        [True, False, False, True, True, False]
    """

    _setstate_defaults = {"nesterov": False, "dampening": 0.0, "other_weight_decay": None}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float,
        lam: float,
        momentum: float = 0.0,
        pairs: nn.Module | Sequence[PathProxPair] | None = None,
        *,
        dampening: float = 0.0,
        nesterov: bool = False,
        other_weight_decay: float | None = None,
        regularize_bias: bool = False,
        balancing: bool = False,
        strict: bool = True,
        check_finite: bool = True,
        foreach: bool | None = None,
    ) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or math.isinf(lam):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        for flag, value in (
            ("regularize_bias", regularize_bias),
            ("balancing", balancing),
            ("strict", strict),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        if pairs is None:
            raise ValueError(
                "PathProx needs pairs=: the model (its layer pairs are found by tracing) or a list of "
                "lightning_prox.structure.PathProxPair, e.g. PathProx(model.parameters(), lr, lam, pairs=model)"
            )
        if isinstance(pairs, nn.Module):
            found = pathprox_pairs(pairs, strict=strict)
        else:
            found = list(pairs)
            if not found or not all(isinstance(p, PathProxPair) for p in found):
                raise ValueError(
                    "pairs must be an nn.Module or a non-empty list of lightning_prox.structure.PathProxPair, "
                    f"got {pairs!r}"
                )
        _check_pairs(found)
        defaults = dict(
            lr=lr,
            lam=float(lam),
            momentum=momentum,
            dampening=dampening,
            nesterov=bool(nesterov),
            other_weight_decay=other_weight_decay,
            regularizer=PathNorm(float(lam)),
        )
        super().__init__(params, defaults, check_finite=check_finite, foreach=foreach)
        owned = {id(p) for g in self.param_groups for p in g["params"]}
        for pair in found:
            for what, t in (("w", pair.w), ("v", pair.v), ("w_bias", pair.w_bias), ("v_bias", pair.v_bias)):
                if t is not None and id(t) not in owned:
                    raise ValueError(
                        f"the {what} tensor of the pair ({pair.w_name!r}, {pair.v_name!r}) is not among "
                        "the optimizer's params; pass all of the model's parameters"
                    )
        self.pairs: list[PathProxPair] = found
        self.regularize_bias = regularize_bias
        self.balancing = balancing
        self._paired = {id(t) for p in found for t in (p.w, p.v)}
        self._stepped: set[int] = set()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; one without a regularizer (or ``regularizer=None``) gets the PathNorm marker."""
        if param_group.get("regularizer") is None:
            param_group = {**param_group, "regularizer": PathNorm(float(self.defaults["lam"]))}
        super().add_param_group(param_group)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_hparams(group["momentum"], group["dampening"], group["nesterov"], 0.0)
        wd = group.get("other_weight_decay")
        if wd is not None and (
            isinstance(wd, bool) or not isinstance(wd, (int, float)) or not wd >= 0 or math.isinf(wd)
        ):
            raise ValueError(f"other_weight_decay must be None (= lam) or a finite number >= 0, got {wd!r}")
        reg = group.get("regularizer")
        name = reg.get("name") if isinstance(reg, dict) else type(reg).__name__ if reg is not None else None
        if name != "PathNorm":
            raise ValueError(
                "PathProx's penalty is the path norm; set lam on PathProx (or in the group), not "
                f"regularizer= (got {reg!r})"
            )

    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor | None]:
        if group["momentum"] == 0:
            return [None] * len(params)
        return [self.state[p].get("momentum_buffer") for p in params]

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: list[Tensor | None],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> None:
        wd = group["other_weight_decay"]
        wd = group["lam"] if wd is None else wd
        decayed = [id(p) not in self._paired and p.ndim >= 2 for p in params]
        for decay, zeta in ((True, wd), (False, 0.0)):
            idx = [i for i, d in enumerate(decayed) if d == decay]
            if not idx:
                continue
            bufs = [state[i] for i in idx]
            # torch's own SGD (its multi-tensor path unless foreach=False); it fills new buffers in
            # place and handles a parameter that joins late (mixed first step) exactly
            sgd(
                [params[i] for i in idx],
                [grads[i] for i in idx],
                bufs,
                foreach=group["foreach"] is not False,
                weight_decay=zeta,
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=False,  # the skeleton already negated the gradients
            )
            if group["momentum"] != 0:
                for i, buf in zip(idx, bufs):
                    self.state[params[i]]["momentum_buffer"] = buf
        self._stepped.update(id(p) for p in params)

    def _prox_step(
        self, group: dict[str, Any], params: list[Tensor], state: Any, ctx: Any, info: dict[str, Any]
    ) -> None:
        """The prox acts on whole pairs, possibly across groups: :meth:`step` applies it once."""

    def _group_of(self) -> dict[int, dict[str, Any]]:
        return {id(p): g for g in self.param_groups for p in g["params"]}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One PathProx step: SGD on every group, pre-prox hooks, balancing (when on), normalize + prox."""
        self._stepped = set()
        loss = super().step(closure)
        todo = [p for p in self.pairs if id(p.v) in self._stepped or id(p.w) in self._stepped]
        self._stepped = set()
        if not todo:
            return loss
        if self.balancing:
            layerwise_balance_(self.pairs)
        group_of = self._group_of()
        for foreach in (True, False):  # a pair follows the foreach flag of its v's group
            sel = [p for p in todo if (group_of[id(p.v)]["foreach"] is not False) == foreach]
            taus = [float(group_of[id(p.v)]["lam"]) * float(group_of[id(p.v)]["lr"]) for p in sel]
            normalize_and_prox_(sel, taus, self.regularize_bias, foreach=foreach)
        return loss

    def balance_(self) -> list[float]:
        """One layer-wise balancing of :attr:`pairs` (:func:`layerwise_balance_`); returns the scales c_g."""
        if self.regularize_bias:
            raise ValueError(
                "regularize_bias=True: balancing would change the biases' weight decay; the authors "
                "disable it too (use regularize_bias=False to balance)"
            )
        return layerwise_balance_(self.pairs)

    def path_norms(self) -> list[Tensor]:
        """:math:`P_g` of every pair (0-dim float64 tensors, no host sync); see :func:`path_norms`."""
        return path_norms(self.pairs)

    @torch.no_grad()
    def penalty(self) -> Tensor:
        r""":math:`\sum_g \lambda_g P_g + \sum \tfrac{\zeta}{2}\lVert\theta_{other}\rVert^2` (float64, 0-dim).

        λ of each pair is its ``V`` group's; ζ = ``other_weight_decay`` (None: λ) of each weight in no
        pair. This is the rebalanced weight-decay term: for balanced units
        :math:`\tfrac\lambda2(\lVert w_k\rVert^2 + \lVert v_k\rVert^2) = \lambda \lVert w_k\rVert\lVert v_k\rVert`.
        """
        group_of = self._group_of()
        dev = self.pairs[0].w.device
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for p, pn in zip(self.pairs, self.path_norms()):
            total = total + float(group_of[id(p.v)]["lam"]) * pn.to(dev)
        for g in self.param_groups:
            zeta = g["lam"] if g["other_weight_decay"] is None else g["other_weight_decay"]
            for t in g["params"]:
                if t.ndim >= 2 and id(t) not in self._paired and zeta:
                    total = total + 0.5 * zeta * t.detach().double().square().sum().to(dev)
        return total

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_stepped", set())


PathProx.__doc__ = (PathProx.__doc__ or "").replace("{check_finite}", _check_finite_doc)


def _check_pairs(pairs: Sequence[PathProxPair]) -> None:
    seen: dict[int, str] = {}
    for p in pairs:
        if p.w.ndim < 2 or p.v.ndim < 2:
            raise ValueError(f"pair ({p.w_name!r}, {p.v_name!r}): w and v must be weights with ndim >= 2")
        units = p.w.shape[0]
        if p.v.shape[1] != units * p.block:
            raise ValueError(
                f"pair ({p.w_name!r}, {p.v_name!r}): v has {p.v.shape[1]} input channels, expected "
                f"{units} units × block {p.block}"
            )
        if p.w_bias is not None and tuple(p.w_bias.shape) != (units,):
            raise ValueError(f"pair ({p.w_name!r}, {p.v_name!r}): w_bias must have shape ({units},)")
        for t, name in ((p.w, p.w_name), (p.v, p.v_name)):
            if id(t) in seen:
                raise ValueError(
                    f"PathProx pairs must be disjoint: the weight of {name!r} is in two pairs ({seen[id(t)]!r})"
                )
            seen[id(t)] = name
