"""The regularizer contract, the name registry and argument checks shared by every regularizer.

A regularizer is a small frozen dataclass of plain hyperparameters:

.. math::

    \\text{value}(x) = R(x) \\quad (\\lambda \\text{ included}), \\qquad
    \\text{prox}(z, \\text{step}, \\text{metric}) =
    \\operatorname{argmin}_x \\; \\text{step}\\cdot R(x) + \\tfrac12 \\sum_i \\text{metric}_i (x_i - z_i)^2 .

Optimizers never keep the object itself in ``param_groups`` or state: checkpoints must load with
``torch.load(weights_only=True)`` (DESIGN.md §4), so a group holds the plain :meth:`Regularizer.spec`
(registry name plus hyperparameters, without ``lam``) and the strength ``group["lam"]``;
:func:`from_spec` rebuilds the object.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["Regularizer", "from_spec", "get_regularizer_class", "registered_names"]

_REGISTRY: dict[str, type[Regularizer]] = {}

Step = float | Tensor


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """Base class of every regularizer: ``value`` and ``prox`` with one convention.

    Subclasses are frozen dataclasses whose first field is ``lam`` (λ ≥ 0); they implement
    :meth:`value` and :meth:`_prox`. ``lam == 0`` makes :meth:`prox` the identity (a copy).

    Args:
        lam: strength λ ≥ 0.
    """

    lam: float = 0.0

    #: True when ``prox`` with a non-uniform metric is solved iteratively (group lasso, nuclear norm).
    inexact_under_metric: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

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
        raise NotImplementedError

    def prox(self, z: Tensor, step: Step, metric: Tensor | None = None) -> Tensor:
        """argmin_x step·R(x) + ½ Σ metric·(x − z)²; returns a new tensor, ``z`` is untouched.

        Args:
            z: the point to map.
            step: step size > 0, a float or a 0-dim tensor.
            metric: ``None`` (all ones) or a positive tensor shaped like ``z`` (a diagonal metric,
                e.g. Adam's ``sqrt(v̂) + eps``).
        """
        check_step(step)
        check_metric(metric, z)
        if self.lam == 0.0:
            return z.clone()
        return self._prox(z, step, metric)

    def _prox(self, z: Tensor, step: Step, metric: Tensor | None) -> Tensor:
        raise NotImplementedError

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
        multi-tensor (``torch._foreach_*``) passes, and the iterative solvers (group lasso and nuclear
        norm under a non-uniform metric) run one proximal-gradient loop over all groups of all tensors.

        Args:
            zs: the points to map (not modified).
            step: step size > 0 shared by all tensors, a float or a 0-dim tensor.
            metrics: ``None`` (all ones) or one positive tensor per ``z``, shaped like it.
            x0s: warm starts for iterative solvers, one per ``z`` (ignored by closed forms).
            max_iters: overrides the regularizer's iteration cap for this call (iterative solvers).
            rtol: overrides the regularizer's relative-decrease tolerance for this call.
            info: when a dict, receives ``info["inner_iters"]`` (solver iterations actually run, the
                max over tensors; 0 for closed forms) and ``info["screened"]`` (number of groups found
                zero by the exact screening test; 0 for elementwise regularizers).
            out: when given, one tensor per ``z`` (same shape and dtype) that receives the result and
                is returned; it may be ``zs`` itself (an in-place prox, as optimizers want). The
                chunked kernels (``Lq(q=1/2)``) and the exact group-lasso solver write into it
                directly, without a parameter-sized temporary; other regularizers copy.

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
        if info is not None:
            info["inner_iters"] = 0
            info["screened"] = 0
        if self.lam == 0.0 or not zs:
            if out is None:
                return [z.clone() for z in zs]
            torch._foreach_copy_(out, zs)
            return out
        if out is not None and self._writes_out:
            return self._prox_multi(zs, step, metrics, x0s, max_iters, rtol, info, out=out)
        return copy_into(self._prox_multi(zs, step, metrics, x0s, max_iters, rtol, info), out)

    #: True when :meth:`_prox_multi` accepts ``out=`` and writes the results there itself.
    _writes_out: ClassVar[bool] = False

    def _prox_multi(
        self,
        zs: list[Tensor],
        step: Step,
        metrics: list[Tensor] | None,
        x0s: list[Tensor] | None,
        max_iters: int | None,
        rtol: float | None,
        info: dict | None,
    ) -> list[Tensor]:
        """Default: one :meth:`_prox` per tensor. Closed forms override this with foreach passes."""
        ms: list[Tensor | None] = list(metrics) if metrics is not None else [None] * len(zs)
        return [self._prox(z, step, m) for z, m in zip(zs, ms)]

    def check_param(self, shape: tuple[int, ...], name: str = "parameter") -> None:
        """Raise ``ValueError`` when this regularizer cannot apply to a tensor of ``shape``.

        Called when parameters are selected (before training) so that a grouping that does not fit
        a tensor fails early with the parameter's name. Elementwise regularizers accept any shape.
        """

    def __call__(self, x: Tensor) -> Tensor:
        return self.value(x)

    # -- plain-data round trip ------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Registry name plus hyperparameters other than ``lam``, as checkpoint-safe plain data."""
        out: dict[str, Any] = {"name": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.name != "lam":
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def with_lam(self, lam: float) -> Regularizer:
        """The same regularizer with strength ``lam`` (used when a scheduler wrote ``group["lam"]``)."""
        return self if lam == self.lam else dataclasses.replace(self, lam=lam)


def registered_names() -> list[str]:
    """Names accepted by :func:`from_spec` and :func:`get_regularizer_class`."""
    return sorted(_REGISTRY)


def get_regularizer_class(name: str) -> type[Regularizer]:
    """The regularizer class registered under ``name``; a clear ``ValueError`` otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown regularizer {name!r}; known regularizers: {', '.join(registered_names())}"
        ) from None


def from_spec(spec: dict[str, Any] | None, lam: float | None = None) -> Regularizer | None:
    """Rebuild a regularizer from :meth:`Regularizer.spec` (``None`` stays ``None``).

    Example:
        >>> from lightning_prox.regularizers import L1, from_spec
        >>> from_spec(L1(0.1).spec(), lam=0.1)
        L1(lam=0.1)
    """
    if spec is None:
        return None
    kwargs = dict(spec)
    cls = get_regularizer_class(kwargs.pop("name"))
    for f in dataclasses.fields(cls):
        if f.name in kwargs and isinstance(f.default, tuple) and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    if lam is not None:
        kwargs["lam"] = lam
    return cls(**kwargs)


def as_regularizer(reg: Regularizer | dict[str, Any] | None) -> Regularizer | None:
    """Accept an object, a spec dict with optional ``lam``, or ``None``."""
    if reg is None or isinstance(reg, Regularizer):
        return reg
    if isinstance(reg, dict):
        spec = dict(reg)
        lam = spec.pop("lam", None)
        return from_spec(spec, lam)
    raise ValueError(
        f"regularizer must be a lightning_prox.regularizers.Regularizer, a spec dict or None, got {reg!r}"
    )


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
    """Thresholds and comparisons run in float32 for half types (DESIGN.md §3), else in x's dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def copy_into(res: list[Tensor], out: list[Tensor] | None) -> list[Tensor]:
    """``res`` itself, or ``res`` copied into ``out`` (which is returned) when ``out`` is given."""
    if out is None:
        return res
    torch._foreach_copy_(out, res)
    return out
