"""Two-stage retrieval: FAISS top-k candidates by ITC similarity, re-ranked in batches by the ITM head.

The first stage costs one unimodal encoder pass per query plus a FAISS search; the second runs the
cross-modal encoder on ``rerank`` (query, candidate) pairs instead of on every pair of the collection, which
is what UNITER/LXMERT-style evaluation does. Both encoder types work: the heads never see which one runs.

The final score of a pair is ``itm + itc_weight * itc``: the ITM matching probability, optionally blended with
the ITC cosine similarity (``itc_weight=0`` ranks by ITM alone; ITC still breaks exact ties).

Shape legend: Q queries, K candidates per query, E embedding size.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vlptm.retrieval.index import EmbeddingIndex, IndexMismatchError
from vlptm.retrieval.model import Regions, RetrievalModel
from vlptm.structures import RegionFeatures

logger = logging.getLogger(__name__)


def combine_scores(itm: np.ndarray, itc: np.ndarray, itc_weight: float) -> np.ndarray:
    """The final score of pairs: ``itm + itc_weight * itc``, plus a tiny ITC term that breaks ITM ties."""
    return np.asarray(itm, np.float64) + (float(itc_weight) + 1e-6) * np.asarray(itc, np.float64)


@dataclass
class SearchHit:
    """One result.

    Attributes:
        item_id: the image id (text-to-image) or caption id (image-to-text).
        score: the final score (ITM blended with ITC; the ITC cosine when there is no re-ranking).
        itc: the ITC cosine similarity of query and result.
        itm: the ITM matching probability, ``None`` when the result was not re-ranked.
        payload: the image path or the caption text stored in the index.
    """

    item_id: str
    score: float
    itc: float
    itm: Optional[float] = None
    payload: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _RegionCache:
    """A bounded LRU of images' :class:`Regions` read from a feature store."""

    def __init__(self, store: Any, model: RetrievalModel, size: int = 2048) -> None:
        self.store, self.model, self.size = store, model, size
        self._items: "OrderedDict[str, Regions]" = OrderedDict()

    def get(self, image_id: str) -> Regions:
        if image_id in self._items:
            self._items.move_to_end(image_id)
            return self._items[image_id]
        regions = self.model.regions(self.store[image_id])
        self._items[image_id] = regions
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return regions


class Searcher:
    """Text-to-image and image-to-text search over persisted indexes, with ITM re-ranking.

    Thread-safe: model calls are serialised by a lock (one CPU model serves best one request at a time).

    Args:
        model: the :class:`RetrievalModel` whose ITC embeddings the indexes hold.
        images: the image index (:class:`EmbeddingIndex` of modality ``"image"``).
        store: the feature store holding the indexed images' regions (needed for re-ranking and attention).
        captions: optional caption index (modality ``"text"``) for image-to-text search.
        rerank: candidates per query re-scored by ITM (0: ITC only).
        itc_weight: weight of the ITC cosine in the final score.

    Raises:
        IndexMismatchError: an index was built with another model, or from another extractor's features.

    Example:
        >>> searcher = Searcher(model, EmbeddingIndex.load("runs/index"), store)   # doctest: +SKIP
        >>> [hit.item_id for hit in searcher.text_to_image(["a red circle"], k=3)[0]]  # doctest: +SKIP
        ['000123', '000007', '000311']
    """

    def __init__(self, model: RetrievalModel, images: EmbeddingIndex, store: Any = None,
                 captions: Optional[EmbeddingIndex] = None, *, rerank: int = 16, itc_weight: float = 0.0) -> None:
        for index in (images, captions):
            if index is None:
                continue
            built = index.model.get("fingerprint")
            if built != model.fingerprint:
                raise IndexMismatchError(f"the {index.modality} index was built with model {built} "
                                         f"({index.model.get('source')}), not with {model.fingerprint} "
                                         f"({model.source}): rebuild it with `vlptm index`")
        if store is not None:
            stored = (store.manifest.get("extractor") or {}).get("config_hash")
            built = images.extractor.get("config_hash")
            if built and stored and built != stored:
                raise IndexMismatchError(f"the image index was built from extractor {built} features; the store "
                                         f"{store.path} holds extractor {stored} features")
        self.model, self.images, self.store, self.captions = model, images, store, captions
        self.rerank, self.itc_weight = int(rerank), float(itc_weight)
        self._regions = _RegionCache(store, model) if store is not None else None
        self._lock = threading.Lock()

    @property
    def can_rerank(self) -> bool:
        """Whether ITM re-ranking is possible (the model has an ITM head and the store is open)."""
        return self.model.has_itm and self.store is not None

    # -- text to image --------------------------------------------------------------------------------
    def text_to_image(self, queries: Sequence[str], k: int = 10, rerank: Optional[int] = None) -> List[List[SearchHit]]:
        """The ``k`` best images of each query.

        Args:
            queries: Q texts.
            k: results per query.
            rerank: candidates re-scored by ITM (default: the searcher's; 0 = ITC only). At least ``k``.

        Returns:
            Q lists of :class:`SearchHit`, best first.
        """
        depth = self.rerank if rerank is None else int(rerank)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            query_emb = self.model.embed_texts(list(queries))  # (Q, E)
            fetch = max(k, depth) if depth > 0 else k
            itc, ids = self.images.search(query_emb, fetch)  # (Q, K)
            if depth <= 0 or not self.can_rerank:
                return self._itc_only(ids, itc, k, self.images)
            text_ids = self.model.tokenize(list(queries))
            unique = sorted({i for row in ids for i in row})
            position = {image_id: n for n, image_id in enumerate(unique)}
            regions = [self._regions.get(i) for i in unique]
            pairs = np.array([(q, position[i]) for q, row in enumerate(ids) for i in row], dtype=np.int64)
            itm = self.model.itm_scores(text_ids, regions, pairs) if len(pairs) else np.zeros(0, np.float32)
        return self._rank(ids, itc, itm, k, self.images)

    # -- image to text --------------------------------------------------------------------------------
    def image_to_text(self, images: Sequence[RegionFeatures], k: int = 10,
                      rerank: Optional[int] = None) -> List[List[SearchHit]]:
        """The ``k`` best captions of each query image (needs a caption index).

        Args:
            images: Q query images' regions (from the store, or extracted with the store's extractor).
            k: results per query.
            rerank: candidates re-scored by ITM (default: the searcher's; 0 = ITC only).

        Raises:
            ValueError: the searcher has no caption index.
        """
        if self.captions is None:
            raise ValueError("image-to-text search needs a caption index (vlptm index --captions FILE)")
        depth = self.rerank if rerank is None else int(rerank)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            regions = [self.model.regions(r) for r in images]
            query_emb = self.model.embed_regions(regions)  # (Q, E)
            fetch = max(k, depth) if depth > 0 else k
            itc, ids = self.captions.search(query_emb, fetch)  # (Q, K)
            if depth <= 0 or not self.model.has_itm:
                return self._itc_only(ids, itc, k, self.captions)
            unique = sorted({i for row in ids for i in row})
            position = {caption_id: n for n, caption_id in enumerate(unique)}
            text_ids = self.model.tokenize([self.captions.payload(i) or "" for i in unique])
            pairs = np.array([(position[i], q) for q, row in enumerate(ids) for i in row], dtype=np.int64)
            itm = self.model.itm_scores(text_ids, regions, pairs) if len(pairs) else np.zeros(0, np.float32)
        return self._rank(ids, itc, itm, k, self.captions)

    @staticmethod
    def _itc_only(ids: List[List[str]], itc: np.ndarray, k: int, index: EmbeddingIndex) -> List[List[SearchHit]]:
        return [[SearchHit(i, float(s), float(s), None, index.payload(i)) for i, s in zip(row, scores)][:k]
                for row, scores in zip(ids, itc)]

    def _rank(self, ids: List[List[str]], itc: np.ndarray, itm: np.ndarray, k: int,
              index: EmbeddingIndex) -> List[List[SearchHit]]:
        out, start = [], 0
        for q, row in enumerate(ids):
            row_itm = itm[start: start + len(row)]
            start += len(row)
            final = combine_scores(row_itm, itc[q, : len(row)], self.itc_weight)
            order = np.argsort(-final, kind="stable")[:k]
            out.append([SearchHit(row[j], float(final[j]), float(itc[q, j]), float(row_itm[j]), index.payload(row[j]))
                        for j in order])
        return out

    # -- explanation ----------------------------------------------------------------------------------
    def word_region_attention(self, query: str, image_id: str) -> Dict[str, Any]:
        """The query's word-to-region attention on one indexed image (for the demo's picture).

        Returns:
            ``{"image_id", "tokens": [T'], "boxes": [[x1, y1, x2, y2] * r] (pixels), "image_size": [h, w],
            "attention": [[r floats] * T'], "itm": probability}``.

        Raises:
            KeyError: the image is not indexed.
        """
        if image_id not in self.images:
            raise KeyError(f"{image_id!r} is not in the index")
        if self.store is None:
            raise ValueError("word-to-region attention needs the feature store")
        with self._lock:
            features = self.store[image_id]
            tokens, attention, itm = self.model.word_region_attention(query, features)
        boxes = features.boxes[: attention.shape[1]].float().tolist()
        return {"image_id": image_id, "tokens": tokens, "boxes": boxes, "image_size": list(features.image_size),
                "attention": attention.round(5).tolist(), "itm": None if np.isnan(itm) else float(itm)}


class QueryBatcher:
    """Dynamic batching of concurrent text-to-image queries: one encoder batch serves many requests.

    Callers on any thread block in :meth:`text_to_image`; one worker thread takes every query waiting at
    that moment (up to ``max_batch``), runs them through :meth:`Searcher.text_to_image` as one batch per
    ``(k, rerank)`` setting, and hands each caller its own results. Under load, queries arriving while a
    batch runs form the next batch, so throughput grows with concurrency instead of queueing one by one.

    Args:
        searcher: the :class:`Searcher`.
        max_batch: most queries per batch.

    Example:
        >>> batcher = QueryBatcher(searcher)                    # doctest: +SKIP
        >>> hits = batcher.text_to_image("a red circle", k=5)   # doctest: +SKIP
    """

    def __init__(self, searcher: Searcher, max_batch: int = 32) -> None:
        import queue

        self.searcher, self.max_batch = searcher, int(max_batch)
        self._queue: "queue.Queue" = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="vlptm-query-batcher", daemon=True)
        self._worker.start()

    def text_to_image(self, query: str, k: int = 10, rerank: Optional[int] = None,
                      timeout: Optional[float] = None) -> List[SearchHit]:
        """The ``k`` best images of one query (blocks until its batch has run; re-raises its error)."""
        from concurrent.futures import Future

        future: Future = Future()
        self._queue.put((query, int(k), rerank, future))
        return future.result(timeout=timeout)

    def _run(self) -> None:
        import queue

        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: Dict[tuple, list] = {}
            for item in batch:
                groups.setdefault((item[1], item[2]), []).append(item)
            for (k, rerank), items in groups.items():
                try:
                    results = self.searcher.text_to_image([q for q, _, _, _ in items], k=k, rerank=rerank)
                except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                    for _, _, _, future in items:
                        future.set_exception(err)
                    continue
                for (_, _, _, future), hits in zip(items, results):
                    future.set_result(hits)
