"""Held-out evaluation of a pretraining model: each head's accuracy and ITC text-to-image recall.

:func:`evaluate_pretraining` is what ``validation.sources`` of a recipe runs every ``validation.every`` steps
(and at the end of the run); ``benchmarks/bench_pretrain.py`` reports the same figures. On a
:class:`~vlptm.data.pretrain.PretrainDataset` of held-out images:

- ``mlm_acc``: masked-token accuracy; ``mrc_acc``: masked-region class accuracy (stores with class
  probabilities); ``itm_acc``: image-text matching accuracy on the data set's random negatives, whatever
  negatives the model trained with, so that runs compare;
- ``R@1``, ``R@5``, ``R@10``: every caption queries every image of the data set by ITC similarity (the
  right image must score strictly higher than all others to count as rank 0; ties count against it);
- ``images``, ``queries``: the sizes behind the recalls.

The masks and negatives come from the data set's own seed and epoch, so two evaluations of one model give
the same figures, and the evaluation leaves the caller's random number streams and train/eval mode as they
were.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from vlptm.data.pretrain import IGNORE_INDEX, PretrainDataset, collate_pretrain, pad_regions, pad_text
from vlptm.objectives.itc import concat_image_embeddings

__all__ = ["RECALL_KS", "evaluate_pretraining", "head_accuracy", "text_to_image_ranks", "recall_at"]

RECALL_KS = (1, 5, 10)


def _to(batch: Dict[str, Tensor], device: torch.device) -> Dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@contextlib.contextmanager
def _inference(model: Any, autocast_dtype: Optional[torch.dtype]):
    """Eval mode, no gradients, optional autocast and isolated RNG streams; the caller's state is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
        model.eval()
        try:
            yield device
        finally:
            model.train(was_training)


def head_accuracy(model: Any, dataset: PretrainDataset, batch_size: int = 128,
                  autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """``{"mlm_acc", "mrc_acc", "itm_acc"}`` over ``dataset`` (NaN for a head the model lacks)."""
    totals = {"mlm": [0.0, 0], "mrc": [0.0, 0], "itm": [0.0, 0]}
    has_mrc = model.mrm is not None and model.mrm.class_head is not None
    with _inference(model, autocast_dtype) as device:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = _to(collate_pretrain(items), device)
            if model.mlm is not None:
                count = int((batch["mlm_labels"] != IGNORE_INDEX).sum())
                totals["mlm"][0] += float(model(batch, ["mlm"])["mlm_acc"]) * count
                totals["mlm"][1] += count
            if has_mrc and "region_cls_probs" in batch:
                count = int(batch["region_masked"].sum())
                totals["mrc"][0] += float(model(batch, ["mrc"])["mrc_acc"]) * count
                totals["mrc"][1] += count
            if model.itm is not None:  # the data's random negatives, however the model trains
                count = int(batch["input_ids"].shape[0])
                totals["itm"][0] += float(model(batch, ["itm"], itm_negatives="random")["itm_acc"]) * count
                totals["itm"][1] += count
    return {f"{head}_acc": (right / count if count else float("nan")) for head, (right, count) in totals.items()}


def text_to_image_ranks(model: Any, dataset: PretrainDataset, batch_size: int = 128,
                        autocast_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """``(Q,)`` rank of each caption's own image among all of ``dataset``'s images by ITC similarity
    (0 = first; the number of images scored strictly higher)."""
    with _inference(model, autocast_dtype) as device:
        image_parts = []
        for start in range(0, len(dataset.images), batch_size):
            regions = [dataset.regions(i) for i in range(start, min(start + batch_size, len(dataset.images)))]
            batch = pad_regions([r["feats"] for r in regions], [r["pos"] for r in regions])  # (b, R, ...)
            image_parts.append(model.embed_images(_to(batch, device)).float())
        image_emb = concat_image_embeddings(image_parts)  # (I, F), or (I, R, F) region sets
        text_parts = []
        for start in range(0, len(dataset), batch_size):
            batch = pad_text(dataset.text_ids[start: start + batch_size])  # (b, T)
            text_parts.append(model.embed_text(_to(batch, device)).float())
        text_emb = torch.cat(text_parts)  # (Q, F)
        truth = torch.from_numpy(dataset.example_image).to(device)  # (Q,)
        ranks = []
        for start in range(0, len(text_emb), 256):
            scores = model.itc.similarity(text_emb[start: start + 256], image_emb)  # (q, I)
            gold = scores.gather(1, truth[start: start + 256, None])  # (q, 1)
            ranks.append((scores > gold).sum(1))
    return torch.cat(ranks).cpu().numpy()


def recall_at(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """``{"R@k": share of ranks below k}``."""
    return {f"R@{k}": float((np.asarray(ranks) < k).mean()) if len(ranks) else float("nan") for k in ks}


def evaluate_pretraining(model: Any, dataset: PretrainDataset, batch_size: int = 128,
                         autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """Held-out head accuracies and text-to-image recall (see the module docstring for each key).

    Args:
        model: a :class:`~vlptm.objectives.model.PretrainingModel` (not a DDP wrapper).
        dataset: held-out images and captions.
        batch_size: examples per forward pass.
        autocast_dtype: evaluate under this autocast dtype (None: the model's own precision).

    Example:
        >>> results = evaluate_pretraining(model, heldout)  # doctest: +SKIP
        >>> sorted(results)                                  # doctest: +SKIP
        ['R@1', 'R@10', 'R@5', 'images', 'itm_acc', 'mlm_acc', 'mrc_acc', 'queries']
    """
    results: Dict[str, Any] = head_accuracy(model, dataset, batch_size, autocast_dtype)
    if model.itc is not None:
        results.update(recall_at(text_to_image_ranks(model, dataset, batch_size, autocast_dtype)))
    results["images"], results["queries"] = len(dataset.images), len(dataset)
    return results
