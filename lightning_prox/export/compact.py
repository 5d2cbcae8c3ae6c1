"""``export_compact``: from a model with exact group zeros to a physically smaller ``nn.Module``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._graph import GroupPlan, constant_values, foldable, import_torch_pruning, plan_groups, trace
from .report import ExportReport, LayerChannels, _as_tuple, count_macs, measure_latency, state_dict_bytes

__all__ = ["ExportError", "export_compact"]


class ExportError(ValueError):
    """The model cannot be compacted exactly; the message names the layer and what to do."""


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _outputs(v)]
    return []


def _rel_diff(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.detach().double(), b.detach().double()
    if a64.shape != b64.shape:
        return float("inf")
    if not bool(torch.isfinite(a64).all()):
        # NaN/inf outputs must sit at the same places with the same values
        same = (a64 == b64) | (torch.isnan(a64) & torch.isnan(b64))
        fin = torch.isfinite(a64)
        if not bool((same | fin).all()):
            return float("inf")
        a64, b64 = a64[fin], b64[fin]
        if a64.numel() == 0:
            return 0.0
    scale = a64.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((a64 - b64).abs().max() / scale) if a64.numel() else 0.0


def _record_module_outputs(
    model: nn.Module, inputs: tuple[Tensor, ...]
) -> tuple[list[str], dict[str, Tensor]]:
    order: list[str] = []
    outs: dict[str, Tensor] = {}

    def hook(name: str) -> Any:
        def f(module: nn.Module, args: Any, out: Any) -> None:
            if name not in outs and isinstance(out, Tensor):
                order.append(name)
                outs[name] = out.detach()

        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
    return order, outs


def _first_divergence(
    reference: nn.Module, compact: nn.Module, inputs: tuple[Tensor, ...], rtol: float
) -> str:
    """Name of the first module (in execution order) whose same-shaped output differs beyond ``rtol``."""
    order, ref = _record_module_outputs(reference, inputs)
    _, got = _record_module_outputs(compact, inputs)
    for name in order:
        if name not in got:
            return f"{name!r} (it did not run in the compact model)"
        if ref[name].shape == got[name].shape and _rel_diff(ref[name], got[name]) > rtol:
            return repr(name)
    return "the model's output (no single module's output differs)"


def _layer_rows(before: nn.Module, after: nn.Module) -> list[LayerChannels]:
    types = (nn.Linear, nn.modules.conv._ConvNd)
    new = dict(after.named_modules())
    rows = []
    for name, m in before.named_modules():
        if not isinstance(m, types) or name not in new:
            continue
        c = new[name]
        lin = isinstance(m, nn.Linear)
        rows.append(
            LayerChannels(
                name=name,
                kind=type(m).__name__,
                in_before=m.in_features if lin else m.in_channels,
                in_after=c.in_features if lin else c.in_channels,
                out_before=m.out_features if lin else m.out_channels,
                out_after=c.out_features if lin else c.out_channels,
                params_before=sum(p.numel() for p in m.parameters(recurse=False)),
                params_after=sum(p.numel() for p in c.parameters(recurse=False)),
            )
        )
    return rows


def _fmt(idxs: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, list(idxs)[:limit]))
    return f"[{shown}{', ...' if len(idxs) > limit else ''}]"


def _decide(
    plans: list[GroupPlan],
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    on_unknown: Literal["raise", "keep"],
) -> None:
    """Fill ``remove``, ``folds`` and ``notes`` of each plan (constants measured on ``inputs``)."""
    # Constant channels: the value each consumer sees, measured on the example inputs (a zero filter
    # followed by a norm's bias and an activation gives a constant that is not zero).
    wanted: dict[nn.Module, list[tuple[GroupPlan, Any]]] = {}
    for plan in plans:
        cand = plan.constant & ~plan.dead
        if bool(cand.any()):
            for cons in plan.consumers:
                wanted.setdefault(cons.module, []).append((plan, cons))
    seen: dict[nn.Module, list[Tensor]] = {}

    def pre_hook(module: nn.Module, args: Any) -> None:
        seen.setdefault(module, []).append(args[0].detach())

    handles = [m.register_forward_pre_hook(pre_hook) for m in wanted]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()

    for plan in plans:
        n = plan.n
        values: dict[int, list[tuple[Any, Tensor, Tensor]]] = {}
        const_ok = plan.constant & ~plan.dead
        for cons in plan.consumers:
            mask = const_ok[cons.roots]
            if not bool(mask.any()):
                continue
            calls = seen.get(cons.module, [])
            # a module called more than once (shared weights) sees several inputs: not folded
            vals, ok = constant_values(calls[0], cons.module, cons.idxs) if len(calls) == 1 else (None, None)
            for j in torch.nonzero(mask).flatten().tolist():
                r = int(cons.roots[j])
                if vals is None or not bool(ok[j]):
                    const_ok[r] = False
                else:
                    values.setdefault(r, []).append((cons, cons.idxs[j], vals[j]))
        remove: list[int] = []
        folds: dict[int, list[tuple[Any, Tensor, Tensor]]] = {}
        kept_const: list[tuple[int, str]] = []
        for r in range(n):
            if bool(plan.dead[r]):
                remove.append(r)
            elif bool(const_ok[r]):
                entries = values.get(r, [])
                nonzero = [e for e in entries if float(e[2]) != 0.0]
                blocking = [e[0].name for e in nonzero if not foldable(e[0].module)]
                if blocking:
                    kept_const.append((r, blocking[0]))
                else:
                    remove.append(r)
                    if nonzero:
                        folds[r] = nonzero
        if remove and plan.unknown:
            clash = [r for r in remove if r in plan.unknown]
            if clash:
                layer = plan.unknown[clash[0]]
                if on_unknown == "raise":
                    raise ExportError(
                        f"cannot compact exactly: {len(clash)} removable channel(s) {_fmt(clash)} of the group "
                        f"rooted at {plan.root_name!r} pass through {layer}, a layer type the exporter does not "
                        f"know how to shrink exactly (it may mix channels); keep these channels with "
                        f"on_unknown='keep', or exclude the layers feeding it from the regularizer"
                    )
                plan.notes.append(
                    f"{plan.root_name}: kept {len(clash)} removable channel(s) {_fmt(clash)} that pass through "
                    f"{layer} (unknown to the exporter)"
                )
                remove = [r for r in remove if r not in plan.unknown]
        if len(remove) == n:
            # a layer with no channel left would break shapes; keep one that needs no folding
            keep = next((r for r in remove if r not in folds), remove[0])
            remove.remove(keep)
            folds.pop(keep, None)
            plan.notes.append(
                f"{plan.root_name}: every channel is removable; kept channel {keep} so that the layer exists"
            )
        for r, layer in kept_const:
            plan.notes.append(
                f"{plan.root_name}: channel {r} is a nonzero constant (zero filter, then a bias) that feeds "
                f"the zero-padded conv {layer!r}; it cannot be folded exactly and is kept"
            )
        plan.remove = remove
        plan.folded = sum(1 for r in remove if r in folds)
        plan.kept_constant = len(kept_const)
        plan.folds = [e for r in remove for e in folds.get(r, [])]


@torch.no_grad()
def _fold(plan: GroupPlan) -> None:
    """Add each removed constant channel's contribution ``sum_k W[:, j, k] * c_j`` to the consumer's bias."""
    for cons, idx, value in plan.folds:
        m = cons.module
        w = m.weight
        contrib = w[:, int(idx)].reshape(w.shape[0], -1).sum(1) * value.to(w.dtype)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        m.bias.add_(contrib)


def export_compact(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    rtol: float = 1e-5,
    on_unknown: Literal["raise", "keep"] = "raise",
    latency_batches: Sequence[int] = (1, 64),
    latency_runs: int = 30,
) -> tuple[nn.Module, ExportReport]:
    r"""A physically smaller copy of ``model`` without its removable channels, and a report.

    Channels are coupled across the network as in Torch-Pruning's ``DependencyGraph`` (Fang et al.,
    2023, "DepGraph: Towards Any Structural Pruning", §3): one group is a channel space shared by a
    conv's filters and its batch norm, every residual add and concatenation that carries the channel,
    every consumer's input slice (a linear layer after a flatten reads ``H*W`` columns per channel)
    and the model's output. A channel :math:`k` of a group is removed when

    - every consumer's slice of it is zero, :math:`W_c[:, k] = 0` for all consumers :math:`c`
      (its value does not matter: ``GroupLasso(dim="in")`` zeros); or
    - every producer's row of it is zero, :math:`W_p[k] = 0` for all producers :math:`p`
      (``GroupLasso(dim="out")`` zeros), so the channel is a constant :math:`c_k` (a bias, a norm's
      :math:`\beta - \gamma\mu/\sqrt{\sigma^2+\epsilon}`, through the activations), measured on
      ``example_inputs``: removed if :math:`c_k = 0`, or folded into each consumer's bias
      (:math:`b_c \mathrel{+}= \sum_{\text{kernel}} W_c[:, k]\,c_k`) when every consumer is a linear
      layer or a conv without zero padding; otherwise kept, and said so in ``report.notes``;

    and it does not reach the model's output. The model's input channels and output units are
    never removed. The compact model's outputs are checked against the original's on
    ``example_inputs`` in eval mode: :math:`\max|y - y_c| / \max|y| \le` ``rtol``, else
    :class:`ExportError` names the first layer whose output differs.

    Args:
        model: a trained model; it is deep-copied, never changed (a LightningModule works; for an
            ``ImageClassifier`` pass ``classifier.net`` to export the bare network).
        example_inputs: a Tensor or a tuple of Tensors, the positional inputs of ``model`` (a small
            batch: tracing, constant detection and the output check run on it).
        rtol: largest accepted relative output difference.
        on_unknown: a removable channel that passes through a layer the exporter does not know how to
            shrink exactly (LayerNorm/GroupNorm over channels, grouped convs, custom modules with their
            own parameters, channel padding, ...): ``"raise"`` (default) refuses with
            :class:`ExportError` naming the layer; ``"keep"`` keeps such channels and notes it.
        latency_batches: batch sizes for the CPU latency of the report (empty: no timing).
        latency_runs: timed forward passes per batch size (the median is reported).

    Returns:
        ``(compact_model, report)``: the compact model in the mode (train/eval) of ``model``, on its
        device; an :class:`~lightning_prox.export.ExportReport`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> with torch.no_grad():
        ...     net[2].weight[:, :5] = 0  # GroupLasso(dim="in") zeroed 5 input features of the last layer
        >>> small, report = export_compact(net, torch.randn(4, 6), latency_batches=())
        >>> small[0].out_features, small[2].in_features, report.params
        (3, 3, (83, 33))
        >>> torch.allclose(small(torch.ones(2, 6)), net(torch.ones(2, 6)), atol=1e-6)
        True
    """
    tp = import_torch_pruning()
    inputs = _as_tuple(example_inputs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0 <= rtol < 1:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    if on_unknown not in ("raise", "keep"):
        raise ValueError(f"on_unknown must be 'raise' or 'keep', got {on_unknown!r}")
    if any(b < 1 for b in latency_batches):
        raise ValueError(f"latency_batches must be positive batch sizes, got {tuple(latency_batches)}")
    was_training = model.training
    reference = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    grad_flags = {n: p.requires_grad for n, p in work.named_parameters()}
    for p in work.parameters():
        p.requires_grad_(True)  # tracing follows autograd
    with torch.no_grad():
        expected = _outputs(reference(*inputs))
    if not expected:
        raise ExportError(f"{type(model).__name__} returned no tensor on example_inputs; nothing to compare")

    dg, tp, owners = trace(work, inputs, ExportError)
    plans = plan_groups(dg, tp, owners)
    _decide(plans, work, inputs, on_unknown)

    for plan in plans:
        _fold(plan)
    for plan in plans:
        if plan.remove:
            dg.get_pruning_group(plan.root, plan.handler, idxs=sorted(plan.remove)).prune(
                record_history=False
            )
    for name, p in work.named_parameters():
        p.requires_grad_(grad_flags.get(name, True))
    work.zero_grad(set_to_none=True)

    try:
        with torch.no_grad():
            got = _outputs(work(*inputs))
        diff = max((_rel_diff(a, b) for a, b in zip(expected, got)), default=float("inf"))
        if len(got) != len(expected):
            diff = float("inf")
    except Exception as err:
        raise ExportError(
            f"the compact model fails to run ({err}); first differing layer: "
            f"{_first_divergence(reference, work, inputs, rtol)}. The model has a coupling the exporter "
            "does not handle; please report it"
        ) from err
    if not diff <= rtol:
        raise ExportError(
            f"the compact model's outputs differ from the original's by {diff:.3g} (relative, > rtol={rtol}); "
            f"first differing layer: {_first_divergence(reference, work, inputs, rtol)}. Refusing to export "
            "a model that is not exactly equivalent"
        )

    notes = [note for plan in plans for note in plan.notes]
    latency = {
        int(b): (
            measure_latency(reference, inputs, batch=int(b), runs=latency_runs),
            measure_latency(work, inputs, batch=int(b), runs=latency_runs),
        )
        for b in latency_batches
    }
    report = ExportReport(
        params=(sum(p.numel() for p in reference.parameters()), sum(p.numel() for p in work.parameters())),
        macs=(count_macs(reference, inputs), count_macs(work, inputs)),
        file_bytes=(state_dict_bytes(reference), state_dict_bytes(work)),
        latency_ms=latency,
        layers=_layer_rows(reference, work),
        removed_channels=sum(len(p.remove) for p in plans),
        folded_channels=sum(p.folded for p in plans),
        kept_constant_channels=sum(p.kept_constant for p in plans),
        max_rel_diff=diff,
        notes=notes,
    )
    work.train(was_training)
    return work, report
