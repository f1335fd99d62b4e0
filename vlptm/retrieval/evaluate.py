"""Retrieval evaluation: R@1/5/10 text-to-image and image-to-text, and their mean, in three modes.

- ``itc``: FAISS search of the ITC embeddings only (one unimodal pass per image and per caption).
- ``two-stage``: FAISS top-``rerank`` candidates re-ranked by ITM (each (caption, image) pair is scored once
  even when both directions propose it).
- ``exhaustive``: ITM over every caption-image pair — the UNITER/LXMERT protocol, quadratic in the set size.

Each mode reports the wall time it took (``seconds``; the embedding pass is shared by the first two and
counted in both). The gold image of a caption is the image it annotates; an image's query is correct at
rank r when any of its captions is within the first r.

Shape legend: T captions, I images, K candidates, E embedding size.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vlptm.retrieval.index import EmbeddingIndex
from vlptm.retrieval.model import RetrievalModel, itc_score_matrix
from vlptm.retrieval.search import combine_scores

logger = logging.getLogger(__name__)

MODES = ("itc", "two-stage", "exhaustive")
RECALL_KS = (1, 5, 10)


@dataclass
class EvalSet:
    """Captions and the images they describe.

    Attributes:
        image_ids: I image ids (all in the feature store).
        captions: T captions.
        caption_image: ``(T,)`` index into ``image_ids`` of each caption's image.
    """

    image_ids: List[str]
    captions: List[str]
    caption_image: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_records(cls, records: Sequence[Any], store: Any = None, max_images: Optional[int] = None,
                     captions_per_image: Optional[int] = None) -> "EvalSet":
        """Build from caption records (:func:`vlptm.data.readers.read_records`), skipping images not in ``store``.

        Args:
            records: caption records.
            store: when given, images missing from it are skipped with a warning.
            max_images: keep the first this many images.
            captions_per_image: keep at most this many captions per image (5 for COCO/Flickr protocols).
        """
        image_ids, captions, caption_image, missing = [], [], [], 0
        for record in records:
            if max_images is not None and len(image_ids) >= max_images:
                break
            image_id = str(record.image_id)
            if store is not None and image_id not in store:
                missing += 1
                continue
            texts = list(record.captions)[:captions_per_image] if captions_per_image else list(record.captions)
            if not texts:
                continue
            captions.extend(texts)
            caption_image.extend([len(image_ids)] * len(texts))
            image_ids.append(image_id)
        if missing:
            logger.warning("%d images of the captions file are not in the feature store: skipped", missing)
        if not image_ids:
            raise ValueError("no image of the captions file is in the feature store: nothing to evaluate")
        return cls(image_ids, captions, np.asarray(caption_image, dtype=np.int64))


def recalls_from_ranks(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """``{"r1": %, "r5": %, "r10": %}`` from 0-based ranks of the gold item (``inf`` when it was not found)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return {f"r{k}": float(100.0 * np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def _summarise(t2i_ranks: np.ndarray, i2t_ranks: np.ndarray, seconds: float, pairs: int) -> Dict[str, Any]:
    t2i, i2t = recalls_from_ranks(t2i_ranks), recalls_from_ranks(i2t_ranks)
    mean = float(np.mean(list(t2i.values()) + list(i2t.values())))
    return {"t2i": t2i, "i2t": i2t, "mean": mean, "seconds": seconds, "itm_pairs": int(pairs)}


def _ranks_from_lists(candidates: Sequence[Sequence[int]], gold: Sequence[Any]) -> np.ndarray:
    """0-based rank of the first gold item in each ranked candidate list (inf when absent)."""
    ranks = np.full(len(candidates), np.inf)
    for q, row in enumerate(candidates):
        wanted = gold[q]
        for position, item in enumerate(row):
            if (item in wanted) if isinstance(wanted, (set, frozenset)) else item == wanted:
                ranks[q] = position
                break
    return ranks


def _region_list(model: RetrievalModel, store: Any, image_ids: Sequence[str]) -> list:
    return [model.regions(store[i]) for i in image_ids]


def evaluate_retrieval(model: RetrievalModel, store: Any, data: EvalSet, *, modes: Sequence[str] = MODES,
                       rerank: int = 16, itc_weight: float = 0.0, factory: str = "Flat", batch_size: int = 128,
                       progress: bool = False, itm_cache: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Recall of text-to-image and image-to-text retrieval in the requested modes.

    Args:
        model: the model under test.
        store: the feature store holding ``data``'s images.
        data: the captions and images (:meth:`EvalSet.from_records`).
        modes: a subset of ``MODES``.
        rerank: K, the candidates per query of the two-stage mode.
        itc_weight: ITC weight in the final score of the ITM modes (see :func:`combine_scores`).
        factory: FAISS layout of the first stage (``"Flat"`` is exact).
        batch_size: pairs (or images, captions) per forward pass.
        progress: log progress of the exhaustive mode.
        itm_cache: a dict kept between calls with the same model and data: ITM scores computed by one call
            are reused by the next (to compare ``itc_weight`` values without re-running the encoder; the
            reported seconds of a call that reused scores leave the reused ITM passes out).

    Returns:
        ``{"images": I, "captions": T, "rerank": K, "embed_seconds": s, MODE: {"t2i": {"r1", "r5", "r10"},
        "i2t": {...}, "mean", "seconds", "itm_pairs"}}`` with recalls in percent.

    Raises:
        ValueError: an unknown mode, or an ITM mode for a model without an ITM head.
    """
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown modes {unknown}; choose from {MODES}")
    if {"two-stage", "exhaustive"} & set(modes) and not model.has_itm:
        raise ValueError("two-stage and exhaustive modes need a model with an ITM head")
    n_images, n_captions = len(data.image_ids), len(data.captions)
    gold_image = data.caption_image  # (T,)
    gold_captions = [set() for _ in range(n_images)]
    for t, i in enumerate(gold_image.tolist()):
        gold_captions[i].add(t)
    out: Dict[str, Any] = {"images": n_images, "captions": n_captions, "rerank": int(rerank), "factory": factory}

    regions = _region_list(model, store, data.image_ids)
    text_ids = model.tokenize(data.captions)
    needs_itc = bool({"itc", "two-stage"} & set(modes))
    if needs_itc:
        start = time.perf_counter()
        image_emb = model.embed_regions(regions, batch_size)  # (I, E), or I region sets
        text_emb = model.embed_texts(data.captions, batch_size)  # (T, E)
        out["embed_seconds"] = time.perf_counter() - start
        depth = max(max(RECALL_KS), int(rerank))
        start = time.perf_counter()
        image_index = EmbeddingIndex(model.embed_dim, factory, keep_vectors=False)
        image_index.add([str(i) for i in range(n_images)], image_emb)
        caption_index = EmbeddingIndex(model.embed_dim, factory, modality="text", keep_vectors=False)
        caption_index.add([str(t) for t in range(n_captions)], text_emb)
        t2i_itc, t2i_ids = image_index.search(text_emb, depth)  # (T, K)
        i2t_itc, i2t_ids = caption_index.search(image_emb, depth)  # (I, K)
        t2i_cand = [[int(i) for i in row] for row in t2i_ids]
        i2t_cand = [[int(t) for t in row] for row in i2t_ids]
        search_seconds = time.perf_counter() - start
        first_stage = out["embed_seconds"] + search_seconds
    if "itc" in modes:
        out["itc"] = _summarise(_ranks_from_lists(t2i_cand, gold_image.tolist()),
                                _ranks_from_lists(i2t_cand, gold_captions), first_stage, 0)
    if "two-stage" in modes:
        start = time.perf_counter()
        k = int(rerank)
        t2i_pairs = {(t, i) for t, row in enumerate(t2i_cand) for i in row[:k]}
        pair_set = t2i_pairs | {(t, i) for i, row in enumerate(i2t_cand) for t in row[:k]}
        cache = itm_cache if itm_cache is not None else {}
        score = cache.setdefault("pairs", {})
        direction_seconds = {}
        # text-to-image pairs first, then the image-to-text pairs not already scored: each direction's time
        for direction, wanted in (("t2i", t2i_pairs), ("i2t", pair_set)):
            tick = time.perf_counter()
            missing = np.array(sorted(wanted - set(score)), dtype=np.int64).reshape(-1, 2)  # (P, 2)
            if len(missing):
                itm = model.itm_scores(text_ids, regions, missing, batch_size)  # (P,)
                score.update(zip(map(tuple, missing.tolist()), itm.tolist()))
            direction_seconds[direction] = time.perf_counter() - tick
        pairs = np.array(sorted(pair_set), dtype=np.int64).reshape(-1, 2)
        t2i_ranked = [_rerank(row[:k], [score[(t, i)] for i in row[:k]], t2i_itc[t, :k], itc_weight) + row[k:]
                      for t, row in enumerate(t2i_cand)]
        i2t_ranked = [_rerank(row[:k], [score[(t, i)] for t in row[:k]], i2t_itc[i, :k], itc_weight) + row[k:]
                      for i, row in enumerate(i2t_cand)]
        out["two-stage"] = _summarise(_ranks_from_lists(t2i_ranked, gold_image.tolist()),
                                      _ranks_from_lists(i2t_ranked, gold_captions),
                                      first_stage + time.perf_counter() - start, len(pairs))
        # text-to-image alone: the first stage plus the ITM of its T*K pairs (what a text query costs)
        out["two-stage"]["t2i_seconds"] = first_stage + direction_seconds["t2i"]
        out["two-stage"]["t2i_itm_pairs"] = len(t2i_pairs)
    if "exhaustive" in modes:
        start = time.perf_counter()
        if itm_cache is not None and "exhaustive" in itm_cache:
            itm = itm_cache["exhaustive"]  # (T, I)
        else:
            itm = exhaustive_itm(model, text_ids, regions, batch_size, progress)  # (T, I)
            if itm_cache is not None:
                itm_cache["exhaustive"] = itm
        itc = itc_score_matrix(model.embed_texts(data.captions, batch_size),
                               model.embed_regions(regions, batch_size))  # (T, I)
        final = combine_scores(itm, itc, itc_weight)  # (T, I)
        t2i_ranks = (final > final[np.arange(n_captions), gold_image][:, None]).sum(axis=1)  # (T,)
        gold_score = final[np.arange(n_captions), gold_image]  # (T,) score of each caption with its image
        i2t_ranks = np.full(n_images, np.inf)
        for i in range(n_images):
            column = final[:, i]  # (T,)
            best_gold = max(gold_score[t] for t in gold_captions[i])
            i2t_ranks[i] = float((column > best_gold).sum())
        out["exhaustive"] = _summarise(t2i_ranks, i2t_ranks, time.perf_counter() - start, n_images * n_captions)
    return out


def _rerank(items: List[int], itm: List[float], itc: np.ndarray, itc_weight: float) -> List[int]:
    final = combine_scores(np.asarray(itm), itc[: len(items)], itc_weight)
    return [items[j] for j in np.argsort(-final, kind="stable")]


def exhaustive_itm(model: RetrievalModel, text_ids: Sequence[np.ndarray], regions: Sequence[Any],
                   batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """``(T, I)`` ITM probabilities of every caption with every image (chunked by images)."""
    n_texts, n_images = len(text_ids), len(regions)
    out = np.zeros((n_texts, n_images), dtype=np.float32)
    chunk = max(1, 65536 // max(1, n_texts))
    start_time = time.perf_counter()
    for first in range(0, n_images, chunk):
        last = min(n_images, first + chunk)
        texts, images = np.meshgrid(np.arange(n_texts), np.arange(first, last), indexing="ij")  # (T, c)
        pairs = np.stack([texts.ravel(), images.ravel()], axis=1)  # (T*c, 2)
        out[:, first:last] = model.itm_scores(text_ids, regions, pairs, batch_size).reshape(n_texts, last - first)
        if progress:
            done = last * n_texts
            rate = done / max(1e-9, time.perf_counter() - start_time)
            logger.info("exhaustive ITM: %d/%d pairs (%.0f pairs/s)", done, n_texts * n_images, rate)
    return out


def format_results(results: Dict[str, Any]) -> str:
    """A fixed-width table of the recalls and times of each evaluated mode."""
    lines = [f"{results['images']} images, {results['captions']} captions, re-rank depth {results['rerank']}",
             f"{'mode':<11} {'t2i R@1':>8} {'R@5':>6} {'R@10':>6} {'i2t R@1':>8} {'R@5':>6} {'R@10':>6} "
             f"{'mean':>6} {'seconds':>9} {'ITM pairs':>10}"]
    for mode in MODES:
        if mode not in results:
            continue
        r = results[mode]
        t, i = r["t2i"], r["i2t"]
        lines.append(f"{mode:<11} {t['r1']:8.2f} {t['r5']:6.2f} {t['r10']:6.2f} {i['r1']:8.2f} {i['r5']:6.2f} "
                     f"{i['r10']:6.2f} {r['mean']:6.2f} {r['seconds']:9.2f} {r['itm_pairs']:10d}")
    return "\n".join(lines)

