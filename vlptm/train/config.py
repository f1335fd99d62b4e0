"""The pretraining recipe: one dataclass per section, read from YAML with ``--key=value`` overrides.

Example:
    >>> from vlptm.config import build_config
    >>> cfg = build_config(PretrainConfig, {"model": "single-tiny"}, ["--optim.lr=3e-4", "--tasks.weights={mlm: 1}"])
    >>> cfg.optim.lr, cfg.tasks.weights
    (0.0003, {'mlm': 1.0})
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class SourceConfig:
    """One data set of the pretraining mix."""

    captions: str = ""  # caption annotation file (any format vlptm.data.readers.read_records reads)
    features: str = ""  # feature store directory holding those images
    split: Optional[str] = None  # keep only records of this split (e.g. "train"); none = all
    repeat: int = 1  # times each pair appears per epoch (weights a small set up in a mix)
    image_root: Optional[str] = None  # image folder for the reader (only used to resolve paths)


@dataclass
class DataConfig:
    """Batches: sources, lengths, batch size, bucketing, loader workers."""

    sources: List[SourceConfig] = field(default_factory=list)  # the data mix
    tokenizer: str = "minilm-l6"  # WordPiece tokenizer (alias, folder or hub name)
    max_text_len: int = 40  # tokens per caption incl. [CLS]/[SEP]
    max_regions: int = 36  # regions per image (the first ones of the store)
    batch_size: int = 32  # examples per batch on each rank (global batch = batch_size x ranks)
    bucket_batches: int = 50  # global batches sorted together by length (1 = random batching)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class MaskingConfig:
    """How MLM and MRM hide their targets."""

    mode: str = "conditional"  # "conditional" (UNITER: one modality per example) or "joint" (LXMERT)
    text_scheme: str = "token"  # "token" (15%, 80/10/10), "whole_word" or "span" (SpanBERT)
    text_prob: float = 0.15  # fraction of tokens selected
    span_p: float = 0.2  # geometric parameter of span lengths
    span_max: int = 10  # longest span in words
    region_prob: float = 0.15  # fraction of regions masked


@dataclass
class TaskConfig:
    """Which objectives run, and how they share the steps."""

    weights: Dict[str, float] = field(default_factory=lambda: {"mlm": 1.0, "mrfr": 1.0, "itm": 1.0, "itc": 1.0})
    sampling: str = "ratio"  # "ratio": one task per step drawn by weight (UNITER); "sum": all, weighted sum
    itm_negatives: str = "random"  # "random" (swap image or text) or "hard" (from in-batch ITC similarity)
    itm_negative_prob: float = 0.5  # share of mismatched pairs with random negatives
    itc_embed_dim: int = 256  # size of the retrieval embeddings
    itc_temperature: float = 0.07  # initial ITC temperature
    itc_pooling: str = "mean"  # "mean": one vector per image; "regions": one per region, scored by the max
    itm_pooling: str = "cls"  # ITM head input: "cls" (pooled [CLS]) or "mean" (all real token/region states)


@dataclass
class OptimConfig:
    """AdamW, warmup and decay, clipping, accumulation."""

    lr: float = 5e-5  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay (not on biases, norms, embeddings' mask vectors)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    warmup_steps: int = 1000  # linear warmup from 0
    schedule: str = "linear"  # decay after warmup: "linear" (to min_lr_ratio), "cosine" or "constant"
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr
    max_steps: int = 10000  # optimiser steps of the whole run
    grad_clip: float = 2.0  # max global grad norm (0 = off)
    accum_steps: int = 1  # micro-batches per optimiser step


@dataclass
class ValidationConfig:
    """Held-out evaluation during pretraining (:func:`vlptm.train.validate.evaluate_pretraining`): each
    head's accuracy and ITC text-to-image R@1/5/10, logged to ``RUN/validation.jsonl`` and TensorBoard."""

    sources: List[SourceConfig] = field(default_factory=list)  # held-out captions + stores; none = no validation
    every: int = 0  # steps between evaluations (0: only at the end of the run)
    max_images: int = 1000  # evaluate on the first N images of the sources (every caption of each)
    batch_size: int = 128  # examples per forward pass


@dataclass
class PretrainConfig:
    """A pretraining run (``vlptm pretrain --config RECIPE.yaml [--key=value ...]``)."""

    model: str = "single-small"  # encoder variant (vlptm.models.list_models())
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # create_model overrides
    init_from: Optional[str] = None  # start from a checkpoint (RUN, RUN/checkpoint or an encoder folder)
    run_dir: str = "runs/pretrain"  # checkpoints, logs, TensorBoard events
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    precision: str = "fp32"  # "fp32", "bf16" (CUDA or CPU autocast) or "fp16" (CUDA, loss scaling)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    seed: int = 0  # seeds model init, data order, masking
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    save_every: int = 1000  # steps between checkpoints (a final one is always written)
    keep_checkpoints: int = 2  # how many step checkpoints to keep
    log_every: int = 10  # steps between log lines
    time_limit_minutes: float = 0.0  # stop (and checkpoint) after this much run time, validation included; 0 = off
    progress: bool = True  # tqdm progress bar on rank 0
