"""How a tensor splits into groups, parameter selection, and sparsity statistics (torch only).

Group convention (DESIGN.md §3): for a weight shaped ``[out, in, *k]`` (conv), ``[out, in]``
(linear, LSTM), ``dim="in"`` makes one group per input channel/feature, the slice ``x[:, j, ...]``,
and ``dim="out"`` one group per filter/neuron, the slice ``x[j, ...]``.

Group reductions never copy: they reduce over :func:`group_reduce_dims` with ``keepdim=True`` so the
result broadcasts back against the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_REGULARIZED_TYPES",
    "STAT_KEYS",
    "GroupDim",
    "UnitPair",
    "active_units",
    "check_groupable",
    "group_reduce_dims",
    "group_size",
    "model_sparsity",
    "num_groups",
    "param_groups_regularized",
    "select_parameters",
    "sparsity_ratios",
    "sum_stats",
    "tensor_stats",
    "unit_pairs",
    "unit_stats",
]

GroupDim = Literal["in", "out"]


def check_groupable(x: Tensor | tuple[int, ...], dim: str) -> None:
    """Raise ``ValueError`` when ``dim`` is not a grouping or ``x`` cannot be split by it."""
    shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(x)
    if dim not in ("in", "out"):
        raise ValueError(f"group dim must be 'in' or 'out', got {dim!r}")
    need = 2 if dim == "in" else 1
    if len(shape) < need:
        raise ValueError(
            f"grouping dim={dim!r} needs a tensor with at least {need} dimensions "
            f"([out, in, *k] for conv, [out, in] for linear/LSTM), got shape {shape}; "
            "exclude this parameter from the regularized set or use an elementwise regularizer"
        )


def group_reduce_dims(ndim: int, dim: str) -> tuple[int, ...]:
    """Dimensions to reduce over (keepdim=True) to get one value per group."""
    if dim == "out":
        return tuple(range(1, ndim))
    return (0, *range(2, ndim))


def num_groups(x: Tensor, dim: str) -> int:
    """Number of groups of ``x`` under grouping ``dim``."""
    check_groupable(x, dim)
    return x.shape[0] if dim == "out" else x.shape[1]


def group_size(x: Tensor, dim: str) -> int:
    """Number of entries in each group of ``x`` under grouping ``dim``."""
    n = num_groups(x, dim)
    return x.numel() // n if n else 0


# -- parameter selection -------------------------------------------------------------------------
#: Module types whose weights are regularized by default (digest 003 §3.1: conv channel-wise,
#: linear and LSTM input-wise). Biases, norm layers and embeddings are never selected by default.
DEFAULT_REGULARIZED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.LSTM,
    nn.GRU,
    nn.RNN,
)

_RNN_WEIGHT = re.compile(r"^weight_(ih|hh)_l\d+(_reverse)?$")


def _type_matches(module: nn.Module, types: Sequence[type[nn.Module] | str]) -> bool:
    for t in types:
        if isinstance(t, str):
            if type(module).__name__ == t or f"{type(module).__module__}.{type(module).__name__}" == t:
                return True
        elif isinstance(module, t):
            return True
    return False


def _is_default_weight(module: nn.Module, local_name: str) -> bool:
    if isinstance(module, nn.RNNBase):
        return bool(_RNN_WEIGHT.match(local_name))
    return local_name == "weight"


def _compile(pattern: str | Sequence[str] | None, what: str) -> list[re.Pattern[str]]:
    if pattern is None:
        return []
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    out = []
    for p in pats:
        try:
            out.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") from None
    return out


def select_parameters(
    model: nn.Module,
    include_types: Sequence[type[nn.Module] | str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Split a model's trainable parameters into (regularized, unregularized), each as (name, param).

    Selected by default: the weights of modules of ``include_types`` (default
    :data:`DEFAULT_REGULARIZED_TYPES`: conv, linear, LSTM/GRU/RNN weight matrices). Then every
    parameter whose full name matches an ``include`` regex (``re.search``) is added, and every one
    matching an ``exclude`` regex removed. Biases, norm layers and embeddings stay unregularized unless
    named by ``include``. Shared (tied) parameters appear once, under their first name, and are
    selected by type only when every module that owns them selects them.

    Args:
        model: the module.
        include_types: module classes, or their class names (``"Conv2d"``) for YAML configs.
        include: regex(es) of parameter names to add.
        exclude: regex(es) of parameter names to remove (wins over everything else).

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
        >>> reg, rest = select_parameters(net, exclude=r"^3\\.")
        >>> [n for n, _ in reg], [n for n, _ in rest]
        (['0.weight'], ['0.bias', '1.weight', '1.bias', '3.weight', '3.bias'])
    """
    types = tuple(DEFAULT_REGULARIZED_TYPES if include_types is None else include_types)
    for t in types:
        if not isinstance(t, str) and not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise ValueError(f"include_types entries must be nn.Module classes or class names, got {t!r}")
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    # A parameter shared by several modules (tied weights) is selected by type only when every
    # owner selects it: a tied embedding/output matrix stays unregularized unless named by `include`.
    chosen: set[int] = set()
    vetoed: set[int] = set()
    for module in model.modules():
        typed = _type_matches(module, types)
        for local, p in module.named_parameters(recurse=False):
            (chosen if typed and _is_default_weight(module, local) else vetoed).add(id(p))
    chosen -= vetoed
    selected: list[tuple[str, nn.Parameter]] = []
    rest: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        take = id(p) in chosen or any(r.search(name) for r in inc)
        if take and any(r.search(name) for r in exc):
            take = False
        (selected if take else rest).append((name, p))
    return selected, rest


def param_groups_regularized(
    model: nn.Module,
    regularizer: Any,
    *,
    include_types: Sequence[type[nn.Module] | str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    **group_kwargs: Any,
) -> list[dict[str, Any]]:
    """Param groups for a proximal optimizer: the selected weights with ``regularizer``, the rest without.

    Each group also carries ``"param_names"`` (plain strings, so checkpoints stay ``weights_only``-safe)
    for per-layer logging. ``group_kwargs`` (e.g. ``lr``) go into the regularized group only. Empty
    groups are dropped. ``regularizer.check_param`` is called on every selected tensor so that a
    grouping that does not fit fails here, naming the parameter.

    Example:
        >>> import torch.nn as nn
        >>> from lightning_prox.regularizers import L1
        >>> groups = param_groups_regularized(nn.Linear(3, 2), L1(1e-3))
        >>> [(g["param_names"], g["regularizer"]) for g in groups]
        [(['weight'], L1(lam=0.001)), (['bias'], None)]
    """
    selected, rest = select_parameters(model, include_types, include, exclude)
    if regularizer is not None and hasattr(regularizer, "check_param"):
        for name, p in selected:
            regularizer.check_param(tuple(p.shape), name)
    groups = []
    if selected:
        groups.append(
            {
                "params": [p for _, p in selected],
                "param_names": [n for n, _ in selected],
                "regularizer": regularizer,
                **group_kwargs,
            }
        )
    if rest:
        groups.append(
            {"params": [p for _, p in rest], "param_names": [n for n, _ in rest], "regularizer": None}
        )
    return groups


# -- statistics (additive counts: reduce by sum, divide at the end) -------------------------------
STAT_KEYS = (
    "zeros",
    "numel",
    "groups",
    "zero_groups",
    "zero_group_numel",
    "grouped_numel",
    "rank",
    "full_rank",
    "units",
    "active_units",
)


@torch.no_grad()
def tensor_stats(x: Tensor, dim: str | None = None, rank: bool = False) -> dict[str, Tensor]:
    """Additive sparsity counts of one tensor, as int64 tensors on ``x``'s device (no host sync).

    Keys: ``zeros`` (exact zeros), ``numel``; with a grouping ``dim`` (``"in"``/``"out"``):
    ``groups``, ``zero_groups`` (all-zero groups), ``zero_group_numel`` (entries inside all-zero groups,
    the numerator of the weighted group sparsity of digest 003 §3.2) and ``grouped_numel`` (its
    denominator); with ``rank=True`` and
    ``x.ndim >= 2``: ``rank`` (numerical rank of ``x`` viewed as ``[out, -1]``, torch's
    ``matrix_rank`` default tolerance) and ``full_rank`` (min of the two sizes).

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
        >>> {k: int(v) for k, v in tensor_stats(x, dim="in").items()}
        {'zeros': 2, 'numel': 4, 'groups': 2, 'zero_groups': 1, 'zero_group_numel': 2, 'grouped_numel': 4}
    """
    out = {
        "zeros": (x == 0).sum(),
        "numel": torch.tensor(x.numel(), device=x.device),
    }
    if dim is not None:
        check_groupable(x, dim)
        nz = (x != 0).sum(dim=group_reduce_dims(x.ndim, dim))
        zero_groups = (nz == 0).sum()
        n = num_groups(x, dim)
        out["groups"] = torch.tensor(n, device=x.device)
        out["zero_groups"] = zero_groups
        out["zero_group_numel"] = zero_groups * (x.numel() // n if n else 0)
        out["grouped_numel"] = out["numel"].clone()
    if rank and x.ndim >= 2:
        m = x.detach().reshape(x.shape[0], -1).float()
        out["rank"] = torch.linalg.matrix_rank(m).to(torch.int64)
        out["full_rank"] = torch.tensor(min(m.shape), device=x.device)
    return out


def sum_stats(stats: Iterable[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Sum count dicts key by key (keys missing from a dict count as absent, not zero)."""
    total: dict[str, Tensor] = {}
    for s in stats:
        for k, v in s.items():
            total[k] = total[k] + v if k in total else v.clone()
    return total


def sparsity_ratios(counts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn (summed) counts into the logged ratios (float tensors), for whichever keys are present.

    ``unstructured`` = zeros/numel; ``group`` = zero_groups/groups; ``group_weighted`` =
    zero_group_numel/numel_grouped; ``low_rank`` = 1 − rank/full_rank (digest 003 code supplement E);
    ``active_units`` = active_units/units (:func:`unit_stats`; the fraction of *active* units, so
    higher is denser, as PathProx reports it, digest 004 §3.5).
    """

    def ratio(a: Tensor, b: Tensor) -> Tensor:
        return a.double() / b.double().clamp_min(1)

    out = {}
    if "zeros" in counts:
        out["unstructured"] = ratio(counts["zeros"], counts["numel"])
    if "groups" in counts:
        out["group"] = ratio(counts["zero_groups"], counts["groups"])
        out["group_weighted"] = ratio(counts["zero_group_numel"], counts["grouped_numel"])
    if "rank" in counts:
        out["low_rank"] = 1.0 - ratio(counts["rank"], counts["full_rank"])
    if "units" in counts:
        out["active_units"] = ratio(counts["active_units"], counts["units"])
    return out


def model_sparsity(
    named_params: Iterable[tuple[str, Tensor]], dim: str | None = "in", rank: bool = False
) -> dict[str, float]:
    """Convenience: global sparsity ratios of the given (name, tensor) pairs as Python floats.

    Tensors that cannot be grouped by ``dim`` (fewer dimensions) count for unstructured sparsity
    only; the weighted group sparsity is over the grouped tensors. This host-syncs: use it for
    reports, not inside a training step.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     lin.weight[:, :2] = 0
        >>> model_sparsity([("w", lin.weight)])
        {'unstructured': 0.5, 'group': 0.5, 'group_weighted': 0.5}
    """
    stats = []
    for _, x in named_params:
        d = dim if dim is not None and x.ndim >= (2 if dim == "in" else 1) else None
        stats.append(tensor_stats(x.detach(), d, rank=rank))
    if not stats:
        return {}
    return {k: float(v) for k, v in sparsity_ratios(sum_stats(stats)).items()}


# -- active units (digest 004: PathProx) -----------------------------------------------------------
class UnitPair(NamedTuple):
    """Two consecutive weights with hidden units between them (digest 004 §1.3, §1.8).

    Unit ``k`` has input weights ``w[k]`` (row ``k`` of a linear weight, filter ``k`` of a conv) and
    output weights ``v[:, k]`` (column ``k`` of the next linear weight, input slice ``[:, k]`` of the
    next conv). When a conv feeds a linear layer through a flatten, unit ``k`` owns the ``block``
    consecutive input columns ``v[:, k*block:(k+1)*block]`` (channel-major flatten); else ``block=1``.
    """

    name: str  #: parameter name of ``w`` (the layer whose outputs are the units)
    next_name: str  #: parameter name of ``v``
    w: Tensor
    v: Tensor
    block: int = 1


@torch.no_grad()
def unit_stats(w: Tensor, v: Tensor, block: int = 1) -> dict[str, Tensor]:
    r"""Additive counts of the hidden units between ``w`` and ``v``, as int64 tensors (no host sync).

    A unit is active when :math:`\lVert w_k \rVert_2 \cdot \lVert v_k \rVert_2 > 0`, i.e. when neither
    its input nor its output weights are all exactly zero (digest 004 §4.2: exact-zero test, weights
    only, biases not included). Keys: ``units`` (number of units, ``w.shape[0]``) and ``active_units``.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]])  # unit 1 has no input weights
        >>> v = torch.tensor([[1.0, 1.0, 0.0]])  # unit 2 has no output weights
        >>> {k: int(n) for k, n in unit_stats(w, v).items()}
        {'units': 3, 'active_units': 1}
    """
    units = w.shape[0]
    w_on = (w.detach() != 0).reshape(units, -1).any(dim=1)
    vv = (v.detach() != 0).reshape(v.shape[0], units, block, -1)
    v_on = vv.any(dim=3).any(dim=2).any(dim=0)
    return {
        "units": torch.tensor(units, device=w.device),
        "active_units": (w_on & v_on).sum(),
    }


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: modules that act on each channel/feature separately (or pool over space), so that they keep a
#: hidden unit's identity between two weights
_CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_CHANNELWISE_FUNCTIONS = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "elu",
    "gelu",
    "silu",
    "mish",
    "sigmoid",
    "tanh",
    "hardtanh",
    "hardswish",
    "batch_norm",
    "dropout",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "contiguous",
}
_FLATTENS = {"flatten", "view", "reshape"}


def _shape_query(node: Any) -> bool:
    """``x.size(0)``, ``x.dim()``, ``x.shape``: reads metadata, not the values (``x.view(x.size(0), -1)``)."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    return node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",)


def _channelwise(module: nn.Module) -> bool:
    if isinstance(module, nn.GroupNorm):  # one channel per group: statistics of that channel only
        return module.num_groups == module.num_channels
    return isinstance(module, _CHANNELWISE_MODULES)


def _weighted(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(module, (nn.Linear, *_CONV)) and isinstance(w, Tensor)


def _traced_pairs(root: nn.Module, prefix: str) -> list[UnitPair]:
    import torch.fx

    graph = torch.fx.Tracer().trace(root)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        first = root.get_submodule(node.target)
        if not _weighted(first):
            continue
        cur, flattened = node, False
        while True:  # follow the single path of this layer's output
            users = [u for u in cur.users if not _shape_query(u)]
            if len(users) != 1:
                break
            (nxt,) = users
            if not nxt.args or nxt.args[0] is not cur:
                break
            if nxt.op == "call_module":
                mod = root.get_submodule(nxt.target)
                if isinstance(mod, nn.Flatten):
                    flattened = flattened or (mod.start_dim == 1 and mod.end_dim == -1)
                elif not _channelwise(mod):
                    if _weighted(mod) and calls[nxt.target] == 1:
                        pair = _pair(first, mod, flattened)
                        if pair is not None:
                            w_name, v_name = f"{prefix}{node.target}.weight", f"{prefix}{nxt.target}.weight"
                            pairs.append(UnitPair(w_name, v_name, first.weight, mod.weight, pair))
                    break
            elif nxt.op in ("call_function", "call_method"):
                name = nxt.target if isinstance(nxt.target, str) else getattr(nxt.target, "__name__", "")
                if name in _FLATTENS:
                    flattened = True
                elif name not in _CHANNELWISE_FUNCTIONS:
                    break
            else:
                break
            cur = nxt
    return pairs


def _pair(first: nn.Module, second: nn.Module, flattened: bool) -> int | None:
    """``block`` of the pair (first → second), or None when the shapes do not line up channel to channel."""
    units = first.weight.shape[0]
    if isinstance(second, _CONV):
        ok = isinstance(first, _CONV) and not flattened and second.groups == 1
        return 1 if ok and second.weight.shape[1] == units else None
    fan_in = second.weight.shape[1]
    if fan_in == units:
        return 1
    if isinstance(first, _CONV) and flattened and fan_in % units == 0:
        return fan_in // units
    return None


def unit_pairs(model: nn.Module) -> list[UnitPair]:
    """The (linear/conv → linear/conv) weight pairs of ``model`` with hidden units between them.

    Found by tracing the forward pass (``torch.fx``): a pair is a ``Linear``/``Conv{1,2,3}d`` whose output
    reaches the next ``Linear``/``Conv`` only through channel-wise operations (activations, batch or
    instance norm, group norm with one channel per group, dropout, pooling, flatten) and feeds nothing
    else (a group or layer norm mixes channels: a unit with zero input weights is then not constant). Outputs that also go elsewhere (a residual
    add, a concatenation) have no unit pair: a channel of a residual stream stays alive through the
    skip connection. Grouped/depthwise second convs, transposed convs and layers called more than once
    are skipped. When the whole model cannot be traced, each child is traced on its own.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> [(p.name, p.next_name) for p in unit_pairs(net)]
        [('0.weight', '2.weight'), ('2.weight', '4.weight')]
    """

    def visit(module: nn.Module, prefix: str) -> list[UnitPair]:
        try:
            return _traced_pairs(module, prefix)
        except Exception:  # untraceable forward (data-dependent control flow, ...): try the children
            return [p for n, child in module.named_children() for p in visit(child, f"{prefix}{n}.")]

    return visit(model, "")


def active_units(model: nn.Module) -> dict[str, int]:
    """Convenience: ``{"units": ..., "active_units": ...}`` over all :func:`unit_pairs` of ``model``.

    This host-syncs: use it for reports, not inside a training step.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> with torch.no_grad():
        ...     net[2].weight[:, 0] = 0  # unit 0 has no output weights
        >>> active_units(net)
        {'units': 3, 'active_units': 2}
    """
    stats = [unit_stats(p.w, p.v, p.block) for p in unit_pairs(model)]
    total = sum_stats(stats) if stats else {"units": torch.tensor(0), "active_units": torch.tensor(0)}
    return {k: int(v) for k, v in total.items()}
