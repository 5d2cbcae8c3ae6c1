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


def short_names(names: Sequence[str], width: int = 24) -> list[str]:
    """Layer names for a narrow table: the common leading module path and a trailing ``.weight`` dropped,
    then, if still longer than ``width``, shortened from the left (the end of a name tells layers apart).

    Example:
        >>> short_names(["net.features.0.weight", "net.classifier.1.weight", "net.layer4.1.downsample.0.weight"], 16)
        ['features.0', 'classifier.1', '….1.downsample.0']
    """
    parts = [n.split(".") for n in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    out = []
    for p in parts:
        name = ".".join(p[common:])
        name = name[: -len(".weight")] if name.endswith(".weight") else name
        out.append(name if len(name) <= width else "…" + name[-(width - 1) :])
    return out


def sparsity_table(
    rows: Sequence[dict[str, Any]], totals: dict[str, float], notes: dict[str, str] | None = None
) -> Any:
    """A ``rich.table.Table`` that fits 80 columns: one row per tensor (layer, shape, regularizer and λ,
    exact zeros, structure: zero groups or rank), then the totals.

    ``notes`` (tensor name → text) replaces the structure cell, e.g. the levels and the freeze of a
    quantized layer.

    Example:
        >>> import os
        >>> from rich.console import Console
        >>> rows = [{"name": "net.fc.weight", "shape": (10, 64), "regularizer": "L1 λ=0.0001",
        ...          "groups": None, "unstructured": 0.25}]
        >>> console = Console(width=80, record=True, file=open(os.devnull, "w"))
        >>> console.print(sparsity_table(rows, {"unstructured": 0.25}))
        >>> text = console.export_text()
        >>> "net.fc" in text and max(map(len, text.splitlines())) <= 80
        True
    """
    from rich import box
    from rich.table import Table

    notes = notes or {}
    table = Table(title="lightning_prox: sparsity per layer", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("layer", justify="left", no_wrap=True, max_width=26)
    table.add_column("shape", justify="left", no_wrap=True)
    table.add_column("regularizer", justify="left", max_width=22)
    table.add_column("zeros", justify="right", no_wrap=True)
    table.add_column("structure", justify="left", max_width=24)
    names = short_names([r["name"] for r in rows])
    for name, r in zip(names, rows):
        if r["name"] in notes:
            structure = notes[r["name"]]
        elif r.get("groups") is not None:
            structure = f"{r['zero_groups']}/{r['groups']} groups zero"
        elif "low_rank" in r:
            structure = f"rank deficit {100 * r['low_rank']:.0f}%"
        else:
            structure = "-"
        table.add_row(
            name,
            "×".join(str(s) for s in r["shape"]),
            str(r["regularizer"]),
            f"{100 * r['unstructured']:.1f}%",
            structure,
        )
    table.add_section()
    grouped = [r for r in rows if r.get("groups") is not None]
    total_structure = "-"
    if grouped:
        zg, ng = sum(r["zero_groups"] for r in grouped), sum(r["groups"] for r in grouped)
        total_structure = f"{zg}/{ng} groups zero"
        if "group_weighted" in totals:
            total_structure += f" ({100 * totals['group_weighted']:.1f}% of weights)"
    numel = sum(int(np.prod(r["shape"])) for r in rows)
    table.add_row(
        "total", f"{numel:,} w.", "", f"{100 * totals.get('unstructured', 0.0):.1f}%", total_structure
    )
    if "active_units" in totals:
        table.caption = (
            f"active units (nonzero input and output weights): {100 * totals['active_units']:.1f}%"
        )
    return table
