"""Reading the plain-data regularizer of a param group."""

from __future__ import annotations

from typing import Any

__all__ = ["group_spec"]


def group_spec(group: dict[str, Any]) -> dict[str, Any] | None:
    """The regularizer spec of a param group: ``group["regularizer"]`` (proximal step) or, for
    ``ProxMixin(penalty_mode="subgradient")``, ``group["penalty"]`` (penalty added to the loss); else None.

    Example:
        >>> group_spec({"params": [], "regularizer": None, "penalty": {"name": "L1"}})
        {'name': 'L1'}
    """
    spec = group.get("regularizer")
    if spec is None:
        spec = group.get("penalty")
    return spec if isinstance(spec, dict) else None
