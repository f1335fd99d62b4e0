"""Distributed helpers the objectives share: world size, gathering embeddings, exact loss averaging.

DistributedDataParallel averages gradients over ranks. A loss that every rank computes as a mean over
its own examples therefore gives the single-process gradient only when every rank holds the same number
of examples (or masked tokens). :func:`global_mean` fixes that: its value is the rank's local mean (what a
user expects to see logged) and its gradient is rescaled so that the rank-average of the gradients
equals the gradient of the mean over all ranks' items.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def collective_device() -> torch.device:
    """Where a tensor must live for a collective: the current GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass, ``factor * grad`` in the backward pass."""
    if factor == 1.0:
        return x
    return x * factor - x.detach() * (factor - 1.0)


def global_count(count: Tensor) -> Tensor:
    """Sum of ``count`` over ranks (no gradient)."""
    total = count.detach().to(torch.float64).clone()
    if is_distributed():
        dist.all_reduce(total)
    return total


def global_mean(values: Tensor) -> Tensor:
    """Mean of the 1-d ``values`` of this rank whose DDP-averaged gradient is the all-rank mean's gradient.

    Args:
        values: ``(K,)`` per-item losses of this rank (K may be 0 on some ranks).

    Returns:
        A scalar: the local mean (0 when K is 0), with its gradient scaled by
        ``world_size * K / K_total``.
    """
    count = values.new_tensor(float(values.numel()), dtype=torch.float64)
    total = global_count(count)
    if values.numel() == 0:
        return values.sum() * 0.0  # keeps the graph (and DDP's bucket bookkeeping) connected
    local = values.mean()
    if total.item() == 0:
        return local
    return scale_grad(local, float(world_size() * count.item() / total.item()))


def gather_with_local_grad(x: Tensor) -> Tuple[Tensor, int]:
    """All-gather ``(b, E)`` rows from every rank; only this rank's rows keep their gradient.

    Returns:
        ``(all rows (G, E) in rank order, offset of this rank's rows)``. Every rank must pass the same ``b``.
    """
    if not is_distributed():
        return x, 0
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts, dim=0), rank() * x.shape[0]  # (G, E)


def global_max(value: int) -> int:
    """The largest ``value`` any rank passes (``value`` itself without distribution)."""
    if not is_distributed():
        return int(value)
    size = torch.tensor([int(value)], device=collective_device())
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    return int(size.item())


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over ranks of a detached tensor (for logging)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x)
        x /= world_size()
    return x
