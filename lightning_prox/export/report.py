"""What an export changed: parameters, MACs, saved size, measured CPU latency, channels per layer."""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["ExportReport", "LayerChannels", "count_macs", "measure_latency", "state_dict_bytes"]


def _as_tuple(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a Tensor or a tuple/list of Tensors (the model's positional inputs), "
        f"got {type(example_inputs).__name__}"
    )


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Tensor | Sequence[Tensor]) -> int:
    """Multiply-accumulates per sample of the convs and linear layers of ``model`` (hooks, one forward).

    A conv counts ``out.numel() / N * (in_channels / groups) * prod(kernel_size)``, a linear layer
    ``out.numel() / N * in_features``, for a batch of ``N`` samples; norms, activations and pooling are
    not counted (they are a few per cent of a CNN's work).

    Example:
        >>> count_macs(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)),
        ...            torch.zeros(2, 1, 8, 8))
        1584
    """
    inputs = _as_tuple(example_inputs)
    batch = inputs[0].shape[0] if inputs[0].ndim else 1
    total = [0]

    def hook(module: nn.Module, args: Any, out: Tensor) -> None:
        if isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features
        else:
            k = 1
            for s in module.kernel_size:
                k *= s
            total[0] += out.numel() * (module.in_channels // module.groups) * k

    types = (nn.Linear, nn.modules.conv._ConvNd)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, types)]
    try:
        was = model.training
        model.eval()
        model(*inputs)
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return total[0] // max(batch, 1)


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``.

    Example:
        >>> state_dict_bytes(nn.Linear(100, 10)) > 4 * 1010
        True
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _batch_of(inputs: tuple[Tensor, ...], batch: int) -> tuple[Tensor, ...]:
    return tuple(t[:1].repeat(batch, *([1] * (t.ndim - 1))) for t in inputs)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    batch: int = 1,
    runs: int = 30,
    warmup: int = 5,
    clock: Literal["wall", "process"] = "wall",
) -> float:
    """Median time in milliseconds of one forward pass on CPU, in eval mode, of a batch of ``batch``.

    The batch repeats the first sample of ``example_inputs``. The model is copied to the CPU, so that
    the caller's model is left where it is. Threads: torch's current setting
    (``torch.get_num_threads()``). ``clock="wall"`` (default) times elapsed time
    (``time.perf_counter``); ``clock="process"`` the CPU time of this process
    (``time.process_time``, summed over its threads), which other jobs on a shared machine disturb
    much less (with one thread it is the latency of an idle machine).

    Example:
        >>> measure_latency(nn.Linear(8, 2), torch.zeros(1, 8), runs=3) > 0
        True
        >>> measure_latency(nn.Linear(8, 2), torch.zeros(1, 8), runs=3, clock="process") >= 0
        True
    """
    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(
            f"measure_latency needs runs >= 1, warmup >= 0, batch >= 1, got {runs}, {warmup}, {batch}"
        )
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    m = copy.deepcopy(model).cpu().eval()
    x = _batch_of(tuple(t.detach().cpu() for t in _as_tuple(example_inputs)), batch)
    for _ in range(warmup):
        m(*x)
    times = []
    for _ in range(runs):
        t0 = now()
        m(*x)
        times.append(now() - t0)
    return 1e3 * statistics.median(times)


@dataclass
class LayerChannels:
    """Input and output channels (features) of one conv or linear layer, before and after."""

    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    params_before: int
    params_after: int


@dataclass
class ExportReport:
    """What :func:`~lightning_prox.export.export_compact` changed, as numbers (``to_dict``) and tables.

    Pairs are ``(before, after)``. ``macs`` are per sample (:func:`count_macs`); ``file_bytes`` the
    size of the saved ``state_dict``; ``latency_ms`` maps a batch size to the median CPU forward time
    (:func:`measure_latency`); ``max_rel_diff`` is ``max|y - y_c| / max|y|`` between the original's and
    the compact model's outputs on the example inputs (eval mode); ``notes`` say which channels were
    kept although they looked removable, and why.

    Example:
        >>> r = ExportReport(params=(10, 4), macs=(8, 2), file_bytes=(900, 700))
        >>> r.ratios()["params"]
        2.5
    """

    params: tuple[int, int]
    macs: tuple[int, int]
    file_bytes: tuple[int, int]
    latency_ms: dict[int, tuple[float, float]] = field(default_factory=dict)
    layers: list[LayerChannels] = field(default_factory=list)
    removed_channels: int = 0
    folded_channels: int = 0
    kept_constant_channels: int = 0
    max_rel_diff: float = 0.0
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        """Before / after for parameters, MACs, file size and each latency (> 1: the compact one is smaller)."""

        def r(pair: tuple[float, float]) -> float:
            return pair[0] / pair[1] if pair[1] else float("inf")

        out = {"params": r(self.params), "macs": r(self.macs), "file_bytes": r(self.file_bytes)}
        for b, pair in self.latency_ms.items():
            out[f"latency_batch{b}"] = r(pair)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-serializable), with the ratios."""
        d = asdict(self)
        d["latency_ms"] = {str(b): list(p) for b, p in self.latency_ms.items()}
        for k in ("params", "macs", "file_bytes"):
            d[k] = list(d[k])
        d["ratios"] = self.ratios()
        return d

    def table(self) -> Any:
        """A ``rich`` table: parameters, MACs, size and latency before/after, and the ratio."""
        from rich.table import Table

        t = Table(title="export_compact")
        for col in ("", "before", "after", "ratio"):
            t.add_column(col, justify="right" if col else "left")
        ratios = self.ratios()
        t.add_row("parameters", f"{self.params[0]:,}", f"{self.params[1]:,}", f"{ratios['params']:.2f}x")
        t.add_row("MACs / sample", f"{self.macs[0]:,}", f"{self.macs[1]:,}", f"{ratios['macs']:.2f}x")
        t.add_row(
            "state_dict size",
            f"{self.file_bytes[0] / 1024:.1f} KiB",
            f"{self.file_bytes[1] / 1024:.1f} KiB",
            f"{ratios['file_bytes']:.2f}x",
        )
        for b, (before, after) in self.latency_ms.items():
            t.add_row(
                f"CPU latency, batch {b}",
                f"{before:.3f} ms",
                f"{after:.3f} ms",
                f"{ratios[f'latency_batch{b}']:.2f}x",
            )
        t.add_row("max relative output difference", "", f"{self.max_rel_diff:.1e}", "")
        return t

    def layer_table(self) -> Any:
        """A ``rich`` table of the channels kept per conv/linear layer."""
        from rich.table import Table

        t = Table(title="channels kept per layer")
        for col in ("layer", "type", "in", "out", "params"):
            t.add_column(col, justify="left" if col in ("layer", "type") else "right")
        for layer in self.layers:
            t.add_row(
                layer.name,
                layer.kind,
                f"{layer.in_after}/{layer.in_before}",
                f"{layer.out_after}/{layer.out_before}",
                f"{layer.params_after:,}/{layer.params_before:,}",
            )
        return t

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=110, record=True, file=io.StringIO())
        console.print(self.table())
        console.print(self.layer_table())
        for note in self.notes:
            console.print(f"note: {note}")
        return console.export_text()
