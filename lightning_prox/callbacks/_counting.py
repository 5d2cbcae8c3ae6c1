"""Which tensors the sparsity monitor counts, and the counting itself (pure functions, no Lightning)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..regularizers import from_spec
from ..structure import STAT_KEYS, UnitPair, check_groupable, sparsity_ratios, tensor_stats, unit_stats
from ._groups import group_spec

__all__ = [
    "GLOBAL_KEYS",
    "Monitored",
    "count",
    "label_with_lam",
    "monitored_pairs",
    "monitored_tensors",
    "sparsity_metrics",
]

#: the global ratios logged as ``sparsity/<key>`` (those that apply)
GLOBAL_KEYS = ("unstructured", "group", "group_weighted", "low_rank", "active_units")


class Monitored:
    """One counted tensor: its name, grouping (``"in"``/``"out"``/None), whether its rank is counted,
    and the module layout its groups follow (:func:`lightning_prox.structure.group_blocks`)."""

    __slots__ = ("dim", "layout", "name", "param", "rank", "regularizer")

    def __init__(
        self,
        name: str,
        param: Tensor,
        dim: str | None,
        rank: bool,
        regularizer: str,
        layout: str | None = None,
    ) -> None:
        self.name, self.param, self.dim, self.rank, self.regularizer = name, param, dim, rank, regularizer
        self.layout = layout


def monitored_tensors(
    param_groups: Sequence[dict[str, Any]],
    named_parameters: Iterable[tuple[str, Tensor]],
    group_dim: str | None = None,
    layouts: dict[str, str | None] | None = None,
) -> list[Monitored]:
    """The tensors of regularized param groups (all ``ndim >= 2`` tensors when none is regularized).

    The grouping follows what each group's regularizer class declares: its ``group_dim`` and the
    ``layout`` of its spec when it has one (group lasso: counted exactly as the prox groups), else
    ``group_dim`` under the module layout ``layouts[name]``
    (:func:`lightning_prox.structure.param_layouts`; a grouping the layout refuses, e.g. ``"in"`` on
    an embedding, is not counted); the rank is counted when the class declares ``counts_rank``.

    Example:
        >>> w = torch.zeros(3, 4)
        >>> [m.dim for m in monitored_tensors([{"params": [w], "regularizer": {"name": "GroupLasso", "dim": "in"}}], [("w", w)])]
        ['in']
    """
    names = {id(p): n for n, p in named_parameters}
    out: list[Monitored] = []
    seen: set[int] = set()
    regularized = [g for g in param_groups if group_spec(g) is not None]
    for g in regularized or param_groups:
        spec = group_spec(g) or {}
        reg_name = str(spec.get("name", "none"))
        reg = from_spec(spec) if spec else None  # the class declares its grouping and rank counting
        for p in g["params"]:
            if id(p) in seen or (not regularized and p.ndim < 2):
                continue
            seen.add(id(p))
            name = names.get(id(p), f"param{len(out)}")
            own = reg.group_dim if reg is not None else None
            if own is not None:
                dim, layout = own, spec.get("layout")
            else:
                dim, layout = group_dim, (layouts or {}).get(name)
            if dim is not None:
                try:
                    check_groupable(p, dim, layout)
                except ValueError:
                    dim = None
            rank = reg is not None and reg.counts_rank and p.ndim >= 2
            out.append(Monitored(name, p, dim, rank, reg_name, layout if dim is not None else None))
    return out


def label_with_lam(tensors: Sequence[Monitored], param_groups: Sequence[dict[str, Any]]) -> None:
    """Append each group's strength to its tensors' regularizer names (``"L1 λ=0.0001"``), in place.

    Example:
        >>> w = torch.zeros(3, 4)
        >>> groups = [{"params": [w], "regularizer": {"name": "L1"}, "lam": 1e-4}]
        >>> entries = monitored_tensors(groups, [("w", w)]); label_with_lam(entries, groups)
        >>> entries[0].regularizer
        'L1 λ=0.0001'
    """
    lam = {id(p): g.get("lam") for g in param_groups if group_spec(g) is not None for p in g["params"]}
    for t in tensors:
        value = lam.get(id(t.param))
        if value is not None and t.regularizer != "none":
            t.regularizer = f"{t.regularizer} λ={float(value):.3g}"


def monitored_pairs(pairs: Iterable[UnitPair], tensors: Sequence[Monitored]) -> list[UnitPair]:
    """The unit pairs with at least one monitored weight (their units are what the regularizer prunes).

    Example:
        >>> from lightning_prox.structure import unit_pairs
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> [p.name for p in monitored_pairs(unit_pairs(net), [Monitored("2.weight", net[2].weight, "in", False, "GroupLasso")])]
        ['0.weight']
    """
    ids = {id(t.param) for t in tensors}
    return [p for p in pairs if id(p.w) in ids or id(p.v) in ids]


@torch.no_grad()
def count(
    tensors: Sequence[Monitored], pairs: Sequence[UnitPair] = ()
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(global ratios, rows) from additive counts, with a single host read for all tensors and pairs.

    The counts of every tensor (:func:`lightning_prox.structure.tensor_stats`) and every unit pair
    (:func:`lightning_prox.structure.unit_stats`), missing keys as 0, are stacked into one int64 matrix
    and copied to the host once; ratios are ratios of summed counts. ``rows`` holds one row per tensor
    (``"unstructured"``, ...) and then one row per unit pair, named after the pair's first weight, with
    ``"units"`` and ``"active_units"`` (the active fraction) only.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
        >>> totals, rows = count([Monitored("w", w, None, False, "L1")])
        >>> totals, rows[0]["unstructured"]
        ({'unstructured': 0.75}, 0.75)
    """
    if not tensors:
        return {}, []
    per = [tensor_stats(t.param.detach(), t.dim, rank=t.rank, layout=t.layout) for t in tensors]
    per += [unit_stats(p.w, p.v, p.block) for p in pairs]
    keys = list(STAT_KEYS)
    dev = tensors[0].param.device
    zero = torch.zeros((), dtype=torch.int64, device=dev)
    mat = torch.stack(
        [torch.stack([s[k].to(dev, torch.int64) if k in s else zero for k in keys]) for s in per]
    )
    mat = mat.cpu()  # the one host sync of a logged step
    total = {k: mat[:, j].sum() for j, k in enumerate(keys) if any(k in s for s in per)}
    totals = {k: float(v) for k, v in sparsity_ratios(total).items()}
    rows = []
    for i, t in enumerate(tensors):
        c = {k: mat[i, j] for j, k in enumerate(keys) if k in per[i]}
        rows.append(
            {
                "name": t.name,
                "shape": tuple(t.param.shape),
                "regularizer": t.regularizer,
                "groups": int(c["groups"]) if "groups" in c else None,
                "zero_groups": int(c["zero_groups"]) if "zero_groups" in c else None,
                **{k: float(v) for k, v in sparsity_ratios(c).items()},
            }
        )
    for i, p in enumerate(pairs, start=len(tensors)):
        c = {k: mat[i, j] for j, k in enumerate(keys) if k in per[i]}
        rows.append(
            {
                "name": p.name,
                "units": int(c["units"]),
                "active_units": float(sparsity_ratios(c)["active_units"]),
            }
        )
    return totals, rows


def sparsity_metrics(
    totals: dict[str, float], rows: Sequence[dict[str, Any]], per_layer: bool = True
) -> dict[str, float]:
    """The logged dict: ``sparsity/<key>`` and, per tensor, ``sparsity/layer/<name>[/group|/low_rank]``;
    per unit pair (rows with ``"units"``), ``sparsity/layer/<name of its first weight>/active_units``.

    Example:
        >>> sparsity_metrics({"unstructured": 0.5}, [{"name": "w", "unstructured": 0.5, "group": 0.25}])
        {'sparsity/unstructured': 0.5, 'sparsity/layer/w': 0.5, 'sparsity/layer/w/group': 0.25}
    """
    out = {f"sparsity/{k}": v for k, v in totals.items() if k in GLOBAL_KEYS}
    if per_layer:
        for r in rows:
            if "units" in r:
                out[f"sparsity/layer/{r['name']}/active_units"] = r["active_units"]
                continue
            out[f"sparsity/layer/{r['name']}"] = r["unstructured"]
            for k in ("group", "low_rank"):
                if k in r:
                    out[f"sparsity/layer/{r['name']}/{k}"] = r[k]
    return out
