"""Processes under torchrun: the one place that reads RANK / WORLD_SIZE / LOCAL_RANK and starts the group."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddim.errors import DDIMError

__all__ = ["Dist", "rank_world", "resolve_device", "setup_distributed", "teardown"]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device_str: str | None, local_rank: int = 0) -> torch.device:
    """A torch.device from a user's string (None: cuda if available); a bare "cuda" means this rank's GPU."""
    if device_str is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device_str)
    except (RuntimeError, TypeError, ValueError):
        raise DDIMError(f"device {device_str!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "meta":
        raise DDIMError(f"device {device_str!r} holds no data (tensors without values); use cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DDIMError(f"device {device_str!r}: CUDA is not available here (torch.cuda.is_available() is "
                        "false); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DDIMError(f"device {device_str!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup_distributed(device_str: str | None) -> tuple[Dist, torch.device]:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, start the process group (nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_str, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = Dist(rank, world, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        info.initialized_here = True
    return info, device


def teardown(info: Dist) -> None:
    """Leave the process group if `setup_distributed` started it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
