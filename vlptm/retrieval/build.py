"""Build (or update) an index directory from a feature store and a pretrained model.

An index directory is an image :class:`~vlptm.retrieval.EmbeddingIndex` at its root and, optionally, a
caption index in ``INDEX/captions`` (for image-to-text search). Building into an existing directory built
with the same model adds the store's new images (and drops those no longer in it): incremental updates.

Example:
    >>> model = RetrievalModel.from_checkpoint("runs/pretrain")                     # doctest: +SKIP
    >>> build_index(model, FeatureStore.open("runs/features"), "runs/index",
    ...             images="runs/scenes/captions.json", captions="runs/scenes/captions.json")  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from vlptm.retrieval.index import EmbeddingIndex, IndexMismatchError, read_index_manifest
from vlptm.retrieval.model import RetrievalModel

logger = logging.getLogger(__name__)

CAPTIONS_DIR = "captions"
PathLike = Union[str, "os.PathLike[str]"]


def image_paths(source: PathLike, image_root: Optional[PathLike] = None) -> Dict[str, str]:
    """``{image id: absolute path}`` of a folder, annotation file or list file (the ids ``vlptm extract`` uses)."""
    from vlptm.features.extract import list_images

    return {item.image_id: str(Path(item.path).resolve()) for item in list_images(source, image_root)}


def _store_extractor(store: Any) -> Dict[str, Any]:
    extractor = store.manifest.get("extractor") or {}
    return {"name": extractor.get("name"), "config_hash": extractor.get("config_hash"),
            "store": str(Path(store.path).resolve())}


def _open_or_new(out: Path, model: RetrievalModel, factory: str, modality: str, extractor: Mapping[str, Any],
                 rebuild: bool, search_params: Optional[Mapping[str, Any]]) -> EmbeddingIndex:
    if out.exists() and not rebuild and (out / "manifest.json").is_file():
        manifest = read_index_manifest(out)
        if manifest.get("factory") != factory:
            raise IndexMismatchError(f"{out} holds a {manifest.get('factory')!r} index, not {factory!r}; pass "
                                     "rebuild=True (--rebuild) to replace it")
        index = EmbeddingIndex.load(out, model_fingerprint=model.fingerprint, mmap_vectors=False)
        if modality == "image" and index.extractor.get("config_hash") != extractor.get("config_hash"):
            raise IndexMismatchError(f"{out} was built from other features (extractor "
                                     f"{index.extractor.get('config_hash')}); pass rebuild=True (--rebuild)")
        built_cap = (manifest.get("model") or {}).get("max_vectors")
        if modality == "image" and model.multi_vector and built_cap != model.max_vectors:
            raise IndexMismatchError(f"{out} keeps {built_cap or 'all'} vectors per image, this model "
                                     f"{model.max_vectors or 'all'}; pass the same max_vectors or rebuild=True")
        if search_params:
            index.set_search_params(**search_params)
        return index
    return EmbeddingIndex(model.embed_dim, factory, modality=modality, model=model.describe(), extractor=extractor,
                          search_params=search_params)


def build_index(model: RetrievalModel, store: Any, out: PathLike, *, factory: str = "Flat",
                images: Optional[PathLike] = None, image_root: Optional[PathLike] = None,
                captions: Optional[PathLike] = None, split: Optional[str] = None, rebuild: bool = False,
                search_params: Optional[Mapping[str, Any]] = None, batch_size: int = 128,
                progress: bool = True) -> Dict[str, Any]:
    """Embed the store's images (and optionally captions) and write or update the index directory ``out``.

    Args:
        model: the model whose ITC embeddings are indexed.
        store: an open :class:`~vlptm.features.FeatureStore`.
        out: the index directory.
        factory: FAISS index-factory layout.
        images: folder / annotation / list file naming the image files (what the demo serves); ids must be
            the store's ids. Without it the index has no image paths.
        image_root: folder an annotation file's paths are relative to.
        captions: a captions file: also build the caption index ``out/captions`` (image-to-text search) from
            the captions of the store's images.
        split: keep only this split of the captions file (and only its images in the image index).
        rebuild: replace an existing index instead of updating it.
        search_params: FAISS search parameters to store with the index (``{"nprobe": 16}``).
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``{"images": n, "added": a, "removed": r, "captions": c, "seconds": s, "path": out}``.

    Raises:
        IndexMismatchError: ``out`` holds an index of another model, extractor or layout (without ``rebuild``).
        IndexTrainingError: too few images to train the layout.
    """
    start = time.perf_counter()
    out = Path(out)
    wanted = list(store.ids())
    records = None
    if captions is not None:
        from vlptm.data.readers import read_records

        kwargs = {"split": split} if split else {}
        records = [r for r in read_records(captions, image_root=image_root, **kwargs) if str(r.image_id) in store]
        if split:
            keep = {str(r.image_id) for r in records}
            wanted = [i for i in wanted if i in keep]
    paths = image_paths(images, image_root) if images is not None else {}
    missing_paths = sum(1 for i in wanted if i not in paths) if paths else 0
    if missing_paths:
        logger.warning("%d indexed images have no file in %s (the demo cannot show them)", missing_paths, images)
    extractor = _store_extractor(store)
    index = _open_or_new(out, model, factory, "image", extractor, rebuild, search_params)
    text_index = (_open_or_new(out / CAPTIONS_DIR, model, "Flat", "text", extractor, rebuild, None)
                  if records is not None else None)  # opened before the image index replaces the directory
    present = set(index.ids())
    wanted_set = set(wanted)
    removed = index.remove([i for i in present if i not in wanted_set])
    new = [i for i in wanted if i not in present]
    if new:
        vectors = model.embed_store(store, new, batch_size, progress=progress)  # (n, E)
        index.add(new, vectors, [paths.get(i) for i in new])
    index.save(out)
    result = {"images": len(index), "added": len(new), "removed": removed, "path": str(out)}
    if text_index is not None:
        texts = {f"{r.image_id}#{n}": caption for r in records for n, caption in enumerate(r.captions)}
        text_index.remove([i for i in text_index.ids() if i not in texts])
        fresh = [i for i in texts if i not in text_index]
        if fresh:
            text_index.add(fresh, model.embed_texts([texts[i] for i in fresh]), [texts[i] for i in fresh])
        text_index.save(out / CAPTIONS_DIR)
        result["captions"] = len(text_index)
    result["seconds"] = time.perf_counter() - start
    logger.info("index %s: %d images (+%d, -%d) in %.1fs", out, len(index), len(new), removed, result["seconds"])
    return result


def open_index(path: PathLike, model: RetrievalModel, store: Any = None) -> Dict[str, Optional[EmbeddingIndex]]:
    """Open an index directory for ``model``: ``{"images": EmbeddingIndex, "captions": EmbeddingIndex | None}``.

    Raises:
        IndexFormatError: not an index directory.
        IndexMismatchError: built with another model, or (when ``store`` is given) from other features.
    """
    path = Path(path)
    extractor_hash = (store.manifest.get("extractor") or {}).get("config_hash") if store is not None else None
    images = EmbeddingIndex.load(path, model_fingerprint=model.fingerprint, extractor_hash=extractor_hash)
    captions = None
    if (path / CAPTIONS_DIR / "manifest.json").is_file():
        captions = EmbeddingIndex.load(path / CAPTIONS_DIR, model_fingerprint=model.fingerprint)
    return {"images": images, "captions": captions}


def open_searcher(index: PathLike, model: Optional[PathLike] = None, store: Optional[PathLike] = None, *,
                  rerank: int = 16, itc_weight: float = 0.0, device: Optional[str] = None) -> Any:
    """A :class:`~vlptm.retrieval.Searcher` on an index directory.

    Args:
        index: the index directory.
        model: the pretraining checkpoint; default: the one the index manifest names.
        store: the feature store; default: the one the index manifest names.
        rerank: candidates re-ranked by ITM per query (0: ITC only).
        itc_weight: ITC weight in the final score.
        device: where the model runs.

    Raises:
        IndexFormatError, IndexMismatchError: see :func:`open_index`.
        FileNotFoundError: the model or store is gone.
    """
    from vlptm.features.store import FeatureStore
    from vlptm.retrieval.search import Searcher

    manifest = read_index_manifest(index)
    model_path = model or (manifest.get("model") or {}).get("source")
    store_path = store or (manifest.get("extractor") or {}).get("store")
    if not model_path:
        raise ValueError(f"{index} does not name its model: pass the checkpoint explicitly")
    cap = (manifest.get("model") or {}).get("max_vectors")  # image queries get the index's vectors per image
    retrieval_model = RetrievalModel.from_checkpoint(model_path, device=device, max_vectors=cap)
    feature_store = FeatureStore.open(store_path) if store_path else None
    indexes = open_index(index, retrieval_model, feature_store)
    return Searcher(retrieval_model, indexes["images"], feature_store, indexes["captions"], rerank=rerank,
                    itc_weight=itc_weight)
