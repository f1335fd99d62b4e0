"""VQA fine-tuning: an encoder of either stream type, a 2-layer MLP answer head, soft-score BCE.

A few lines take a pretrained checkpoint to a VQA model::

    tuner = VQAFineTuner.from_pretrained("runs/pretrain", answers=1000)     # top-1000 training answers
    tuner.fit(train, val)                                                    # VQAExamples (questions + store)
    tuner.evaluate(test)["accuracy"]
    tuner.predict("kitchen.jpg", "what is on the table?", top_k=5)           # runs the region extractor
    tuner.save("models/vqa"); VQAFineTuner.load("models/vqa")

``from_pretrained`` takes a pretraining run (``RUN``, ``RUN/checkpoint`` or a step directory), a bare
encoder ``save_pretrained`` folder, a saved fine-tuner, or a model variant name (no vision-language
pretraining: the baseline a pretrained encoder has to beat).

Questions come in two conventions (see :class:`~vlptm.data.readers.QuestionRecord`): annotator answers
with counts (VQA v2), scored by the official VQA accuracy and trained towards its soft scores; and gold
answer sets (DAQUAR, the generated world), for which the model predicts an answer *set* (the top answer
plus every answer whose probability reaches ``set_threshold``, tuned on the validation questions) and is
scored by exact-set accuracy (the published DAQUAR measure) and any-gold accuracy (the top answer is a
gold answer).

Shape legend: B batch, T question tokens, R regions, D region feature dim, P position dim, H hidden size,
A answers.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vlptm.data.readers import QuestionRecord
from vlptm.models.base import SUMMARY_POOLINGS, VisionLanguageEncoder
from vlptm.structures import RegionFeatures
from vlptm.tasks.answers import AnswerVocab, answer_targets, evaluate_predictions, normalize_answer

logger = logging.getLogger(__name__)

__all__ = ["VQAOptions", "VQATrainConfig", "VQAExamples", "VQAHead", "VQAModel", "VQAFineTuner", "vqa_loss",
           "collate_vqa", "split_by_image"]

FORMAT_NAME = "vlptm-vqa"
FORMAT_VERSION = 1
_META_FILE = "vqa.json"
_ANSWERS_FILE = "answers.json"
_ENCODER_DIR = "encoder"
_HEAD_FILE = "head.safetensors"
_EXTRACTOR_DIR = "extractor"
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CACHED_IMAGES = 1024  # region arrays kept in memory per data set (a 36 x 2048 float32 image is 0.3 MB)
_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)  # 1.01: the top answer alone


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------
@dataclass
class VQAOptions:
    """How questions and images become model inputs; saved with the model."""

    tokenizer: str = "minilm-l6"  # WordPiece tokenizer (alias, folder or hub name); must match the encoder's
    max_text_len: int = 24  # question tokens incl. [CLS] and [SEP]
    max_regions: int = 36  # regions per image (the store's first ones, i.e. the most confident)
    use_regions: bool = True  # False: a question-only model that never sees the image
    pooling: str = "cls"  # head input: "cls" (the encoder's pooled [CLS]) or "mean" (all real token/region states)
    set_threshold: float = 0.5  # gold-set data: answers with probability >= this join the top answer's set
    extractor: str = ""  # region extractor for raw images (variant, YAML or saved folder); "" = the store's
    extractor_hash: str = ""  # config hash of the extractor behind the training features (checked by predict)
    extractor_config: Dict[str, Any] = field(default_factory=dict)  # its dotted config overrides (from the store)


@dataclass
class VQATrainConfig:
    """The fine-tuning schedule of :meth:`VQAFineTuner.fit`."""

    epochs: float = 10.0  # passes over the training questions (ignored when max_steps > 0)
    max_steps: int = 0  # optimiser steps; 0 = from epochs
    batch_size: int = 32  # questions per step
    lr: float = 5e-5  # peak learning rate of the encoder
    head_lr_mult: float = 10.0  # the freshly initialised head learns this many times faster
    weight_decay: float = 0.01  # decoupled weight decay (not on biases and norms)
    warmup_ratio: float = 0.1  # share of the steps spent warming up linearly
    schedule: str = "linear"  # decay after warmup: "linear", "cosine" or "constant"
    grad_clip: float = 2.0  # max global gradient norm (0 = off)
    precision: str = "fp32"  # "fp32", "bf16" (CPU or CUDA autocast) or "fp16" (CUDA, loss scaling)
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"
    seed: int = 0  # head init, data order, dropout
    eval_every: int = 0  # steps between validation passes; 0 = once per epoch (with a validation set)
    keep_best: bool = True  # end with the weights of the best validation accuracy
    num_workers: int = 0  # DataLoader worker processes
    log_every: int = 50  # steps between log lines


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
@dataclass
class VQAExamples:
    """Questions and the features of their images.

    Attributes:
        records: :class:`~vlptm.data.readers.QuestionRecord` s (``vlptm.data.readers.read_records``).
        features: a :class:`~vlptm.features.FeatureStore`, or any mapping ``image_id -> RegionFeatures``
            supporting ``in``.
        name: for logs.

    Example:
        >>> train = VQAExamples.load("data/vqa.json", "features/world", split="train")  # doctest: +SKIP
        >>> train, val = train.split_by_image(0.1, seed=0)                             # doctest: +SKIP
    """

    records: Sequence[QuestionRecord]
    features: Any
    name: str = ""

    @classmethod
    def load(cls, questions: Union[str, os.PathLike], features: Union[str, os.PathLike, Any],
             split: Optional[str] = None, image_root: Optional[Union[str, os.PathLike]] = None) -> "VQAExamples":
        """Read a question file (VQA v2, DAQUAR, ``vqa.json``) and open a feature store directory."""
        from vlptm.data.readers import read_records
        from vlptm.features.store import FeatureStore

        kwargs = {"split": split} if split else {}
        records = list(read_records(questions, image_root, **kwargs))
        if records and not isinstance(records[0], QuestionRecord):
            raise ValueError(f"{questions} holds {type(records[0]).__name__}s, not questions")
        store = FeatureStore.open(features) if isinstance(features, (str, os.PathLike)) else features
        return cls(records, store, name=Path(questions).parent.name)

    def __len__(self) -> int:
        return len(self.records)

    def split_by_image(self, fraction: float, seed: int = 0) -> Tuple["VQAExamples", "VQAExamples"]:
        """Image-disjoint split: ``(rest, held_out)`` with about ``fraction`` of the images held out."""
        rest, held = split_by_image(self.records, fraction, seed)
        return (VQAExamples(rest, self.features, self.name), VQAExamples(held, self.features, self.name))


def split_by_image(records: Sequence[QuestionRecord], fraction: float, seed: int = 0
                   ) -> Tuple[List[QuestionRecord], List[QuestionRecord]]:
    """Split questions so that no image has questions on both sides.

    Args:
        records: the questions.
        fraction: share of the (distinct) images held out, in ``(0, 1)``.
        seed: which images.

    Returns:
        ``(rest, held_out)``, each in the input order.

    Example:
        >>> from pathlib import Path
        >>> qs = [QuestionRecord(str(i), f"img{i % 4}", Path("."), "q?", ["a"], {"a": 1}) for i in range(8)]
        >>> rest, held = split_by_image(qs, 0.25)
        >>> len(held), {r.image_id for r in held} & {r.image_id for r in rest}
        (2, set())
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    images = sorted({r.image_id for r in records})
    if len(images) < 2:
        raise ValueError("an image-disjoint split needs questions about at least two images")
    order = np.random.default_rng(seed).permutation(len(images))
    count = min(len(images) - 1, max(1, int(round(fraction * len(images)))))
    held_images = {images[i] for i in order[:count]}
    rest = [r for r in records if r.image_id not in held_images]
    held = [r for r in records if r.image_id in held_images]
    return rest, held


class _VQADataset(Dataset):
    """Tokenised questions with their images' regions and soft answer targets."""

    def __init__(self, examples: VQAExamples, tokenizer: Any, vocab: AnswerVocab, options: VQAOptions,
                 pos_dim: int, feature_dim: int, train: bool) -> None:
        self.features = examples.features
        self.options, self.pos_dim = options, pos_dim
        self.num_answers = len(vocab)
        records = list(examples.records)
        self.missing_images = 0
        if options.use_regions:
            usable = self._usable_images({r.image_id for r in records}, feature_dim)
            kept = [r for r in records if r.image_id in usable]
            self.missing_images = len({r.image_id for r in records}) - len(usable)
            if len(kept) < len(records):
                logger.warning("%s: %d of %d questions skipped: their image (%d images) is not in the feature "
                               "store or has no regions", examples.name or "data", len(records) - len(kept),
                               len(records), self.missing_images)
            records = kept
        targets = [answer_targets(r.answer_counts, r.multi_label, vocab) for r in records]
        self.unanswerable = sum(not t for t in targets)
        if train:
            records = [r for r, t in zip(records, targets) if t]
            targets = [t for t in targets if t]
            if self.unanswerable:
                logger.info("%d training questions have no answer in the %d-answer vocabulary; not trained on",
                            self.unanswerable, len(vocab))
        self.records = records
        self._cache: Dict[str, Dict[str, np.ndarray]] = {}
        self.labels = [np.fromiter(t.keys(), np.int64, len(t)) for t in targets]
        self.scores = [np.fromiter(t.values(), np.float32, len(t)) for t in targets]
        encoded = tokenizer([r.question for r in records], truncation=True, max_length=options.max_text_len)
        self.text_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]] if records else []

    def _usable_images(self, image_ids: set, feature_dim: int) -> set:
        usable = set()
        for image_id in image_ids:
            if image_id not in self.features:
                continue
            regions = self.features[image_id]
            if len(regions) == 0:
                continue
            if regions.feature_dim != feature_dim:
                raise ValueError(f"image {image_id!r} has {regions.feature_dim}-d region features; the encoder "
                                 f"takes {feature_dim}-d ones (region_feat_dim)")
            usable.add(image_id)
        return usable

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        record = self.records[index]
        item = {"input_ids": self.text_ids[index], "labels": self.labels[index], "scores": self.scores[index],
                "index": index}
        if self.options.use_regions:
            item.update(self._regions(record.image_id))
        return item

    def _regions(self, image_id: str) -> Dict[str, np.ndarray]:
        """An image's region arrays, cached (an image has several questions; LRU of ``_CACHED_IMAGES``)."""
        arrays = self._cache.pop(image_id, None)
        if arrays is None:
            arrays = regions_to_arrays(self.features[image_id], self.options.max_regions, self.pos_dim)
            if len(self._cache) >= _CACHED_IMAGES:
                self._cache.pop(next(iter(self._cache)))
        self._cache[image_id] = arrays
        return arrays


def regions_to_arrays(regions: RegionFeatures, max_regions: int, pos_dim: int) -> Dict[str, np.ndarray]:
    """The first ``max_regions`` regions as ``region_feats (r, D)`` and ``region_pos (r, P)`` float32 arrays."""
    regions = regions[:max_regions]
    feats = regions.features.float().cpu().numpy()  # (r, D)
    pos = (regions.normalized_positions(pos_dim).cpu().numpy() if pos_dim
           else np.zeros((len(regions), 0), np.float32))  # (r, P)
    return {"region_feats": feats, "region_pos": pos}


def _pad(arrays: Sequence[np.ndarray], length: int, value: float, dtype: torch.dtype) -> Tensor:
    out = torch.full((len(arrays), length) + tuple(arrays[0].shape[1:]), value, dtype=dtype)
    for i, array in enumerate(arrays):
        out[i, : len(array)] = torch.as_tensor(array, dtype=dtype)
    return out


def collate_vqa(items: Sequence[Dict[str, Any]], num_answers: int, pad_id: int = 0) -> Dict[str, Tensor]:
    """Pad dataset items into a batch.

    Returns:
        ``input_ids, attention_mask, token_type_ids (B, T)``; with regions ``region_feats (B, R, D)``,
        ``region_pos (B, R, P)``, ``region_mask (B, R)``; ``targets (B, A)`` soft scores; ``index (B,)``.
    """
    ids = [item["input_ids"] for item in items]
    length = max(len(a) for a in ids)
    batch = {
        "input_ids": _pad(ids, length, pad_id, torch.long),  # (B, T)
        "attention_mask": _pad([np.ones(len(a), np.int64) for a in ids], length, 0, torch.long),  # (B, T)
    }
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])  # (B, T)
    if "region_feats" in items[0]:
        feats = [item["region_feats"] for item in items]
        regions = max(1, max(len(f) for f in feats))
        batch["region_feats"] = _pad(feats, regions, 0.0, torch.float32)  # (B, R, D)
        batch["region_pos"] = _pad([item["region_pos"] for item in items], regions, 0.0, torch.float32)  # (B, R, P)
        batch["region_mask"] = _pad([np.ones(len(f), np.int64) for f in feats], regions, 0, torch.long)  # (B, R)
    targets = torch.zeros(len(items), num_answers)  # (B, A)
    for row, item in enumerate(items):
        targets[row, torch.as_tensor(item["labels"])] = torch.as_tensor(item["scores"])
    batch["targets"] = targets
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)  # (B,)
    return batch


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class VQAHead(nn.Module):
    """The answer classifier on the pooled state: hidden -> 2*hidden -> GELU -> LayerNorm -> answers.

    Example:
        >>> head = VQAHead(hidden_size=8, num_answers=5)
        >>> head(torch.randn(3, 8)).shape
        torch.Size([3, 5])
    """

    def __init__(self, hidden_size: int, num_answers: int, layer_norm_eps: float = 1e-12,
                 initializer_range: float = 0.02) -> None:
        super().__init__()
        if num_answers < 1:
            raise ValueError(f"num_answers must be >= 1, got {num_answers}")
        self.dense = nn.Linear(hidden_size, 2 * hidden_size)
        self.norm = nn.LayerNorm(2 * hidden_size, eps=layer_norm_eps)
        self.out = nn.Linear(2 * hidden_size, num_answers)
        for linear in (self.dense, self.out):
            nn.init.normal_(linear.weight, std=initializer_range)
            nn.init.zeros_(linear.bias)
        # Start every answer at the prior probability 1/A rather than 0.5 (as RetinaNet's classifier), so
        # early steps do not go into pushing all A sigmoids down from 0.5.
        if num_answers > 1:
            nn.init.constant_(self.out.bias, -math.log(num_answers - 1))

    @property
    def num_answers(self) -> int:
        return self.out.out_features

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, H)`` pooled states -> ``(B, A)`` answer logits."""
        return self.out(self.norm(F.gelu(self.dense(pooled))))  # (B, A)


class VQAModel(nn.Module):
    """An encoder and a :class:`VQAHead`; ``forward`` returns answer logits (train and eval alike).

    Args:
        encoder: a :class:`~vlptm.models.SingleStreamEncoder` or :class:`~vlptm.models.DualStreamEncoder`.
        head: the answer head.
        use_regions: False ignores any region keys of the batch (question-only model).
        pooling: what the head reads: ``"cls"``, the encoder's ``pooled`` (BERT's pooler on [CLS]), or
            ``"mean"``, the mean of every real question-token and region state (the pooling sentence encoders
            such as all-MiniLM-L6-v2 were trained with; their [CLS] pooler was not).

    Example:
        >>> from vlptm.models import create_model
        >>> enc = create_model("dual-tiny", region_feat_dim=6)
        >>> model = VQAModel(enc, VQAHead(enc.hidden_size, 4))
        >>> batch = {"input_ids": torch.randint(1000, 2000, (2, 5)), "region_feats": torch.randn(2, 3, 6),
        ...          "region_pos": torch.rand(2, 3, 4)}
        >>> model(batch).shape
        torch.Size([2, 4])
    """

    def __init__(self, encoder: VisionLanguageEncoder, head: VQAHead, use_regions: bool = True,
                 pooling: str = "cls") -> None:
        super().__init__()
        if head.dense.in_features != encoder.hidden_size:
            raise ValueError(f"head width {head.dense.in_features} != encoder hidden size {encoder.hidden_size}")
        if pooling not in SUMMARY_POOLINGS:
            raise ValueError(f"pooling must be one of {SUMMARY_POOLINGS}, got {pooling!r}")
        self.encoder = encoder
        self.head = head
        self.use_regions = use_regions
        self.pooling = pooling

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``(B, A)`` answer logits of a :func:`collate_vqa` batch."""
        keys = ("input_ids", "attention_mask", "token_type_ids")
        if self.use_regions:
            keys += ("region_feats", "region_pos", "region_mask")
        inputs = {key: batch[key] for key in keys if key in batch}
        if self.use_regions and "region_feats" not in inputs:
            raise ValueError("this VQA model uses regions, but the batch has no region_feats")
        if inputs.get("region_pos") is not None and inputs["region_pos"].shape[-1] == 0:
            inputs.pop("region_pos")
        out = self.encoder(inputs)
        return self.head(out.summary(self.pooling, inputs.get("attention_mask"), inputs.get("region_mask")))


def vqa_loss(logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
    """Soft-score binary cross-entropy: summed over answers, averaged over questions.

    Args:
        logits: ``(B, A)``.
        targets: ``(B, A)`` soft scores in ``[0, 1]``.

    Returns:
        ``{"vqa": loss}``.

    Example:
        >>> logits = torch.tensor([[10.0, -10.0]]); targets = torch.tensor([[1.0, 0.0]])
        >>> float(vqa_loss(logits, targets)["vqa"]) < 1e-3
        True
    """
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
    return {"vqa": loss / max(1, logits.shape[0])}


# ----------------------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------------------
class VQAFineTuner:
    """Fine-tune, evaluate, save and query a VQA model.

    Build it with :meth:`from_pretrained` (a checkpoint or variant) or :meth:`load` (a saved fine-tuner).

    Args:
        encoder: the encoder.
        answers: the answer vocabulary, or ``None`` / an int ``K`` to build the top-K (default 3,129) from
            the training answers in :meth:`fit`.
        options: input options.
        head: an existing head (its size must match ``answers``); a fresh one otherwise.
        extractor: a region extractor for :meth:`predict` on raw images (else built from ``options``).

    Example:
        >>> from vlptm.models import create_model
        >>> tuner = VQAFineTuner(create_model("single-tiny", region_feat_dim=6), AnswerVocab(["yes", "no"]))
        >>> regions = RegionFeatures(torch.tensor([[0., 0., 4., 4.]]), torch.randn(1, 6), torch.ones(1), (8, 8))
        >>> [answer for answer, _ in tuner.predict(regions, "is it red?", top_k=2)]  # untrained: any order
        ... # doctest: +SKIP
    """

    def __init__(self, encoder: VisionLanguageEncoder, answers: Union[AnswerVocab, int, None] = None,
                 options: Optional[VQAOptions] = None, head: Optional[VQAHead] = None,
                 extractor: Optional[nn.Module] = None) -> None:
        self.encoder = encoder
        self.options = options or VQAOptions()
        self.answers: Optional[AnswerVocab] = answers if isinstance(answers, AnswerVocab) else None
        self.top_k_answers = int(answers) if isinstance(answers, int) and not isinstance(answers, bool) else 3129
        self.model: Optional[VQAModel] = None
        self.extractor = extractor
        self.history: List[Dict[str, Any]] = []
        self._tokenizer = None
        if self.answers is not None:
            if head is not None and head.num_answers != len(self.answers):
                raise ValueError(f"head has {head.num_answers} answers, the vocabulary {len(self.answers)}")
            self._build_model(head)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: Union[str, os.PathLike],
                        answers: Union[AnswerVocab, Sequence[str], int, None] = None, *,
                        options: Optional[VQAOptions] = None, extractor: Optional[nn.Module] = None,
                        **model_overrides: Any) -> "VQAFineTuner":
        """Start a fine-tuner from a checkpoint, an encoder folder, a saved fine-tuner or a variant name.

        Args:
            checkpoint: a pretraining run (``RUN``, ``RUN/checkpoint``, ``RUN/checkpoints/step-N``), an
                encoder ``save_pretrained`` folder, a :meth:`save` folder, or a variant name
                (``vlptm.models.list_models()``: no vision-language pretraining).
            answers: an :class:`~vlptm.tasks.answers.AnswerVocab`, a list of answers, an int ``K`` (the
                top-K training answers, built in :meth:`fit`) or ``None`` (K = 3,129). For a saved
                fine-tuner ``None`` keeps its answers and head; anything else starts a fresh head.
            options: input options; by default the pretraining run's tokenizer and lengths.
            extractor: region extractor for raw images in :meth:`predict`.
            **model_overrides: encoder config overrides: any field for a variant (``region_feat_dim``
                must match the features), shape-preserving fields (dropout) for a loaded encoder.

        Raises:
            FileNotFoundError: a path that holds none of the above.
            KeyError: an unknown variant name.
        """
        from vlptm.models import create_model, from_pretrained, list_models
        from vlptm.train.checkpoint import CONFIG_FILE, ENCODER_DIR, resolve_checkpoint

        path = Path(checkpoint)
        vocab = answers
        if isinstance(answers, (list, tuple)):  # normalised like every answer looked up later
            vocab = AnswerVocab(list(dict.fromkeys(normalize_answer(a) for a in answers)))
        if path.is_dir() and (path / _META_FILE).is_file():
            tuner = cls.load(path)
            if options is not None:
                tuner.options = options
            if extractor is not None:
                tuner.extractor = extractor
            if vocab is not None:
                tuner = cls(tuner.encoder, vocab, tuner.options, extractor=tuner.extractor)
            return tuner
        if path.is_dir():
            run_checkpoint = resolve_checkpoint(path)
            if run_checkpoint is not None:
                encoder = from_pretrained(str(run_checkpoint / ENCODER_DIR), **model_overrides)
                options = options or _options_from_recipe(run_checkpoint / CONFIG_FILE)
                logger.info("encoder from pretraining checkpoint %s", run_checkpoint)
            elif (path / "config.json").is_file():
                encoder = from_pretrained(str(path), **model_overrides)
            else:
                raise FileNotFoundError(f"{path} is neither a pretraining run, an encoder folder nor a saved VQA "
                                        f"model")
        elif str(checkpoint) in list_models():
            encoder = create_model(str(checkpoint), **model_overrides)
        elif len(path.parts) == 1 and not path.suffix:
            raise KeyError(f"unknown model {str(checkpoint)!r} (no such folder either); known models: {list_models()}")
        else:
            raise FileNotFoundError(f"no checkpoint or folder at {checkpoint!s}")
        return cls(encoder, vocab, options, extractor=extractor)

    def _build_model(self, head: Optional[VQAHead] = None) -> None:
        if head is None:
            cfg = self.encoder.config
            head = VQAHead(cfg.hidden_size, len(self.answers), cfg.layer_norm_eps, cfg.initializer_range)
        self.model = VQAModel(self.encoder, head, self.options.use_regions, self.options.pooling)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from vlptm.text import load_tokenizer

            self._tokenizer = load_tokenizer(self.options.tokenizer)
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _dataset(self, examples: VQAExamples, train: bool) -> _VQADataset:
        if not isinstance(examples, VQAExamples):
            raise TypeError(f"expected VQAExamples (questions + features), got {type(examples).__name__}")
        cfg = self.encoder.config
        return _VQADataset(examples, self.tokenizer, self.answers, self.options, int(cfg.region_pos_dim),
                           int(cfg.region_feat_dim), train)

    # -- training -----------------------------------------------------------------------------------------
    def fit(self, train: VQAExamples, val: Optional[VQAExamples] = None, config: Optional[VQATrainConfig] = None,
            **overrides: Any) -> List[Dict[str, Any]]:
        """Fine-tune on ``train``, validating on ``val`` (and keeping the best weights).

        Builds the answer vocabulary from ``train`` first when there is none. On gold-set data with a
        validation set, the answer-set threshold is tuned for exact-set accuracy on it.

        Args:
            train: training questions and features.
            val: validation questions (image-disjoint from ``train``), or ``None``.
            config: the schedule (default :class:`VQATrainConfig`).
            **overrides: fields of ``config`` to change (``epochs=3, lr=1e-4``).

        Returns:
            The log: one dict per logged step (``step``, ``epoch``, ``loss``, ``lr``) and per validation
            (``step``, ``val_accuracy`` ...). Also kept in ``self.history``.
        """
        from vlptm.train.distributed import resolve_device
        from vlptm.train.optim import build_optimizer, build_scheduler

        cfg = dataclasses.replace(config or VQATrainConfig(), **overrides)
        if cfg.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {cfg.precision!r}")
        _seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        if cfg.precision == "fp16" and device.type != "cuda":
            raise ValueError("fp16 needs CUDA; use precision=bf16 on CPU")
        if self.answers is None:
            self.answers = AnswerVocab.build((r.answer_counts for r in train.records), top_k=self.top_k_answers)
            logger.info("answer vocabulary: %d answers from %d training questions", len(self.answers), len(train))
        if self.model is None:
            self._build_model()
        self._remember_extractor(train.features)
        dataset = self._dataset(train, train=True)
        if len(dataset) == 0:
            raise ValueError("no training question has its image in the store and an answer in the vocabulary")
        val_set = self._dataset(val, train=False) if val is not None else None
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                            num_workers=cfg.num_workers, collate_fn=self._collate,
                            drop_last=len(dataset) > cfg.batch_size)
        steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * len(loader)))
        eval_every = cfg.eval_every if cfg.eval_every > 0 else len(loader)
        model = self.model.to(device)
        optimizer = build_optimizer(model.encoder, cfg.lr, cfg.weight_decay)
        head_params = list(model.head.parameters())
        optimizer.add_param_group({"params": [p for p in head_params if p.ndim >= 2], "lr": cfg.lr * cfg.head_lr_mult,
                                   "weight_decay": cfg.weight_decay})
        optimizer.add_param_group({"params": [p for p in head_params if p.ndim < 2], "lr": cfg.lr * cfg.head_lr_mult,
                                   "weight_decay": 0.0})
        scheduler = build_scheduler(optimizer, int(cfg.warmup_ratio * steps), steps, cfg.schedule)
        autocast_dtype = _PRECISIONS[cfg.precision]
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        params = [p for p in model.parameters() if p.requires_grad]
        self.history = []
        best: Tuple[float, int, Optional[Dict[str, Tensor]]] = (-1.0, 0, None)
        step, epoch, start = 0, 0, time.perf_counter()
        running, count = 0.0, 0
        logger.info("fine-tuning on %d questions (%d answers), %d steps of %d on %s", len(dataset),
                    len(self.answers), steps, cfg.batch_size, device)
        while step < steps:
            model.train()
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                    enabled=autocast_dtype is not None):
                    logits = model(batch)  # (B, A)
                loss = vqa_loss(logits, batch["targets"])["vqa"]
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                elif torch.isfinite(grad_norm):
                    optimizer.step()
                else:
                    logger.warning("step %d: non-finite gradient norm, update skipped", step)
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                running, count = running + float(loss.detach()), count + 1
                if step % cfg.log_every == 0 or step == steps:
                    entry = {"step": step, "epoch": epoch, "loss": running / count, "lr": scheduler.get_last_lr()[0],
                             "elapsed_s": round(time.perf_counter() - start, 2)}
                    self.history.append(entry)
                    logger.info("step %d/%d  loss %.4f  lr %.2e", step, steps, entry["loss"], entry["lr"])
                    running, count = 0.0, 0
                if val_set is not None and (step % eval_every == 0 or step == steps):
                    metrics = self._evaluate_dataset(val_set)
                    self.history.append({"step": step, "epoch": epoch,
                                         **{f"val_{k}": v for k, v in metrics.items() if not isinstance(v, dict)}})
                    logger.info("step %d: val accuracy %.4f", step, metrics["accuracy"])
                    if cfg.keep_best and metrics["accuracy"] > best[0]:
                        best = (metrics["accuracy"], step, _cpu_state(model))
                    model.train()
                if step >= steps:
                    break
            epoch += 1
        if cfg.keep_best and best[2] is not None and best[1] != step:
            model.load_state_dict(best[2])
            logger.info("kept the weights of step %d (val accuracy %.4f)", best[1], best[0])
        model.eval()
        if val_set is not None and len(val_set) and all(r.multi_label for r in val_set.records):
            self.options.set_threshold = self._tune_threshold(val_set)
        return self.history

    def _collate(self, items: Sequence[Dict[str, Any]]) -> Dict[str, Tensor]:
        return collate_vqa(items, len(self.answers), int(self.tokenizer.pad_token_id or 0))

    def _remember_extractor(self, features: Any) -> None:
        manifest = getattr(features, "manifest", None)
        if not isinstance(manifest, dict):
            return
        extractor = manifest.get("extractor") or {}
        if not self.options.extractor and extractor.get("name"):
            self.options.extractor = str(extractor["name"])
            config = (extractor.get("config") or {}).get("config")
            if isinstance(config, dict) and not Path(self.options.extractor).is_dir():
                from vlptm.detection.config import dotted_overrides

                self.options.extractor_config = dotted_overrides(config)  # e.g. the --set min_size=256 of extraction
        if extractor.get("config_hash"):
            self.options.extractor_hash = str(extractor["config_hash"])

    def _tune_threshold(self, val_set: _VQADataset) -> float:
        probs = self._probabilities(val_set)  # (N, A)
        best_threshold, best_score = self.options.set_threshold, -1.0
        for threshold in _THRESHOLDS:
            sets = _answer_sets(probs, threshold)
            score = float(np.mean([{self.answers[i] for i in s} == _gold_set(r, self.answers)
                                   for s, r in zip(sets, val_set.records)]))
            if score > best_score + 1e-12:
                best_threshold, best_score = threshold, score
        logger.info("answer-set threshold %.2f (validation exact-set accuracy %.4f)", best_threshold, best_score)
        return best_threshold

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _probabilities(self, dataset: _VQADataset, batch_size: int = 64) -> np.ndarray:
        if len(dataset) == 0:
            return np.zeros((0, len(self.answers)), np.float32)
        model = self._require_model().eval()
        device = self.device
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=self._collate)
        out = []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            out.append(torch.sigmoid(model(batch).float()).cpu().numpy())  # (B, A)
        return np.concatenate(out)

    def _require_model(self) -> VQAModel:
        if self.model is None:
            raise RuntimeError("the model has no answer head yet: fit() it, or pass answers to from_pretrained")
        return self.model

    def evaluate(self, data: VQAExamples, batch_size: int = 64) -> Dict[str, Any]:
        """Accuracy on ``data``, overall and by question and answer type.

        Annotator-count questions (VQA v2) score the official VQA accuracy; gold-set questions score
        exact-set accuracy as ``accuracy`` (and any-gold accuracy beside it). Questions whose image is not
        in the store are left out (counted in ``missing_images``); answers outside the vocabulary count
        as wrong.

        Returns:
            ``{"accuracy", "n", "vqa_accuracy"?, "exact_set"?, "any_gold"?, "by_question_type",
            "by_answer_type", "missing_images", "unanswerable"}``.
        """
        self._require_model()
        dataset = self._dataset(data, train=False)
        metrics = self._evaluate_dataset(dataset, batch_size)
        metrics["missing_images"] = dataset.missing_images
        return metrics

    def _evaluate_dataset(self, dataset: _VQADataset, batch_size: int = 64) -> Dict[str, Any]:
        probs = self._probabilities(dataset, batch_size)  # (N, A)
        top = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        sets = _answer_sets(probs, self.options.set_threshold)
        metrics = evaluate_predictions(dataset.records, [self.answers[i] for i in top],
                                       [[self.answers[i] for i in s] for s in sets], self.answers.normalize)
        metrics["unanswerable"] = dataset.unanswerable
        return metrics

    # -- inference ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, image_or_path: Any, question: str, top_k: int = 5) -> List[Tuple[str, float]]:
        """Answer a question about one image.

        Args:
            image_or_path: an image file path, a PIL image, a ``(3, H, W)`` image tensor (uint8, or float
                in ``[0, 1]``) — these run the region extractor — or precomputed
                :class:`~vlptm.structures.RegionFeatures`.
            question: the question.
            top_k: how many answers to return.

        Returns:
            ``[(answer, probability), ...]``, the ``top_k`` answers by probability.

        Example:
            >>> tuner = VQAFineTuner.load("models/vqa-daquar")                          # doctest: +SKIP
            >>> tuner.predict("kitchen.jpg", "what is on the table?", top_k=3)          # doctest: +SKIP
            [('cup', 0.61), ('book', 0.22), ('paper', 0.09)]
        """
        model = self._require_model().eval()
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        item = {"input_ids": np.asarray(self.tokenizer(question, truncation=True,
                                                       max_length=self.options.max_text_len)["input_ids"]),
                "labels": np.zeros(0, np.int64), "scores": np.zeros(0, np.float32), "index": 0}
        if self.options.use_regions:
            regions = image_or_path if isinstance(image_or_path, RegionFeatures) else self.extract(image_or_path)
            if len(regions) == 0:
                raise ValueError("the image has no regions")
            item.update(regions_to_arrays(regions, self.options.max_regions, int(self.encoder.config.region_pos_dim)))
        batch = {k: v.to(self.device) for k, v in self._collate([item]).items()}
        probs = torch.sigmoid(model(batch).float())[0]  # (A,)
        values, labels = probs.topk(min(top_k, len(self.answers)))
        return [(self.answers[int(i)], float(v)) for v, i in zip(values.tolist(), labels.tolist())]

    def extract(self, image: Any) -> RegionFeatures:
        """Run the region extractor on a raw image (path, PIL image or ``(3, H, W)`` tensor)."""
        from vlptm.data.images import load_image_tensor

        extractor = self._require_extractor()
        if isinstance(image, (str, os.PathLike)):
            pixels = load_image_tensor(image)  # (3, H, W) uint8
        elif isinstance(image, Tensor):
            pixels = image
        else:
            try:
                pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
            except AttributeError as err:
                raise TypeError(f"cannot read an image from a {type(image).__name__}") from err
        if pixels.dim() != 3 or pixels.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got shape {tuple(pixels.shape)}")
        return extractor.extract([pixels])[0].to("cpu")

    def _require_extractor(self) -> nn.Module:
        if self.extractor is None:
            if not self.options.extractor:
                raise RuntimeError("no region extractor: pass extractor= (or options.extractor) to predict on "
                                   "raw images, or pass RegionFeatures")
            from vlptm.detection import build_extractor

            name, overrides = self.options.extractor, self.options.extractor_config
            try:
                self.extractor = build_extractor(name, **({} if Path(name).is_dir() else overrides))
            except (KeyError, TypeError, ValueError) as err:
                logger.warning("extractor %s: the training features' config does not apply (%s); using its "
                               "defaults", name, err)
                self.extractor = build_extractor(name)
            try:
                found = self.extractor.config_hash()
            except Exception as err:  # the check is advisory; an unhashable extractor still extracts
                logger.warning("cannot compute the config hash of extractor %s (%s)", self.options.extractor, err)
                found = self.options.extractor_hash
            if self.options.extractor_hash and found != self.options.extractor_hash:
                logger.warning("extractor %s differs from the one behind the training features (config hash %s "
                               "!= %s): predictions on raw images may be off", self.options.extractor, found,
                               self.options.extractor_hash)
        return self.extractor.eval()

    # -- files --------------------------------------------------------------------------------------------
    def save(self, folder: Union[str, os.PathLike], include_extractor: bool = True) -> Path:
        """Write the fine-tuned model to ``folder`` (replaced atomically if it exists).

        Layout: ``vqa.json`` (format, options), ``answers.json``, ``encoder/`` (``save_pretrained``),
        ``head.safetensors`` and, with ``include_extractor`` and an extractor at hand, ``extractor/``
        (so :meth:`predict` on raw images works wherever the folder goes).
        """
        from safetensors.torch import save_file

        model = self._require_model()
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        options = dataclasses.asdict(self.options)
        extractor = self.extractor
        if include_extractor and extractor is None and self.options.extractor:
            try:
                extractor = self._require_extractor()
            except Exception as err:  # a missing extractor must not lose the fine-tuned weights
                logger.warning("extractor %s not saved with the model: %s", self.options.extractor, err)
        if include_extractor and extractor is not None and hasattr(extractor, "save"):
            extractor.save(tmp / _EXTRACTOR_DIR)
            options["extractor"] = _EXTRACTOR_DIR
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "num_answers": len(self.answers),
                "options": options}
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.answers.save(tmp / _ANSWERS_FILE)
        self.encoder.save_pretrained(tmp / _ENCODER_DIR)
        head_state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
        save_file(head_state, str(tmp / _HEAD_FILE), metadata={"format": "pt", "library": "vlptm"})
        if folder.exists():
            old = folder.parent / f".old-{folder.name}-{os.getpid()}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "VQAFineTuner":
        """Load a fine-tuner written by :meth:`save`.

        Raises:
            FileNotFoundError: ``folder`` has no ``vqa.json``.
            ValueError: another format or a newer version.
        """
        from safetensors.torch import load_file

        from vlptm.models import from_pretrained

        folder = Path(folder)
        if not (folder / _META_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not a saved VQA model (no {_META_FILE})")
        meta = json.loads((folder / _META_FILE).read_text())
        if meta.get("format") != FORMAT_NAME or int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{folder}/{_META_FILE}: not a {FORMAT_NAME} v{FORMAT_VERSION} model")
        known = {f.name for f in dataclasses.fields(VQAOptions)}
        options = VQAOptions(**{k: v for k, v in meta.get("options", {}).items() if k in known})
        if options.extractor == _EXTRACTOR_DIR and (folder / _EXTRACTOR_DIR).is_dir():
            options.extractor = str(folder / _EXTRACTOR_DIR)
        vocab = AnswerVocab.load(folder / _ANSWERS_FILE)
        encoder = from_pretrained(str(folder / _ENCODER_DIR))
        cfg = encoder.config
        head = VQAHead(cfg.hidden_size, len(vocab), cfg.layer_norm_eps)
        head.load_state_dict(load_file(str(folder / _HEAD_FILE)), strict=True)
        tuner = cls(encoder, vocab, options, head=head)
        tuner.model.to(map_location).eval()
        return tuner


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def _answer_sets(probs: np.ndarray, threshold: float) -> List[np.ndarray]:
    """Per row: the top answer plus every answer with probability >= ``threshold``, by probability."""
    sets = []
    for row in probs:
        chosen = np.flatnonzero(row >= threshold)
        top = int(row.argmax())
        if top not in chosen:
            chosen = np.append(chosen, top)
        sets.append(chosen[np.argsort(-row[chosen])])
    return sets


def _gold_set(record: QuestionRecord, vocab: AnswerVocab) -> set:
    from vlptm.tasks.answers import NORMALIZERS

    norm = NORMALIZERS[vocab.normalize]
    return {norm(a) for a in record.answers}


def _cpu_state(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _options_from_recipe(path: Path) -> VQAOptions:
    """Tokenizer and region count of a pretraining run's recipe (``config.yaml``)."""
    import yaml

    options = VQAOptions()
    if not path.is_file():
        return options
    recipe = yaml.safe_load(path.read_text()) or {}
    data = recipe.get("data") or {}
    if data.get("tokenizer"):
        options.tokenizer = str(data["tokenizer"])
    if data.get("max_regions"):
        options.max_regions = int(data["max_regions"])
    return options

