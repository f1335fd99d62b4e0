"""``vlptm pretrain``: build data, model and optimiser from a recipe, resume, train, checkpoint.

Runs as one process or under ``torchrun --nproc_per_node=N`` (DDP with a sharded bucketed sampler;
rank 0 logs and checkpoints).

Example:
    >>> from vlptm.config import load_config
    >>> cfg = load_config(PretrainConfig, "configs/pretrain/scenes-cpu.yaml")   # doctest: +SKIP
    >>> run_dir = pretrain(cfg)                                                  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vlptm.config import to_dict
from vlptm.data.pretrain import BucketBatchSampler, MaskingOptions, PretrainDataset, PretrainSource, collate_pretrain
from vlptm.objectives import PretrainingModel
from vlptm.objectives._dist import collective_device
from vlptm.train import checkpoint as ckpt
from vlptm.train.config import PretrainConfig, SourceConfig
from vlptm.train.distributed import DistInfo, barrier, cleanup, init_distributed
from vlptm.train.loop import MetricAverager, TaskSchedule, TrainState, train_one_epoch
from vlptm.train.optim import build_optimizer, build_scheduler
from vlptm.train.run_log import RunLogger
from vlptm.train.validate import evaluate_pretraining

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Bit-reproducible kernels (``torch.use_deterministic_algorithms``)."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def _sources(configured: Sequence[SourceConfig], section: str) -> Iterator[Tuple[SourceConfig, list, Any]]:
    """``(source, records, store)`` of each configured source, after checking it names both files."""
    from vlptm.data.readers import read_records
    from vlptm.features.store import FeatureStore

    if not configured:
        raise ValueError(f"the recipe has no {section}.sources (each needs captions: FILE and features: STORE)")
    for i, source in enumerate(configured):
        if not source.captions or not source.features:
            raise ValueError(f"{section}.sources[{i}] needs both 'captions' and 'features'")
        kwargs = {"split": source.split} if source.split else {}
        yield source, list(read_records(source.captions, source.image_root, **kwargs)), FeatureStore.open(
            source.features)


def _pretrain_dataset(cfg: PretrainConfig, sources: List[PretrainSource], pos_dim: int, seed: int) -> PretrainDataset:
    from vlptm.text import load_tokenizer

    m = cfg.masking
    masking = MaskingOptions(text_scheme=m.text_scheme, text_prob=m.text_prob, span_p=m.span_p,
                             span_max=m.span_max, region_prob=m.region_prob,
                             itm_negative_prob=cfg.tasks.itm_negative_prob)
    return PretrainDataset(sources, load_tokenizer(cfg.data.tokenizer), max_text_len=cfg.data.max_text_len,
                           max_regions=cfg.data.max_regions, pos_dim=pos_dim, masking=masking, seed=seed)


def build_dataset(cfg: PretrainConfig, pos_dim: int) -> PretrainDataset:
    """The data mix of ``cfg.data.sources`` as one :class:`PretrainDataset`."""
    sources = [PretrainSource(records=records, store=store, repeat=source.repeat,
                              name=Path(source.captions).parent.name)
               for source, records, store in _sources(cfg.data.sources, "data")]
    return _pretrain_dataset(cfg, sources, pos_dim, cfg.seed)


def build_validation_dataset(cfg: PretrainConfig, pos_dim: int) -> PretrainDataset:
    """The held-out images of ``cfg.validation.sources``: the first ``validation.max_images`` that are in
    their stores, each source counted once, masked with a seed of their own."""
    sources, budget = [], cfg.validation.max_images
    for i, (source, records, store) in enumerate(_sources(cfg.validation.sources, "validation")):
        records = [r for r in records if r.image_id in store][:budget]
        budget -= len(records)
        if not records:
            logger.warning("validation.sources[%d]: none of its images is in %s (or max_images is used up)",
                           i, source.features)
            continue
        sources.append(PretrainSource(records=records, store=store, name=Path(source.captions).parent.name))
    if not sources:
        raise ValueError("validation.sources: no held-out image is in its feature store; nothing to evaluate")
    return _pretrain_dataset(cfg, sources, pos_dim, cfg.seed + 1)


def build_model(cfg: PretrainConfig, feature_dim: int, num_region_classes: int) -> PretrainingModel:
    """Encoder variant ``cfg.model`` (its ``region_feat_dim`` set from the features) plus the task heads."""
    from vlptm.models import create_model

    overrides = dict(cfg.model_overrides)
    overrides.setdefault("region_feat_dim", feature_dim)
    encoder = create_model(cfg.model, **overrides)
    if int(encoder.config.region_feat_dim) != int(feature_dim):
        raise ValueError(f"model region_feat_dim {encoder.config.region_feat_dim} != feature dim {feature_dim}")
    return PretrainingModel(encoder, tasks=list(TaskSchedule(cfg.tasks.weights).tasks),
                            num_region_classes=num_region_classes, masking=cfg.masking.mode,
                            itm_negatives=cfg.tasks.itm_negatives, itc_embed_dim=cfg.tasks.itc_embed_dim,
                            itc_temperature=cfg.tasks.itc_temperature, itc_pooling=cfg.tasks.itc_pooling,
                            itm_pooling=cfg.tasks.itm_pooling)


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs CUDA; use precision=bf16 on CPU")
    return PRECISIONS[precision]


def pretrain(cfg: PretrainConfig, resume: bool = False) -> Path:
    """Run (or resume) the pretraining described by ``cfg``.

    Args:
        cfg: the recipe.
        resume: continue from ``RUN/checkpoint`` when it exists (model, optimiser, scheduler, RNG states
            and data position), else start fresh.

    Returns:
        The run directory (its ``checkpoint`` is the final one).
    """
    dist_info = init_distributed(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _pretrain(cfg, resume, dist_info)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        cleanup()


def _pretrain(cfg: PretrainConfig, resume: bool, info: DistInfo) -> Path:
    run_dir = Path(cfg.run_dir)
    device = info.device
    seed_everything(cfg.seed)
    set_deterministic(cfg.deterministic)
    autocast_dtype = _autocast_dtype(cfg.precision, device)
    schedule = TaskSchedule(cfg.tasks.weights, cfg.tasks.sampling, cfg.seed)

    from vlptm.models import get_model_config

    model_config = get_model_config(cfg.model, **{k: v for k, v in cfg.model_overrides.items()
                                                   if k != "region_feat_dim"})
    dataset = build_dataset(cfg, pos_dim=int(model_config.region_pos_dim))
    heldout = build_validation_dataset(cfg, int(model_config.region_pos_dim)) if cfg.validation.sources else None
    feature_dim = int(dataset.stores[0].feature_dim)
    if heldout is not None and int(heldout.stores[0].feature_dim) != feature_dim:
        raise ValueError(f"validation.sources have {heldout.stores[0].feature_dim}-d region features; the training "
                         f"data has {feature_dim}-d ones")
    model = build_model(cfg, feature_dim, dataset.num_region_classes).to(device)

    sampler = BucketBatchSampler(dataset.lengths(), cfg.data.batch_size, num_replicas=info.world_size,
                                 rank=info.rank, bucket_batches=cfg.data.bucket_batches, seed=cfg.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_pretrain,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())  # keeps the global RNG untouched by iterator creation
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    scheduler = build_scheduler(optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps, cfg.optim.schedule,
                                cfg.optim.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    state = TrainState()

    checkpoint = ckpt.resolve_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        logger.info("--resume: no checkpoint in %s yet, starting from scratch", run_dir)
    if checkpoint is not None:
        if info.is_main:
            ckpt.clean_partial_checkpoints(run_dir)
        ckpt.load_model_weights(model, checkpoint, strict=True)
        saved = ckpt.load_trainer_state(checkpoint)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = TrainState(**saved["train_state"])
        ckpt.restore_rng_state(saved["rng"][min(info.rank, len(saved["rng"]) - 1)])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, state.step, state.epoch,
                    state.batches_done)
    elif cfg.init_from:
        report = ckpt.load_model_weights(model, cfg.init_from, strict=False)
        logger.info("initialised from %s (fresh heads: %s)", cfg.init_from, report["missing_heads"] or "none")

    train_model = model
    if info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              find_unused_parameters=True)
    run_log = RunLogger(run_dir, enabled=info.is_main, total_steps=cfg.optim.max_steps, start_step=state.step,
                        progress=cfg.progress)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ckpt.CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        run_log.write(f"pretraining {cfg.model} on {len(dataset)} pairs ({len(dataset.images)} images), tasks "
                      f"{schedule.tasks} ({cfg.tasks.sampling}), {info.world_size} rank(s) on {device}")

    averager = MetricAverager()
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)

    def save() -> None:
        rng_states = _gather_rng_states(info)
        if info.is_main:
            trainer_state = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "train_state": state.state_dict(), "rng": rng_states, "world_size": info.world_size,
            }
            ckpt.save_checkpoint(run_dir, state.step, model, trainer_state, config_yaml, cfg.keep_checkpoints)
        barrier()

    validated_at: List[int] = []

    def validate() -> None:
        """Every rank evaluates the same held-out batches (the heads' losses may all-reduce); rank 0 logs."""
        tick = time.monotonic()
        results = evaluate_pretraining(model, heldout, cfg.validation.batch_size, autocast_dtype)
        validated_at.append(state.step)
        run_log.log({"step": state.step, **results, "seconds": time.monotonic() - tick}, group="val")
        run_log.write(f"validation at step {state.step}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in results.items() if isinstance(v, float)))

    started = time.monotonic()

    def on_step(state: TrainState, metrics: Dict[str, Tensor], examples: int) -> bool:
        averager.add(metrics, examples)
        run_log.advance()
        limit_s = 60 * cfg.time_limit_minutes
        out_of_time = _all_agree(limit_s > 0 and time.monotonic() - started > limit_s)
        if state.step % cfg.log_every == 0 or state.step == cfg.optim.max_steps or out_of_time:
            entry = {"step": state.step, "epoch": state.epoch, "lr": scheduler.get_last_lr()[0]}
            entry.update(averager.summary())
            run_log.log(entry)
            averager.reset()
        if out_of_time:
            run_log.write(f"time limit of {cfg.time_limit_minutes} min reached at step {state.step}")
            return True
        if heldout is not None and cfg.validation.every and state.step % cfg.validation.every == 0:
            validate()
        if state.step % cfg.save_every == 0 and state.step < cfg.optim.max_steps:
            save()
        return False

    done = state.step >= cfg.optim.max_steps
    while not done:
        dataset.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch, skip_batches=state.batches_done)
        done = train_one_epoch(train_model, loader, optimizer, scheduler, state=state, schedule=schedule,
                               max_steps=cfg.optim.max_steps, device=device, accum_steps=cfg.optim.accum_steps,
                               grad_clip=cfg.optim.grad_clip, autocast_dtype=autocast_dtype, scaler=scaler,
                               on_step=on_step)
        if not done:
            state.epoch += 1
            state.batches_done = 0
    if heldout is not None and validated_at[-1:] != [state.step]:
        validate()  # the final weights
    if ckpt.latest_step(run_dir) != state.step:
        save()
    run_log.close()
    return run_dir


def _all_agree(flag: bool) -> bool:
    """True on every rank when it is true on any (rank 0's clock decides nothing alone)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=collective_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _gather_rng_states(info: DistInfo) -> list:
    """Every rank's RNG state (rank order), so each rank resumes its own dropout stream."""
    local = ckpt.capture_rng_state()
    if not info.distributed:
        return [local]
    gathered: list = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


def load_pretraining_model(path: str) -> PretrainingModel:
    """A trained :class:`PretrainingModel` (encoder and heads) from a run directory or checkpoint, on CPU.

    Example:
        >>> model = load_pretraining_model("runs/scenes")        # doctest: +SKIP
        >>> model.embed_text(batch).shape                        # doctest: +SKIP
        torch.Size([8, 256])
    """
    from vlptm.config import from_dict
    from vlptm.models import from_pretrained
    from vlptm.models.hub import load_state_dict_file

    checkpoint = ckpt.resolve_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"no pretraining checkpoint at {path}")
    cfg = from_dict(PretrainConfig, yaml.safe_load((checkpoint / ckpt.CONFIG_FILE).read_text()) or {})
    heads = load_state_dict_file(checkpoint / ckpt.HEADS_FILE)
    class_head = heads.get("mrm.class_head.out.weight")
    model = PretrainingModel(from_pretrained(str(checkpoint / ckpt.ENCODER_DIR)),
                             tasks=list(TaskSchedule(cfg.tasks.weights).tasks),
                             num_region_classes=int(class_head.shape[0]) if class_head is not None else 0,
                             masking=cfg.masking.mode, itm_negatives=cfg.tasks.itm_negatives,
                             itc_embed_dim=cfg.tasks.itc_embed_dim, itc_temperature=cfg.tasks.itc_temperature,
                             itc_pooling=cfg.tasks.itc_pooling, itm_pooling=cfg.tasks.itm_pooling)
    ckpt.load_model_weights(model, checkpoint, strict=True)
    return model.eval()
