"""Fused Triton kernels for CARE on the GPU, as PyTorch custom ops (docs/performance.md, "GPU kernels").

`dispatch` (caretrans.kernels.paths) decides how each CARE module runs: the fused ops (`ops`, whose
Triton kernels are `attention`, `depthwise` and `epilogue`, and whose CPU implementations are
`reference`), the eager PyTorch paths, or plain ops for graph capture. The model option kernels=
chooses 'auto' (the default: the ops on CUDA when Triton is installed), 'triton' or 'torch'.
"""
from .paths import (KERNEL_MODES, TRITON_INSTALLED, ForwardPath, captures_graph, check_mode, dispatch,
                    runs_kernels)

__all__ = ['KERNEL_MODES', 'TRITON_INSTALLED', 'ForwardPath', 'captures_graph', 'check_mode', 'dispatch', 'runs_kernels']
