"""Deployment: exports (ONNX, TorchScript, Core ML, ExecuTorch) checked against PyTorch, and int8 quantisation."""
from .convert import FORMATS, ExportCheckError, export_metadata, export_model, onnx_session
from .mobile import export_executorch
from .quantize import quantize_onnx

__all__ = ['FORMATS', 'ExportCheckError', 'export_executorch', 'export_metadata', 'export_model', 'onnx_session',
           'quantize_onnx']
