"""How a tensor splits into groups, parameter selection, and sparsity statistics (torch only).

Group convention: ``dim="in"`` makes one group per *input* channel/feature of the module that owns
the weight, ``dim="out"`` one group per *output* channel/filter/neuron. For a weight shaped
``[out, in, *k]`` (dense conv, linear) these are the slices ``x[:, j, ...]`` and ``x[j, ...]``; for
transposed, grouped and depthwise convs, LSTM/GRU gates and embeddings the module's layout says which
entries belong together (:func:`group_blocks`, :func:`module_layout`). Every grouping is a reshape
``[G, A, B, K]`` of the tensor with groups ``[g, :, b, :]``, so group reductions never copy.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_REGULARIZED_TYPES",
    "LAYOUT_KINDS",
    "STAT_KEYS",
    "GroupDim",
    "PathProxPair",
    "UnitPair",
    "active_units",
    "check_groupable",
    "from_group_view",
    "group_blocks",
    "group_norms",
    "group_reduce_dims",
    "group_size",
    "group_view",
    "model_sparsity",
    "module_layout",
    "num_groups",
    "param_groups_regularized",
    "param_layouts",
    "pathprox_pairs",
    "parse_layout",
    "plain_form",
    "select_parameters",
    "sparsity_ratios",
    "sum_stats",
    "tensor_stats",
    "unit_pairs",
    "unit_stats",
]

GroupDim = Literal["in", "out"]

#: Layout kinds a ``layout`` string may name (see :func:`group_blocks`).
LAYOUT_KINDS = ("conv", "conv_transpose", "gates", "embedding")


def parse_layout(layout: str | None) -> tuple[str, int] | None:
    """``(kind, n)`` of a layout string (``None``: the plain tensor layout); ``ValueError`` otherwise.

    Layouts are plain strings so that they travel in regularizer specs, param groups and
    ``weights_only`` checkpoints: ``"conv:G"`` (a convolution with ``groups=G``, weight
    ``[out, in/G, *k]``), ``"conv_transpose:G"`` (weight ``[in, out/G, *k]``), ``"gates:N"`` (``N``
    gate blocks stacked along dim 0, as in ``nn.LSTM`` (4) and ``nn.GRU`` (3)) and ``"embedding"``.

    Example:
        >>> parse_layout("conv_transpose:2"), parse_layout(None)
        (('conv_transpose', 2), None)
    """
    if layout is None:
        return None
    if not isinstance(layout, str):
        raise ValueError(f"layout must be None or a string such as 'conv:4', got {layout!r}")
    kind, sep, num = layout.partition(":")
    if kind not in LAYOUT_KINDS:
        raise ValueError(
            f"unknown layout {layout!r}: the kind must be one of {', '.join(LAYOUT_KINDS)} "
            "(e.g. 'conv:4', 'conv_transpose:1', 'gates:4', 'embedding'), or None for the plain layout"
        )
    if kind == "embedding":
        if sep:
            raise ValueError(f"layout {layout!r}: 'embedding' takes no number")
        return kind, 1
    if not num.isdigit() or int(num) < 1:
        raise ValueError(f"layout {layout!r}: write {kind}:<int >= 1>, e.g. '{kind}:2'")
    return kind, int(num)


def group_blocks(
    shape: Tensor | tuple[int, ...], dim: str, layout: str | None = None, name: str = "parameter"
) -> tuple[int, int, int, int]:
    """``(G, A, B, K)`` such that the groups are the slices ``x.reshape(G, A, B, K)[g, :, b, :]``.

    Every grouping of this module is of this form: group index ``g·B + b``, ``A·K`` entries each
    (``w_g = sqrt(A·K)`` under ``weighting="sqrt"``). With ``layout=None`` the tensor's own layout:
    ``dim="in"`` is ``x[:, j, ...]`` (``(1, out, in, k)``) and ``dim="out"`` is ``x[j, ...]``
    (``(out, 1, 1, k)``). With a module layout, ``dim`` means the module's input channel/feature or its
    output channel/unit:

    * ``"conv:G"`` (weight ``[G·o, i, *k]``): ``dim="in"`` = input channel ``c = q·i + l``, the rows of
      its group ``q`` in column ``l`` (``(G, o, i, k)``); ``dim="out"`` = filter ``j``. Depthwise
      (``i = 1``): input channel ``c`` owns the ``o`` filters ``x[c·o:(c+1)·o]``; with ``o = 1`` both
      groupings are the per-channel filter.
    * ``"conv_transpose:G"`` (weight ``[G·i, o, *k]``): ``dim="in"`` = input channel ``c``, the slice
      ``x[c]``; ``dim="out"`` = output channel ``d = q·o + l``, column ``l`` of group ``q``'s rows
      (``(G, i, o, k)``).
    * ``"gates:N"`` (weight ``[N·h, in]``): ``dim="out"`` = hidden unit ``j`` across its gates, rows
      ``j, h + j, …, (N−1)·h + j`` (``(1, N, h, in)``); ``dim="in"`` = input feature ``j`` of every
      gate, column ``j``.
    * ``"embedding"`` (weight ``[num_embeddings, d]``): ``dim="out"`` = embedding coordinate ``j``,
      column ``j``; ``dim="in"`` is refused (the input is a token index, not a feature).

    Raises ``ValueError`` naming ``name`` when the grouping does not fit the shape or the layout.

    Example:
        >>> group_blocks((8, 2, 3, 3), "in", "conv:2")  # Conv2d(4, 8, 3, groups=2)
        (2, 4, 2, 9)
    """
    shape = tuple(shape.shape) if isinstance(shape, Tensor) else tuple(shape)
    if dim not in ("in", "out"):
        raise ValueError(f"group dim must be 'in' or 'out', got {dim!r}")
    parsed = parse_layout(layout)
    kind, n = parsed if parsed is not None else ("plain", 1)
    rest = math.prod(shape[2:])
    if kind == "embedding":
        if dim == "in" or len(shape) != 2:
            raise ValueError(
                f"{name} is an embedding table (shape {shape}): its rows are token indices, not input "
                "features, so dim='in' has no input-channel slice; use dim='out' (one group per "
                "embedding coordinate, the column weight[:, j]) or an elementwise regularizer (L1)"
            )
        return 1, shape[0], shape[1], 1
    need = 2 if dim == "in" or kind in ("conv", "conv_transpose") else 1
    if len(shape) < need:
        raise ValueError(
            f"grouping dim={dim!r} needs a tensor with at least {need} dimensions "
            f"([out, in, *k] for conv, [out, in] for linear/LSTM), got shape {shape}"
            + (f" for {name}" if name != "parameter" else "")
            + "; exclude this parameter from the regularized set or use an elementwise regularizer"
        )
    if kind != "plain" and shape[0] % n:
        raise ValueError(
            f"{name} (shape {shape}) does not fit layout {layout!r}: dim 0 ({shape[0]}) is not a "
            f"multiple of {n}; give the module's own layout (structure.module_layout) or layout=None"
        )
    if kind == "gates":
        if dim == "out":
            return 1, n, shape[0] // n, math.prod(shape[1:])
        kind = "plain"
    if kind == "conv" and dim == "in":
        return n, shape[0] // n, shape[1], rest
    if kind == "conv_transpose":
        if dim == "in":
            return shape[0], 1, 1, math.prod(shape[1:])
        return n, shape[0] // n, shape[1], rest
    if dim == "out":  # plain, and conv filters
        return shape[0], 1, 1, math.prod(shape[1:])
    return 1, shape[0], shape[1], rest


def plain_form(
    shape: Tensor | tuple[int, ...], dim: str, layout: str | None = None
) -> tuple[tuple[int, ...], str] | None:
    """``(view_shape, plain_dim)`` when the grouping is a plain grouping of ``x.reshape(view_shape)``
    (no gather needed), else ``None`` (grouped convs with several filters per group, ``groups > 1``).

    Example:
        >>> plain_form((4, 6), "out", "gates:2")  # hidden unit j = rows j and 2 + j
        ((2, 2, 6), 'in')
    """
    G, A, B, K = group_blocks(shape, dim, layout)
    if G == 1:
        return (A, B, K), "in"
    if A == 1:
        return (G * B, K), "out"
    return None


def group_view(x: Tensor, dim: str, layout: str | None = None) -> Tensor:
    """``x`` as ``[num_groups, group_size]``, one group per row (a view when possible, else a copy).

    Example:
        >>> x = torch.arange(8.0).reshape(4, 2)  # gates:2 of 2 hidden units: rows (0, 2) and (1, 3)
        >>> group_view(x, "out", "gates:2")
        tensor([[0., 1., 4., 5.],
                [2., 3., 6., 7.]])
    """
    G, A, B, K = group_blocks(x, dim, layout)
    x4 = x.reshape(G, A, B, K)
    if A == 1:
        return x4.reshape(G * B, K)
    return x4.permute(0, 2, 1, 3).reshape(G * B, A * K)


def from_group_view(g: Tensor, like: Tensor, dim: str, layout: str | None = None) -> Tensor:
    """Inverse of :func:`group_view`: ``g`` (``[num_groups, group_size]``) back in ``like``'s shape.

    Example:
        >>> x = torch.randn(6, 3, 2)
        >>> torch.equal(from_group_view(group_view(x, "in", "conv:2"), x, "in", "conv:2"), x)
        True
    """
    G, A, B, K = group_blocks(like, dim, layout)
    return g.reshape(G, B, A, K).permute(0, 2, 1, 3).reshape(like.shape)


def group_norms(x: Tensor, dim: str, layout: str | None = None) -> Tensor:
    """Euclidean norm of every group, ``[num_groups]``, computed in ``x``'s dtype without a copy.

    Example:
        >>> group_norms(torch.tensor([[3.0, 0.0], [4.0, 1.0]]), "in")
        tensor([5., 1.])
    """
    G, A, B, K = group_blocks(x, dim, layout)
    return torch.linalg.vector_norm(x.reshape(G, A, B, K), dim=(1, 3)).reshape(G * B)


def check_groupable(
    x: Tensor | tuple[int, ...], dim: str, layout: str | None = None, name: str = "parameter"
) -> None:
    """Raise ``ValueError`` when ``dim`` is not a grouping or ``x`` cannot be split by it (under ``layout``)."""
    group_blocks(x, dim, layout, name)


def group_reduce_dims(ndim: int, dim: str) -> tuple[int, ...]:
    """Dimensions to reduce over (keepdim=True) to get one value per group (plain layout only)."""
    if dim == "out":
        return tuple(range(1, ndim))
    return (0, *range(2, ndim))


def num_groups(x: Tensor, dim: str, layout: str | None = None) -> int:
    """Number of groups of ``x`` under grouping ``dim`` (and ``layout``, see :func:`group_blocks`)."""
    G, _, B, _ = group_blocks(x, dim, layout)
    return G * B


def group_size(x: Tensor, dim: str, layout: str | None = None) -> int:
    """Number of entries in each group of ``x`` under grouping ``dim`` (and ``layout``)."""
    _, A, _, K = group_blocks(x, dim, layout)
    return A * K


# -- module layouts -------------------------------------------------------------------------------
_RNN_TENSOR = re.compile(r"^(weight|bias)_(ih|hh)_l\d+(_reverse)?$")


def module_layout(module: nn.Module, local_name: str) -> str | None:
    """The layout string of ``module``'s parameter ``local_name`` (see :func:`group_blocks`).

    ``ConvTranspose*`` weights → ``"conv_transpose:G"``; convolutions with ``groups = G > 1`` (grouped,
    depthwise) → ``"conv:G"``; ``LSTM``/``GRU`` ``weight_ih/hh``, ``bias_ih/hh`` → ``"gates:4"`` /
    ``"gates:3"``; ``Embedding``/``EmbeddingBag`` weights → ``"embedding"``; anything else (linear,
    dense conv, ``RNN``, LSTM projections ``weight_hr``) → ``None``, the plain layout.

    Example:
        >>> module_layout(nn.ConvTranspose2d(4, 6, 3, groups=2), "weight")
        'conv_transpose:2'
        >>> module_layout(nn.LSTM(3, 5), "weight_hh_l0"), module_layout(nn.Linear(3, 5), "weight")
        ('gates:4', None)
    """
    if isinstance(module, nn.modules.conv._ConvNd) and local_name == "weight":
        if module.transposed:
            return f"conv_transpose:{module.groups}"
        return f"conv:{module.groups}" if module.groups > 1 else None
    if isinstance(module, (nn.LSTM, nn.GRU)) and _RNN_TENSOR.match(local_name):
        return "gates:4" if isinstance(module, nn.LSTM) else "gates:3"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and local_name == "weight":
        return "embedding"
    return None


def _owner_layouts(model: nn.Module) -> dict[int, list[str | None]]:
    out: dict[int, list[str | None]] = {}
    for module in model.modules():
        for local, p in module.named_parameters(recurse=False):
            lay = module_layout(module, local)
            seen = out.setdefault(id(p), [])
            if lay not in seen:
                seen.append(lay)
    return out


def _resolve_owner_layout(
    layouts: Sequence[str | None], shape: tuple[int, ...], dim: str, name: str
) -> str | None:
    """The one layout of a (possibly shared) parameter for ``dim``; ``ValueError`` when owners disagree."""
    if len(layouts) <= 1:
        return layouts[0] if layouts else None
    blocks = set()
    for lay in layouts:
        try:
            blocks.add(group_blocks(shape, dim, lay, name))
        except ValueError:
            blocks.add(None)
    if len(blocks) > 1:
        raise ValueError(
            f"{name} is shared by modules whose dim={dim!r} groups differ (layouts {list(layouts)}); "
            "exclude it from the regularized set or regularize it elementwise (e.g. L1)"
        )
    return layouts[0]


def param_layouts(model: nn.Module, dim: str | None = None) -> dict[str, str | None]:
    """``{parameter name: layout}`` for every parameter of ``model`` (:func:`module_layout` of its owner).

    A parameter shared by several modules appears once, under its first name; with ``dim`` given,
    owners whose groupings differ raise ``ValueError`` naming the parameter (without ``dim``: the first
    owner's layout).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.ConvTranspose2d(4, 2, 2))
        >>> param_layouts(net)
        {'0.weight': 'conv:4', '0.bias': None, '1.weight': 'conv_transpose:1', '1.bias': None}
    """
    owners = _owner_layouts(model)
    return {
        n: (_resolve_owner_layout(owners[id(p)], tuple(p.shape), dim, n) if dim else owners[id(p)][0])
        for n, p in model.named_parameters()
    }


# -- parameter selection -------------------------------------------------------------------------
#: Module types whose weights are regularized by default (as in Huang & Lee, 2024: conv channel-wise,
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

    A grouped regularizer (``GroupLasso``) is resolved per module: each weight gets the layout of
    the module that owns it (:func:`module_layout`: transposed, grouped and depthwise convs, LSTM/GRU
    gates, embeddings), and there is one regularized group per layout, each with the regularizer
    carrying that ``layout`` (plain data in its spec, so checkpoints stay ``weights_only``).

    Example:
        >>> import torch.nn as nn
        >>> from lightning_prox.regularizers import L1
        >>> groups = param_groups_regularized(nn.Linear(3, 2), L1(1e-3))
        >>> [(g["param_names"], g["regularizer"]) for g in groups]
        [(['weight'], L1(lam=0.001)), (['bias'], None)]
    """
    selected, rest = select_parameters(model, include_types, include, exclude)
    groups = []
    for reg, chosen in _by_layout(model, regularizer, selected):
        groups.append(
            {
                "params": [p for _, p in chosen],
                "param_names": [n for n, _ in chosen],
                "regularizer": reg,
                **group_kwargs,
            }
        )
    if rest:
        groups.append(
            {"params": [p for _, p in rest], "param_names": [n for n, _ in rest], "regularizer": None}
        )
    return groups


def _takes_layout(regularizer: Any) -> bool:
    return (
        dataclasses.is_dataclass(regularizer)
        and getattr(regularizer, "dim", None) in ("in", "out")
        and any(f.name == "layout" for f in dataclasses.fields(regularizer))
    )


def _by_layout(
    model: nn.Module, regularizer: Any, selected: list[tuple[str, nn.Parameter]]
) -> list[tuple[Any, list[tuple[str, nn.Parameter]]]]:
    """(regularizer, parameters) per module layout, in order of first appearance; each tensor checked.

    A grouped regularizer (a dataclass with ``dim`` and ``layout`` fields, e.g. ``GroupLasso``) gets the
    layout of the module that owns each weight (:func:`module_layout`), one param group per layout, so
    that ``dim`` means the module's input/output channel whatever the tensor layout.
    """
    if not selected:
        return []
    if not _takes_layout(regularizer):
        if regularizer is not None and hasattr(regularizer, "check_param"):
            for name, p in selected:
                regularizer.check_param(tuple(p.shape), name)
        return [(regularizer, selected)]
    owners = _owner_layouts(model)
    given = regularizer.layout
    out: dict[str | None, tuple[Any, list[tuple[str, nn.Parameter]]]] = {}
    for name, p in selected:
        shape = tuple(p.shape)
        lay = _resolve_owner_layout(owners.get(id(p), [None]), shape, regularizer.dim, name)
        if given is not None and given != lay:
            raise ValueError(
                f"{name}: {type(regularizer).__name__}(layout={given!r}) but its module's layout is "
                f"{lay!r}; leave layout unset, the layout of each weight is taken from its module"
            )
        if lay not in out:
            out[lay] = (regularizer if lay == given else dataclasses.replace(regularizer, layout=lay), [])
        out[lay][0].check_param(shape, name)
        out[lay][1].append((name, p))
    return list(out.values())


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
def tensor_stats(
    x: Tensor, dim: str | None = None, rank: bool = False, layout: str | None = None
) -> dict[str, Tensor]:
    """Additive sparsity counts of one tensor, as int64 tensors on ``x``'s device (no host sync).

    Keys: ``zeros`` (exact zeros), ``numel``; with a grouping ``dim`` (``"in"``/``"out"``, under the
    module ``layout`` of :func:`group_blocks`): ``groups``, ``zero_groups`` (all-zero groups),
    ``zero_group_numel`` (entries inside all-zero groups, the numerator of the weighted group sparsity
    of Huang & Lee, 2024) and ``grouped_numel`` (its denominator); with ``rank=True`` and
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
        G, A, B, K = group_blocks(x, dim, layout)
        nz = (x != 0).reshape(G, A, B, K).sum(dim=(1, 3))
        zero_groups = (nz == 0).sum()
        n = G * B
        out["groups"] = torch.tensor(n, device=x.device)
        out["zero_groups"] = zero_groups
        out["zero_group_numel"] = zero_groups * (A * K)
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
    zero_group_numel/numel_grouped (Huang & Lee, 2024); ``low_rank`` = 1 − rank/full_rank (the
    fraction of rank removed, as in the public RAMDA code, ``ismoptgroup/RAMDA``);
    ``active_units`` = active_units/units (:func:`unit_stats`; the fraction of *active* units, so
    higher is denser, as PathProx reports it: Yang et al., 2022).
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
    named_params: Iterable[tuple[str, Tensor]],
    dim: str | None = "in",
    rank: bool = False,
    layouts: dict[str, str | None] | None = None,
) -> dict[str, float]:
    """Convenience: global sparsity ratios of the given (name, tensor) pairs as Python floats.

    Groups follow ``layouts[name]`` (e.g. :func:`param_layouts` of the model, so that the counts are
    those of the modules' channels; default: each tensor's own layout). Tensors that cannot be
    grouped by ``dim`` (fewer dimensions, or a layout that refuses it) count for unstructured sparsity
    only; the weighted group sparsity is over the grouped tensors. This host-syncs: use it for
    reports, not inside a training step.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     lin.weight[:, :2] = 0
        >>> model_sparsity([("w", lin.weight)])
        {'unstructured': 0.5, 'group': 0.5, 'group_weighted': 0.5}
        >>> up = nn.ConvTranspose2d(2, 3, 1)  # weight [in=2, out=3, 1, 1]
        >>> with torch.no_grad():
        ...     up.weight[:, 0] = 0  # output channel 0
        >>> named = list(up.named_parameters())[:1]
        >>> model_sparsity(named, "out", layouts=param_layouts(up))["group"]
        0.3333333333333333
    """
    stats = []
    for name, x in named_params:
        layout = (layouts or {}).get(name)
        d = dim
        if d is not None:
            try:
                check_groupable(x, d, layout)
            except ValueError:
                d = None
        stats.append(tensor_stats(x.detach(), d, rank=rank, layout=layout))
    if not stats:
        return {}
    return {k: float(v) for k, v in sparsity_ratios(sum_stats(stats)).items()}


# -- active units (PathProx: Yang et al., 2022) -----------------------------------------------------------
class UnitPair(NamedTuple):
    """Two consecutive weights with hidden units between them (the layer pairs of PathProx, Yang et al., 2022).

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
    its input nor its output weights are all exactly zero (an exact-zero test on the weights
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


from .coupling import coupled_channel_groups  # noqa: E402  (channel groups coupled across a network)

__all__ += ["coupled_channel_groups"]

# PathProx pairs live in their own module (re-exported here); imported last: it uses the helpers above
from ._pathprox_pairs import PathProxPair, pathprox_pairs  # noqa: E402
