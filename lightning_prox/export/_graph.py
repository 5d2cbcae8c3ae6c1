"""Which channels of a traced network can be removed exactly (the plan behind ``export_compact``).

The coupling of channels across the network comes from Torch-Pruning's ``DependencyGraph`` (Fang et
al., 2023, "DepGraph: Towards Any Structural Pruning", CVPR, §3): each of its groups is one channel
space shared by several layers (a conv's filters, the batch norm after it, every residual add that
carries the channel, every consumer's input slice, a linear layer's flattened columns). This module
decides, channel by channel, whether the channel can go, and why.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__: list[str] = []

_INSTALL_HINT = (
    "export_compact needs Torch-Pruning (PyPI 'torch-pruning'); install the optional extra: "
    "pip install 'lightning-prox[export]'"
)


def import_torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL_HINT) from err
    return torch_pruning


# Autograd ops that act on each channel separately (or pool over space only), so that a channel keeps
# its identity through them. Anything else inside a channel group with a removable channel is refused.
_CHANNELWISE_OPS = frozenset(
    {
        "ReluBackward",
        "HardtanhBackward",
        "LeakyReluBackward",
        "EluBackward",
        "CeluBackward",
        "GeluBackward",
        "SiluBackward",
        "MishBackward",
        "SigmoidBackward",
        "TanhBackward",
        "HardswishBackward",
        "HardsigmoidBackward",
        "SoftplusBackward",
        "AddBackward",
        "SubBackward",
        "MulBackward",
        "DivBackward",
        "NegBackward",
        "CloneBackward",
        "NativeDropoutBackward",
        "ToCopyBackward",
        "MaxPool1DWithIndicesBackward",
        "MaxPool2DWithIndicesBackward",
        "MaxPool3DWithIndicesBackward",
        "AvgPool2DBackward",
        "AvgPool3DBackward",
        "AdaptiveAvgPool2DBackward",
        "AdaptiveAvgPool3DBackward",
        "AdaptiveMaxPool2DBackward",
        "AdaptiveMaxPool3DBackward",
    }
)
_REDUCTIONS = frozenset({"MeanBackward", "SumBackward"})


def _op_name(grad_fn: Any) -> str:
    return re.sub(r"\d+$", "", grad_fn.name()) if grad_fn is not None else "?"


def _channelwise_op(node: Any) -> bool:
    """True when the autograd op of ``node`` keeps channel ``k`` of its input in channel ``k``."""
    name = _op_name(node.grad_fn)
    if name in _CHANNELWISE_OPS:
        return True
    if name == "TBackward":  # the transposed weight inside a linear layer, not an activation
        return not node.inputs
    if name in _REDUCTIONS:  # a mean/sum over space is fine, over the channel dim it mixes channels
        dims = getattr(node.grad_fn, "_saved_dim", None)
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        if dims is None or sizes is None:
            return False
        ndim = len(sizes)
        return 1 not in {d % ndim for d in dims} and ndim >= 2
    return False


class OpOwners(TorchFunctionMode):
    """While active, map the ``grad_fn`` of every op's output to the innermost module running it.

    Used only to name the layer in error messages: Torch-Pruning's graph nodes for functional ops
    (``F.relu``, ``F.pad``, ``+``) carry their ``grad_fn`` but no module name.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.owner: dict[Any, str] = {}
        self._stack: list[str] = []
        self._handles: list[Any] = []
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop))

    def _push(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append(name or type(module).__name__)

        return hook

    def _pop(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._stack:
            self._stack.pop()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self._stack:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, Tensor) and t.grad_fn is not None:
                    self.owner.setdefault(t.grad_fn, self._stack[-1])
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def trace(
    model: nn.Module, inputs: tuple[Tensor, ...], error: type[Exception] = ValueError
) -> tuple[Any, Any, dict]:
    """Torch-Pruning's ``DependencyGraph`` of ``model`` on ``inputs``, with the op owners of :class:`OpOwners`.

    The model's parameters are made to require gradients while it runs (tracing follows autograd)
    and restored afterwards. ``error`` (a ``ValueError`` subclass) is raised when tracing fails,
    naming the innermost module that was running.
    """
    tp = import_torch_pruning()
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    owners = OpOwners(model)
    try:
        with owners, torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=lambda m, x: m(*x), verbose=False
            )
    except Exception as err:
        where = f" in module {owners._stack[-1]!r}" if owners._stack else ""
        raise error(
            f"Torch-Pruning could not trace {type(model).__name__} on example_inputs{where}: {err}"
        ) from err
    finally:
        owners.close()
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
    return dg, tp, owners.owner


@dataclass
class Consumer:
    """A layer that reads channels of a group: its input indices and the group channel of each."""

    module: nn.Module
    name: str
    idxs: Tensor
    roots: Tensor


@dataclass
class GroupPlan:
    """What happens to the channels of one coupled group."""

    root: nn.Module
    root_name: str
    handler: Any
    n: int
    layers: list[str]
    consumers: list[Consumer]
    dead: Tensor  # every consumer slice is zero
    constant: Tensor  # every producer row is zero: the channel does not depend on the input
    out_bound: Tensor  # reaches the model's output
    unknown: dict[int, str]  # channel -> layer the exporter does not know
    remove: list[int] = field(default_factory=list)
    folds: list[tuple[Consumer, Tensor, Tensor]] = field(default_factory=list)  # (consumer, in idxs, values)
    notes: list[str] = field(default_factory=list)
    folded: int = 0
    kept_constant: int = 0


def _owner(dg: Any, owners: dict[Any, str], node: Any) -> str | None:
    """The module that ran ``node``'s op, or else the nearest downstream one (ops inside e.g. einsum
    are not seen one by one, only the op's final output is)."""
    frontier, seen = [node], set()
    while frontier:
        nxt = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen.add(id(n))
            owner = owners.get(n.grad_fn)
            if owner:
                return owner
            nxt.extend(n.outputs)
        frontier = nxt
        if len(seen) > 64:
            break
    return None


def _name(dg: Any, owners: dict[Any, str], node: Any) -> str:
    name = dg._module2name.get(node.module)
    if name:
        return name
    owner = _owner(dg, owners, node)
    op = _op_name(node.grad_fn)
    return f"{op} in {owner!r}" if owner else f"{op} (a functional op at the top level)"


def _any_per_root(n: int, roots: Tensor, flags: Tensor) -> Tensor:
    out = torch.zeros(n, dtype=torch.int64)
    out.index_add_(0, roots, flags.to(torch.int64))
    return out > 0


def plan_groups(dg: Any, tp: Any, owners: dict[Any, str]) -> list[GroupPlan]:
    """One :class:`GroupPlan` per coupled group rooted at a conv or linear layer's output channels."""
    ops = tp.ops
    T = ops.OPTYPE
    plans = []
    for group in dg.get_all_groups(root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        root_item = group[0]
        root = root_item.dep.target.module
        n = len(root_item.idxs)
        nz_prod = torch.zeros(n, dtype=torch.bool)
        nz_cons = torch.zeros(n, dtype=torch.bool)
        has_cons = torch.zeros(n, dtype=torch.bool)
        out_bound = torch.zeros(n, dtype=torch.bool)
        unknown: dict[int, str] = {}
        consumers: list[Consumer] = []
        layers: list[str] = []
        for item in group:
            dep, node = item.dep, item.dep.target
            module = node.module
            if any(r is None for r in item.root_idxs):
                roots = torch.arange(n)
                for r in range(n):
                    unknown.setdefault(r, _name(dg, owners, node))
                continue
            roots = torch.as_tensor(item.root_idxs, dtype=torch.int64)
            idxs = torch.as_tensor(item.idxs, dtype=torch.int64)
            is_out = dg.is_out_channel_pruning_fn(dep.handler)
            is_in = dg.is_in_channel_pruning_fn(dep.handler)
            name = _name(dg, owners, node)
            if dg._module2name.get(module) and name not in layers:
                layers.append(name)
            # a channel reaches the output through the output node, unless that node only reads it
            if (not node.outputs and not (is_in and not is_out)) or node.type == T.OUTPUT:
                out_bound[roots] = True
            known = True
            if node.type in (T.CONV, T.LINEAR):
                conv = isinstance(module, nn.modules.conv._ConvNd)
                if conv and (module.transposed or module.groups != 1):
                    known = False
                else:
                    w = module.weight.detach()
                    if is_out:
                        nz_prod |= _any_per_root(n, roots, w.index_select(0, idxs).flatten(1).ne(0).any(1))
                    elif is_in:
                        col = w.index_select(1, idxs).transpose(0, 1).flatten(1).ne(0).any(1)
                        nz_cons |= _any_per_root(n, roots, col)
                        has_cons[roots] = True
                        consumers.append(Consumer(module, name, idxs, roots))
            elif node.type == T.DEPTHWISE_CONV:
                # one filter per channel: a channel stays itself, so it neither feeds nor mixes others
                known = module.in_channels == module.out_channels == module.groups
            elif node.type in (T.BN, T.PRELU, T.IN, T.RESHAPE, T.CONCAT, T.SPLIT, T.SLICE, T.OUTPUT):
                pass
            elif node.type == T.ELEMENTWISE:
                known = _channelwise_op(node)
            else:
                known = False
            if not known:
                for r in roots.tolist():
                    unknown.setdefault(r, name)
        plans.append(
            GroupPlan(
                root=root,
                root_name=dg._module2name.get(root, type(root).__name__),
                handler=root_item.dep.handler,
                n=n,
                layers=layers,
                consumers=consumers,
                dead=has_cons & ~nz_cons & ~out_bound,
                constant=has_cons & ~nz_prod & ~out_bound,
                out_bound=out_bound,
                unknown=unknown,
            )
        )
    return plans


def foldable(module: nn.Module) -> bool:
    """A constant input channel of ``module`` can be folded into its bias exactly."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
        # zero padding makes the border outputs see zeros instead of the constant
        return module.padding_mode != "zeros" or all(p == 0 for p in module.padding)
    return False


def constant_values(x: Tensor, module: nn.Module, idxs: Tensor) -> tuple[Tensor, Tensor]:
    """Per input index of ``module``: the value it takes at the first position, and whether it takes
    that same finite value everywhere in ``x`` (every sample, every position)."""
    if isinstance(module, nn.Linear):
        cols = x.index_select(-1, idxs).reshape(-1, len(idxs))
    else:
        cols = x.index_select(1, idxs).transpose(0, 1).reshape(len(idxs), -1).T
    first = cols[0]
    ok = torch.isfinite(first) & (cols == first).all(0)
    return first, ok
