"""From exact group zeros to a physically smaller model: ``export_compact``, its report, ONNX export.

Needs the optional extra ``export`` (Torch-Pruning; onnx and onnxruntime for ONNX):
``pip install 'lightning-prox[export]'``.
"""

from .compact import ExportError, export_compact
from .onnx import export_onnx
from .report import ExportReport, LayerChannels, count_macs, measure_latency, state_dict_bytes

__all__ = [
    "ExportError",
    "ExportReport",
    "LayerChannels",
    "count_macs",
    "export_compact",
    "export_onnx",
    "measure_latency",
    "state_dict_bytes",
]
