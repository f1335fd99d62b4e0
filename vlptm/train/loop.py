"""The training loop: one readable function over an epoch, and the per-step task schedule.

The loop owns everything that changes with the step (the task drawn for it, the learning rate, the
accumulation counter); the model and its objectives never see the step.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vlptm.objectives import TASKS
from vlptm.objectives._dist import collective_device, is_distributed, world_size

logger = logging.getLogger(__name__)

TASK_SAMPLING = ("ratio", "sum")


class TaskSchedule:
    """Which tasks run at each step and with what loss weight.

    ``"ratio"`` (UNITER): one task per step, drawn with probability proportional to its weight from a
    generator seeded by ``(seed, step)``, so every rank draws the same task and a resumed run the same
    sequence. ``"sum"``: every task every step, the loss being the weighted sum.

    Example:
        >>> schedule = TaskSchedule({"mlm": 2.0, "itc": 1.0}, "ratio", seed=0)
        >>> [schedule.tasks_for_step(s)[0] for s in range(6)]
        ['itc', 'itc', 'mlm', 'mlm', 'mlm', 'mlm']
    """

    def __init__(self, weights: Mapping[str, float], sampling: str = "ratio", seed: int = 0) -> None:
        unknown = sorted(set(weights) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; tasks are {TASKS}")
        if sampling not in TASK_SAMPLING:
            raise ValueError(f"task sampling must be one of {TASK_SAMPLING}, got {sampling!r}")
        self.weights = {task: float(w) for task, w in weights.items() if float(w) > 0}
        if not self.weights:
            raise ValueError("at least one task needs a positive weight")
        self.sampling, self.seed = sampling, seed
        self._names = sorted(self.weights, key=TASKS.index)
        total = sum(self.weights.values())
        self._probs = np.array([self.weights[t] / total for t in self._names])

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(self._names)

    def tasks_for_step(self, step: int) -> Tuple[str, ...]:
        if self.sampling == "sum":
            return tuple(self._names)
        rng = np.random.default_rng([self.seed, 7919, step])
        return (self._names[int(rng.choice(len(self._names), p=self._probs))],)

    def loss_weight(self, task: str) -> float:
        return self.weights[task] if self.sampling == "sum" else 1.0


@dataclass
class TrainState:
    """Progress of a run: optimiser ``step``, ``epoch`` and micro-batches of it consumed (``batches_done``)."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0

    def state_dict(self) -> Dict[str, int]:
        return asdict(self)


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> Dict[str, Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def train_one_epoch(model: nn.Module, loader: Iterable[Mapping[str, Tensor]], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, *, state: TrainState, schedule: TaskSchedule,
                    max_steps: int, device: torch.device, accum_steps: int = 1, grad_clip: float = 0.0,
                    autocast_dtype: Optional[torch.dtype] = None, scaler: Optional[torch.amp.GradScaler] = None,
                    on_step: Optional[Callable[[TrainState, Dict[str, Tensor], int], Optional[bool]]] = None) -> bool:
    """Train over the rest of one epoch of ``loader``, stopping at ``max_steps``.

    Each optimiser step accumulates ``accum_steps`` micro-batches (gradient all-reduce only on the last
    one under DDP), unscales (fp16), clips the global gradient norm, skips the update when that norm is
    not finite, steps the optimiser and the scheduler, and calls ``on_step``. Micro-batches left over at the
    end of the epoch (fewer than ``accum_steps``) are discarded.

    Args:
        model: a :class:`~vlptm.objectives.PretrainingModel`, possibly wrapped in DDP.
        loader: batches of :func:`vlptm.data.pretrain.collate_pretrain`.
        optimizer, scheduler: stepped once per optimiser step.
        state: updated in place (``step``, ``batches_done``).
        schedule: the tasks of each step and their loss weights.
        max_steps: stop once ``state.step`` reaches it.
        device: where batches go.
        accum_steps: micro-batches per step.
        grad_clip: max global gradient norm (0 = no clipping).
        autocast_dtype: ``torch.bfloat16`` / ``torch.float16`` for mixed precision, ``None`` for fp32.
        scaler: a ``GradScaler`` for fp16.
        on_step: called after each step with the state, the step's mean losses/metrics (detached
            tensors, plus ``loss`` and ``grad_norm``) and the number of examples this rank used; returning
            True stops training (e.g. a time limit).

    Returns:
        True when ``max_steps`` was reached or ``on_step`` asked to stop.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    micro, examples = 0, 0
    metrics: Dict[str, Tensor] = {}
    tasks: Tuple[str, ...] = ()
    for batch in loader:
        if state.step >= max_steps:
            return True
        if micro == 0:
            tasks = schedule.tasks_for_step(state.step)
            metrics, examples = defaultdict(float), 0
        batch = _to_device(batch, device)
        last = micro + 1 == accum_steps
        sync = contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model(batch, tasks)
            loss = sum(schedule.loss_weight(task) * out[task] for task in tasks)
            (scaler.scale(loss / accum_steps) if scaler is not None else loss / accum_steps).backward()
        for key, value in out.items():
            metrics[key] = metrics[key] + value.detach().float() / accum_steps
        metrics["loss"] = metrics["loss"] + loss.detach().float() / accum_steps
        examples += int(batch["input_ids"].shape[0])
        state.batches_done += 1
        micro += 1
        if not last:
            continue
        micro = 0
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
        if scaler is not None:
            scaler.step(optimizer)  # skips the update itself on inf/NaN gradients
            scaler.update()
        elif torch.isfinite(grad_norm):
            optimizer.step()
        else:
            logger.warning("step %d: non-finite gradient norm, update skipped", state.step)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        metrics["grad_norm"] = grad_norm.detach().float()
        if on_step is not None and on_step(state, dict(metrics), examples):
            return True
    optimizer.zero_grad(set_to_none=True)
    return state.step >= max_steps


class MetricAverager:
    """Averages per-step metrics over a logging interval (and over ranks, when distributed)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)
        self.examples = 0
        self.start = time.perf_counter()

    def add(self, metrics: Mapping[str, Tensor], examples: int) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value)
            self.counts[key] += 1
        self.examples += examples

    def summary(self) -> Dict[str, float]:
        """Interval means; all ranks must call it together when distributed (it all-reduces)."""
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] / self.counts[k] for k in keys] + [float(self.examples)],
                              dtype=torch.float64, device=collective_device())
        if is_distributed():
            torch.distributed.all_reduce(values)
            values[:-1] /= world_size()
        values = values.cpu()
        out = {key: float(v) for key, v in zip(keys, values[:-1].tolist())}
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out["examples_per_s"] = float(values[-1]) / elapsed
        return out
