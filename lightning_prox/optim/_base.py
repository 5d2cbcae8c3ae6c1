"""The base class of every proximal optimizer: param groups, checks, the step skeleton, the switches."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ..regularizers._base import Regularizer, as_regularizer
from . import _finite_kernels, _native
from ._common import check_finite_grads, group_regularizer
from ._stats import group_stats

__all__ = ["Implementation", "ProxOptimizer", "group_regularizer"]

Implementation = Literal["auto", "eager", "native"]
_IMPLEMENTATIONS = ("auto", "eager", "native")
#: Old spellings of ``implementation`` (round-1 optimizers): value -> (new value, foreach override).
_DEPRECATED_IMPLEMENTATIONS: dict[str, tuple[str, bool | None]] = {
    "fast": ("eager", None),
    "foreach": ("eager", True),
    "forloop": ("eager", False),
    "compiled": ("native", None),
    "fused": ("native", None),
}

_check_finite_doc = r"""check_finite: raise ``ValueError`` naming the parameter, before anything is updated,
            when a gradient holds NaN or inf (one read of the gradients: on CPU a native scan of
            their exponent bits, on CUDA or with ``implementation="eager"`` one ``sum`` per
            gradient; one host read per step).
            ``False`` skips it (e.g. when a GradScaler already handles overflow)."""

_implementation_doc = r"""implementation: ``"auto"`` (default: native kernels where this optimizer has them
            and they pay off, torch ops otherwise), ``"eager"`` (torch ops only: nothing is
            compiled or built) or ``"native"`` (the native kernels wherever they apply, whatever
            the size; the rest runs eager). All agree to rounding. The round-1 values ``"fast"``,
            ``"foreach"``, ``"forloop"``, ``"compiled"`` and ``"fused"`` still work and warn."""

_torch_flags_doc = r"""maximize: ascend the objective (the gradient's sign is flipped before the update), as in
            ``torch.optim``; per param group.
        foreach: ``None``/``True``: the multi-tensor path; ``False``: the readable per-tensor
            reference loop (implies eager kernels); per param group.
        fused: see the optimizer (``None`` is always accepted; a value the optimizer cannot honour
            raises at construction).
        capturable: not supported (``True`` raises: the prox's data-dependent solvers cannot be
            captured in a CUDA graph).
        differentiable: not supported (``True`` raises: the prox is applied in place under
            ``no_grad``)."""


class ProxOptimizer(Optimizer):
    r"""Base class of the proximal optimizers: a smooth update, then the prox of each group's regularizer.

    A subclass keeps only its math: the class docstring with the update, argument checks of its own
    hyperparameters and the step functions. Everything else lives here, the same in every optimizer.

    **What a subclass implements** (``torch.optim.Adam`` is the model, with its ``_init_group`` and
    functional step):

    - ``__init__``: check its own scalar arguments, build ``defaults`` (every hyperparameter that may
      vary per group, including ``regularizer``) and call
      ``super().__init__(params, defaults, check_finite=..., implementation=..., maximize=...,
      foreach=..., fused=..., capturable=..., differentiable=...)``.
    - ``_check_group(self, group)`` (optional): raise ``ValueError`` for an invalid hyperparameter of
      one group, naming the value. The base prefixes ``"param group i: "`` and also checks ``lr``
      (a finite float ≥ 0; ``lr = 0`` is legal and the prox with step 0 is the identity).
      It runs at construction and in :meth:`add_param_group`, before the group is kept.
    - ``_init_group(self, group, params) -> state``: create missing per-parameter state lazily
      (``self.state[p]``) and return whatever the step functions need (typically a tuple of lists
      such as ``(exp_avgs, exp_avg_sqs, steps)``). Called only after every check of :meth:`step`
      passed, so an error never leaves new state behind.
    - ``_smooth_step(self, group, params, grads, state, info, *, fuse_prox) -> ctx``: the update
      before the prox (momentum, preconditioning, dual averaging...). ``grads`` are already negated
      when ``group["maximize"]`` is set and already have their parameter's strides. With
      ``fuse_prox=True`` the subclass may also apply the prox in the same kernel (then ``ctx`` says
      so); it is ``False`` whenever a pre-prox hook is registered, so hooks always see the point
      between the two halves. ``info`` is a dict for statistics (e.g. ``inner_iters``).
    - ``_prox_step(self, group, params, state, ctx, info)``: the prox (through
      :func:`~lightning_prox.optim._prox.prox_tensors_` or the regularizer's public ``prox`` /
      ``prox_multi``). Skip it when ``group["lr"] == 0`` or the regularizer is absent / ``lam == 0``.
    - ``_prox_metrics(self, group) -> list[Tensor | None] | None`` (optional): the diagonal metric
      of each parameter at its last step for :meth:`prox_stats` (``None``: Euclidean prox).
    - ``_setstate_defaults: ClassVar[dict]``: group keys added after a release, filled in by
      :meth:`__setstate__` for older checkpoints.
    - ``_torch_flags: ClassVar[frozenset]``: which of ``"maximize"``, ``"foreach"``, ``"fused"``
      the subclass honours (``"maximize"`` and ``"foreach"`` by default; ``fused=True`` is refused
      unless ``"fused"`` is listed).

    **Regularizers in param groups.** A group's ``regularizer`` (object, spec dict or ``None``) is
    turned into plain data at construction **and** in :meth:`add_param_group`:
    ``group["regularizer"]`` becomes :meth:`Regularizer.spec` (or ``None``) and ``group["lam"]`` its
    strength (a group that already sets ``lam`` keeps it), the one value a scheduler writes. Step
    code gets the object back with :func:`group_regularizer(group) <group_regularizer>` (cached).
    Each regularizer is checked against each of its group's tensors with
    :meth:`Regularizer.check_param`; a misfit raises ``ValueError`` naming the group, the tensor (its
    ``param_names`` entry when present), its shape and the regularizer, and the group is not added.

    **State contract.** ``state_dict()`` holds only tensors, numbers, strings, lists and dicts
    (regularizers as specs), so ``torch.load(..., weights_only=True)`` restores it and a resumed
    run is bit-exact. :meth:`__setstate__` (also run by ``load_state_dict``) fills group keys that
    older checkpoints lack.

    **The step.** :meth:`step` runs the closure, then for all groups: refuses sparse gradients
    (and complex parameters unless ``_supports_complex``), runs the finite-gradient check
    (``check_finite``) over every gradient, all before any parameter or state changes; then gathers
    state (``_init_group``), runs ``_smooth_step`` per group, calls the pre-prox hooks
    (:meth:`register_pre_prox_hook`) and runs ``_prox_step`` per group. :meth:`prox_stats` returns the
    per-group statistics of the last step.

    **One implementation switch**, the same words everywhere: ``implementation="auto" | "eager" |
    "native"`` (``self.implementation``); ``foreach=False`` selects the per-tensor reference loop.

    Args:
        params: iterable of parameters, of ``(name, parameter)`` pairs or of param-group dicts.
        defaults: the subclass's per-group defaults (including ``regularizer``).
        {check_finite}
        {implementation}
        {torch_flags}

    Example:
        A minimal proximal gradient method (plain gradient step, then the group's prox):

        >>> import torch
        >>> from lightning_prox.optim import ProxOptimizer
        >>> from lightning_prox.optim._prox import prox_tensors_
        >>> from lightning_prox.regularizers import L1
        >>> class ProxGD(ProxOptimizer):
        ...     def __init__(self, params, lr=0.1, regularizer=None):
        ...         super().__init__(params, dict(lr=lr, regularizer=regularizer))
        ...     def _init_group(self, group, params):
        ...         return None
        ...     def _smooth_step(self, group, params, grads, state, info, *, fuse_prox):
        ...         torch._foreach_add_(params, grads, alpha=-group["lr"])
        ...     def _prox_step(self, group, params, state, ctx, info):
        ...         prox_tensors_(group_regularizer(group), params, group["lr"], None, info)
        >>> from lightning_prox.optim import group_regularizer
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.05]))
        >>> opt = ProxGD([w], lr=0.5, regularizer=L1(0.2))
        >>> w.grad = torch.tensor([0.2, 0.0])
        >>> _ = opt.step()  # (0.9, 0.05), then soft threshold at 0.1
        >>> w.data
        tensor([0.8000, 0.0000])
    """

    _setstate_defaults: ClassVar[dict[str, Any]] = {}
    _torch_flags: ClassVar[frozenset[str]] = frozenset({"maximize", "foreach"})
    _supports_complex: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        defaults: dict[str, Any],
        *,
        check_finite: bool = True,
        implementation: str = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        name = type(self).__name__
        implementation, foreach = _resolve_implementation(implementation, foreach)
        if capturable:
            raise ValueError(
                f"{name} does not support capturable=True: its prox runs data-dependent solvers that "
                "a CUDA graph cannot capture; leave capturable=False"
            )
        if differentiable:
            raise ValueError(
                f"{name} does not support differentiable=True: the prox is applied in place under "
                "no_grad; leave differentiable=False"
            )
        if not isinstance(maximize, bool):
            raise ValueError(f"maximize must be True or False, got {maximize!r}")
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"foreach must be None, True or False, got {foreach!r}")
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"fused must be None, True or False, got {fused!r}")
        if fused and "fused" not in self._torch_flags:
            raise ValueError(f"{name} has no fused kernel: fused=True cannot be honoured; leave fused=None")
        if fused and foreach is False:
            raise ValueError("fused=True and foreach=False contradict each other; set at most one")
        if foreach is False and implementation == "native":
            raise ValueError(
                "foreach=False (the per-tensor reference loop) cannot run implementation='native'; "
                "use implementation='eager' or 'auto'"
            )
        # set before Optimizer.__init__, which calls add_param_group for every group
        self.check_finite = bool(check_finite)
        self.implementation: str = implementation
        self._last_info: list[dict[str, Any]] = []
        self._pre_prox_hooks: OrderedDict[int, Callable[[ProxOptimizer], None]] = OrderedDict()
        defaults = dict(defaults)
        defaults.setdefault("regularizer", None)
        defaults.update(maximize=maximize, foreach=foreach)
        if "fused" in self._torch_flags:
            defaults["fused"] = fused
        super().__init__(params, defaults)
        if implementation != "eager" and any(
            p.device.type == "cpu" for group in self.param_groups for p in group["params"]
        ):
            libraries = self._native_libraries()
            if self.check_finite:
                libraries.append(("_finite_kernels.cpp", _finite_kernels.KERNELS))
            for source, table in libraries:
                _native.prefetch(source, table)

    def _native_libraries(self) -> list[tuple[str, Sequence[_native.Kernel]]]:
        """The native libraries (source, signature table) that the CPU steps of these param groups
        may run: their first builds start in the background at construction (none by default)."""
        return []

    # -- param groups ---------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> None:
        """Raise ``ValueError`` for an invalid hyperparameter of ``group`` (subclasses extend it)."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as ``torch.optim``), normalizing and checking it before it is kept.

        The group's ``regularizer`` becomes a spec plus ``lam``, its hyperparameters are checked and
        its regularizer is checked against every tensor; on ``ValueError`` the optimizer is unchanged.
        """
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        try:
            _normalize_group(self, self.param_groups[index], index)
        except Exception:
            self.param_groups.pop()
            raise
        self._last_info.append({})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        keys = {"regularizer": None, "lam": 0.0, "maximize": False, "foreach": None}
        if "fused" in self._torch_flags:
            keys["fused"] = None
        keys.update(self._setstate_defaults)
        for group in self.param_groups:
            for k, v in keys.items():
                group.setdefault(k, v)
        self.__dict__.setdefault("check_finite", True)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("_pre_prox_hooks", OrderedDict())
        info = self.__dict__.setdefault("_last_info", [])
        info.extend({} for _ in range(len(self.param_groups) - len(info)))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``torch.optim.Optimizer.load_state_dict``, except that float32 state of half-precision
        parameters stays float32: torch casts loaded state to the parameter's dtype, and the
        optimizers keep moments and sums of float16/bfloat16 parameters in float32 (small s·g² terms
        underflow in float16), so a resumed run continues exactly."""
        super().load_state_dict(state_dict)
        saved = state_dict.get("state", {})
        params = [p for g in self.param_groups for p in g["params"]]
        for index, p in enumerate(params):
            entry = saved.get(index)
            if entry is None or p.dtype not in (torch.float16, torch.bfloat16):
                continue
            for key, value in entry.items():
                if isinstance(value, Tensor) and value.dtype == torch.float32 and value.shape == p.shape:
                    self.state[p][key] = value.to(device=p.device, copy=True)

    # -- hooks ----------------------------------------------------------------------------------
    def register_pre_prox_hook(self, hook: Callable[[ProxOptimizer], None]) -> RemovableHandle:
        """Call ``hook(optimizer)`` in every :meth:`step` after the smooth update, before the prox.

        The hook sees every group's smooth update done and no prox applied yet (for ProxSGD/ProxGen
        the parameters hold θ̂; for dual-averaging methods the sums are updated, the parameters not
        yet). It may modify parameters and state in place (e.g. rebalance layers); its return value
        is ignored. While any hook is registered, fused smooth + prox kernels are not used.

        Returns:
            A handle whose ``remove()`` unregisters the hook.

        Example:
            >>> import torch
            >>> from lightning_prox.optim import ProxSGD
            >>> w = torch.nn.Parameter(torch.ones(2))
            >>> opt = ProxSGD([w], lr=0.1)
            >>> seen = []
            >>> handle = opt.register_pre_prox_hook(lambda o: seen.append(w.detach().clone()))
            >>> w.grad = torch.ones(2)
            >>> _ = opt.step()
            >>> seen[0]
            tensor([0.9000, 0.9000])
            >>> handle.remove()
        """
        if not callable(hook):
            raise ValueError(f"hook must be callable, got {hook!r}")
        handle = RemovableHandle(self._pre_prox_hooks)
        self._pre_prox_hooks[handle.id] = hook
        return handle

    # -- the step -------------------------------------------------------------------------------
    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> Any:
        raise NotImplementedError

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: Any,
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> Any:
        raise NotImplementedError

    def _prox_step(
        self, group: dict[str, Any], params: list[Tensor], state: Any, ctx: Any, info: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def _gather(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """(params, grads) per group for the parameters that have a gradient, after the input checks."""
        name = type(self).__name__
        gathered = []
        for i, group in enumerate(self.param_groups):
            params, grads = [], []
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise ValueError(
                        f"{name} does not support sparse gradients ({_label(group, i, j, p)}); "
                        "use dense gradients"
                    )
                if torch.is_complex(p) and not self._supports_complex:
                    raise ValueError(f"{name} does not support complex parameters ({_label(group, i, j, p)})")
                params.append(p)
                grads.append(g)
            # only a group where some tensor has no gradient pays for the regularizer lookup
            partial = bool(params) and len(params) != len(group["params"])
            reg = group_regularizer(group) if partial and group.get("regularizer") is not None else None
            if reg is not None and reg.joint:
                missing = [_label(group, i, j, p) for j, p in enumerate(group["params"]) if p.grad is None]
                raise ValueError(
                    f"{name}: {type(reg).__name__} couples every tensor of param group {i}, but "
                    f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} has no gradient at this "
                    "step; every tensor of the group must take part in the loss (nothing was changed)"
                )
            gathered.append((params, grads))
        if self.check_finite:
            every = [g for _, gs in gathered for g in gs]
            check_finite_grads(every, optimizer=self, native=self.implementation != "eager")
        for (params, grads), group in zip(gathered, self.param_groups):
            for k, (p, g) in enumerate(zip(params, grads)):
                # the fused kernels index grad and param alike: a gradient laid out differently
                # (e.g. row-major into a channels_last weight) is copied into the parameter's layout
                if g.stride() != p.stride() and p.numel() > 1:
                    grads[k] = torch.empty_like(p).copy_(g)
            if group["maximize"] and grads:
                grads[:] = torch._foreach_neg(grads)
        return gathered

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step on every param group; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = self._gather()
        fuse = not self._pre_prox_hooks
        pending = []
        for i, (group, (params, grads)) in enumerate(zip(self.param_groups, gathered)):
            info: dict[str, Any] = {}
            if params:
                state = self._init_group(group, params)
                ctx = self._smooth_step(group, params, grads, state, info, fuse_prox=fuse)
                pending.append((group, params, state, ctx, info))
            self._last_info[i] = info
        for hook in list(self._pre_prox_hooks.values()):
            hook(self)
        for group, params, state, ctx, info in pending:
            self._prox_step(group, params, state, ctx, info)
        return loss

    # -- statistics -----------------------------------------------------------------------------
    def _prox_metrics(self, group: dict[str, Any]) -> list[Tensor | None] | None:
        """The diagonal prox metric of each tensor of ``group`` at its last step (None: Euclidean)."""
        return None

    def prox_stats(self) -> list[dict[str, Any]]:
        """Per-group statistics of the last step, for a callback to log (computed when called).

        Returns:
            One dict per param group with ``lr``, ``lam``, ``regularizer`` (its name or None),
            ``mean_threshold`` (lr·λ·mean(1/metric) over the group's elements, the ℓ1 soft
            threshold averaged; lr·λ for a Euclidean prox; a 0-dim tensor), ``zeros`` and ``numel``
            (exact zeros among the group's parameters; 0-dim tensors, no host read) and the prox's
            statistics of the last step (e.g. ``inner_iters`` of an inexact solver).
        """
        return [
            group_stats(self, group, self._stats_metric_fn(group), self._last_info[i])
            for i, group in enumerate(self.param_groups)
        ]

    def _stats_metric_fn(
        self, group: dict[str, Any]
    ) -> Callable[[dict[str, Any]], list[Tensor | None]] | None:
        if self._prox_metrics(group) is None:
            return None
        return self._prox_metrics  # type: ignore[return-value]


ProxOptimizer.__doc__ = (ProxOptimizer.__doc__ or "").format(
    check_finite=_check_finite_doc, implementation=_implementation_doc, torch_flags=_torch_flags_doc
)


def _resolve_implementation(implementation: Any, foreach: bool | None) -> tuple[str, bool | None]:
    if implementation in _DEPRECATED_IMPLEMENTATIONS:
        new, fe = _DEPRECATED_IMPLEMENTATIONS[implementation]
        hint = f"implementation={new!r}" + ("" if fe is None else f" with foreach={fe}")
        warnings.warn(
            f"implementation={implementation!r} is deprecated; use {hint}", DeprecationWarning, stacklevel=4
        )
        return new, foreach if fe is None else fe
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
    return implementation, foreach


def check_lr(lr: Any) -> None:
    """``lr`` must be a finite float ≥ 0 (0 is legal: the prox with step 0 is the identity)."""
    if isinstance(lr, Tensor):
        raise ValueError("lr must be a float (a tensor lr is not supported); got a Tensor")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr >= 0) or math.isinf(lr):
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")


def _label(group: dict[str, Any], i: int, j: int, p: Tensor) -> str:
    names = group.get("param_names")
    name = f" {names[j]!r}" if isinstance(names, list) and j < len(names) else ""
    return f"param group {i}, tensor {j}{name} (shape {tuple(p.shape)})"


def _normalize_group(opt: ProxOptimizer, group: dict[str, Any], i: int) -> None:
    """Check one group's hyperparameters and turn its regularizer into ``spec`` + ``lam`` (in place).

    Everything is checked before ``group`` is written, so a failure leaves it as it came.
    """
    try:
        check_lr(group["lr"])
        opt._check_group(group)
        for flag in ("maximize",):
            if not isinstance(group.get(flag, False), bool):
                raise ValueError(f"{flag} must be True or False, got {group[flag]!r}")
        reg = as_regularizer(group.get("regularizer"))
        lam = group.get("lam", 0.0 if reg is None else reg.lam)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or math.isinf(lam):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    except ValueError as err:
        raise ValueError(f"param group {i}: {err}") from None
    if reg is not None and reg.joint and group.get("foreach") is False:
        raise ValueError(
            f"param group {i}: {type(reg).__name__}'s groups span the group's tensors, so the per-tensor "
            "loop foreach=False cannot apply its prox; leave foreach=None"
        )
    if reg is not None:
        _check_fit(reg, group, i)
    group["regularizer"] = None if reg is None else reg.spec()
    group["lam"] = float(lam)


def _check_fit(reg: Regularizer, group: dict[str, Any], i: int) -> None:
    for j, p in enumerate(group["params"]):
        where = _label(group, i, j, p)
        try:
            reg.check_param(tuple(p.shape), where)
        except ValueError as err:
            msg = str(err)
            if where not in msg:
                msg = f"{where}: {msg}"
            raise ValueError(f"{msg} [regularizer {reg!r}]") from None


def check_fused_devices(group: dict[str, Any]) -> None:
    """``fused=True`` needs every parameter of ``group`` on CPU or CUDA (torch's fused kernels)."""
    if group.get("fused"):
        if group.get("foreach") is False:
            raise ValueError("fused=True and foreach=False contradict each other; set at most one")
        for p in group["params"]:
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError(
                    f"fused=True needs parameters on CPU or CUDA, got one on {p.device}; leave fused=None"
                )
