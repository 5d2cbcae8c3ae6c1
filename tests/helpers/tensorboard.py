"""Reading back what a run wrote for TensorBoard: its scalars and the "Sparsity" custom-scalars layout."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2


def read_dashboard(log_dir: str | Path) -> tuple[EventAccumulator, dict[str, list[str]]]:
    """(the loaded event files of ``log_dir``, chart title → tag regexes of the "Sparsity" category)."""
    ea = EventAccumulator(
        str(log_dir), size_guidance={"tensors": 0, "scalars": 0, "histograms": 0, "images": 0}
    )
    ea.Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = [c for c in layout.category if c.title == "Sparsity"]
    return ea, {c.title: list(c.multiline.tag) for c in category.chart}
