"""Fused Triton kernels for CARE on the GPU, as PyTorch custom ops (docs/performance.md, "GPU kernels").

The model option kernels= chooses, per forward: 'auto' (the default) runs them on CUDA tensors
when Triton is installed, unless deterministic algorithms are on (torch.use_deterministic_algorithms:
the kernels sum channel gradients with atomics); 'triton' wherever the ops run (CUDA; the CPU under Triton's
interpreter; elsewhere the ops' PyTorch references, which is how CPU tests exercise the ops'
autograd and torch.compile plumbing); 'torch' never. Graphs captured for export (torch.jit,
torch.fx, torch.export) always take the plain PyTorch path; torch.compile keeps the kernels.
"""
import importlib.util

import torch
from torch.fx._symbolic_trace import is_fx_tracing

KERNEL_MODES = ('auto', 'triton', 'torch')
TRITON_INSTALLED = importlib.util.find_spec('triton') is not None


def check_mode(mode: str) -> str:
    """`mode` if it is a kernels= choice that can run here, else a ValueError saying why not."""
    if mode not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {', '.join(map(repr, KERNEL_MODES))}, got {mode!r}")
    if mode == 'triton' and not TRITON_INSTALLED:
        raise ValueError("kernels='triton' needs the triton package (pip install triton; it comes with CUDA "
                         "builds of torch on Linux)")
    return mode


def use_triton(mode: str, x: torch.Tensor) -> bool:
    """Whether a module in kernels=`mode` runs its fused ops on input `x` (see the module docstring)."""
    if mode == 'torch' or torch.jit.is_tracing() or is_fx_tracing() or torch.compiler.is_exporting():
        return False
    if mode == 'triton':
        return True
    return x.is_cuda and TRITON_INSTALLED and not torch.are_deterministic_algorithms_enabled()
