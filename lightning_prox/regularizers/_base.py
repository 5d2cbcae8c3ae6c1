r"""The regularizer contract, the name registry and the argument checks shared by every regularizer.

A regularizer is a small frozen dataclass of plain hyperparameters:

.. math::

    \text{value}(x) = R(x) \quad (\lambda \text{ included}), \qquad
    \text{prox}(z, \text{step}, \text{metric}) =
    \operatorname{argmin}_x \; \text{step}\cdot R(x) + \tfrac12 \sum_i \text{metric}_i (x_i - z_i)^2 .

Optimizers never keep the object itself in ``param_groups`` or state, so that checkpoints load with
``torch.load(weights_only=True)``: a group holds the plain :meth:`Regularizer.spec` (registry name
plus hyperparameters, without ``lam``) and the strength ``group["lam"]``; :func:`from_spec` rebuilds
the object.

Non-finite inputs (the same policy for every regularizer):

* NaN in ``z`` stays NaN in the result, in ``prox``, ``prox_multi`` and the optimizers' in-place
  kernels alike: a NaN never comes out as an exact zero or a quantization level, so divergence is
  never reported as sparsity. The other entries of its group (group lasso) come out NaN or zero;
  a :class:`~lightning_prox.regularizers.NuclearNorm` matrix with a NaN is NaN throughout.
* ``z = ±inf`` comes out as ``±inf`` (no finite penalty pulls an infinite point back) for the
  elementwise regularizers, the closed forms of group lasso (no metric, or one constant on each
  group; the other entries of the group are then left unshrunk, the limit of the prox) and
  :class:`~lightning_prox.regularizers.CoupledGroupLasso`. Where the prox needs an iterative solve
  (``GroupLasso`` under a metric that varies inside the group) the infinite entries come out NaN,
  and a ``NuclearNorm`` matrix with an infinite entry (it has no SVD) is NaN throughout. An infinite
  input never comes out finite.
* ``metric = +inf`` pins the coordinate: ``x_i = z_i`` (no ``0·inf``, no ``inf/inf``; a
  ``NuclearNorm`` matrix with such an entry is pinned whole, ``x = z``); a tiny or
  subnormal metric gives a large but finite threshold, never NaN or inf.
* A metric that is NaN, zero or negative is rejected with a ``ValueError`` when it lives on the CPU
  (checked before anything is computed); on accelerators that check would cost a device sync, and a
  NaN metric entry gives NaN in that coordinate instead.
* Thresholds and comparisons of float16/bfloat16 inputs run in float32; ``step·lam`` and
  ``step/metric`` saturate at the largest finite value of that dtype.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = [
    "ProxOptions",
    "Regularizer",
    "from_spec",
    "get_regularizer_class",
    "registered_names",
]

#: every registered class under its qualified name ``module.QualName``
_REGISTRY: dict[str, type[Regularizer]] = {}
#: the library's own classes under their short names (``"L1"``), as checkpoints have always named them
_SHORT: dict[str, type[Regularizer]] = {}
_LIBRARY = "lightning_prox."

Step = float | Tensor


@dataclasses.dataclass(frozen=True)
class ProxOptions:
    """Per-call options of the multi-tensor hook :meth:`Regularizer._prox_multi`.

    :meth:`Regularizer.prox_multi` validates its arguments and passes them on in one of these, so an
    implementation reads only what it uses (closed forms ignore everything but ``out``).

    Args:
        x0s: warm starts of iterative solvers, one per ``z``, or ``None``.
        max_iters: iteration cap for this call, or ``None`` for the regularizer's own.
        rtol: solver tolerance for this call, or ``None`` for the regularizer's own.
        info: a dict to fill with ``inner_iters`` and ``screened``, or ``None``.
        out: tensors to write the results into (may be the inputs themselves), or ``None``.

    Example:
        >>> ProxOptions(max_iters=5).rtol is None
        True
    """

    x0s: list[Tensor] | None = None
    max_iters: int | None = None
    rtol: float | None = None
    info: dict | None = None
    out: list[Tensor] | None = None


def _registry_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_prox_args(z: Tensor, step: Step, metric: Tensor | None) -> None:
    if not isinstance(z, Tensor):
        raise ValueError(f"z must be a tensor, got {type(z).__name__}")
    check_step(step)
    check_metric(metric, z)


#: (object, class) whose own ``prox`` is running: ``super().prox(...)`` inside it must reach the
#: parent's math, not dispatch back to the subclass
_ACTIVE: contextvars.ContextVar[tuple[Any, type] | None] = contextvars.ContextVar("_ACTIVE", default=None)


def _run_own(cls: type, raw: Callable[..., Tensor], self: Any, z: Tensor, step: Step, metric: Any) -> Tensor:
    token = _ACTIVE.set((self, cls))
    try:
        return raw(self, z, step, metric)
    finally:
        _ACTIVE.reset(token)


def _install_prox(cls: type, raw: Callable[..., Tensor]) -> None:
    """Put a subclass's own ``prox`` behind the shared checks; its unchecked core serves prox_multi."""

    @functools.wraps(raw)
    def prox(self: Regularizer, z: Tensor, step: Step, metric: Tensor | None = None) -> Tensor:
        _check_prox_args(z, step, metric)
        if self.lam == 0.0:
            return z.clone()
        return _run_own(cls, raw, self, z, step, metric)

    def core(self: Regularizer, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        return _run_own(cls, raw, self, z, step, metric)

    prox.__wrapped_prox__ = raw  # type: ignore[attr-defined]
    cls.prox = prox  # type: ignore[attr-defined]
    if "_prox" not in cls.__dict__:
        cls._prox = core  # type: ignore[attr-defined]
    if "_prox_multi" not in cls.__dict__:
        # a parent's fast multi-tensor kernel would bypass this prox: loop over it instead
        cls._prox_multi = Regularizer._prox_multi  # type: ignore[attr-defined]
        cls._writes_out = False  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """Base class of every regularizer: ``value`` and ``prox`` with one convention.

    **Writing one.** Subclass it as a frozen dataclass (its first field, ``lam``, is inherited) and
    implement two methods:

    * :meth:`value` ``(x)``: λ·R(x) as a 0-dim tensor;
    * :meth:`prox` ``(z, step, metric)``: the minimizer of ``step·R(x) + ½ Σ metric·(x − z)²``.

    The base class checks the arguments of ``prox`` before your code runs (``step > 0``, ``metric``
    ``None`` or a positive tensor shaped like ``z``) and makes ``lam == 0`` the identity, so your
    ``prox`` only does the math. Every optimizer calls it (through :meth:`prox_multi`),
    :meth:`spec` stores its fields in checkpoints, and YAML names it by ``class_path``. For an
    elementwise penalty subclass :class:`~lightning_prox.regularizers.ElementwiseRegularizer`
    instead: it needs only the scalar map and runs at the speed of the library's own.

    **Declaring structure.** Callbacks and the monitor ask the class, not its name:
    :attr:`groups_by` names the field holding a grouping (``"in"``/``"out"``), :attr:`counts_rank`
    says the rank is the sparsity measure, :attr:`quant_levels` gives quantization levels, and
    :attr:`warm_start` says which point warm-starts an iterative solver.

    **Names.** Every subclass is registered under ``"module.ClassName"``; the library's own
    classes also under their short names (``"L1"``). A class named like a library class in another
    module neither replaces nor shadows it.

    Args:
        lam: strength λ ≥ 0.

    Example:
        >>> import dataclasses, torch
        >>> @dataclasses.dataclass(frozen=True)
        ... class Ridge(Regularizer):
        ...     # λ/2·‖x‖², prox = metric·z / (metric + step·λ)
        ...     def value(self, x):
        ...         return 0.5 * self.lam * x.double().square().sum()
        ...
        ...     def prox(self, z, step, metric=None):
        ...         m = torch.ones_like(z) if metric is None else metric
        ...         return m * z / (m + step * self.lam)
        >>> Ridge(1.0).prox(torch.tensor([2.0, -4.0]), step=1.0)
        tensor([ 1., -2.])
        >>> Ridge(1.0).prox(torch.tensor([2.0]), step=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: step must be a finite number > 0, got -1.0; pass the (positive) learning rate
    """

    lam: float = 0.0

    #: True when ``prox`` with a non-uniform metric is solved iteratively (group lasso, nuclear norm).
    inexact_under_metric: ClassVar[bool] = False
    #: name of the field that holds the grouping (``"in"`` or ``"out"``), or ``None`` when the
    #: regularizer is not grouped; :attr:`group_dim` reads it.
    groups_by: ClassVar[str | None] = None
    #: True when the regularizer targets the rank of the weight viewed as a matrix (monitors count it).
    counts_rank: ClassVar[bool] = False
    #: True when :meth:`_prox_multi` writes into ``opts.out`` itself (else the base class copies).
    _writes_out: ClassVar[bool] = False
    #: True when the prox couples all tensors of its param group (groups that span tensors): every
    #: tensor of the group needs a gradient at every step, and the per-tensor loop cannot run it.
    joint: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("prox")
        if own is not None and not hasattr(own, "__wrapped_prox__"):
            _install_prox(cls, own)  # the documented extension point
        if cls.__name__.startswith("_") or cls.__dict__.get("_base_class", False):
            return
        key = _registry_name(cls)
        old = _REGISTRY.get(key)
        if old is not None and old is not cls:
            warnings.warn(
                f"regularizer {key!r} was defined again; specs naming it now build the new class",
                stacklevel=2,
            )
        _REGISTRY[key] = cls
        if cls.__module__.startswith(_LIBRARY):
            if cls.__name__ in _SHORT and _SHORT[cls.__name__] is not cls:
                raise TypeError(
                    f"two library regularizers are named {cls.__name__!r}: "
                    f"{_registry_name(_SHORT[cls.__name__])} and {key}"
                )
            _SHORT[cls.__name__] = cls

    def __new__(cls, *args: Any, **kwargs: Any) -> Regularizer:
        params = cls.__dict__.get("__dataclass_params__")
        if params is None or not params.frozen:
            raise TypeError(
                f"{cls.__qualname__} must be a frozen dataclass: decorate it with "
                "@dataclasses.dataclass(frozen=True) (its fields are the hyperparameters that spec() "
                "stores in checkpoints; without the decorator they would be lost on resume)"
            )
        return super().__new__(cls)

    def __post_init__(self) -> None:
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(
                f"{type(self).__name__}: lam must be a finite number >= 0, got {lam!r}; "
                "use lam=0 to switch the regularizer off."
            )
        object.__setattr__(self, "lam", float(lam))

    # -- contract -----------------------------------------------------------------------------
    def value(self, x: Tensor) -> Tensor:
        """R(x) with λ included, as a 0-dim tensor in ``x``'s dtype (float32 for half types)."""
        raise NotImplementedError(f"{type(self).__name__} must implement value(self, x)")

    def prox(self, z: Tensor, step: Step, metric: Tensor | None = None) -> Tensor:
        """argmin_x step·R(x) + ½ Σ metric·(x − z)²; returns a new tensor, ``z`` is untouched.

        This is the method a subclass implements (with the same signature); the base class checks
        the arguments before the subclass's code runs and returns a copy of ``z`` when ``lam == 0``.

        Args:
            z: the point to map.
            step: step size > 0, a float or a 0-dim tensor.
            metric: ``None`` (all ones) or a positive tensor shaped like ``z`` (a diagonal metric,
                e.g. Adam's ``sqrt(v̂) + eps``); ``+inf`` entries pin their coordinates.

        Example:
            >>> import torch
            >>> from lightning_prox.regularizers import L1
            >>> L1(0.5).prox(torch.tensor([1.0, -0.2]), step=1.0, metric=torch.tensor([2.0, 1.0]))
            tensor([0.7500, 0.0000])
        """
        _check_prox_args(z, step, metric)
        if self.lam == 0.0:
            return z.clone()
        active = _ACTIVE.get()
        if active is not None and active[0] is self:  # super().prox(...) from a subclass's own prox
            return super(active[1], self)._prox(z, step, metric)  # type: ignore[misc]
        return self._prox(z, step, metric)

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        """The unchecked prox of one tensor (a subclass's ``prox`` becomes this automatically)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement prox(self, z, step, metric=None), the minimizer of "
            "step*R(x) + 0.5*sum(metric*(x - z)**2)"
        )

    def prox_multi(
        self,
        zs: list[Tensor],
        step: Step,
        metrics: list[Tensor] | None = None,
        x0s: list[Tensor] | None = None,
        *,
        max_iters: int | None = None,
        rtol: float | None = None,
        info: dict | None = None,
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """The prox of every tensor of ``zs`` at once (same semantics as :meth:`prox`, one tensor each).

        This is the entry point optimizers call on a whole param group: closed forms run as
        chunked multi-tensor passes, and the iterative solvers (group lasso and nuclear norm under a
        non-uniform metric) run over all groups of all tensors at once. It validates the arguments
        and calls :meth:`_prox_multi`, whose default runs :meth:`prox`'s math tensor by tensor.

        Args:
            zs: the points to map (not modified).
            step: step size > 0 shared by all tensors, a float or a 0-dim tensor.
            metrics: ``None`` (all ones) or one positive tensor per ``z``, shaped like it.
            x0s: warm starts for iterative solvers, one per ``z`` (ignored by closed forms).
            max_iters: overrides the regularizer's iteration cap for this call (iterative solvers).
            rtol: overrides the regularizer's tolerance for this call.
            info: when a dict, receives ``info["inner_iters"]`` (solver iterations actually run, the
                max over tensors; 0 for closed forms) and ``info["screened"]`` (number of groups found
                zero by the exact screening test; 0 for elementwise regularizers).
            out: when given, one tensor per ``z`` (same shape and dtype) that receives the result and
                is returned; it may be ``zs`` itself (an in-place prox, as optimizers want). The
                chunked kernels and the exact group-lasso solver write into it directly, without a
                parameter-sized temporary; other regularizers copy.

        Returns:
            one new tensor per ``z``, with ``z``'s dtype, shape and device (``out`` when given).

        Example:
            >>> import torch
            >>> from lightning_prox.regularizers import L1
            >>> info = {}
            >>> L1(0.5).prox_multi([torch.tensor([1.0, -0.2]), torch.tensor([-3.0])], step=1.0, info=info)
            [tensor([0.5000, 0.0000]), tensor([-2.5000])]
            >>> info
            {'inner_iters': 0, 'screened': 0}
        """
        zs = list(zs)
        check_step(step)
        if metrics is not None:
            metrics = list(metrics)
            if len(metrics) != len(zs):
                raise ValueError(
                    f"metrics must hold one tensor per z: got {len(metrics)} for {len(zs)} tensors"
                )
            for z, m in zip(zs, metrics):
                check_metric(m, z, positive=False)
            check_positive(metrics)
        if x0s is not None:
            x0s = list(x0s)
            if len(x0s) != len(zs) or any(x0.shape != z.shape for x0, z in zip(x0s, zs)):
                raise ValueError("x0s must hold one warm start per z, each shaped like its z")
        if max_iters is not None and (
            isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1
        ):
            raise ValueError(f"max_iters must be an int >= 1, got {max_iters!r}")
        if rtol is not None and (
            isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0
        ):
            raise ValueError(f"rtol must be a number >= 0, got {rtol!r}")
        if out is not None:
            out = list(out)
            if len(out) != len(zs) or any(o.shape != z.shape or o.dtype != z.dtype for o, z in zip(out, zs)):
                raise ValueError("out must hold one tensor per z, each with z's shape and dtype")
        return run_prox_multi(
            self, zs, step, metrics, x0s, max_iters=max_iters, rtol=rtol, info=info, out=out
        )

    def _prox_multi(
        self, zs: list[Tensor], step: Step, metrics: list[Tensor] | None, opts: ProxOptions
    ) -> list[Tensor]:
        """The multi-tensor hook behind :meth:`prox_multi`, called with checked arguments.

        Override it for speed (one pass over all tensors, or one solver loop over all groups). Set
        the class attribute ``_writes_out = True`` when it writes into ``opts.out`` itself; otherwise
        ``opts.out`` is ``None`` and the base class copies the returned tensors. The default runs
        the unchecked :meth:`prox` math of each tensor.
        """
        ms: list[Tensor | None] = list(metrics) if metrics is not None else [None] * len(zs)
        return [self._prox(z, step, m) for z, m in zip(zs, ms)]

    def check_param(self, shape: tuple[int, ...], name: str = "parameter") -> None:
        """Raise ``ValueError`` when this regularizer cannot apply to a tensor of ``shape``.

        Called when parameters are selected (before training) so that a grouping that does not fit
        a tensor fails early with the parameter's name. Elementwise regularizers accept any shape.

        Example:
            >>> from lightning_prox.regularizers import L1
            >>> L1(0.1).check_param((3, 4), "fc.weight")  # any shape: no error
        """

    def __call__(self, x: Tensor) -> Tensor:
        return self.value(x)

    # -- declared structure -------------------------------------------------------------------
    @property
    def group_dim(self) -> str | None:
        """The grouping (``"in"`` or ``"out"``) this instance applies, read from :attr:`groups_by`.

        Example:
            >>> from lightning_prox.regularizers import GroupLasso, L1
            >>> GroupLasso(0.1, dim="out").group_dim, L1(0.1).group_dim
            ('out', None)
        """
        return None if self.groups_by is None else getattr(self, self.groups_by)

    @property
    def quant_levels(self) -> tuple[float, ...] | None:
        """The quantization levels the prox pulls values towards, or ``None`` (not a quantizer).

        Example:
            >>> from lightning_prox.regularizers import L1, Quantization
            >>> Quantization(0.1, levels=(-1, 0, 1)).quant_levels, L1(0.1).quant_levels
            ((-1.0, 0.0, 1.0), None)
        """
        return None

    @property
    def zero_threshold_law(self) -> tuple[float, float]:
        r"""``(c, p)`` such that the Euclidean prox with step ``s`` maps exactly the values with
        :math:`|z| \le c\,(s\lambda)^p` to zero (for a group, its norm; for a matrix, its singular
        values). :class:`~lightning_prox.optim.ProxGen`'s metric floor uses it to keep every step's
        zeroing threshold within its cap. The default ``(1, 1)`` is soft thresholding's; a
        regularizer that does not zero values (e.g. a quantizer) keeps it, which bounds its
        pull per step the same way.

        Example:
            >>> from lightning_prox.regularizers import L0, L1
            >>> L1(0.1).zero_threshold_law, L0(0.1).zero_threshold_law
            ((1.0, 1.0), (1.4142135623730951, 0.5))
        """
        return (1.0, 1.0)

    @property
    def warm_start(self) -> str:
        """Which point should warm-start an iterative solver: ``"iterate"`` (the current weights, as
        proximal-gradient solvers want) or ``"solution"`` (the previous prox result, for exact
        root-finding solvers). Closed forms ignore warm starts.

        Example:
            >>> from lightning_prox.regularizers import GroupLasso
            >>> GroupLasso(0.1).warm_start, GroupLasso(0.1, solver="pg").warm_start
            ('solution', 'iterate')
        """
        return "iterate"

    # -- plain-data round trip ------------------------------------------------------------------
    @classmethod
    def registry_name(cls) -> str:
        """The name :meth:`spec` stores: the short class name for the library's own regularizers,
        ``"module.ClassName"`` for every other class.

        Example:
            >>> from lightning_prox.regularizers import L1
            >>> L1.registry_name()
            'L1'
        """
        return cls.__name__ if _SHORT.get(cls.__name__) is cls else _registry_name(cls)

    def spec(self) -> dict[str, Any]:
        """Registry name plus hyperparameters other than ``lam``, as checkpoint-safe plain data.

        Example:
            >>> from lightning_prox.regularizers import MCP
            >>> MCP(0.1, b=2.0).spec()
            {'name': 'MCP', 'b': 2.0, 'exact': True}
        """
        out: dict[str, Any] = {"name": self.registry_name()}
        for f in dataclasses.fields(self):
            if f.name != "lam":
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def with_lam(self, lam: float) -> Regularizer:
        """The same regularizer with strength ``lam`` (used when a scheduler wrote ``group["lam"]``)."""
        return self if lam == self.lam else dataclasses.replace(self, lam=lam)


def registered_names() -> list[str]:
    """Names accepted by :func:`from_spec` and :func:`get_regularizer_class`: the library's short
    names and every class's ``"module.ClassName"``.

    Example:
        >>> "L1" in registered_names() and "lightning_prox.regularizers.l1.L1" in registered_names()
        True
    """
    return sorted({*_SHORT, *_REGISTRY})


def get_regularizer_class(name: str) -> type[Regularizer]:
    """The regularizer class registered under ``name``; a clear ``ValueError`` otherwise.

    ``name`` is a library short name (``"L1"``), a ``"module.ClassName"`` (the module is imported
    when the class is not registered yet, as when a checkpoint is loaded in a fresh process), or
    the bare name of a user class when exactly one registered class has it.

    Example:
        >>> get_regularizer_class("GroupLasso").__name__
        'GroupLasso'
    """
    if not isinstance(name, str):
        raise ValueError(f"a regularizer name must be a string, got {name!r}")
    cls = _SHORT.get(name) or _REGISTRY.get(name)
    if cls is None and "." in name:
        module = name.rsplit(".", 1)[0]
        while module:
            try:
                importlib.import_module(module)
                break
            except ImportError:  # a nested qualname: try the enclosing module path
                module = module.rsplit(".", 1)[0] if "." in module else ""
        cls = _REGISTRY.get(name)
    if cls is None and "." not in name:
        matches = [c for c in _REGISTRY.values() if c.__name__ == name]
        if len(matches) > 1:
            raise ValueError(
                f"regularizer name {name!r} is ambiguous: "
                f"{', '.join(sorted(_registry_name(c) for c in matches))}; use the full name"
            )
        cls = matches[0] if matches else None
    if cls is None:
        raise ValueError(
            f"unknown regularizer {name!r}; known regularizers: {', '.join(sorted(_SHORT))}, and any "
            "subclass of Regularizer by its 'module.ClassName' (its module must be importable)"
        )
    return cls


def from_spec(spec: dict[str, Any] | None, lam: float | None = None) -> Regularizer | None:
    """Rebuild a regularizer from :meth:`Regularizer.spec` (``None`` stays ``None``).

    Example:
        >>> from lightning_prox.regularizers import L1, from_spec
        >>> from_spec(L1(0.1).spec(), lam=0.1)
        L1(lam=0.1)
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a regularizer spec must be a dict with a 'name' key, got {spec!r}")
    kwargs = dict(spec)
    cls = get_regularizer_class(kwargs.pop("name"))
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(f.default, tuple) and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    if lam is not None:
        kwargs["lam"] = lam
    return cls(**kwargs)


def as_regularizer(reg: Regularizer | dict[str, Any] | None) -> Regularizer | None:
    """Accept an object, a spec dict with optional ``lam``, or ``None``.

    Example:
        >>> as_regularizer({"name": "L1", "lam": 0.5})
        L1(lam=0.5)
    """
    if reg is None or isinstance(reg, Regularizer):
        return reg
    if isinstance(reg, dict):
        spec = dict(reg)
        lam = spec.pop("lam", None)
        return from_spec(spec, lam)
    raise ValueError(
        f"regularizer must be a lightning_prox.regularizers.Regularizer, a spec dict or None, got {reg!r}"
    )


def run_prox_multi(
    reg: Regularizer,
    zs: list[Tensor],
    step: Step,
    metrics: list[Tensor] | None,
    x0s: list[Tensor] | None = None,
    *,
    max_iters: int | None = None,
    rtol: float | None = None,
    info: dict | None = None,
    out: list[Tensor] | None = None,
) -> list[Tensor]:
    """:meth:`Regularizer.prox_multi` without its argument checks, for callers whose arguments are
    right by construction: the optimizers, whose metrics are ≥ eps (or the floor) wherever the
    gradients are finite. A NaN entry there (a NaN gradient under ``check_finite=False``) then gives
    a NaN coordinate, as the native passes do, instead of an error after the smooth step has run."""
    if info is not None:
        info["inner_iters"] = 0
        info["screened"] = 0
    if reg.lam == 0.0 or not zs:
        if out is None:
            return [z.clone() for z in zs]
        torch._foreach_copy_(out, zs)
        return out
    writes = out is not None and reg._writes_out
    opts = ProxOptions(x0s=x0s, max_iters=max_iters, rtol=rtol, info=info, out=out if writes else None)
    res = reg._prox_multi(zs, step, metrics, opts)
    return res if writes else copy_into(res, out)


# -- argument checks shared by all regularizers --------------------------------------------------
def check_step(step: Step) -> None:
    """``step`` must be > 0. A tensor step is checked only when it lives on the CPU (no device sync)."""
    if isinstance(step, Tensor):
        if step.device.type == "cpu" and not bool((step > 0).all()):
            raise ValueError(f"step must be > 0, got {step}; pass the (positive) learning rate")
        return
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not (step > 0) or math.isinf(step):
        raise ValueError(f"step must be a finite number > 0, got {step!r}; pass the (positive) learning rate")


def check_metric(metric: Tensor | None, z: Tensor, *, positive: bool = True) -> None:
    """``metric`` is None or a positive tensor shaped like ``z`` (checked on CPU only: no device sync)."""
    if metric is None:
        return
    if not isinstance(metric, Tensor) or metric.shape != z.shape:
        shape = getattr(metric, "shape", type(metric).__name__)
        raise ValueError(f"metric must be None or a tensor of shape {tuple(z.shape)}, got {shape}")
    if positive:
        check_positive([metric])


def check_positive(metrics: list[Tensor]) -> None:
    """Every CPU tensor of ``metrics`` is > 0 (NaN fails): one min pass per tensor, one host read."""
    mins = [m.amin().to(torch.float64) for m in metrics if m.device.type == "cpu" and m.numel()]
    if mins:
        low = float(torch.stack(mins).min()) if len(mins) > 1 else float(mins[0])
        if not low > 0:
            raise ValueError(
                f"metric must be strictly positive, got min {low:.3g}; "
                "add eps to the preconditioner (e.g. sqrt(v) + eps)"
            )


def threshold_dtype(x: Tensor) -> torch.dtype:
    """Thresholds and comparisons run in float32 for half types (their rounding would decide which entries become zero), else in x's dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


#: (regularizer class, tensor shape, cap) already warned about by :func:`warn_at_cap`
_CAP_WARNED: set[tuple] = set()


def warn_at_cap(
    name: str, index: int, shape: tuple[int, ...], gap: float, max_iters: int, rtol: float
) -> None:
    """Warn once per (regularizer, tensor shape, cap) that an iterative prox stopped at its cap with
    relative duality gap ``gap`` (an upper bound on the relative objective gap of the result)."""
    key = (name, tuple(shape), max_iters)
    if key in _CAP_WARNED:
        return
    _CAP_WARNED.add(key)
    warnings.warn(
        f"{name}: the prox solver stopped at its cap max_iters={max_iters} on tensor {index} of the call "
        f"(shape {tuple(shape)}) with relative duality gap {gap:.2e} > rtol={rtol:g}: its objective is up to "
        "that far (relative) from the exact prox's. Raise max_iters (RAMDA: max_inner_iters) or rtol; "
        "this warning is shown once per tensor shape.",
        RuntimeWarning,
        stacklevel=4,
    )


def copy_into(res: list[Tensor], out: list[Tensor] | None) -> list[Tensor]:
    """``res`` itself, or ``res`` copied into ``out`` (which is returned) when ``out`` is given."""
    if out is None:
        return res
    torch._foreach_copy_(out, res)
    return out
