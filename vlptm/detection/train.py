"""Training the region extractor on COCO-format data, within a wall-clock budget.

The loop is plain: :func:`train_steps` runs optimisation steps until a stop condition, and
:func:`train_detector` wires data, model, optimiser, schedule, checkpoints and the final evaluation. The
learning rate warms up linearly over ``warmup_steps`` and then follows a cosine over the *time* budget
(or the step budget, whichever runs out first), so a 15-minute run anneals fully whatever the machine's
speed. The time budget is wall-clock by default; ``budget_clock="process"`` counts this process's CPU time
instead (summed over its threads), which keeps a budget comparable on a machine shared with other jobs.
Checkpoints are written every ``checkpoint_minutes`` into ``OUT/ckpt-<step>/`` and published by atomically
replacing ``OUT/last.json``; a rerun with the same ``OUT`` resumes from it.

Output: ``OUT/model/`` (the trained extractor, loadable with ``RegionExtractor.load`` or
``build_extractor``), ``OUT/metrics.json`` (evaluation), ``OUT/train_config.json``, ``OUT/log.jsonl``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from vlptm.detection.config import DetectorTrainConfig, apply_overrides, config_to_dict
from vlptm.detection.data import DetectionDataset, LabelSpace, collate_detection, read_detection_data
from vlptm.detection.evaluate import evaluate_detector
from vlptm.detection.extractor import RegionExtractor, load_extractor, variant_config

__all__ = ["DetectorTrainConfig", "train_detector", "train_steps", "lr_factor"]

logger = logging.getLogger(__name__)


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then cosine on ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    cosine = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return warm * cosine


def train_steps(
    model: RegionExtractor,
    batches: Iterator[Tuple[list, list]],
    optimizer: torch.optim.Optimizer,
    set_lr: Callable[[int], float],
    stop: Callable[[int], bool],
    step: int = 0,
    grad_clip: float = 0.0,
    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
) -> int:
    """Runs optimisation steps from ``step`` until ``stop(step)``; returns the step reached.

    Args:
        model: the extractor (put in train mode here).
        batches: endless iterator of ``(images, targets)``.
        optimizer: the optimiser.
        set_lr: sets the learning rate for a step and returns it.
        stop: called before each step.
        step: the first step's number (non-zero when resuming).
        grad_clip: max gradient norm (0: no clipping).
        on_step: called after each step with the float losses (and ``"lr"``).
    """
    model.train()
    device = model.device
    params = [p for p in model.parameters() if p.requires_grad]
    while not stop(step):
        images, targets = next(batches)
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        lr = set_lr(step)
        losses = model.losses(images, targets)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        step += 1
        if on_step is not None:
            on_step(step, {**{k: float(v.detach()) for k, v in losses.items()}, "lr": lr})
    return step


def train_detector(config: DetectorTrainConfig, model_overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Trains a region extractor on ``config.data`` and evaluates it on held-out data.

    Args:
        config: the run's settings.
        model_overrides: dotted-key overrides of the extractor config (``{"rpn.post_nms_top_n_train": 500}``).

    Returns:
        ``{"steps", "train_seconds" (wall), "train_cpu_seconds" (this process's CPU time, all threads),
        "threads", "metrics": {...}, "model_dir"}``.
    """
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_records, val_records = _split_records(config)
    labels = LabelSpace.from_records(train_records)
    model = _build_model(config, labels, dict(model_overrides or {}))
    _write_json(out / "train_config.json", {"train": dataclasses.asdict(config), "model": config_to_dict(model.config)})
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    step, elapsed_before, cpu_before = _resume(out, model, optimizer)
    if config.budget_clock not in ("wall", "process"):
        raise ValueError(f"budget_clock must be 'wall' or 'process', got {config.budget_clock!r}")

    dataset = DetectionDataset(train_records.records, labels, hflip_prob=config.hflip_prob)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                        collate_fn=collate_detection, drop_last=len(dataset) >= config.batch_size,
                        persistent_workers=config.num_workers > 0)
    budget = config.minutes * 60.0
    start, cpu_start = time.time(), time.process_time()
    last_checkpoint = [start]
    log_file = open(out / "log.jsonl", "a")

    def elapsed() -> float:
        return elapsed_before + time.time() - start

    def cpu_elapsed() -> float:
        return cpu_before + time.process_time() - cpu_start

    def progress(step: int) -> float:
        used = elapsed() if config.budget_clock == "wall" else cpu_elapsed()
        by_time = used / budget if budget > 0 else 0.0
        by_steps = step / config.max_steps if config.max_steps else 0.0
        return max(by_time, by_steps)

    def set_lr(step: int) -> float:
        lr = config.lr * lr_factor(step, progress(step), config.warmup_steps, config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def stop(step: int) -> bool:
        return progress(step) >= 1.0

    def on_step(step: int, losses: Dict[str, float]) -> None:
        if step % config.log_every == 0 or step == 1:
            record = {"step": step, "elapsed": round(elapsed(), 1), "cpu": round(cpu_elapsed(), 1),
                      **{k: round(v, 5) for k, v in losses.items()}}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            logger.info("step %d  %.0fs  loss %.4f  %s", step, elapsed(), losses["total"],
                        " ".join(f"{k}={v:.3f}" for k, v in losses.items() if k not in ("total", "lr")))
        if time.time() - last_checkpoint[0] >= config.checkpoint_minutes * 60.0:
            _checkpoint(out, model, optimizer, step, elapsed(), cpu_elapsed())
            last_checkpoint[0] = time.time()

    logger.info("training on %d images (%d classes, %d attributes), held-out %d images, budget %.1f min",
                len(dataset), labels.class_names.__len__() - 1, len(labels.attribute_names), len(val_records),
                config.minutes)
    step = train_steps(model, _endless(loader), optimizer, set_lr, stop, step, config.grad_clip, on_step)
    log_file.close()
    train_seconds, cpu_seconds = elapsed(), cpu_elapsed()
    _checkpoint(out, model, optimizer, step, train_seconds, cpu_seconds)
    model_dir = model.save(out / "model")
    logger.info("trained %d steps in %.0fs; evaluating on %d held-out images", step, train_seconds, len(val_records))
    metrics = evaluate_detector(model, val_records.records, labels, config.eval_batch_size,
                                config.eval_max_images or None) if len(val_records) else {}
    result = {"steps": step, "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
              "threads": torch.get_num_threads(), "metrics": metrics, "model_dir": str(model_dir)}
    _write_json(out / "metrics.json", result)
    logger.info("evaluation: %s", json.dumps(metrics))
    return result


def _split_records(config: DetectorTrainConfig):
    if not config.data:
        raise ValueError("train-detector needs --data (an instances.json or a folder holding one)")
    records = read_detection_data(config.data)
    if config.val_data:
        return records, read_detection_data(config.val_data)
    val = [r for r in records.records if r.split == "val"]
    if val:
        train = [r for r in records.records if r.split != "val"]
    else:
        cut = max(1, len(records.records) // 10) if len(records.records) > 1 else 0
        train, val = records.records[:-cut] if cut else records.records, records.records[-cut:] if cut else []
    return dataclasses.replace(records, records=train), dataclasses.replace(records, records=val)


def _build_model(config: DetectorTrainConfig, labels: LabelSpace, overrides: Dict[str, Any]) -> RegionExtractor:
    path = Path(config.variant)
    if path.is_dir() and (path / "config.json").is_file():  # fine-tune a saved extractor
        model = load_extractor(path)
        if model.config.class_names != labels.class_names:
            raise ValueError(f"{path} was trained on other classes than {config.data}")
        return model
    kind, model_config = variant_config(config.variant)
    if kind != "region":
        raise ValueError(f"train-detector trains region extractors; {config.variant} is a {kind} extractor")
    data_labels = {"class_names": labels.class_names, "category_ids": labels.category_ids,
                   "attribute_names": labels.attribute_names, "attribute_types": labels.attribute_types}
    model_config = apply_overrides(model_config, {**data_labels, **overrides})
    return RegionExtractor(model_config)


def _endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def _resume(out: Path, model: RegionExtractor, optimizer: torch.optim.Optimizer) -> Tuple[int, float]:
    pointer = out / "last.json"
    if not pointer.is_file():
        return 0, 0.0, 0.0
    from safetensors.torch import load_file

    last = json.loads(pointer.read_text())
    folder = out / last["dir"]
    if not (folder / "model.safetensors").is_file() or not (folder / "trainer.pt").is_file():
        raise FileNotFoundError(f"{pointer} points to a missing checkpoint {folder}; delete it to start over")
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    logger.info("resuming from %s (step %d, %.0fs trained)", folder, last["step"], last["elapsed"])
    return int(last["step"]), float(last["elapsed"]), float(last.get("cpu", 0.0))


def _checkpoint(out: Path, model: RegionExtractor, optimizer: torch.optim.Optimizer, step: int, elapsed: float,
                cpu: float) -> None:
    folder = out / f"ckpt-{step:07d}"
    model.save(folder)
    torch.save({"optimizer": optimizer.state_dict()}, folder / "trainer.pt")
    _write_json(out / "last.json", {"dir": folder.name, "step": step, "elapsed": elapsed, "cpu": cpu})
    for old in out.glob("ckpt-*"):
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint %s", folder)


def _write_json(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
