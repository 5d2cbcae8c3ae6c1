"""``lightning-prox export``: a checkpoint in, a physically smaller model (and optionally ONNX) out.

.. code-block:: bash

    lightning-prox export --ckpt_path lightning_logs/quickstart/version_0/checkpoints/last.ckpt --output small.pt
    lightning-prox export --ckpt_path last.ckpt --output small.pt --onnx small.onnx --report report.json

The model class comes from the checkpoint (the ``_class_path`` LightningCLI stores; classes of
``lightning_prox`` load directly, a class of your own needs ``--model_class package.module.Class``, so
that loading a checkpoint never imports a module you did not name). For an ``ImageClassifier`` the
bare network ``model.net`` is exported. Mistakes (a missing file, an input shape that does not fit, a
model that cannot be compacted exactly) exit with status 2 and one line ``error: <option>: <message>``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["export_main"]

_EPILOG = """examples:
  lightning-prox export --ckpt_path lightning_logs/quickstart/version_0/checkpoints/last.ckpt --output small.pt
  lightning-prox export --ckpt_path last.ckpt --output small.pt --onnx small.onnx --report report.json

The compact model is saved whole (torch.save of the module): load it with
torch.load("small.pt", weights_only=False). The ONNX file needs no Python class at all."""


class _UsageError(Exception):
    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-prox export",
        description="Remove the channels and units that training made exactly zero, check that the outputs "
        "are unchanged, save the smaller model and print what it gained.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt_path", required=True, help="a Lightning checkpoint (.ckpt)")
    p.add_argument(
        "--output", required=True, help="where to save the compact model (torch.save of the module)"
    )
    p.add_argument(
        "--onnx", default=None, help="also write the compact model as ONNX here (checked in onnxruntime)"
    )
    p.add_argument("--report", default=None, help="write the report as JSON here")
    p.add_argument(
        "--model_class",
        default=None,
        help="import path of the LightningModule class (default: the checkpoint's, if it is a lightning_prox class)",
    )
    p.add_argument(
        "--input_shape",
        default=None,
        help="one sample's shape, e.g. 3,32,32 (default: from the model's in_chans/img_size or example_input_array)",
    )
    p.add_argument("--batch", type=int, default=64, help="the larger batch size of the latency measurement")
    p.add_argument("--rtol", type=float, default=1e-5, help="largest accepted relative output difference")
    p.add_argument(
        "--on_unknown",
        choices=("raise", "keep"),
        default="raise",
        help="a removable channel through a layer the exporter cannot shrink: refuse (raise) or keep it",
    )
    p.add_argument("--whole_module", action="store_true", help="export the LightningModule, not its .net")
    return p


def _import_class(path: str, option: str) -> type:
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise _UsageError(option, f"cannot import {path!r} ({err})") from None
    from lightning.pytorch import LightningModule

    if not (isinstance(cls, type) and issubclass(cls, LightningModule)):
        raise _UsageError(option, f"{path!r} is not a LightningModule class")
    return cls


def _load(args: argparse.Namespace) -> nn.Module:
    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise _UsageError("--ckpt_path", f"no such file: {ckpt}")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or non-checkpoint file
        raise _UsageError(
            "--ckpt_path", f"{ckpt} is not a loadable checkpoint ({type(err).__name__}: {err})"
        ) from None
    class_path = (state.get("hyper_parameters") or {}).get("_class_path")
    if args.model_class is not None:
        cls = _import_class(args.model_class, "--model_class")
    elif isinstance(class_path, str) and class_path.startswith("lightning_prox."):
        cls = _import_class(class_path, "--ckpt_path")
    else:
        named = (
            f"the checkpoint names {class_path!r}" if class_path else "the checkpoint names no model class"
        )
        raise _UsageError(
            "--model_class", f"{named}; pass --model_class package.module.ClassName of your model"
        )
    try:
        model = cls.load_from_checkpoint(ckpt, map_location="cpu")
    except Exception as err:
        raise _UsageError("--ckpt_path", f"{cls.__name__}.load_from_checkpoint failed: {err}") from None
    net = getattr(model, "net", None)
    if not args.whole_module and isinstance(net, nn.Module):
        net.example_shape = _shape_from_hparams(model)  # type: ignore[assignment]
        return net
    model.example_shape = _shape_from_hparams(model)  # type: ignore[assignment]
    return model


def _shape_from_hparams(model: Any) -> tuple[int, ...] | None:
    hp = getattr(model, "hparams", {})
    if "in_chans" in hp and "img_size" in hp:
        return (int(hp["in_chans"]), int(hp["img_size"]), int(hp["img_size"]))
    example = getattr(model, "example_input_array", None)
    if isinstance(example, torch.Tensor):
        return tuple(example.shape[1:])
    return None


def _input_shape(args: argparse.Namespace, net: nn.Module) -> tuple[int, ...]:
    if args.input_shape is not None:
        if not re.fullmatch(r"\d+(,\d+)*", args.input_shape.replace(" ", "")):
            raise _UsageError(
                "--input_shape", f"expected comma-separated sizes such as 3,32,32, got {args.input_shape!r}"
            )
        return tuple(int(s) for s in args.input_shape.replace(" ", "").split(","))
    shape = getattr(net, "example_shape", None)
    if shape is None:
        raise _UsageError(
            "--input_shape", "the model does not say its input shape; pass e.g. --input_shape 3,32,32"
        )
    return shape


def _run(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.batch < 1:
        raise _UsageError("--batch", f"must be a positive batch size, got {args.batch}")
    if not 0 <= args.rtol < 1:
        raise _UsageError("--rtol", f"must be in [0, 1), got {args.rtol}")
    from . import ExportError, export_compact, export_onnx

    net = _load(args)
    shape = _input_shape(args, net)
    if hasattr(net, "example_shape"):
        del net.example_shape
    example = torch.randn(min(8, args.batch), *shape, generator=torch.Generator().manual_seed(0))
    try:
        compact, report = export_compact(
            net, example, rtol=args.rtol, on_unknown=args.on_unknown, latency_batches=(1, args.batch)
        )
    except ExportError as err:
        raise _UsageError("--ckpt_path", str(err)) from None
    except RuntimeError as err:  # the model cannot run on this input
        raise _UsageError(
            "--input_shape", f"the model cannot run on inputs of shape {tuple(example.shape)}: {err}"
        ) from None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(compact, out)
    from rich.console import Console

    console = Console()
    console.print(report.table())
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"compact model: {out} (outputs equal to {report.max_rel_diff:.2e} relative)")
    data = report.to_dict()
    if args.onnx is not None:
        diff = export_onnx(compact, example, args.onnx)
        data["onnx"] = {"path": str(args.onnx), "max_rel_diff": diff}
        console.print(f"ONNX: {args.onnx} (onnxruntime outputs equal to {diff:.2e} relative)")
    if args.report is not None:
        Path(args.report).write_text(json.dumps(data, indent=2))


def export_main(argv: list[str]) -> None:
    """Run ``lightning-prox export`` on ``argv`` (the arguments after ``export``).

    Example:
        >>> export_main(["--ckpt_path", "missing.ckpt", "--output", "small.pt"])
        Traceback (most recent call last):
        SystemExit: 2
    """
    try:
        _run(argv)
    except _UsageError as err:
        message = re.sub(r"\s+", " ", str(err)).strip()
        print(f"error: {err.option}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
