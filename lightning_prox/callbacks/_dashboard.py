"""TensorBoard pieces of the sparsity dashboard: custom-scalars layout, heat-map image, rich table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["custom_scalars_layout", "history_image", "sparsity_table"]

# two-colour ramp: dense = dark blue, exactly sparse = yellow
_DENSE = np.array([38, 24, 96], dtype=np.float64)
_SPARSE = np.array([250, 230, 40], dtype=np.float64)


def custom_scalars_layout(global_tags: Sequence[str]) -> dict[str, Any]:
    """The "Sparsity" dashboard: global curves, per-layer curves (regexes), λ and quantization error.

    Example:
        >>> sorted(custom_scalars_layout(["sparsity/unstructured"])["Sparsity"])
        ['global', 'per layer: active units', 'per layer: group', 'per layer: low rank', 'per layer: unstructured', 'λ and quantization']
    """
    return {
        "Sparsity": {
            "global": ["Multiline", list(global_tags)],
            "per layer: unstructured": ["Multiline", [r"sparsity/layer/[^/]+$"]],
            "per layer: group": ["Multiline", [r"sparsity/layer/.+/group$"]],
            "per layer: low rank": ["Multiline", [r"sparsity/layer/.+/low_rank$"]],
            "per layer: active units": ["Multiline", [r"sparsity/layer/.+/active_units$"]],
            "λ and quantization": ["Multiline", [r"prox/lambda.*", r"quant/error"]],
        }
    }


def history_image(history: Sequence[Sequence[float]], cell: int = 6) -> np.ndarray:
    """An RGB uint8 image ``[H, W, 3]``: one row per layer, one column per logged point, colour = sparsity.

    Example:
        >>> history_image([[0.0, 1.0], [0.5, 0.5]], cell=2).shape
        (4, 2, 3)
    """
    h = np.asarray(history, dtype=np.float64).T  # [layers, time]
    if h.size == 0:
        return np.zeros((cell, cell, 3), dtype=np.uint8)
    h = np.clip(h, 0.0, 1.0)
    rgb = _DENSE + h[..., None] * (_SPARSE - _DENSE)
    rgb = np.repeat(np.repeat(rgb, cell, axis=0), max(1, cell // 2), axis=1)
    return rgb.round().astype(np.uint8)


def sparsity_table(rows: Sequence[dict[str, Any]], totals: dict[str, float]) -> Any:
    """A ``rich.table.Table`` with one row per tensor (shape, regularizer, groups, zero groups, sparsity)."""
    from rich.table import Table

    table = Table(title="lightning_prox: sparsity per layer", show_lines=False)
    for col, just in (
        ("parameter", "left"),
        ("shape", "left"),
        ("regularizer", "left"),
        ("groups", "right"),
        ("zero groups", "right"),
        ("group sparsity", "right"),
        ("sparsity", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        grouped = r.get("groups") is not None
        table.add_row(
            r["name"],
            "×".join(str(s) for s in r["shape"]),
            r["regularizer"],
            str(r["groups"]) if grouped else "-",
            str(r["zero_groups"]) if grouped else "-",
            f"{100 * r['group']:.2f}%" if grouped else "-",
            f"{100 * r['unstructured']:.2f}%",
        )
    if "active_units" in totals:
        table.caption = (
            f"active units (nonzero input and output weights): {100 * totals['active_units']:.2f}%"
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        "",
        "",
        f"{100 * totals['group_weighted']:.2f}% (weighted)" if "group_weighted" in totals else "-",
        f"{100 * totals['unstructured']:.2f}%",
    )
    return table
