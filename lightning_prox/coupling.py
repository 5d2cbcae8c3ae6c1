"""Channel groups coupled across a network: every slice that must be zero for a channel to go.

A channel of a network can be removed when every layer that *reads* it ignores it: each consumer
conv's input slice ``W[:, k]``, each linear layer's columns of the channel after a flatten (``H·W``
columns per channel), the classifier's column, across residual adds (one residual-stream channel is
read by every block of its stage, the skip path and the classifier) and concatenations. The coupling
comes from Torch-Pruning's ``DependencyGraph`` (Fang et al., 2023, "DepGraph: Towards Any Structural
Pruning", CVPR, §3), the same trace :func:`lightning_prox.export.export_compact` plans its removals
with, so a group found here that training zeroes is exactly a channel the exporter removes.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["bind_coupled_groups", "coupled_channel_groups"]

#: one slice of a coupled group: (parameter name, dim, indices along dim)
Slice = tuple[str, int, list[int]]


def _as_tuple(inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs)
    raise ValueError(
        f"example_inputs must be a Tensor or a tuple of Tensors (the model's positional inputs), "
        f"got {type(inputs).__name__}"
    )


def coupled_channel_groups(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    on_unknown: Literal["raise", "skip"] = "raise",
) -> list[list[Slice]]:
    r"""The coupled channel groups of ``model``: per channel, every consumer's input slice of it.

    ``model`` is traced once on ``example_inputs`` (Torch-Pruning's ``DependencyGraph``, Fang et
    al., 2023, §3; the optional ``export`` extra). Each returned group is one channel of the
    network, a list of ``(parameter name, dim, indices)`` slices, ``dim = 1`` (the input
    channels/features of a ``[out, in, *k]`` conv or ``[out, in]`` linear weight): when every slice
    of a group is zero, the channel is read by no layer and
    :func:`~lightning_prox.export.export_compact` removes it (with its producers' filters and norm
    entries). On a ResNet one residual-stream channel is one group holding the input slice of
    every conv that reads the stream and the classifier's column; a block-internal channel is a group
    of one slice; a conv channel before a flatten owns its ``H·W`` columns of the linear layer.

    Left out: channels that reach the model's output (nothing may remove them) and the model's input
    channels (no layer produces them). Each element of a weight belongs to at most one group.

    Args:
        model: the network (a LightningModule works: names are its ``named_parameters()``). It is
            run once in eval mode (no batch-norm statistics change) and left as it was.
        example_inputs: a Tensor or a tuple of Tensors, the positional inputs of ``model`` (a batch
            of one or two samples is enough).
        on_unknown: a channel that passes through a layer whose effect on channels is not known
            (LayerNorm/GroupNorm over channels, grouped or transposed convs, channel padding,
            custom modules with parameters): ``"raise"`` (default) raises ``ValueError`` naming the
            layer; ``"skip"`` leaves such channels out of the groups.

    Returns:
        One list of slices per channel group, plain data (strings, ints, lists).

    Raises:
        ValueError: the model cannot be traced (the message names the module that was running), a
            conv/linear layer is not reached by the trace, or a channel passes through an unknown
            layer (``on_unknown="raise"``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
        >>> groups = coupled_channel_groups(net, torch.zeros(1, 1, 2, 2))
        >>> groups  # conv channel k owns the linear layer's 4 columns 4k .. 4k + 3
        [[('3.weight', 1, [0, 1, 2, 3])], [('3.weight', 1, [4, 5, 6, 7])]]
    """
    from .export._graph import plan_groups, trace

    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if on_unknown not in ("raise", "skip"):
        raise ValueError(f"on_unknown must be 'raise' or 'skip', got {on_unknown!r}")
    inputs = _as_tuple(example_inputs)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        dg, tp, owners = trace(model, inputs)
    finally:
        for m, mode in modes.items():
            m.training = mode
    names = {m: n for n, m in model.named_modules()}
    for m, n in names.items():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in dg.module2node:
            raise ValueError(
                f"module {n!r} ({type(m).__name__}) was not reached when tracing {type(model).__name__}: "
                "it is not called in forward, or its input or output leaves autograd (.detach(), "
                "torch.no_grad(), a NumPy round trip); the channels it reads cannot be coupled"
            )
    pnames = {id(p): n for n, p in model.named_parameters()}
    groups: list[list[Slice]] = []
    for plan in plan_groups(dg, tp, owners):
        per: list[dict[str, set[int]]] = [{} for _ in range(plan.n)]
        for cons in plan.consumers:
            pname = pnames.get(id(cons.module.weight))
            if pname is None:
                continue
            for idx, root in zip(cons.idxs.tolist(), cons.roots.tolist()):
                per[root].setdefault(pname, set()).add(int(idx))
        for r in range(plan.n):
            if bool(plan.out_bound[r]) or not per[r]:
                continue
            if r in plan.unknown:
                if on_unknown == "raise":
                    raise ValueError(
                        f"channel {r} of the group rooted at {plan.root_name!r} passes through "
                        f"{plan.unknown[r]}, a layer whose effect on channels is not known (it may mix "
                        "them); pass on_unknown='skip' to leave such channels out of the coupled groups"
                    )
                continue
            groups.append([(n, 1, sorted(ix)) for n, ix in per[r].items()])
    return groups


def coupled_slice_groups(
    groups: Sequence[Sequence[Slice]], shapes: dict[str, Sequence[int]], names: Sequence[str] | None = None
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The per-tensor encoding of ``groups``: (names, dims, group id of every slice, ``-1`` for none).

    ``names`` fixes the tensor order (default: first appearance in ``groups``); slices of tensors not
    in ``names`` are dropped (an unregularized reader: that channel is then not removable).
    """
    order: list[str] = list(names) if names is not None else []
    if names is None:
        for g in groups:
            for n, _, _ in g:
                if n not in order:
                    order.append(n)
    pos = {n: i for i, n in enumerate(order)}
    dims: list[int | None] = [None] * len(order)
    ids: list[list[int] | None] = [None] * len(order)
    for n in order:
        if n not in shapes:
            raise ValueError(f"coupled groups name the tensor {n!r}, but its shape is unknown")
    gid = 0
    for g in groups:
        used = False
        for n, d, idxs in g:
            t = pos.get(n)
            if t is None:
                continue
            shape = tuple(shapes[n])
            if d not in (0, 1) or d >= len(shape):
                raise ValueError(
                    f"slice of {n!r}: dim must be 0 or 1 of a tensor of shape {shape}, got {d!r}"
                )
            if dims[t] is None:
                dims[t], ids[t] = d, [-1] * shape[d]
            elif dims[t] != d:
                raise ValueError(
                    f"coupled groups slice {n!r} along both dims 0 and 1; use one dim per tensor"
                )
            row = ids[t]
            assert row is not None
            for i in idxs:
                if not 0 <= int(i) < len(row):
                    raise ValueError(f"slice index {i} of {n!r} is out of range for dim {d} of shape {shape}")
                if row[int(i)] != -1:
                    raise ValueError(
                        f"slice {i} of {n!r} (dim {d}) belongs to two groups; groups must not overlap"
                    )
                row[int(i)] = gid
            used = True
        gid += used
    keep = [t for t in range(len(order)) if dims[t] is not None]
    return (
        tuple(order[t] for t in keep),
        tuple(int(dims[t]) for t in keep),  # type: ignore[arg-type]
        tuple(tuple(ids[t]) for t in keep),  # type: ignore[arg-type]
    )


#: model -> (parameter names and shapes, its coupled groups): tracing runs once per model layout
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, list[list[Slice]]]] = weakref.WeakKeyDictionary()


def _example_inputs(model: nn.Module) -> Any:
    inputs = getattr(model, "example_input_array", None)
    if inputs is not None:
        return inputs
    hp = getattr(model, "hparams", None)
    if hp is not None and "in_chans" in hp and "img_size" in hp:  # ImageClassifier
        return torch.zeros(2, int(hp["in_chans"]), int(hp["img_size"]), int(hp["img_size"]))
    raise ValueError(
        f"CoupledGroupLasso needs example inputs to trace {type(model).__name__}: set "
        "self.example_input_array (a batch of the model's inputs) in its __init__"
    )


def bind_coupled_groups(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Param groups with every unbound :class:`~lightning_prox.regularizers.CoupledGroupLasso` bound to ``model``.

    ``ProxMixin`` calls it on its param groups: a group whose regularizer is a ``CoupledGroupLasso``
    without a coupling (``CoupledGroupLasso(lam)``, e.g. from YAML) is traced on the model's
    ``example_input_array`` (``ImageClassifier``: zeros of its ``in_chans`` × ``img_size``²) and
    split into the coupled group (its tensors that a channel group reads, in the coupling's order)
    and the rest of its tensors, unregularized. Slices of tensors outside the group are dropped, so a
    channel with an unregularized reader (e.g. ``exclude_ends=True`` keeps the classifier dense) is
    never zeroed whole. Groups of other regularizers pass through unchanged.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prox.regularizers import CoupledGroupLasso
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> net.example_input_array = torch.zeros(1, 3)
        >>> groups = [{"params": [net[0].weight, net[2].weight], "param_names": ["0.weight", "2.weight"],
        ...            "regularizer": CoupledGroupLasso(0.1)}]
        >>> [(g["param_names"], type(g["regularizer"]).__name__) for g in bind_coupled_groups(net, groups)]
        [(['2.weight'], 'CoupledGroupLasso'), (['0.weight'], 'NoneType')]
    """
    from .regularizers import CoupledGroupLasso

    todo = [
        g
        for g in groups
        if isinstance(g.get("regularizer"), CoupledGroupLasso) and not g["regularizer"].names
    ]
    if not todo:
        return groups
    params = dict(model.named_parameters())
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    key = tuple(shapes.items())
    hit = _CACHE.get(model)
    if hit is None or hit[0] != key:
        hit = (key, coupled_channel_groups(model, _example_inputs(model)))
        _CACHE[model] = hit
    coupling = hit[1]
    out = []
    for g in groups:
        reg = g.get("regularizer")
        if not (isinstance(reg, CoupledGroupLasso) and not reg.names):
            out.append(g)
            continue
        names = list(g.get("param_names") or [])
        if len(names) != len(g["params"]):
            raise ValueError(
                "CoupledGroupLasso needs the param group's 'param_names' to bind it to the model"
            )
        kwargs = {f.name: getattr(reg, f.name) for f in dataclasses.fields(reg)}
        for f in ("names", "dims", "slice_groups"):
            kwargs.pop(f)
        bound = CoupledGroupLasso.from_groups(kwargs.pop("lam"), coupling, shapes, names, **kwargs)
        if bound.names:
            out.append(
                {
                    **g,
                    "params": [params[n] for n in bound.names],
                    "param_names": list(bound.names),
                    "regularizer": bound,
                }
            )
        rest = [n for n in names if n not in set(bound.names)]
        if rest:
            out.append({**g, "params": [params[n] for n in rest], "param_names": rest, "regularizer": None})
    return out
