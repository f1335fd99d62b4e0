"""Process-group setup for ``torchrun``: the same entry point runs on one process or N.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed`
reads them, picks NCCL on CUDA and gloo on CPU, and binds each rank to its GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this rank's GPU when CUDA is available, else CPU; other names pass through."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise a single process.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
