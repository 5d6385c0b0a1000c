"""How a CARE module runs: every choice between the fused ops, the eager fast paths and plain ops is made here.

`dispatch(kernels, x)` names the `ForwardPath` of one forward from the module's kernels= mode, the input
and what is capturing the model:

    EXPORT         torch.jit.script / trace, torch.fx, torch.export (hence ONNX, Core ML, ExecuTorch):
                   plain PyTorch ops, nothing that depends on the input's layout, size or autocast state
    COMPILE        torch.compile with kernels off: plain PyTorch ops, for one graph that no input's
                   layout or size specialises (the attention sums in fp32 under half precision, as eager)
    TRITON         the fused custom ops (caretrans.kernels.ops), eager or compiled
    CHANNELS_LAST  eager PyTorch on a channels-last map: 1x1 convs as GEMMs over the NHWC view,
                   depthwise kernels cropped to small maps, outputs kept channels-last
    TORCH          eager PyTorch on any other layout: depthwise kernels cropped to small maps

and `runs_kernels(t)` whether a fused op on `t` runs its Triton kernel or its PyTorch reference.
`ForwardPath` is an Enum, which TorchScript, torch.fx and torch.compile take as constants.
"""
import enum
import importlib.util
import os

import torch

__all__ = ['ForwardPath', 'KERNEL_MODES', 'TRITON_INSTALLED', 'captures_graph', 'check_mode', 'dispatch',
           'runs_kernels']


class ForwardPath(enum.Enum):
    """How a CARE module runs one forward (the module docstring)."""
    EXPORT = 'export'
    COMPILE = 'compile'
    TRITON = 'triton'
    CHANNELS_LAST = 'channels_last'
    TORCH = 'torch'


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


def dispatch(kernels: str, x: torch.Tensor) -> ForwardPath:
    """The path (module docstring) of a forward on `x` by a module in kernels=`kernels` mode.

    kernels='auto' takes the fused ops on CUDA tensors when Triton is installed, unless deterministic
    algorithms are on (the kernels sum channel gradients with atomics); 'triton' wherever the ops
    run (CUDA; the CPU under Triton's interpreter; elsewhere the ops' references); 'torch' never.
    """
    # First, because TorchScript compiles nothing after it: strides, tracing state and the
    # fused ops are unknown to TorchScript.
    if torch.jit.is_scripting():
        return ForwardPath.EXPORT
    # torch.fx's symbolic tracing passes Proxies, which hold no layout (a 20x cheaper test than
    # fx's is_fx_symbolic_tracing; its deprecated is_fx_tracing logged a warning on every call).
    if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return ForwardPath.EXPORT
    if kernels == 'triton' or (kernels == 'auto' and x.is_cuda and TRITON_INSTALLED
                               and not torch.are_deterministic_algorithms_enabled()):
        return ForwardPath.TRITON
    if torch.compiler.is_compiling():
        return ForwardPath.COMPILE
    return ForwardPath.CHANNELS_LAST if x.stride(1) == 1 else ForwardPath.TORCH


def captures_graph(path: ForwardPath) -> bool:
    """Whether `path` captures a graph (EXPORT, COMPILE): plain PyTorch ops, no branch on the input's layout or size."""
    return path == ForwardPath.EXPORT or path == ForwardPath.COMPILE


def runs_kernels(t: torch.Tensor) -> bool:
    """Whether a fused op on `t` runs its Triton kernel (CUDA, or the CPU under Triton's interpreter) rather
    than its PyTorch reference."""
    return t.is_cuda or (t.device.type == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1')
