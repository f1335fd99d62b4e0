"""AdamW with decoupled weight decay and a warmup-then-decay learning-rate schedule."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("linear", "cosine", "constant")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01, betas: List[float] = (0.9, 0.98),
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, two groups: with and without weight decay.

    Example:
        >>> opt = build_optimizer(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), lr=1e-3)
        >>> [len(g["params"]) for g in opt.param_groups], [g["weight_decay"] for g in opt.param_groups]
        ([1, 3], [0.01, 0.0])
    """
    decay, no_decay = [], []
    seen = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        (no_decay if param.ndim < 2 else decay).append(param)  # biases, norms, temperature, mask vectors
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, schedule: str = "linear",
                  min_ratio: float = 0.0) -> float:
    """Factor of the peak lr at ``step``: linear warmup from 0, then linear/cosine decay to ``min_ratio``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    decay = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int, schedule: str = "linear",
                    min_ratio: float = 0.0) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step (see :func:`lr_multiplier`)."""
    lr_multiplier(0, warmup_steps, max_steps, schedule, min_ratio)  # validates the schedule name
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup_steps, max_steps, schedule, min_ratio))
