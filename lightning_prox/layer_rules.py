"""Per-layer rules: which parameters get which regularizer, strength, learning rate and weight decay.

An ordered list of :class:`LayerRule` is matched against every trainable parameter; the first rule
that matches decides the parameter's param group, and a parameter no rule matches is trained plainly
(no regularizer). The single ``regularizer=`` of :class:`~lightning_prox.module.ProxMixin` is the
one-rule case: the default selection of :func:`lightning_prox.structure.select_parameters` (conv,
linear and RNN weights) with that regularizer, tried after the explicit rules.

``exclude_ends=True`` leaves the first convolution and the classifier dense, as the ProxQuant code
(Bai et al., 2019, ``allenbai01/ProxQuant``) and most pruning recipes do: the first conv has only
1–3 input channels (a zero input group deletes a colour channel) and the classifier's output rows are
the classes. timm models name these layers in ``pretrained_cfg["first_conv"]`` and
``pretrained_cfg["classifier"]``; the built-in networks declare them in a ``prox_ends`` attribute of
the same form, and so can a user's module.

Example:
    >>> import torch.nn as nn
    >>> from lightning_prox.regularizers import L1, GroupLasso
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    >>> net.prox_ends = {"first_conv": "0", "classifier": "3"}
    >>> rules = [{"types": ["Conv2d"], "regularizer": GroupLasso(1e-3, dim="in"), "lam": 1e-2},
    ...          {"params": r"\\.weight$", "regularizer": L1(1e-4), "lr": 0.1}]
    >>> groups = param_groups_from_rules(net, rules, exclude_ends=True)
    >>> [(g["param_names"], g["regularizer"] and g["regularizer"].lam, g.get("lr")) for g in groups]
    [(['1.weight'], 0.01, None), (['0.weight', '0.bias', '1.bias', '3.weight', '3.bias'], None, None)]
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .coupling import bind_coupled_groups
from .regularizers import Regularizer, as_regularizer
from .structure import DEFAULT_REGULARIZED_TYPES, _by_layout, _type_matches, select_parameters
from .structure import _is_default_weight as _is_weight

__all__ = [
    "LayerRule",
    "create_prox_optimizer",
    "model_ends",
    "param_groups_from_rules",
    "resolve_regularizer",
]

_RULE_KEYS = ("params", "types", "regularizer", "lam", "lr", "weight_decay")


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import {class_path!r}: no such module or class") from None


def resolve_regularizer(reg: Any, where: str = "regularizer") -> Regularizer | None:
    """A ``Regularizer`` from an object, ``None``, a spec dict (``{"name": "L1", "lam": 1e-4}``) or a
    LightningCLI ``class_path``/``init_args`` dict; ``ValueError`` naming ``where`` otherwise.

    Example:
        >>> resolve_regularizer({"class_path": "lightning_prox.regularizers.L1", "init_args": {"lam": 0.1}})
        L1(lam=0.1)
    """
    if reg is None or isinstance(reg, Regularizer):
        return reg
    if isinstance(reg, Mapping) and "class_path" in reg:
        cls = _import(str(reg["class_path"]))
        if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
            raise ValueError(f"{where}: class_path {reg['class_path']!r} is not a lightning_prox Regularizer")
        try:
            return cls(**dict(reg.get("init_args") or {}))
        except TypeError as err:
            raise ValueError(f"{where}: {err}") from None
    if isinstance(reg, Mapping) and "name" not in reg:
        raise ValueError(
            f"{where}: a regularizer dict needs 'class_path' (with 'init_args') or a registry 'name' "
            f"(e.g. {{'name': 'L1', 'lam': 1e-4}}), got keys {sorted(reg)}"
        )
    try:
        return as_regularizer(reg)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where}: {err}") from None


def _number(value: Any, where: str, positive: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{where} must be a number >= 0, got {value!r}")
    if positive and value == 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """One rule: which parameters, and their regularizer / ``lam`` / ``lr`` / ``weight_decay``.

    A parameter matches when its full name matches one of ``params`` (``re.search``) and, when
    ``types`` is given, a module of one of those types (class or class name) owns it. With ``types``
    only, the rule takes those modules' weights (``weight``, or an RNN's weight matrices), not their
    biases; with neither, the weights of the default types (conv, linear, RNN). ``regularizer=None``
    keeps the matched parameters plain (a way to leave layers out); ``lam`` replaces the
    regularizer's strength; ``lr`` and ``weight_decay`` go into the param group.

    Example:
        >>> from lightning_prox.regularizers import L1
        >>> LayerRule.from_config({"params": "fc", "regularizer": {"name": "L1", "lam": 0.1}}, 0)
        LayerRule(params=('fc',), types=None, regularizer=L1(lam=0.1), lam=None, lr=None, weight_decay=None)
    """

    params: tuple[str, ...] | None = None
    types: tuple[type[nn.Module] | str, ...] | None = None
    regularizer: Regularizer | None = None
    lam: float | None = None
    lr: float | None = None
    weight_decay: float | None = None

    @classmethod
    def from_config(cls, rule: Any, index: int) -> LayerRule:
        """A rule from a ``LayerRule`` or a dict with the keys above; ``ValueError`` naming ``rules[index]``."""
        where = f"rules[{index}]"
        if isinstance(rule, LayerRule):
            rule = dataclasses.asdict(rule) | {"regularizer": rule.regularizer}
        if not isinstance(rule, Mapping):
            raise ValueError(f"{where} must be a dict with keys {', '.join(_RULE_KEYS)}, got {rule!r}")
        unknown = sorted(set(rule) - set(_RULE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; a rule takes {', '.join(_RULE_KEYS)}")
        params = rule.get("params")
        if params is not None:
            params = (params,) if isinstance(params, str) else tuple(params)
            for p in params:
                try:
                    re.compile(p)
                except (re.error, TypeError) as err:
                    raise ValueError(
                        f"{where}.params: {p!r} is not a valid regular expression: {err}"
                    ) from None
        types = rule.get("types")
        if types is not None:
            types = (types,) if isinstance(types, (str, type)) else tuple(types)
            for t in types:
                if not isinstance(t, str) and not (isinstance(t, type) and issubclass(t, nn.Module)):
                    raise ValueError(
                        f"{where}.types: entries must be nn.Module classes or class names, got {t!r}"
                    )
        return cls(
            params=params,
            types=types,
            regularizer=resolve_regularizer(rule.get("regularizer"), f"{where}.regularizer"),
            lam=_number(rule.get("lam"), f"{where}.lam"),
            lr=_number(rule.get("lr"), f"{where}.lr", positive=True),
            weight_decay=_number(rule.get("weight_decay"), f"{where}.weight_decay"),
        )

    def describe(self) -> str:
        """A short text of what the rule matches (for messages)."""
        parts = []
        if self.params is not None:
            parts.append(f"params={list(self.params)}")
        if self.types is not None:
            parts.append(f"types={[t if isinstance(t, str) else t.__name__ for t in self.types]}")
        return ", ".join(parts) or "the default weights"


def model_ends(model: nn.Module) -> list[str]:
    """Module names of the first convolution and the classifier (``exclude_ends``).

    Read from the outermost submodule that declares them: a ``prox_ends`` dict
    (``{"first_conv": name, "classifier": name}``, names relative to that submodule, a name or a
    list of names each) or, for timm models, ``pretrained_cfg``. ``ValueError`` when no module
    declares them, or a declared name is not a submodule.

    Example:
        >>> from lightning_prox.models import LeNet
        >>> model_ends(nn.Sequential(LeNet(1, 10, 8)))
        ['0.features.0', '0.classifier.3']
    """
    modules = dict(model.named_modules())
    for prefix, m in modules.items():
        ends = getattr(m, "prox_ends", None)
        if not isinstance(ends, Mapping):
            ends = getattr(m, "pretrained_cfg", None)
        if not isinstance(ends, Mapping) or not any(ends.get(k) for k in ("first_conv", "classifier")):
            continue
        out = []
        for key in ("first_conv", "classifier"):
            names = ends.get(key) or ()
            for n in (names,) if isinstance(names, str) else names:
                full = f"{prefix}.{n}" if prefix else n
                if full not in modules:
                    raise ValueError(
                        f"exclude_ends: {type(m).__name__} declares {key}={n!r}, which is not a submodule "
                        f"of it; fix its prox_ends / pretrained_cfg or use exclude=[...]"
                    )
                out.append(full)
        return out
    raise ValueError(
        f"exclude_ends=True: {type(model).__name__} declares no first conv / classifier (timm models name "
        "them in pretrained_cfg, the built-in nets in prox_ends); set "
        "`prox_ends = {'first_conv': ..., 'classifier': ...}` on your network or use exclude=[...]"
    )


def param_groups_from_rules(
    model: nn.Module,
    rules: Sequence[LayerRule | Mapping[str, Any]] | None = None,
    *,
    regularizer: Any = None,
    include_types: Sequence[type[nn.Module] | str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    exclude_ends: bool = False,
) -> list[dict[str, Any]]:
    """Param groups from ordered rules; first match wins, unmatched parameters plain.

    The order of precedence: ``exclude`` (regexes, never regularized), ``exclude_ends`` (first conv and
    classifier, see :func:`model_ends`), the ``rules`` in order, then ``regularizer`` on the default
    selection (``include_types``, ``include``: :func:`lightning_prox.structure.select_parameters`).
    One group per rule that matched something (``"regularizer"`` at its ``lam``, ``"lr"``,
    ``"weight_decay"`` when given), then the ``regularizer`` group, then one plain group; each carries
    ``"param_names"``. Every rule must match at least one parameter (a misspelt regex would otherwise
    regularize nothing), and each regularizer is checked against its tensors (``check_param``).

    Example:
        >>> from lightning_prox.regularizers import L1
        >>> groups = param_groups_from_rules(nn.Linear(3, 2), [{"params": "weight", "regularizer": L1(0.1)}])
        >>> [(g["param_names"], g["regularizer"]) for g in groups]
        [(['weight'], L1(lam=0.1)), (['bias'], None)]
    """
    parsed = [LayerRule.from_config(r, i) for i, r in enumerate(rules or ())]
    default_reg = resolve_regularizer(regularizer)
    default_sel, _ = select_parameters(model, include_types, include, exclude)
    default_ids = {id(p) for _, p in default_sel}
    excluded = {id(p) for _, p in select_parameters(model, (), exclude, None)[0]} if exclude else set()
    ends = model_ends(model) if exclude_ends else []

    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for local, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((module, local))

    def matches(rule: LayerRule, name: str, p: nn.Parameter) -> bool:
        if rule.params is not None and not any(re.search(r, name) for r in rule.params):
            return False
        own = owners.get(id(p), [])
        types = rule.types if rule.types is not None else (None if rule.params else DEFAULT_REGULARIZED_TYPES)
        if types is None:
            return True
        return any(
            _type_matches(m, types) and (rule.params is not None or _is_weight(m, loc)) for m, loc in own
        )

    buckets: list[list[tuple[str, nn.Parameter]]] = [[] for _ in parsed]
    matched_any = [False] * len(parsed)
    default: list[tuple[str, nn.Parameter]] = []
    plain: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        hits = [i for i, r in enumerate(parsed) if matches(r, name, p)]
        for i in hits:
            matched_any[i] = True
        if id(p) in excluded or any(name.startswith(e + ".") for e in ends):
            plain.append((name, p))
        elif hits:
            buckets[hits[0]].append((name, p))
        elif default_reg is not None and id(p) in default_ids:
            default.append((name, p))
        else:
            plain.append((name, p))
    for i, ok in enumerate(matched_any):
        if not ok:
            raise ValueError(
                f"rules[{i}] ({parsed[i].describe()}) matches no trainable parameter of the model"
            )

    groups: list[dict[str, Any]] = []

    def add(members: list[tuple[str, nn.Parameter]], reg: Regularizer | None, **extra: Any) -> None:
        if reg is None:
            parts = [(None, members)] if members else []
        else:  # one group per module layout for a grouped regularizer; every tensor checked
            parts = _by_layout(model, reg, members)
        for r, chosen in parts:
            group = {
                "params": [p for _, p in chosen],
                "param_names": [n for n, _ in chosen],
                "regularizer": r,
            }
            groups.append(group | {k: v for k, v in extra.items() if v is not None})

    for rule, members in zip(parsed, buckets):
        reg = rule.regularizer
        if reg is not None and rule.lam is not None:
            reg = reg.with_lam(rule.lam)
        add(members, reg, lr=rule.lr, weight_decay=rule.weight_decay)
    add(default, default_reg)
    add(plain, None)
    return _merge_plain(bind_coupled_groups(model, groups))  # CoupledGroupLasso: coupled from the model


def _merge_plain(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge plain groups without their own options into the last one (fewer groups, same training)."""
    keep, plain = [], []
    for g in groups:
        if g["regularizer"] is None and set(g) == {"params", "param_names", "regularizer"}:
            plain.append(g)
        else:
            keep.append(g)
    if plain:
        keep.append(
            {
                "params": [p for g in plain for p in g["params"]],
                "param_names": [n for g in plain for n in g["param_names"]],
                "regularizer": None,
            }
        )
    return keep


_OPTIMIZERS = {"proxgen": "ProxGen", "proxsgd": "ProxSGD", "rmda": "RMDA", "ramda": "RAMDA"}


def create_prox_optimizer(
    model: nn.Module,
    optimizer: str | type[torch.optim.Optimizer] = "proxgen",
    *,
    regularizer: Any = None,
    rules: Sequence[LayerRule | Mapping[str, Any]] | None = None,
    exclude_ends: bool = False,
    include_types: Sequence[type[nn.Module] | str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """A proximal optimizer over ``model``'s parameters with per-layer regularizers (timm-style factory).

    ``optimizer`` is ``"proxgen"``, ``"proxsgd"``, ``"rmda"``, ``"ramda"`` or a ``lightning_prox.optim``
    class; ``kwargs`` (``lr``, ``momentum``, ...) go to its constructor. The groups are
    :func:`param_groups_from_rules`'s. Use it in a ``configure_optimizers`` of your own.

    Example:
        >>> from lightning_prox.regularizers import GroupLasso
        >>> opt = create_prox_optimizer(nn.Linear(4, 2), "proxsgd", regularizer=GroupLasso(1e-3), lr=0.1)
        >>> type(opt).__name__, [g["regularizer"] is not None for g in opt.param_groups]
        ('ProxSGD', [True, False])
    """
    if isinstance(optimizer, str):
        key = optimizer.lower().replace("_", "").replace("-", "")
        if key not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer={optimizer!r}: use one of {', '.join(_OPTIMIZERS)} or an optimizer class"
            )
        from . import optim

        cls = getattr(optim, _OPTIMIZERS[key])
    else:
        cls = optimizer
    groups = param_groups_from_rules(
        model,
        rules,
        regularizer=regularizer,
        include_types=include_types,
        include=include,
        exclude=exclude,
        exclude_ends=exclude_ends,
    )
    if any(g["regularizer"] is not None for g in groups) and not _takes_regularizer(cls):
        raise ValueError(
            f"optimizer {getattr(cls, '__name__', cls)!r} takes no regularizer, so the proximal step would be "
            "skipped; use a lightning_prox.optim optimizer (ProxGen, ProxSGD, RMDA, RAMDA, SR2)"
        )
    return cls(groups, **kwargs)


def _takes_regularizer(factory: Any) -> bool:
    """Whether an optimizer class (or ``functools.partial`` of one) applies a proximal step."""
    while isinstance(factory, functools.partial):
        # LightningCLI's callables are partial(call_without_instantiate_context, instantiator, cls, ...)
        factory = next(
            (a for a in (factory.func, *factory.args) if isinstance(a, (type, functools.partial))), None
        )
    if not isinstance(factory, type):
        return True  # an arbitrary callable: checked on the optimizer it returns
    import inspect

    try:
        return "regularizer" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
