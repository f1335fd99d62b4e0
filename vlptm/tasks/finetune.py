"""The VQA fine-tuning recipe behind ``vlptm finetune-vqa --config RECIPE.yaml [--key=value ...]``.

A recipe names the starting point (``init``), the question files and feature stores of the train,
validation and test sets, the answer vocabulary, the input options and the schedule; :func:`finetune_vqa`
runs it and writes ``OUT/model`` (a :meth:`VQAFineTuner.save` folder), ``OUT/metrics.json`` (validation
and test accuracies beside the majority-answer and question-lookup baselines), ``OUT/history.jsonl`` and
``OUT/config.yaml``.

Example:
    >>> from vlptm.config import build_config
    >>> cfg = build_config(FinetuneVQAConfig, {"init": "single-tiny"}, ["--optim.epochs=2", "--answers.top_k=50"])
    >>> cfg.optim.epochs, cfg.answers.top_k, cfg.val_fraction
    (2.0, 50, 0.1)
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from vlptm.tasks.answers import AnswerVocab
from vlptm.tasks.baselines import MajorityAnswerBaseline, QuestionLookupBaseline
from vlptm.tasks.vqa import VQAExamples, VQAFineTuner, VQAOptions, VQATrainConfig

logger = logging.getLogger(__name__)

__all__ = ["VQADataSource", "AnswersConfig", "FinetuneVQAConfig", "finetune_vqa"]


@dataclass
class VQADataSource:
    """One set of questions and the feature store of their images."""

    questions: str = ""  # VQA v2 questions/annotations JSON, DAQUAR qa.*.txt or vqa.json ("" = none)
    features: str = ""  # feature store directory holding the images
    split: Optional[str] = None  # keep only this split (e.g. "train", "val"); none = all
    image_root: Optional[str] = None  # image folder (only used to resolve paths)


@dataclass
class AnswersConfig:
    """The answer vocabulary built from the training answers."""

    top_k: int = 3129  # most frequent answers kept (VQA v2's usual 3,129)
    min_count: int = 1  # fewest training questions an answer needs
    normalize: str = "vqa"  # "vqa" (VQA v2 evaluation's processing) or "basic" (lower case)


@dataclass
class FinetuneVQAConfig:
    """A VQA fine-tuning run."""

    init: str = "single-small"  # pretraining run, encoder folder, saved VQA model, or variant name
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # encoder config overrides
    train: VQADataSource = field(default_factory=VQADataSource)  # training questions
    val: VQADataSource = field(default_factory=VQADataSource)  # validation ("" = held out from train)
    test: VQADataSource = field(default_factory=VQADataSource)  # final evaluation ("" = none)
    val_fraction: float = 0.1  # share of training images held out for validation when val is empty
    split_seed: int = 0  # which images are held out
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    options: VQAOptions = field(default_factory=VQAOptions)
    optim: VQATrainConfig = field(default_factory=VQATrainConfig)
    out: str = "runs/vqa"  # output folder


def _load(source: VQADataSource, what: str) -> VQAExamples:
    if not source.questions or not source.features:
        raise ValueError(f"{what} needs both 'questions' and 'features'")
    return VQAExamples.load(source.questions, source.features, split=source.split, image_root=source.image_root)


def finetune_vqa(cfg: FinetuneVQAConfig) -> Dict[str, Any]:
    """Run the recipe: fine-tune, evaluate, save. Returns the metrics written to ``OUT/metrics.json``."""
    import yaml

    from vlptm.config import to_dict
    from vlptm.models import list_models

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    train = _load(cfg.train, "train")
    if cfg.val.questions:
        val = _load(cfg.val, "val")
    else:
        train, val = train.split_by_image(cfg.val_fraction, cfg.split_seed)
    test = _load(cfg.test, "test") if cfg.test.questions else None
    vocab = AnswerVocab.build((r.answer_counts for r in train.records), top_k=cfg.answers.top_k,
                              min_count=cfg.answers.min_count, normalize=cfg.answers.normalize)
    overrides = dict(cfg.model_overrides)
    feature_dim = getattr(train.features, "feature_dim", None)
    if cfg.init in list_models() and feature_dim is not None:
        overrides.setdefault("region_feat_dim", int(feature_dim))
    tuner = VQAFineTuner.from_pretrained(cfg.init, vocab, options=cfg.options, **overrides)
    logger.info("fine-tuning %s on %d questions (val %d, test %d), %d answers", cfg.init, len(train), len(val),
                len(test) if test is not None else 0, len(vocab))
    start = time.perf_counter()
    history = tuner.fit(train, val, cfg.optim)
    seconds = time.perf_counter() - start
    with open(out / "history.jsonl", "w") as f:
        for entry in history:
            f.write(json.dumps(entry) + "\n")
    tuner.save(out / "model")
    metrics: Dict[str, Any] = {"init": cfg.init, "train_questions": len(train), "answers": len(vocab),
                               "train_seconds": round(seconds, 1), "set_threshold": tuner.options.set_threshold}
    evaluations = {"val": val, "test": test} if test is not None else {"val": val}
    majority = MajorityAnswerBaseline(cfg.answers.normalize).fit(train.records)
    lookup = QuestionLookupBaseline(normalize=cfg.answers.normalize).fit(train.records)
    for name, data in evaluations.items():
        metrics[name] = tuner.evaluate(data)
        metrics[f"{name}_majority_baseline"] = majority.evaluate(data.records)["accuracy"]
        metrics[f"{name}_question_lookup_baseline"] = lookup.evaluate(data.records)["accuracy"]
        logger.info("%s accuracy %.4f (majority %.4f, question lookup %.4f)", name, metrics[name]["accuracy"],
                    metrics[f"{name}_majority_baseline"], metrics[f"{name}_question_lookup_baseline"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
