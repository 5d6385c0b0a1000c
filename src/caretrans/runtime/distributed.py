"""Process-group set-up for `torchrun`: NCCL on CUDA, gloo on CPU; a plain single process otherwise."""
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        """Rank 0: the only process that prints, logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: Optional[str] = None) -> DistributedContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    `device` defaults to CUDA when available (one GPU per local rank), else CPU.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda':
        if device.index is None:
            device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return DistributedContext(rank, world_size, local_rank, device)


def distribute(model: torch.nn.Module, ctx: DistributedContext, sync_bn: bool = False) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel when the job has several processes (else itself); with
    `sync_bn`, its BatchNorm layers synchronised across GPUs (they share the model's parameters and buffers)."""
    if not ctx.is_distributed:
        return model
    if sync_bn:
        if ctx.device.type != 'cuda':
            raise ValueError('synchronised BatchNorm needs CUDA (PyTorch synchronises BatchNorm on GPUs only)')
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device] if ctx.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sync_buffers(model: torch.nn.Module, ctx: DistributedContext):
    """Give every rank rank 0's buffers, BatchNorm statistics among them (DDP does so before each forward,
    not after the last)."""
    if ctx.is_distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def is_primary_process() -> bool:
    """Whether this process is rank 0 of its job (torchrun's RANK before the group is joined)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get('RANK', '0')) == 0


def cleanup_distributed():
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
