"""A persisted FAISS index of embeddings (images, or captions) keyed by string ids.

:class:`EmbeddingIndex` holds unit-norm ITC embeddings in any FAISS index-factory layout — ``Flat``
(exact), ``IVF4096,Flat``, ``HNSW32``, ``IVF1024,PQ32``, ``OPQ32,IVF1024,PQ32`` ... — searched by inner
product (= cosine). Layouts that need training are trained on the first vectors added. Ids are arbitrary
strings mapped to FAISS int64 labels. An id may own several vectors (a *set*: an image embedded one vector
per region by a region-pooling model, see :mod:`vlptm.objectives.itc`); its score for a query is then the
best score of its vectors, and a query may itself be a set (the best score over all pairs).
:meth:`~EmbeddingIndex.remove` deletes natively where the layout can (Flat, IVF, PQ) and otherwise (HNSW)
hides the removed labels from results until :meth:`compact`.

On disk, an index directory holds::

    INDEX/
      manifest.json   format, layout, dims, counts, search parameters, and the model and feature extractor
                      the embeddings came from (checked on open: another model is an error)
      index.faiss     the FAISS index (faiss.write_index)
      ids.json        label -> id (null for removed labels; an id with a set of vectors appears once per
                      vector), removed-but-present labels, and for each id its payload: an image path
                      (image index) or a caption (caption index)
      vectors.npy     (N, E) float32 raw embeddings by label (optional): exact re-scoring and compaction

The directory is written into a temporary sibling and swapped in with renames, so a reader never sees a
half-written index.

Shape legend: N indexed vectors, Q queries, E embedding size, k results per query, r vectors of one set.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_NAME = "vlptm-embedding-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
VECTORS_FILE = "vectors.npy"
MODALITIES = ("image", "text")

PathLike = Union[str, "os.PathLike[str]"]


class RetrievalIndexError(Exception):
    """Base of the index errors."""


class IndexFormatError(RetrievalIndexError):
    """A directory is not an index this code reads, or its files disagree."""


class IndexMismatchError(RetrievalIndexError):
    """The index was built with another model or feature extractor than the one given."""


class IndexTrainingError(RetrievalIndexError):
    """The layout needs training and the vectors given cannot train it (too few, for instance)."""


def _faiss():
    import faiss

    return faiss


def _native_ids(index: Any) -> bool:
    """Whether the layout stores its own int64 labels (IVF, possibly behind a pre-transform)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return isinstance(inner, faiss.IndexIVF)


def _as_sets(vectors: Any, dim: int) -> Tuple[np.ndarray, List[int]]:
    """``(n, E)`` vectors or ``n`` sets ``(r_i, E)`` -> ``(sum r_i, E)`` rows and each item's ``r_i``."""
    if isinstance(vectors, np.ndarray) or not len(vectors) or np.ndim(vectors[0]) == 1:
        array = _as_matrix(vectors, dim)
        return array, [1] * len(array)
    sets = [_as_matrix(v, dim) for v in vectors]
    if any(len(v) == 0 for v in sets):
        raise ValueError("every vector set needs at least one vector")
    return np.concatenate(sets), [len(v) for v in sets]


def _as_matrix(vectors: Any, dim: int) -> np.ndarray:
    array = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must be (n, {dim}), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinite values")
    return array


class EmbeddingIndex:
    """Unit-norm embeddings in a FAISS layout, with string ids, payloads and provenance.

    Args:
        dim: E.
        factory: a FAISS index-factory string (``"Flat"``, ``"IVF256,Flat"``, ``"HNSW32"``, ``"IVF256,PQ32"`` ...).
        modality: ``"image"`` (ids are image ids, payloads image paths) or ``"text"`` (payloads captions).
        model: what :meth:`~vlptm.retrieval.RetrievalModel.describe` says about the model that made the vectors.
        extractor: ``{"name", "config_hash"}`` of the feature store's extractor.
        keep_vectors: keep the raw ``(N, E)`` vectors (exact re-scoring, compaction; 4·E bytes per vector).
        search_params: FAISS parameters applied at search time, e.g. ``{"nprobe": 16}`` or ``{"efSearch": 64}``.

    Raises:
        ValueError: an unknown modality or a factory string FAISS rejects.

    Example:
        >>> import numpy as np
        >>> index = EmbeddingIndex(4, "Flat")
        >>> index.add(["a", "b"], np.eye(4, dtype=np.float32)[:2])
        >>> scores, ids = index.search(np.eye(4, dtype=np.float32)[1:2], k=1)
        >>> ids, round(float(scores[0, 0]), 3)
        ([['b']], 1.0)
    """

    def __init__(self, dim: int, factory: str = "Flat", *, modality: str = "image",
                 model: Optional[Mapping[str, Any]] = None, extractor: Optional[Mapping[str, Any]] = None,
                 keep_vectors: bool = True, search_params: Optional[Mapping[str, Any]] = None) -> None:
        faiss = _faiss()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.factory = str(factory)
        self.modality = modality
        self.model = dict(model or {})
        self.extractor = dict(extractor or {})
        self.keep_vectors = bool(keep_vectors)
        self.search_params: Dict[str, Any] = dict(search_params or {})
        try:
            index = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"FAISS rejects the index factory string {factory!r}: {err}") from err
        self._index = index if _native_ids(index) else faiss.IndexIDMap2(index)
        self._ids: List[Optional[str]] = []  # label -> id (None once removed)
        self._label: Dict[str, List[int]] = {}  # id -> its labels (one per vector of its set)
        self._payload: Dict[str, str] = {}  # id -> image path / caption
        self._hidden: set = set()  # labels removed from the id map but still inside the FAISS index
        self._owner: Optional[np.ndarray] = None  # label -> first label of its id (-1: removed); built lazily
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # (N, E) by label when keep_vectors
        self._apply_search_params()

    # -- contents -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, item_id: Any) -> bool:
        return str(item_id) in self._label

    def ids(self) -> List[str]:
        """Live ids in the order they were added."""
        return list(self._label)

    def payload(self, item_id: str) -> Optional[str]:
        """The image path or caption stored with an id (``None`` if none was given).

        Raises:
            KeyError: the id is not in the index.
        """
        if item_id not in self._label:
            raise KeyError(f"{item_id!r} is not in the index")
        return self._payload.get(item_id)

    def vector(self, item_id: str) -> np.ndarray:
        """``(E,)`` raw embedding of an id with one vector (needs ``keep_vectors``); see :meth:`vectors`.

        Raises:
            RetrievalIndexError: no raw vectors kept, or the id owns a set of vectors.
        """
        rows = self.vectors(item_id)
        if len(rows) != 1:
            raise RetrievalIndexError(f"{item_id!r} owns {len(rows)} vectors: use vectors()")
        return rows[0]

    def vectors(self, item_id: str) -> np.ndarray:
        """``(r, E)`` raw embeddings of an id (``r = 1`` unless it owns a set; needs ``keep_vectors``)."""
        if not self.keep_vectors:
            raise RetrievalIndexError("this index keeps no raw vectors (built with keep_vectors=False)")
        return np.array(self._vectors[self._label[item_id]])

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def ntotal(self) -> int:
        """Vectors inside the FAISS index (live plus hidden)."""
        return int(self._index.ntotal)

    def code_bytes(self) -> int:
        """Size of the serialised FAISS index in bytes (its memory footprint, id map included)."""
        return int(_faiss().serialize_index(self._index).size)

    # -- building -------------------------------------------------------------------------------------
    def train(self, vectors: Any) -> None:
        """Train the layout (a no-op for layouts that need none).

        Raises:
            IndexTrainingError: FAISS cannot train on these vectors (e.g. fewer than the IVF lists or PQ
                centroids); the message says how many it needs.
        """
        array = _as_matrix(vectors, self.dim)
        if self._index.is_trained:
            return
        start = time.perf_counter()
        try:
            self._index.train(array)
        except RuntimeError as err:
            raise IndexTrainingError(
                f"cannot train {self.factory!r} on {len(array)} vectors ({str(err).splitlines()[-1]}); add more "
                "vectors before the first training, or pick a smaller layout (fewer IVF lists, fewer PQ bits)"
            ) from err
        logger.info("trained %s on %d vectors in %.1fs", self.factory, len(array), time.perf_counter() - start)

    def add(self, item_ids: Sequence[Any], vectors: Any, payloads: Optional[Sequence[Optional[str]]] = None) -> None:
        """Add vectors under new ids (training the layout on them first if it is untrained).

        Args:
            item_ids: ``n`` ids, none already in the index and no duplicates.
            vectors: ``(n, E)`` embeddings (unit norm for cosine scores), or ``n`` sets of ``(r_i, E)``.
            payloads: optional ``n`` image paths (image index) or captions (caption index).

        Raises:
            ValueError: wrong shapes, NaN, a duplicate id.
            IndexTrainingError: see :meth:`train`.
        """
        keys = [str(i) for i in item_ids]
        array, sizes = _as_sets(vectors, self.dim)  # (sum r, E), n sizes
        if len(keys) != len(sizes):
            raise ValueError(f"{len(keys)} ids for {len(sizes)} vectors (or vector sets)")
        if payloads is not None and len(payloads) != len(keys):
            raise ValueError(f"{len(payloads)} payloads for {len(keys)} ids")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate ids in one add() call")
        already = [k for k in keys if k in self._label]
        if already:
            raise ValueError(f"{len(already)} ids are already indexed (e.g. {already[0]!r}); remove them first")
        if not keys:
            return
        if not self._index.is_trained:
            self.train(array)
        labels = np.arange(len(self._ids), len(self._ids) + len(array), dtype=np.int64)
        self._index.add_with_ids(array, labels)
        self._owner = None
        start = int(labels[0])
        for key, size in zip(keys, sizes):
            self._ids.extend([key] * size)
            self._label[key] = list(range(start, start + size))
            start += size
        if payloads is not None:
            self._payload.update({k: str(p) for k, p in zip(keys, payloads) if p is not None})
        if self.keep_vectors:
            self._vectors = np.concatenate([self._vectors, array]) if len(self._vectors) else array.copy()

    def remove(self, item_ids: Sequence[Any]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed.

        Layouts that support it delete the vectors; others (HNSW) keep them hidden from results.
        """
        keys = sorted({str(i) for i in item_ids if str(i) in self._label})
        if not keys:
            return 0
        label_array = np.asarray(sorted(label for key in keys for label in self._label[key]), dtype=np.int64)
        try:
            self._index.remove_ids(label_array)
        except RuntimeError:
            self._hidden.update(label_array.tolist())
        self._owner = None
        for label in label_array.tolist():
            self._ids[label] = None
        for key in keys:
            del self._label[key]
            self._payload.pop(key, None)
        return len(keys)

    def compact(self) -> None:
        """Rebuild the FAISS index from the kept raw vectors of the live ids (drops hidden vectors).

        Raises:
            RetrievalIndexError: the index keeps no raw vectors.
        """
        if not self.keep_vectors:
            raise RetrievalIndexError("compact() needs the raw vectors (keep_vectors=True)")
        keys = list(self._label)
        vectors = [np.asarray(self._vectors[self._label[key]]) for key in keys]  # sets (r, E)
        payload = {k: self._payload[k] for k in keys if k in self._payload}
        fresh = EmbeddingIndex(self.dim, self.factory, modality=self.modality, model=self.model,
                               extractor=self.extractor, keep_vectors=True, search_params=self.search_params)
        if self.is_trained and not fresh.is_trained:  # keep the trained quantiser: re-add into a reset copy
            faiss = _faiss()
            fresh._index = faiss.clone_index(self._index)
            fresh._index.reset()
        fresh.add(keys, vectors, [payload.get(k) for k in keys])
        self.__dict__.update(fresh.__dict__)

    # -- searching ------------------------------------------------------------------------------------
    def _apply_search_params(self) -> None:
        if not self.search_params:
            return
        faiss = _faiss()
        space = faiss.ParameterSpace()
        for name, value in self.search_params.items():
            try:
                space.set_index_parameter(self._index, name, value)
            except RuntimeError as err:
                raise ValueError(f"search parameter {name}={value} does not apply to {self.factory!r}") from err

    def set_search_params(self, **params: Any) -> None:
        """Set (and remember) FAISS search parameters, e.g. ``nprobe=16`` or ``efSearch=64``.

        Raises:
            ValueError: a parameter the layout does not have.
        """
        self.search_params.update(params)
        self._apply_search_params()

    def search(self, queries: Any, k: int = 10, *, rescore: int = 0) -> Tuple[np.ndarray, List[List[str]]]:
        """The ``k`` best ids of each query by inner product (an id's best vector, a set query's best row).

        Args:
            queries: ``(Q, E)`` (or ``(E,)``) query embeddings, or ``Q`` query sets ``(r_i, E)``.
            k: results per query (fewer when the index holds fewer).
            rescore: when > 0, fetch ``max(k, rescore)`` candidates from FAISS and re-score them exactly with
                the raw vectors (recovers the accuracy a compressed layout loses; needs ``keep_vectors``).

        Returns:
            ``(scores (Q, k'), ids)``: scores, best first, and the ids as ``Q`` lists of ``k'`` strings,
            ``k' = min(k, len(self))``.
        """
        if isinstance(queries, np.ndarray) or not len(queries) or np.ndim(queries[0]) == 1:
            queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        array, sizes = _as_sets(queries, self.dim)  # (sum r, E) query rows
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(k, len(self._label))
        if kk == 0:
            return np.zeros((len(sizes), 0), np.float32), [[] for _ in sizes]
        if rescore and not self.keep_vectors:
            raise RetrievalIndexError("rescore needs the raw vectors (keep_vectors=True)")
        wanted = max(kk, int(rescore))
        out_scores = np.full((len(sizes), kk), -np.inf, dtype=np.float32)
        out_ids: List[List[str]] = []
        bounds = np.cumsum([0] + sizes)
        per_row = self._best_ids(array, wanted)
        for q in range(len(sizes)):
            rows = array[bounds[q]: bounds[q + 1]]  # (r, E)
            best: Dict[str, float] = {}
            for found in per_row[bounds[q]: bounds[q + 1]]:
                for key, score in found:
                    if score > best.get(key, -np.inf):
                        best[key] = score
            if rescore:  # exact: the best pair of the query's rows and the id's raw vectors
                best = {key: float((np.asarray(self._vectors[self._label[key]]) @ rows.T).max()) for key in best}
            ranked = sorted(best.items(), key=lambda item: -item[1])[:kk]
            out_scores[q, : len(ranked)] = [score for _, score in ranked]
            out_ids.append([key for key, _ in ranked])
        return out_scores, out_ids

    def _owners(self) -> np.ndarray:
        """``(labels,)`` int64: each label's id, as the first label of that id (-1 once removed)."""
        if self._owner is None:
            owner = np.full(len(self._ids), -1, dtype=np.int64)
            for labels in self._label.values():
                owner[labels] = labels[0]
            self._owner = owner
        return self._owner

    def _best_ids(self, rows: np.ndarray, wanted: int) -> List[List[Tuple[str, float]]]:
        """For each query row, at least ``wanted`` distinct live ids (all, when fewer) with their best score,
        best first; FAISS is asked for more rows until hidden labels and sets' extra vectors leave enough."""
        per_id = max(1, -(-(self.ntotal - len(self._hidden)) // max(1, len(self._label))))  # mean set size
        fetch = min(self.ntotal, wanted * per_id + len(self._hidden))
        owners = self._owners()
        while True:
            scores, labels = self._index.search(rows, fetch)  # (r, fetch), best first
            owner = np.where(labels >= 0, owners[np.maximum(labels, 0)], -1)  # (r, fetch) id of each hit
            found: List[List[Tuple[str, float]]] = []
            for row_owner, row_scores in zip(owner, scores):
                live = row_owner >= 0
                row_owner, row_scores = row_owner[live], row_scores[live]
                _, first = np.unique(row_owner, return_index=True)  # each id's first (= best) hit
                first.sort()
                found.append([(self._ids[o], float(v)) for o, v in zip(row_owner[first], row_scores[first])])
            if fetch >= self.ntotal or min(len(f) for f in found) >= min(wanted, len(self._label)):
                return found
            fetch = min(self.ntotal, 2 * fetch)  # hidden labels or big sets crowded the ids out: look further

    # -- persistence ----------------------------------------------------------------------------------
    def manifest(self) -> Dict[str, Any]:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "modality": self.modality, "factory": self.factory,
            "dim": self.dim, "metric": "inner_product", "count": len(self), "ntotal": self.ntotal,
            "search_params": self.search_params, "keep_vectors": self.keep_vectors,
            "model": self.model, "extractor": self.extractor,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, path: PathLike) -> Path:
        """Write the index directory (atomically replacing an existing one)."""
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        faiss.write_index(self._index, str(tmp / INDEX_FILE))
        (tmp / IDS_FILE).write_text(json.dumps({"labels": self._ids, "hidden": sorted(self._hidden),
                                                "payloads": self._payload}))
        if self.keep_vectors:
            np.save(tmp / VECTORS_FILE, self._vectors)
        (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: PathLike, *, model_fingerprint: Optional[str] = None,
             extractor_hash: Optional[str] = None, mmap_vectors: bool = True) -> "EmbeddingIndex":
        """Open an index directory.

        Args:
            path: the directory :meth:`save` wrote.
            model_fingerprint: when given, must equal the fingerprint of the model the index was built with.
            extractor_hash: when given, must equal the config hash of the extractor recorded in the index.
            mmap_vectors: memory-map ``vectors.npy`` instead of reading it.

        Raises:
            IndexFormatError: not an index directory, or its files disagree.
            IndexMismatchError: another model or extractor.
        """
        faiss = _faiss()
        path = Path(path)
        manifest = read_index_manifest(path)
        if model_fingerprint is not None:
            built = (manifest.get("model") or {}).get("fingerprint")
            if built != model_fingerprint:
                raise IndexMismatchError(
                    f"{path} was built with model {built} ({(manifest.get('model') or {}).get('source')}); the model "
                    f"given has fingerprint {model_fingerprint}: rebuild the index with `vlptm index` for this model")
        if extractor_hash is not None:
            built = (manifest.get("extractor") or {}).get("config_hash")
            if built and built != extractor_hash:
                raise IndexMismatchError(f"{path} was built from features of extractor {built}, not {extractor_hash}")
        self = cls.__new__(cls)
        self.dim = int(manifest["dim"])
        self.factory = str(manifest["factory"])
        self.modality = str(manifest.get("modality", "image"))
        self.model = dict(manifest.get("model") or {})
        self.extractor = dict(manifest.get("extractor") or {})
        self.keep_vectors = bool(manifest.get("keep_vectors", False))
        self.search_params = dict(manifest.get("search_params") or {})
        try:
            self._index = faiss.read_index(str(path / INDEX_FILE))
            ids = json.loads((path / IDS_FILE).read_text())
        except (RuntimeError, OSError, ValueError) as err:
            raise IndexFormatError(f"{path}: cannot read {INDEX_FILE}/{IDS_FILE}: {err}") from err
        self._ids = list(ids["labels"])
        self._label = {}
        for label, key in enumerate(self._ids):
            if key is not None:
                self._label.setdefault(key, []).append(label)
        self._hidden = set(int(v) for v in ids.get("hidden", []))
        self._owner = None
        self._payload = dict(ids.get("payloads", {}))
        if self.keep_vectors:
            self._vectors = np.load(path / VECTORS_FILE, mmap_mode="r" if mmap_vectors else None)
            if self._vectors.shape != (len(self._ids), self.dim):
                raise IndexFormatError(f"{path}: {VECTORS_FILE} has shape {self._vectors.shape}, expected "
                                       f"({len(self._ids)}, {self.dim})")
        else:
            self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._apply_search_params()
        expected = sum(len(labels) for labels in self._label.values()) + len(self._hidden)
        if self._index.d != self.dim or self.ntotal != expected:
            raise IndexFormatError(f"{path}: {INDEX_FILE} holds {self.ntotal} vectors of dim {self._index.d}; the "
                                   f"id map expects {expected} of dim {self.dim}")
        return self

    def __repr__(self) -> str:
        return (f"EmbeddingIndex({self.modality}, {self.factory!r}, n={len(self)}, dim={self.dim}, "
                f"model={self.model.get('fingerprint', '?')[:8]})")


def read_index_manifest(path: PathLike) -> Dict[str, Any]:
    """Read and validate ``INDEX/manifest.json``.

    Raises:
        IndexFormatError: missing, not JSON, another format or a newer version.
    """
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise IndexFormatError(f"{path} is not an index directory (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as err:
        raise IndexFormatError(f"{manifest_path} is not JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if not 1 <= int(manifest.get("version", 0)) <= FORMAT_VERSION:
        raise IndexFormatError(f"{manifest_path} has version {manifest.get('version')}; this vlptm reads "
                               f"1..{FORMAT_VERSION}")
    return manifest
