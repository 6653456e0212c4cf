"""The process group of a torchrun job, shared by the trainer and the sampler."""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def dist_setup(device: Optional[str]) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, initialised_here). Under torchrun (WORLD_SIZE > 1) starts the process
    group (nccl on CUDA, gloo on CPU) unless one is running; ``device`` None picks
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU, and a bare ``"cuda"`` becomes
    ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialised = True
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    world = dist.get_world_size() if dist.is_initialized() else world
    return rank, world, dev, initialised
