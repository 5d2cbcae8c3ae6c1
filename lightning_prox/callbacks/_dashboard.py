"""TensorBoard pieces of the sparsity dashboard: custom-scalars layout, heat-map image, rich table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["custom_scalars_layout", "history_image", "sparsity_table"]

# viridis (perceptual, colour-blind safe): 9 anchors interpolated linearly; 0 = dense, 1 = all zero
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def _viridis(x: np.ndarray) -> np.ndarray:
    pos = np.clip(x, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    return _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac


def custom_scalars_layout(global_tags: Sequence[str], kinds: Sequence[str] = ()) -> dict[str, Any]:
    """The "Sparsity" dashboard: one quantity scale per chart, only the charts that apply.

    ``global_tags`` are the zero-fraction tags that apply (``sparsity/unstructured``, ...);
    ``sparsity/active_units`` (a dense fraction) gets its own chart. ``kinds`` adds charts:
    ``"groups"``, ``"low_rank"``, ``"active_units"`` (per layer), ``"lambda"`` (λ), ``"quant"``
    (quantization error), ``"tradeoff"`` (validation metric against sparsity).

    Example:
        >>> sorted(custom_scalars_layout(["sparsity/unstructured", "sparsity/active_units"], ["lambda"])["Sparsity"])
        ['active units (global, fraction alive)', 'exact zeros per layer', 'zero fractions (global)', 'λ (regularization strength)']
    """
    zero_tags = [t for t in global_tags if t != "sparsity/active_units"]
    charts: dict[str, Any] = {
        "zero fractions (global)": ["Multiline", [f"^{t}$" for t in zero_tags]],
        "exact zeros per layer": ["Multiline", [r"^sparsity/layer/[^/]+$"]],
    }
    if "sparsity/active_units" in global_tags:
        charts["active units (global, fraction alive)"] = ["Multiline", [r"^sparsity/active_units$"]]
    optional = {
        "groups": ("zero groups per layer", [r"^sparsity/layer/.+/group$"]),
        "low_rank": ("rank deficit per layer", [r"^sparsity/layer/.+/low_rank$"]),
        "active_units": ("active units per layer (fraction alive)", [r"^sparsity/layer/.+/active_units$"]),
        "lambda": ("λ (regularization strength)", [r"^prox/lambda"]),
        "quant": ("quantization error (mean squared distance to the levels)", [r"^quant/error$"]),
        "tradeoff": ("validation metric vs sparsity (x axis: sparsity × 10⁴)", [r"^tradeoff/"]),
    }
    for kind in kinds:
        if kind in optional:
            title, tags = optional[kind]
            charts[title] = ["Multiline", tags]
    return {"Sparsity": charts}


def history_image(
    history: Sequence[Sequence[float]], names: Sequence[str] = (), cell: int = 14, width: int = 480
) -> np.ndarray:
    """An RGB uint8 image ``[H, W, 3]`` of the per-layer sparsity over time (viridis, 0 = dense).

    One row per layer (labelled with its short name on the left), one column per logged point
    stretched to about ``width`` pixels (x axis: logged points, oldest left), and a colour bar from 0 to
    1 at the bottom.

    Example:
        >>> history_image([[0.0, 1.0], [0.5, 0.5]], ["a.weight", "b.weight"]).shape[2]
        3
    """
    from PIL import Image, ImageDraw

    h = np.asarray(history, dtype=np.float64).T  # [layers, time]
    if h.size == 0:
        return np.zeros((cell, cell, 3), dtype=np.uint8)
    layers, points = h.shape
    labels = short_names(list(names)) if len(names) == layers else [str(i) for i in range(layers)]
    label_w = 8 + 6 * max(len(t) for t in labels)
    reps = max(1, width // points)
    heat = np.repeat(np.repeat(_viridis(h), cell, axis=0), reps, axis=1)
    plot_w = heat.shape[1]
    bar_h, margin = 10, 22
    img = Image.new("RGB", (label_w + plot_w + 8, layers * cell + margin + bar_h + 16), (255, 255, 255))
    img.paste(Image.fromarray(heat.round().astype(np.uint8)), (label_w, 0))
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((4, i * cell + max(0, (cell - 10) // 2)), text, fill=(0, 0, 0))
    y = layers * cell + 4
    draw.text((label_w, y), f"logged points 1..{points}  (colour: zero fraction)", fill=(0, 0, 0))
    ramp = _viridis(np.linspace(0.0, 1.0, plot_w))[None].repeat(bar_h, axis=0)
    y_bar = y + margin - 6
    img.paste(Image.fromarray(ramp.round().astype(np.uint8)), (label_w, y_bar))
    draw.text((4, y_bar), "0 dense", fill=(0, 0, 0))
    draw.text((label_w + plot_w - 30, y_bar + bar_h + 1), "1 zero", fill=(0, 0, 0))
    return np.asarray(img, dtype=np.uint8)


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
