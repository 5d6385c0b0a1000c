"""PyTorch runners for GPU timing: inference (eager, torch.compile, CUDA graphs; any dtype and layout) and a
training step (AdamW, autocast). They run on the CPU too, without CUDA graphs, for dry runs."""
import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def sync(device: torch.device) -> Callable[[], None]:
    """What a timer calls before reading the clock: waits for the device's queued work."""
    return torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)


def prepare(model: nn.Module, device, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> nn.Module:
    """The model on `device` in `dtype` (and channels-last)."""
    model = model.to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def example_input(batch_size: int, img_size: int, device, dtype=torch.float32, channels_last=False,
                  in_chans: int = 3) -> torch.Tensor:
    x = torch.randn(batch_size, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _cuda_graph(fn: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """fn captured once in a CUDA graph (after warm-up calls on a side stream, as PyTorch's docs prescribe):
    calling the result replays it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def inference_runner(model: nn.Module, x: torch.Tensor, compile: bool = False, cuda_graphs: bool = False,
                     compile_backend: str = 'inductor') -> Callable[[], None]:
    """A no-argument callable running eval-mode `model` on the fixed input `x` without gradients: eager, or
    torch.compile'd; with cuda_graphs, replayed from a CUDA graph (compile: mode='reduce-overhead')."""
    if cuda_graphs and x.device.type != 'cuda':
        raise ValueError('CUDA graphs need a CUDA device')
    model.eval()
    if compile:
        model = torch.compile(model, backend=compile_backend, mode='reduce-overhead' if cuda_graphs else None)

    def run():
        with torch.no_grad():
            return model(x)

    if cuda_graphs and not compile:
        return _cuda_graph(run)
    return run


def train_step_runner(model: nn.Module, x: torch.Tensor, amp_dtype: Optional[torch.dtype] = torch.bfloat16,
                      compile: bool = False, compile_backend: str = 'inductor',
                      num_classes: int = 1000) -> Callable[[], None]:
    """A no-argument callable taking one AdamW step of `model` (train mode, autocast to amp_dtype) on x."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    target = target.to(x.device)
    forward = torch.compile(model, backend=compile_backend) if compile else model
    autocast = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())

    def step():
        with autocast:
            loss = F.cross_entropy(forward(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """The CUDA memory peak (MiB) of one call of fn, None off CUDA."""
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) / 2 ** 20
