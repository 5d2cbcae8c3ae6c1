"""ONNX export of a (compact) model, checked in onnxruntime."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .report import _as_tuple

__all__ = ["export_onnx"]


def export_onnx(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    path: str | os.PathLike[str],
    *,
    check: bool = True,
    opset_version: int | None = None,
) -> float | None:
    """Write ``model`` as ONNX to ``path`` (batch dimension dynamic) and, with ``check``, run it in onnxruntime.

    Uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which needs
    only the ``onnx`` package. With ``check=True`` (needs ``onnxruntime``), the file is run on
    ``example_inputs`` with the CPU execution provider and compared with the model in eval mode.

    Returns:
        ``max|y_torch - y_onnx| / max|y_torch|`` over all outputs with ``check``, else None.

    Example:
        >>> import tempfile, os
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        >>> with tempfile.TemporaryDirectory() as d:
        ...     diff = export_onnx(net, torch.randn(2, 4), os.path.join(d, "net.onnx"))
        >>> diff < 1e-6
        True
    """
    inputs = tuple(t.detach().cpu() for t in _as_tuple(example_inputs))
    m = copy.deepcopy(model).cpu().eval()
    names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    with torch.no_grad():
        out = m(*inputs)
    outs = [out] if isinstance(out, Tensor) else list(out)
    out_names = [f"output{i}" if len(outs) > 1 else "output" for i in range(len(outs))]
    axes = {n: {0: "batch"} for n in names + out_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        kwargs = {} if opset_version is None else {"opset_version": opset_version}
        torch.onnx.export(
            m,
            inputs,
            os.fspath(path),
            input_names=names,
            output_names=out_names,
            dynamic_axes=axes,
            dynamo=False,
            **kwargs,
        )
    if not check:
        return None
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "checking the ONNX file needs onnxruntime: pip install 'lightning-prox[export]' (or check=False)"
        ) from err
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    diff = 0.0
    for ref, y in zip(outs, got):
        r = ref.double()
        scale = float(r.abs().max()) or 1.0
        diff = max(diff, float((r - torch.from_numpy(y).double()).abs().max()) / scale)
    return diff
