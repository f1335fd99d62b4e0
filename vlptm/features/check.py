"""Integrity check of a feature store (``vlptm check-store``).

Checks, shard by shard and in bounded memory (region arrays are scanned in row chunks through their
memory maps): the manifest parses; every listed shard has all its files; the arrays have the shapes,
dtypes and row counts the manifest and writer files promise; offsets start at 0 and never decrease;
image sizes are positive; no NaN or infinite value anywhere; no image id stored twice; every box lies
inside its image (``0 <= x1 <= x2 <= w`` and ``0 <= y1 <= y2 <= h``, up to ``box_tolerance`` pixels).
Unlisted shard directories (left by a crash before their commit) and images with zero regions are
reported as warnings.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from vlptm.features.store import (
    MANIFEST,
    SHARDS_DIR,
    FeatureStore,
    StoreError,
    read_manifest,
    read_writer_files,
)

__all__ = ["StoreProblem", "check_store"]

_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class StoreProblem:
    """One finding of :func:`check_store`."""

    severity: str  # "error" or "warning"
    where: str  # store-relative location (a file, a shard, an image id)
    message: str  # what is wrong

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.where}: {self.message}"


def check_store(path: "str | Path", box_tolerance: float = 0.5, max_reports_per_kind: int = 20) -> List[StoreProblem]:
    """Checks a store and returns its problems (an empty list means healthy).

    Args:
        path: the store directory.
        box_tolerance: pixels a box may reach outside its image before it is an error.
        max_reports_per_kind: per shard and kind of finding, how many offending images are named.

    Returns:
        The problems, errors and warnings, in the order found.
    """
    path = Path(path)
    problems: List[StoreProblem] = []

    def error(where: str, message: str) -> None:
        problems.append(StoreProblem("error", where, message))

    try:
        manifest = read_manifest(path)
        writers = read_writer_files(path)
    except StoreError as err:
        error(MANIFEST, str(err))
        return problems
    feature_dim = int(manifest["feature_dim"])
    feature_dtype = np.dtype(manifest["feature_dtype"])
    widths: Dict[str, Optional[int]] = {"cls_probs": manifest.get("cls_dim"), "attr_probs": manifest.get("attr_dim")}

    listed = set()
    ok_shards = True
    for writer, shards in writers.items():
        for info in shards:
            listed.add(info.name)
            if not info.name.startswith(f"{writer}-"):
                error(f"writers/{writer}.json", f"lists shard {info.name} of another writer")
            shard_ok = _check_shard(path / SHARDS_DIR / info.name, info.num_images, info.num_regions, feature_dim,
                                    feature_dtype, widths, box_tolerance, max_reports_per_kind, problems)
            ok_shards = ok_shards and shard_ok

    shards_dir = path / SHARDS_DIR
    if shards_dir.is_dir():
        for entry in sorted(shards_dir.iterdir()):
            if entry.name not in listed:
                problems.append(StoreProblem("warning", f"shards/{entry.name}",
                                             "not listed by any writer (an uncommitted leftover; ignored by readers, "
                                             "deleted when its writer resumes)"))

    if ok_shards:
        try:
            duplicates = FeatureStore.open(path).duplicate_ids()
        except StoreError as err:
            error("index", str(err))
        else:
            if duplicates:
                shown = ", ".join(repr(d) for d in duplicates[:max_reports_per_kind])
                error("index", f"{len(duplicates)} image ids are stored more than once: {shown}")
    return problems


def _check_shard(shard_dir: Path, num_images: int, num_regions: int, feature_dim: int, feature_dtype: np.dtype,
                 widths: Dict[str, Optional[int]], tol: float, max_reports: int,
                 problems: List[StoreProblem]) -> bool:
    """Checks one shard; returns False when it is too broken to index."""
    where = f"shards/{shard_dir.name}"
    start_count = len(problems)

    def error(message: str) -> None:
        problems.append(StoreProblem("error", where, message))

    expected = {
        "ids": ((num_images,), None),
        "image_sizes": ((num_images, 2), None),
        "offsets": ((num_images + 1,), None),
        "boxes": ((num_regions, 4), np.dtype(np.float32)),
        "scores": ((num_regions,), np.dtype(np.float32)),
        "features": ((num_regions, feature_dim), feature_dtype),
    }
    for name, width in widths.items():
        if width is not None:
            expected[name] = ((num_regions, int(width)), feature_dtype)
    if not shard_dir.is_dir():
        error("listed by its writer but missing")
        return False
    arrays: Dict[str, np.ndarray] = {}
    for name, (shape, dtype) in expected.items():
        file = shard_dir / f"{name}.npy"
        if not file.is_file():
            error(f"{name}.npy is missing")
            continue
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            error(f"{name}.npy cannot be read: {err}")
            continue
        if array.shape != shape:
            error(f"{name}.npy has shape {array.shape}, expected {shape}")
            continue
        if dtype is not None and array.dtype != dtype:
            error(f"{name}.npy has dtype {array.dtype}, expected {dtype}")
            continue
        arrays[name] = array
    for name in ("cls_probs", "attr_probs"):
        if widths[name] is None and (shard_dir / f"{name}.npy").exists():
            problems.append(StoreProblem("warning", where, f"{name}.npy present but the manifest has no width for it"))
    if len(problems) > start_count:
        return False

    offsets = np.asarray(arrays["offsets"])
    counts = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != num_regions or (counts < 0).any():
        error(f"offsets must rise from 0 to {num_regions}, got first={offsets[0]}, last={offsets[-1]}, "
              f"{int((counts < 0).sum())} decreasing steps")
        return False
    ids = np.asarray(arrays["ids"])
    sizes = np.asarray(arrays["image_sizes"]).astype(np.float64)
    bad_size = ~(sizes > 0).all(axis=1)
    if bad_size.any():
        error(f"{int(bad_size.sum())} images have a non-positive size, e.g. {_names(ids, bad_size, max_reports)}")
    empty = counts == 0
    if empty.any():
        problems.append(StoreProblem("warning", where, f"{int(empty.sum())} images have no regions, e.g. "
                                                       f"{_names(ids, empty, max_reports)}"))
    local_ids = ids.tolist()
    if len(set(local_ids)) != len(local_ids):
        error("the shard lists an image id twice")

    # scan region arrays in row chunks: memory stays bounded whatever the shard size
    row_image = np.repeat(np.arange(num_images), counts)  # (R,) image index of each row
    nonfinite = np.zeros(num_images, dtype=bool)
    outside = np.zeros(num_images, dtype=bool)
    for lo in range(0, num_regions, _CHUNK_ROWS):
        hi = min(lo + _CHUNK_ROWS, num_regions)
        owner = row_image[lo:hi]  # (r,)
        for name in [n for n in ("boxes", "scores", "features", "cls_probs", "attr_probs") if n in arrays]:
            chunk = np.asarray(arrays[name][lo:hi])
            finite = np.isfinite(chunk) if chunk.ndim == 1 else np.isfinite(chunk).all(axis=1)
            nonfinite[owner[~finite]] = True
        boxes = np.asarray(arrays["boxes"][lo:hi], dtype=np.float64)  # (r, 4)
        h = sizes[owner, 0]
        w = sizes[owner, 1]
        inside = ((boxes[:, 0] >= -tol) & (boxes[:, 1] >= -tol) & (boxes[:, 2] <= w + tol) & (boxes[:, 3] <= h + tol)
                  & (boxes[:, 0] <= boxes[:, 2] + tol) & (boxes[:, 1] <= boxes[:, 3] + tol))
        outside[owner[~inside]] = True
    if nonfinite.any():
        error(f"{int(nonfinite.sum())} images have NaN or infinite values, e.g. {_names(ids, nonfinite, max_reports)}")
    if outside.any():
        error(f"{int(outside.sum())} images have boxes outside the image or with x2 < x1 / y2 < y1, e.g. "
              f"{_names(ids, outside, max_reports)}")
    return True


def _names(ids: np.ndarray, mask: np.ndarray, limit: int) -> str:
    chosen = ids[mask][:limit]
    return ", ".join(repr(bytes(raw).decode("utf-8", "replace")) for raw in chosen)
