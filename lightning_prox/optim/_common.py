"""Helpers shared by the proximal optimizers: regularizers in param groups, gradient checks.

Param groups hold a regularizer only as plain data (DESIGN.md §4): ``group["regularizer"]`` is a
spec dict (:meth:`Regularizer.spec`) or ``None`` and ``group["lam"]`` is its strength, the one value a
scheduler writes. :func:`group_regularizer` rebuilds (and caches) the object at step time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from ..regularizers._base import Regularizer, as_regularizer, from_spec

__all__ = ["check_finite_grads", "group_regularizer", "init_regularizer_groups"]


def init_regularizer_groups(optimizer: torch.optim.Optimizer) -> None:
    """Turn every group's ``regularizer`` (object, spec dict or None) into plain ``regularizer``/``lam``.

    Call at the end of an optimizer's ``__init__``. A group that already carries ``lam`` keeps it
    (so a user can give the same regularizer different strengths per group).
    """
    for i, group in enumerate(optimizer.param_groups):
        try:
            reg = as_regularizer(group.get("regularizer"))
        except ValueError as err:
            raise ValueError(f"param group {i}: {err}") from None
        if reg is None:
            group["regularizer"] = None
            group.setdefault("lam", 0.0)
            continue
        lam = group.get("lam", reg.lam)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
            raise ValueError(f"param group {i}: lam must be a number >= 0, got {lam!r}")
        group["regularizer"] = reg.spec()
        group["lam"] = float(lam)


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


@functools.lru_cache(maxsize=256)
def _cached(frozen_spec: tuple, lam: float) -> Regularizer | None:
    return from_spec({k: (list(v) if isinstance(v, tuple) else v) for k, v in frozen_spec}, lam)


def group_regularizer(group: dict[str, Any]) -> Regularizer | None:
    """The regularizer object of a param group at its current ``group["lam"]`` (None when absent)."""
    spec = group.get("regularizer")
    if spec is None:
        return None
    return _cached(_freeze(spec), float(group.get("lam", 0.0)))


def check_finite_grads(grads: list[Tensor], names: str = "gradient") -> None:
    """Raise ``ValueError`` when any gradient holds NaN or inf, before anything is updated.

    One read-only reduction per tensor (min and max: NaN and ±inf propagate into them, nothing
    overflows) and one host read per call; optimizers expose ``check_finite=False`` to skip it
    (e.g. when a GradScaler already handles overflow). ``aminmax`` is used because on CPU
    ``_foreach_norm(ord=inf)`` runs ~10x slower than a vectorized reduction (ResNet-18: 71 ms vs 8 ms).
    """
    grads = [g for g in grads if g.numel()]
    if not grads:
        return
    dev = grads[0].device
    ext = torch.stack([torch.stack(torch.aminmax(g.detach())).to(dev, torch.float32) for g in grads])
    bad = ~torch.isfinite(ext).all(dim=1)
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"non-finite {names} (NaN or inf) in tensor {idx} of shape {tuple(grads[idx].shape)}; "
            "no parameter was changed. Lower the learning rate, clip gradients, or use a GradScaler "
            "with mixed precision."
        )
