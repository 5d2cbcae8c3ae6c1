"""Disjoint, positively homogeneous layer pairs for PathProx (Yang et al., 2022), found by ``torch.fx``.

Re-exported by :mod:`lightning_prox.structure`; torch only. :func:`~lightning_prox.structure.unit_pairs`
finds *overlapping* consecutive pairs for counting (batch norm, GELU... accepted as channel-wise);
PathProx needs *disjoint* pairs whose units are positively homogeneous in their input weights, so
that ``(v/α)·σ((αw)ᵀx) = v·σ(wᵀx)`` for every α > 0 (Yang et al., 2022, Definition 3.1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

# structure.py re-exports this module at its end; its helpers are imported where they are used, so that
# either module may be imported first

__all__ = ["PathProxPair", "pathprox_pairs"]


class PathProxPair(NamedTuple):
    """One PathProx layer pair: the units are the output channels of ``w_module``.

    Unit ``k`` has input weights ``w[k]`` (row ``k`` / filter ``k``) with bias ``w_bias[k]`` and output
    weights ``v[:, k]`` (a column of a linear ``v``, the input slice of a conv ``v``) or, behind a
    channel-major flatten, the ``block`` columns ``v[:, k*block:(k+1)*block]``. Pairs with the same
    ``chain`` are consecutive in the network with only positively homogeneous ops between them, so
    layer-wise balancing may rescale them together.
    """

    w_module: nn.Module  #: the layer whose output channels are the units
    v_module: nn.Module  #: the next layer (the units' output weights)
    w_name: str  #: qualified module name of ``w_module``
    v_name: str  #: qualified module name of ``v_module``
    w: Tensor  #: ``w_module.weight``
    w_bias: Tensor | None  #: ``w_module.bias`` (None without bias)
    v: Tensor  #: ``v_module.weight``
    v_bias: Tensor | None  #: ``v_module.bias``
    block: int = 1  #: input columns of ``v`` per unit (a conv → flatten → linear pair); else 1
    chain: int = 0  #: balancing chain index


#: positively homogeneous, channel-wise: may sit inside a pair
_HOMOGENEOUS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)
_HOMOGENEOUS_FUNCTIONS = {
    "relu",
    "relu_",
    "leaky_relu",
    "leaky_relu_",
    "prelu",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
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
#: keep the unit's identity but are not positively homogeneous (or, for norms, make the unit
#: scale-invariant in w): refused inside a pair, they split a balancing chain at a junction
_REFUSED_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,  # ReLU6 is a Hardtanh
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
)
_REFUSED_FUNCTIONS = {
    "batch_norm",
    "instance_norm",
    "group_norm",
    "layer_norm",
    "gelu",
    "silu",
    "elu",
    "celu",
    "selu",
    "mish",
    "sigmoid",
    "tanh",
    "hardtanh",
    "relu6",
    "hardswish",
    "hardsigmoid",
    "softplus",
}

_HINT = (
    "a unit must be positively homogeneous in its input weights (ReLU, LeakyReLU, PReLU, max/avg "
    "pooling, dropout, identity). Remove it, pass pairs explicitly, or use strict=False to leave these "
    "layers out."
)


class _Link(NamedTuple):
    a: str  # qualified module names
    b: str
    block: int
    refused: tuple[str, str] | None  # (op name, op type) of the first non-homogeneous op, or None


def _layer(module: nn.Module) -> bool:
    """A Linear/Conv{1,2,3}d with a weight and groups = 1 (grouped and transposed convs end chains)."""
    from .structure import _CONV, _weighted

    return _weighted(module) and (not isinstance(module, _CONV) or module.groups == 1)


def _fn_name(node: Any) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", "")


def _flatten_ok(node: Any, cur: Any) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)`` / ``reshape``: channel-major."""
    name = _fn_name(node)
    rest = list(node.args[1:])
    if name == "flatten":
        start = rest[0] if rest else node.kwargs.get("start_dim", 0)
        end = rest[1] if len(rest) > 1 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    if len(rest) != 2 or rest[1] != -1:
        return False
    first = rest[0]
    return (
        getattr(first, "op", None) == "call_method" and first.target == "size" and first.args[:2] == (cur, 0)
    )


def _traced_links(root: nn.Module, prefix: str) -> tuple[list[str], list[_Link], dict[str, nn.Module]]:
    """(layers in forward order, links between them, {name: module}) of one traced module."""
    import torch.fx

    from .structure import _CONV, _pair, _shape_query

    graph = torch.fx.Tracer().trace(root)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    layers: list[str] = []
    links: list[_Link] = []
    modules: dict[str, nn.Module] = {}
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        first = root.get_submodule(node.target)
        if not _layer(first):
            continue
        a = f"{prefix}{node.target}"
        layers.append(a)
        modules[a] = first
        cur, flattened, refused = node, False, None
        while True:  # follow the single path of this layer's output
            users = [u for u in cur.users if not _shape_query(u)]
            if len(users) != 1:
                break
            (nxt,) = users
            if (
                not nxt.args
                or nxt.args[0] is not cur
                or any(isinstance(v, torch.fx.Node) for v in nxt.kwargs.values())
            ):
                break
            others = [x for x in nxt.args[1:] if isinstance(x, torch.fx.Node) and not _shape_query(x)]
            if nxt.op == "call_module":
                mod = root.get_submodule(nxt.target)
                if _layer(mod):
                    block = _pair(first, mod, flattened) if calls[nxt.target] == 1 else None
                    if block is not None:
                        links.append(_Link(a, f"{prefix}{nxt.target}", block, refused))
                    break
                if isinstance(mod, nn.Flatten):
                    if not (mod.start_dim == 1 and mod.end_dim == -1):
                        break
                    flattened = True
                elif isinstance(mod, nn.modules.dropout._DropoutNd) and not isinstance(
                    mod, (nn.AlphaDropout, nn.FeatureAlphaDropout)
                ):
                    pass
                elif isinstance(mod, _POOL_MODULES):
                    if flattened or not isinstance(first, _CONV):
                        break  # pooling over features (not space) would mix units
                elif isinstance(mod, _HOMOGENEOUS_MODULES):
                    pass
                elif isinstance(mod, _REFUSED_MODULES):
                    refused = refused or (f"{prefix}{nxt.target}", type(mod).__name__)
                else:
                    break  # unknown module: homogeneity cannot be verified
            elif nxt.op in ("call_function", "call_method"):
                name = _fn_name(nxt)
                if name in ("flatten", "view", "reshape"):
                    if not _flatten_ok(nxt, cur):
                        break
                    flattened = True
                elif "pool" in name and (flattened or not isinstance(first, _CONV)):
                    break  # pooling over features (not space) would mix units
                elif name in _HOMOGENEOUS_FUNCTIONS and (not others or name == "prelu"):
                    pass
                elif name in _REFUSED_FUNCTIONS:  # their other inputs are parameters/buffers (F.batch_norm)
                    refused = refused or (nxt.name, name)
                else:
                    break
            else:
                break
            cur = nxt
    return layers, links, modules


def _trace(model: nn.Module) -> tuple[list[str], list[_Link], dict[str, nn.Module]]:
    layers: list[str] = []
    links: list[_Link] = []
    modules: dict[str, nn.Module] = {}
    traced_any = False

    def visit(module: nn.Module, prefix: str) -> None:
        nonlocal traced_any
        try:
            got = _traced_links(module, prefix)
        except Exception:  # untraceable forward (data-dependent control flow, ...): try the children
            for n, child in module.named_children():
                visit(child, f"{prefix}{n}.")
            return
        traced_any = True
        layers.extend(got[0])
        links.extend(got[1])
        modules.update(got[2])

    visit(model, "")
    if not traced_any:
        raise ValueError(
            f"PathProx could not trace {type(model).__name__} or any of its children with torch.fx; "
            "pass pairs explicitly (a list of lightning_prox.structure.PathProxPair)"
        )
    return layers, links, modules


def _refusal(op: tuple[str, str], a: str, b: str) -> ValueError:
    return ValueError(
        f"PathProx: {op[0]!r} ({op[1]}) sits between {a!r} and {b!r}, the two layers of a PathProx pair; "
        + _HINT
    )


def _build(
    chosen: Sequence[tuple[str, str]], links: dict[str, _Link], modules: dict[str, nn.Module]
) -> list[PathProxPair]:
    """PathProxPairs in forward order with balancing chains: consecutive pairs whose junction is a
    homogeneous link share a chain."""
    out: list[PathProxPair] = []
    chain = -1
    prev_v: str | None = None
    for a, b in chosen:
        junction = links.get(prev_v) if prev_v is not None else None
        if junction is None or junction.b != a or junction.refused is not None:
            chain += 1
        wm, vm = modules[a], modules[b]
        out.append(PathProxPair(wm, vm, a, b, wm.weight, wm.bias, vm.weight, vm.bias, links[a].block, chain))
        prev_v = b
    return out


def pathprox_pairs(
    model: nn.Module, strict: bool = True, pairs: Sequence[tuple[str, str]] | None = None
) -> list[PathProxPair]:
    """The disjoint, positively homogeneous layer pairs of ``model`` for PathProx (Yang et al., 2022).

    The forward pass is traced with ``torch.fx`` (an untraceable model: each child on its own). A
    ``Linear``/``Conv{1,2,3}d`` (called once, ``groups = 1``) is **linked** to the next such layer
    when its output reaches it along a single path (one user at every hop; shape queries ignored)
    of unit-preserving ops and the shapes line up channel to channel (a conv → flatten → linear link
    gives each unit ``block`` input columns of the linear layer). Between two linked layers:

    - allowed (positively homogeneous): ReLU, LeakyReLU, PReLU, Identity, Dropout, max/avg and
      adaptive pooling, ``Flatten(1)`` / ``torch.flatten(x, 1)`` / ``x.view(x.size(0), -1)``,
      ``contiguous`` and their functional forms;
    - refused (unit-preserving but not homogeneous): batch/instance/group/layer norm, GELU, SiLU,
      ELU, CELU, SELU, Mish, Sigmoid, Tanh, Hardtanh, ReLU6, Hardswish, Hardsigmoid, Softplus;
    - anything else ends the chain: residual adds, concatenations, branches, layers called twice,
      grouped or transposed convs, unknown ops.

    Chains are maximal sequences of linked layers in forward order; pairs are taken greedily along
    each chain, ``(c0, c1), (c2, c3), …``, as the authors pair layers (``Leiay/PathProx``); an odd last
    layer stays outside every pair (PathProx gives it plain weight decay). With ``strict=True`` a
    refused op inside a pair raises ``ValueError`` naming it; ``strict=False`` cuts the chain at
    refused ops before pairing and warns once. A refused op at a junction between two pairs is
    allowed (it is not inside a unit) but starts a new balancing ``chain``.

    Args:
        model: the network.
        strict: refuse non-homogeneous ops inside a pair (``True``) or leave those layers out.
        pairs: ``[("fc1", "fc2"), ...]``: module names of manual pairs, checked the same way (each
            must be a link, without refused ops, and the pairs disjoint).

    Returns:
        ``list[PathProxPair]`` in forward order.

    Raises:
        ValueError: for a refused op inside a pair, a manual pair that is not a valid link, overlapping
            manual pairs, an untraceable model, or when no pair exists.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        ...                     nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [(p.w_name, p.v_name, p.chain) for p in pathprox_pairs(net)]
        [('0', '2', 0), ('4', '6', 0)]
    """
    layers, links_list, modules = _trace(model)
    links = {lk.a: lk for lk in links_list}
    if pairs is not None:
        chosen: list[tuple[str, str]] = []
        used: set[str] = set()
        for item in pairs:
            if not (
                isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)
            ):
                raise ValueError(f"pairs must hold (w_module_name, v_module_name) tuples, got {item!r}")
            a, b = item
            for n in (a, b):
                if n in used:
                    raise ValueError(f"PathProx pairs must be disjoint: {n!r} is in two pairs")
            lk = links.get(a)
            if lk is None or lk.b != b:
                raise ValueError(
                    f"({a!r}, {b!r}) is not a PathProx pair of {type(model).__name__}: the output of {a!r} "
                    f"must reach {b!r} only through channel-wise ops along a single path, both must be "
                    "Linear/Conv layers called once with groups=1, and the channels must line up"
                )
            if lk.refused is not None:
                raise _refusal(lk.refused, a, b)
            used.update((a, b))
            chosen.append((a, b))
        order = {n: i for i, n in enumerate(layers)}
        chosen.sort(key=lambda ab: order[ab[0]])
    else:
        incoming = {lk.b for lk in links_list}
        cut: list[str] = []
        chosen = []
        for start in layers:
            if start in incoming:
                continue
            chain = [start]
            while chain[-1] in links:
                chain.append(links[chain[-1]].b)
            segments: list[list[str]] = [[chain[0]]]
            for a, b in zip(chain, chain[1:]):
                if not strict and links[a].refused is not None:
                    cut.append(f"{links[a].refused[0]!r} ({links[a].refused[1]})")
                    segments.append([b])
                else:
                    segments[-1].append(b)
            for seg in segments:
                for a, b in zip(seg[0::2], seg[1::2]):
                    if links[a].refused is not None:
                        raise _refusal(links[a].refused, a, b)
                    chosen.append((a, b))
        if cut:
            warnings.warn(
                "pathprox_pairs(strict=False): the chains were cut at these non-homogeneous ops, whose "
                f"layers are paired around them or left out: {', '.join(cut)}",
                UserWarning,
                stacklevel=2,
            )
    if not chosen:
        raise ValueError(
            f"PathProx found no disjoint layer pairs in {type(model).__name__}; it needs Linear/Conv layers "
            "joined by ReLU-like ops (ReLU, LeakyReLU, PReLU, pooling, dropout, flatten)"
        )
    return _build(chosen, links, modules)
