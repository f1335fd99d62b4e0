"""A sharded, memory-mapped store of region features: one directory, random access by image id.

Layout of a store directory::

    STORE/
      manifest.json              format version, extractor name + config hash, dims, dtypes (written once)
      writers/<writer>.json      the shards a writer has committed, in order (one file per writer)
      shards/<writer>-<seq>/     one committed shard (numbered per writer, 000000, 000001, ...):
          ids.npy                (n,)  image ids, UTF-8 bytes (numpy ``S`` dtype)
          image_sizes.npy        (n, 2) int32 ``(h, w)`` of each original image in pixels
          offsets.npy            (n + 1,) int64 row offsets: image i owns rows ``offsets[i]:offsets[i+1]``
          boxes.npy              (R, 4) float32 ``[x1, y1, x2, y2]`` in pixels (R = regions in the shard)
          scores.npy             (R,)  float32 detection confidence
          features.npy           (R, D) float16 (the manifest's ``feature_dtype``)
          cls_probs.npy          (R, C) float16, only when the manifest has ``cls_dim``
          attr_probs.npy         (R, A) float16, only when the manifest has ``attr_dim``
      errors/<writer>.jsonl      images a writer could not process, one JSON object per line
      locks/<writer>.lock        held (``lockf``) while a writer of that name is open

Boxes are stored in pixels with the image size, free of any position convention: the 4-, 5- or 7-d
normalised positions of LXMERT, ViLBERT and UNITER are computed on read by
:meth:`vlptm.structures.RegionFeatures.normalized_positions`.

Commit protocol (what makes an interrupted extraction resumable). A writer buffers images in memory;
:meth:`FeatureStoreWriter.commit` writes the shard's arrays into a temporary directory, fsyncs every
file, renames the directory to its final name, then rewrites ``writers/<writer>.json`` atomically (temp
file, fsync, ``os.replace``). A shard exists for readers only once it is listed in a writer file, so a
crash at any point leaves either the old or the new list, never half a shard. When a writer reopens,
its own unlisted shard directories and temporaries are deleted, and :meth:`FeatureStoreWriter.is_committed`
tells which ids to skip (across all writers).

Several writers (``vlptm extract --shard i/n`` in separate processes or on separate machines with a
shared file system) write into one store without clobbering each other: each has its own name, so its
own shard names, writer file, errors file and lock. ``manifest.json`` is created exclusively (``os.link``
of a temp file, which fails if another writer got there first), and every later writer checks that its
feature dims and extractor config hash match it. Readers merge all writer files on open.

Memory: :meth:`FeatureStore.open` reads only the small per-shard ``ids``, ``offsets`` and
``image_sizes`` arrays and keeps one sorted id array plus four integers per image (about 50 bytes per
image with 20-character ids: ~5 MB for 100k images). Region arrays are memory-mapped (``mmap``) on first
access, at most ``max_open_shards`` shards at a time (least recently used shards are unmapped, which
also bounds open file descriptors). A read copies the image's rows out of the maps and then tells the
kernel to drop those pages from the process (``madvise(MADV_DONTNEED)``; they stay in the page cache),
so random reads over a large store leave the resident set size flat.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import re
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:  # RegionFeatures (and torch) are imported lazily: check-store and converters need numpy only
    from vlptm.structures import RegionFeatures

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FeatureStore",
    "FeatureStoreWriter",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "InvalidRegionsError",
    "ShardInfo",
    "read_errors",
    "read_manifest",
    "read_writer_files",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "vlptm-feature-store"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
WRITERS_DIR = "writers"
SHARDS_DIR = "shards"
ERRORS_DIR = "errors"
LOCKS_DIR = "locks"

# Arrays every shard has, and the optional soft-label arrays.
_INDEX_ARRAYS = ("ids", "image_sizes", "offsets")
_REGION_ARRAYS = ("boxes", "scores", "features")
_PROB_ARRAYS = ("cls_probs", "attr_probs")
_PROB_DIM_KEYS = {"cls_probs": "cls_dim", "attr_probs": "attr_dim"}

_WRITER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TMP_PREFIX = ".tmp-"
_HELD_LOCKS: set = set()  # (lock file, pid) of the writers open in this process

PathLike = Union[str, "os.PathLike[str]"]


class StoreError(Exception):
    """A feature store is missing, malformed, or was asked for something it does not hold."""


class StoreMismatchError(StoreError):
    """A writer's dims, dtype or extractor disagree with the store it is appending to."""


class StoreLockedError(StoreError):
    """Another process holds the lock of the writer name being opened."""


class InvalidRegionsError(ValueError):
    """One image's regions cannot be stored (wrong shapes, NaN or infinite values, bad image size)."""


@dataclass(frozen=True)
class ShardInfo:
    """One committed shard, as listed in a writer file."""

    name: str  # directory name under shards/
    num_images: int  # images in the shard
    num_regions: int  # rows of the region arrays


# ----------------------------------------------------------------------------------------------------------
# small file-system helpers


def _fsync_dir(path: Path) -> None:
    """Flushes a directory entry change (rename, create) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_npy_durably(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write_json(path: Path, obj: Any) -> None:
    """Replaces ``path`` with ``obj`` as JSON so readers see the old or the new file, never a partial one."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    _write_bytes_durably(tmp, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise StoreError(f"{path} is not valid JSON: {err}") from err


def _encode_ids(ids: Sequence[str]) -> np.ndarray:
    encoded = [str(i).encode("utf-8") for i in ids]
    for raw in encoded:
        if not raw or raw.endswith(b"\x00"):
            raise InvalidRegionsError(f"image id {raw!r} is empty or ends with a NUL byte")
    width = max((len(raw) for raw in encoded), default=1)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


def _shard_name(writer: str, seq: int) -> str:
    return f"{writer}-{seq:06d}"


# ----------------------------------------------------------------------------------------------------------
# manifest


def _new_manifest(
    *,
    feature_dim: int,
    feature_dtype: str,
    cls_dim: Optional[int],
    attr_dim: Optional[int],
    extractor_name: str,
    extractor_config_hash: str,
    extractor_config: Optional[Mapping[str, Any]],
) -> Dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "feature_dim": int(feature_dim),
        "feature_dtype": str(np.dtype(feature_dtype)),
        "cls_dim": None if cls_dim is None else int(cls_dim),
        "attr_dim": None if attr_dim is None else int(attr_dim),
        "box_format": "xyxy_pixels",
        "extractor": {
            "name": extractor_name,
            "config_hash": extractor_config_hash,
            "config": dict(extractor_config) if extractor_config is not None else None,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def read_manifest(path: PathLike) -> Dict[str, Any]:
    """Reads and validates ``STORE/manifest.json``.

    Raises:
        StoreError: no manifest, not JSON, another format, or a newer version than this code reads.
    """
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not a feature store (no {MANIFEST})")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{manifest_path} is not a {FORMAT_NAME} manifest")
    if int(manifest.get("version", -1)) > FORMAT_VERSION or int(manifest.get("version", -1)) < 1:
        raise StoreError(f"{manifest_path} has format version {manifest.get('version')}; this vlptm reads "
                         f"versions 1..{FORMAT_VERSION}")
    for key in ("feature_dim", "feature_dtype"):
        if key not in manifest:
            raise StoreError(f"{manifest_path} lacks {key!r}")
    return manifest


def read_writer_files(path: PathLike) -> Dict[str, List[ShardInfo]]:
    """Committed shards of every writer of a store, ``{writer name: [ShardInfo, ...]}`` sorted by name."""
    writers_dir = Path(path) / WRITERS_DIR
    out: Dict[str, List[ShardInfo]] = {}
    if not writers_dir.is_dir():
        return out
    for entry in sorted(writers_dir.glob("*.json")):
        if entry.name.startswith(_TMP_PREFIX):
            continue
        data = _read_json(entry)
        try:
            out[entry.stem] = [ShardInfo(str(s["name"]), int(s["num_images"]), int(s["num_regions"]))
                               for s in data["shards"]]
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{entry} is malformed: {err!r}") from err
    return out


# ----------------------------------------------------------------------------------------------------------
# reader


class FeatureStore:
    """Read-only, memory-mapped view of a feature store: ``store[image_id] -> RegionFeatures``.

    Open with :meth:`open`. Lookups go through one sorted array of ids (binary search); the region arrays
    of at most ``max_open_shards`` shards are memory-mapped at a time. A store is picklable (open maps are
    dropped), so it can live in a ``DataLoader`` dataset used by worker processes.

    Attributes:
        path: the store directory.
        manifest: the parsed ``manifest.json``.
        feature_dim: D.
        cls_dim: C of ``cls_probs``, or ``None`` when the store has no class probabilities.
        attr_dim: A of ``attr_probs``, or ``None``.

    Example:
        >>> store = FeatureStore.open("features/coco")          # doctest: +SKIP
        >>> regions = store["000000000009"]                      # doctest: +SKIP
        >>> regions.features.shape, regions.normalized_positions(7).shape  # doctest: +SKIP
        (torch.Size([36, 1280]), torch.Size([36, 7]))
    """

    def __init__(self, path: PathLike, *, max_open_shards: int = 64, as_float32: bool = True) -> None:
        """Prefer :meth:`open`. ``as_float32`` converts fp16 features and soft labels to float32 on read."""
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.feature_dim = int(self.manifest["feature_dim"])
        self.cls_dim: Optional[int] = self.manifest.get("cls_dim")
        self.attr_dim: Optional[int] = self.manifest.get("attr_dim")
        self.as_float32 = bool(as_float32)
        self.max_open_shards = max(1, int(max_open_shards))
        self._open: "OrderedDict[int, Dict[str, _MappedNpy]]" = OrderedDict()
        self._load_index()

    @classmethod
    def open(cls, path: PathLike, *, max_open_shards: int = 64, as_float32: bool = True) -> "FeatureStore":
        """Opens a store directory without reading its region arrays.

        Args:
            path: the store directory (the one holding ``manifest.json``).
            max_open_shards: how many shards' region arrays stay memory-mapped at once.
            as_float32: return ``features``/``cls_probs``/``attr_probs`` as float32 (default) instead of
                the stored dtype (float16).

        Raises:
            StoreError: not a store, or a listed shard is missing or malformed.
        """
        return cls(path, max_open_shards=max_open_shards, as_float32=as_float32)

    # -- index -------------------------------------------------------------------------------------------

    def _load_index(self) -> None:
        shards: List[ShardInfo] = []
        for writer_shards in read_writer_files(self.path).values():
            shards.extend(writer_shards)
        self.shards: List[ShardInfo] = shards
        ids_parts, sizes_parts, start_parts, count_parts, shard_parts = [], [], [], [], []
        for index, info in enumerate(shards):
            shard_dir = self.path / SHARDS_DIR / info.name
            try:
                ids = np.load(shard_dir / "ids.npy", allow_pickle=False)
                sizes = np.load(shard_dir / "image_sizes.npy", allow_pickle=False)
                offsets = np.load(shard_dir / "offsets.npy", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise StoreError(f"shard {info.name} of {self.path} cannot be read: {err}") from err
            if ids.shape != (info.num_images,) or offsets.shape != (info.num_images + 1,) \
                    or sizes.shape != (info.num_images, 2):
                raise StoreError(f"shard {info.name} of {self.path}: index arrays disagree with the writer file "
                                 f"({info.num_images} images)")
            ids_parts.append(ids)
            sizes_parts.append(sizes.astype(np.int32, copy=False))
            start_parts.append(offsets[:-1].astype(np.int64, copy=False))
            count_parts.append(np.diff(offsets).astype(np.int32))
            shard_parts.append(np.full(info.num_images, index, dtype=np.int32))
        if ids_parts:
            width = max(p.dtype.itemsize for p in ids_parts)
            all_ids = np.concatenate([p.astype(f"S{width}") for p in ids_parts])
        else:
            all_ids = np.zeros(0, dtype="S1")
        # commit order is kept for ids(); lookups use the stably sorted copy (first committed copy wins)
        self._order = np.argsort(all_ids, kind="stable").astype(np.int64)
        self._sorted_ids = all_ids[self._order]
        self._ids = all_ids
        self._sizes = np.concatenate(sizes_parts) if sizes_parts else np.zeros((0, 2), np.int32)
        self._starts = np.concatenate(start_parts) if start_parts else np.zeros(0, np.int64)
        self._counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int32)
        self._shard_of = np.concatenate(shard_parts) if shard_parts else np.zeros(0, np.int32)

    def _position(self, image_id: Any) -> int:
        """Index (in commit order) of an image id, or -1."""
        key = str(image_id).encode("utf-8")
        if len(self._sorted_ids) == 0 or len(key) > self._sorted_ids.dtype.itemsize:
            return -1
        i = int(np.searchsorted(self._sorted_ids, key, side="left"))
        if i < len(self._sorted_ids) and self._sorted_ids[i] == key:
            return int(self._order[i])
        return -1

    # -- public API --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stored image entries (duplicates, which check-store reports, count once each)."""
        return int(len(self._ids))

    def __contains__(self, image_id: Any) -> bool:
        return self._position(image_id) >= 0

    def contains_many(self, image_ids: Sequence[Any]) -> np.ndarray:
        """Vectorised ``in``: ``(len(image_ids),)`` bool array."""
        if len(image_ids) == 0 or len(self._sorted_ids) == 0:
            return np.zeros(len(image_ids), dtype=bool)
        keys = np.array([str(i).encode("utf-8") for i in image_ids], dtype=object)
        width = self._sorted_ids.dtype.itemsize
        fits = np.array([len(k) <= width for k in keys], dtype=bool)
        probe = np.array([k if f else b"" for k, f in zip(keys, fits)], dtype=f"S{width}")
        pos = np.searchsorted(self._sorted_ids, probe, side="left")
        pos_clipped = np.minimum(pos, len(self._sorted_ids) - 1)
        return fits & (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_clipped] == probe)

    def ids(self) -> List[str]:
        """All image ids in commit order (writers by name, then shard order)."""
        return [raw.decode("utf-8") for raw in self._ids.tolist()]

    def iter_ids(self) -> Iterator[str]:
        """Like :meth:`ids` without building the list."""
        for raw in self._ids:
            yield bytes(raw).decode("utf-8")

    def num_regions(self, image_id: Any) -> int:
        """N of one image, read from the in-memory index."""
        return int(self._counts[self._require(image_id)])

    def image_size(self, image_id: Any) -> Tuple[int, int]:
        """``(h, w)`` of one image in pixels."""
        h, w = self._sizes[self._require(image_id)]
        return int(h), int(w)

    def duplicate_ids(self) -> List[str]:
        """Ids stored more than once (a healthy store has none); lookups return the first committed copy."""
        if len(self._sorted_ids) < 2:
            return []
        dup = self._sorted_ids[1:] == self._sorted_ids[:-1]
        return sorted({bytes(raw).decode("utf-8") for raw in self._sorted_ids[1:][dup]})

    def get_arrays(self, image_id: Any) -> Dict[str, np.ndarray]:
        """One image's stored arrays as numpy copies, in the stored dtypes.

        Returns:
            ``boxes (N, 4)`` float32 xyxy pixels, ``features (N, D)``, ``scores (N,)`` float32,
            ``image_size (2,)`` int64 ``(h, w)``, and ``cls_probs (N, C)`` / ``attr_probs (N, A)`` when
            the store has them.

        Raises:
            KeyError: the id is not in the store.
        """
        return self._read(self._require(image_id), float32=False)

    def get(self, image_id: Any) -> "RegionFeatures":
        """One image's regions as :class:`~vlptm.structures.RegionFeatures` (CPU tensors).

        Raises:
            KeyError: the id is not in the store.
        """
        from vlptm.structures import RegionFeatures

        # numpy's float16 -> float32 cast (while copying out of the map) is much cheaper than torch's
        return RegionFeatures.from_numpy_dict(self._read(self._require(image_id), float32=self.as_float32))

    def __getitem__(self, image_id: Any) -> "RegionFeatures":
        return self.get(image_id)

    def close(self) -> None:
        """Unmaps every open shard (the store stays usable; shards are remapped on the next read)."""
        self._open.clear()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        ext = self.manifest.get("extractor") or {}
        return (f"FeatureStore({str(self.path)!r}, images={len(self)}, shards={len(self.shards)}, "
                f"D={self.feature_dim}, cls_dim={self.cls_dim}, attr_dim={self.attr_dim}, "
                f"extractor={ext.get('name')!r})")

    # -- internals -----------------------------------------------------------------------------------------

    def _require(self, image_id: Any) -> int:
        pos = self._position(image_id)
        if pos < 0:
            raise KeyError(f"image id {image_id!r} is not in the feature store {self.path}")
        return pos

    def _read(self, pos: int, float32: bool) -> Dict[str, np.ndarray]:
        """Copies one image's rows out of the shard maps (casting soft labels and features if ``float32``)."""
        maps = self._shard_maps(int(self._shard_of[pos]))
        start = int(self._starts[pos])
        stop = start + int(self._counts[pos])
        out = {name: mapped.rows(start, stop, np.float32 if float32 and name in _CASTABLE else None)
               for name, mapped in maps.items()}
        out["image_size"] = self._sizes[pos].astype(np.int64)
        return out

    def _shard_maps(self, shard_index: int) -> Dict[str, "_MappedNpy"]:
        maps = self._open.get(shard_index)
        if maps is not None:
            self._open.move_to_end(shard_index)
            return maps
        info = self.shards[shard_index]
        shard_dir = self.path / SHARDS_DIR / info.name
        names = list(_REGION_ARRAYS) + [n for n in _PROB_ARRAYS if self.manifest.get(_PROB_DIM_KEYS[n])]
        maps = {}
        for name in names:
            try:
                maps[name] = _MappedNpy(shard_dir / f"{name}.npy")
            except (OSError, ValueError) as err:
                raise StoreError(f"shard {info.name} of {self.path}: cannot map {name}.npy: {err}") from err
            if maps[name].shape[:1] != (info.num_regions,):
                raise StoreError(f"shard {info.name} of {self.path}: {name}.npy has shape {maps[name].shape}, "
                                 f"the writer file says {info.num_regions} rows")
        self._open[shard_index] = maps
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)  # dropping the last reference unmaps the file and closes its descriptor
        return maps


_CASTABLE = ("features", "cls_probs", "attr_probs")
_PAGE = mmap.PAGESIZE
_CAN_DROP_PAGES = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")


class _MappedNpy:
    """A read-only memory map of one C-order ``.npy`` file that copies rows out and then drops the pages it
    touched from this process's mappings (``madvise(MADV_DONTNEED)``): they stay in the OS page cache, so
    re-reading is cheap, but a long run of random reads does not inflate the resident set size."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path.name}: expected a C-order array of plain values")
            self.offset = f.tell()
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.row_bytes = int(dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64)))
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.offset + count * dtype.itemsize > len(self._map):
            raise ValueError(f"{path.name} is shorter than its header says ({len(self._map)} bytes)")
        self.array = np.frombuffer(self._map, dtype=dtype, count=count, offset=self.offset).reshape(self.shape)

    def rows(self, start: int, stop: int, cast: Optional[np.dtype] = None) -> np.ndarray:
        """A copy of rows ``start:stop`` (cast while copying when ``cast`` is given)."""
        view = self.array[start:stop]
        out = view.astype(cast) if cast is not None else view.copy()
        if _CAN_DROP_PAGES and stop > start:
            first = self.offset + start * self.row_bytes
            aligned = first - first % _PAGE
            length = self.offset + stop * self.row_bytes - aligned
            try:
                self._map.madvise(mmap.MADV_DONTNEED, aligned, length)
            except (OSError, ValueError):
                pass
        return out


# ----------------------------------------------------------------------------------------------------------
# writer


class FeatureStoreWriter:
    """Appends images to a feature store, one atomically committed shard at a time.

    Create the store (or reopen it to resume) with the extractor's dims; add images with :meth:`add`
    (a :class:`~vlptm.structures.RegionFeatures`) or :meth:`add_arrays` (numpy arrays); call
    :meth:`commit_if_full` after each batch and :meth:`close` (or use ``with``) at the end. Nothing
    added is visible to readers, or survives a crash, before the shard holding it is committed.

    Args:
        path: store directory (created if missing).
        feature_dim: D of the features.
        cls_dim: C of ``cls_probs``, or ``None`` if the extractor gives no class probabilities.
        attr_dim: A of ``attr_probs``, or ``None``.
        extractor_name: recorded in the manifest.
        extractor_config_hash: recorded in the manifest; appending with a different hash raises.
        extractor_config: optional JSON-serialisable config recorded in the manifest.
        feature_dtype: storage dtype of features and soft labels (default float16).
        writer_name: this writer's name (letters, digits, ``_.-``); writers of one store must have distinct
            names when they run at the same time, and a resumed run must reuse its name.
        images_per_shard: :meth:`commit_if_full` commits once this many images are buffered.

    Raises:
        StoreMismatchError: the store exists with other dims, dtype or extractor config hash.
        StoreLockedError: another live process has a writer of the same name open on this store.

    Example:
        >>> with FeatureStoreWriter("features/demo", feature_dim=1280, writer_name="main") as writer:  # doctest: +SKIP
        ...     for image_id, regions in results:
        ...         if not writer.is_committed(image_id):
        ...             writer.add(image_id, regions)
        ...             writer.commit_if_full()
    """

    def __init__(
        self,
        path: PathLike,
        *,
        feature_dim: int,
        cls_dim: Optional[int] = None,
        attr_dim: Optional[int] = None,
        extractor_name: str = "unknown",
        extractor_config_hash: str = "",
        extractor_config: Optional[Mapping[str, Any]] = None,
        feature_dtype: str = "float16",
        writer_name: str = "main",
        images_per_shard: int = 1000,
    ) -> None:
        if not _WRITER_NAME.match(writer_name):
            raise ValueError(f"writer_name {writer_name!r} must match {_WRITER_NAME.pattern}")
        if images_per_shard < 1:
            raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
        self.path = Path(path)
        self.writer_name = writer_name
        self.images_per_shard = int(images_per_shard)
        for sub in ("", WRITERS_DIR, SHARDS_DIR, ERRORS_DIR, LOCKS_DIR):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._lock_file = self._acquire_lock()
        try:
            wanted = _new_manifest(feature_dim=feature_dim, feature_dtype=feature_dtype, cls_dim=cls_dim,
                                   attr_dim=attr_dim, extractor_name=extractor_name,
                                   extractor_config_hash=extractor_config_hash, extractor_config=extractor_config)
            self.manifest = self._create_or_check_manifest(wanted)
            self.feature_dim = int(self.manifest["feature_dim"])
            self.feature_dtype = np.dtype(self.manifest["feature_dtype"])
            self.cls_dim: Optional[int] = self.manifest["cls_dim"]
            self.attr_dim: Optional[int] = self.manifest["attr_dim"]
            self._shards: List[ShardInfo] = read_writer_files(self.path).get(writer_name, [])
            self._recover()
            self._committed = FeatureStore.open(self.path)
            self._new_ids: set = set()  # committed by this writer since open
            self._buffer: List[Tuple[str, Dict[str, np.ndarray]]] = []
            self._buffered_ids: set = set()
            self._next_seq = 1 + max((int(s.name.rsplit("-", 1)[1]) for s in self._shards), default=-1)
            self.images_committed = 0  # by this writer object
        except BaseException:
            self._release_lock()
            raise

    # -- setup -------------------------------------------------------------------------------------------

    def _acquire_lock(self):
        # A POSIX record lock (lockf) belongs to this process: forked DataLoader workers do not inherit it,
        # so a SIGKILLed writer's lock dies with it even while its workers linger. Record locks do not
        # exclude a second writer in the same process, so this process also keeps a set of held names.
        lock_path = self.path / LOCKS_DIR / f"{self.writer_name}.lock"
        key = (str(lock_path.resolve()), os.getpid())
        if key in _HELD_LOCKS:
            raise StoreLockedError(f"this process is already writing to {self.path} as writer "
                                   f"{self.writer_name!r}; close that writer or give this one its own name")
        handle = open(lock_path, "a+")
        self._lock_key = key
        try:
            import fcntl
        except ImportError:  # no record locks on this platform: writer names alone keep writers apart
            _HELD_LOCKS.add(key)
            return handle
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.close()
            raise StoreLockedError(f"another process is writing to {self.path} as writer {self.writer_name!r}; "
                                   "give each concurrent writer its own name") from err
        _HELD_LOCKS.add(key)
        return handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the record lock
            self._lock_file = None
            _HELD_LOCKS.discard(self._lock_key)

    def _create_or_check_manifest(self, wanted: Dict[str, Any]) -> Dict[str, Any]:
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            tmp = self.path / f"{_TMP_PREFIX}{MANIFEST}.{os.getpid()}.{self.writer_name}"
            _write_bytes_durably(tmp, (json.dumps(wanted, indent=1, sort_keys=True) + "\n").encode("utf-8"))
            try:
                os.link(tmp, manifest_path)  # atomic create-if-absent: fails when another writer won the race
                _fsync_dir(self.path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        existing = read_manifest(self.path)
        for key in ("feature_dim", "feature_dtype", "cls_dim", "attr_dim"):
            if existing.get(key) != wanted[key]:
                raise StoreMismatchError(f"{self.path} holds {key}={existing.get(key)!r}, this writer has "
                                         f"{wanted[key]!r}; write to another store")
        old_hash = (existing.get("extractor") or {}).get("config_hash", "")
        new_hash = wanted["extractor"]["config_hash"]
        if old_hash != new_hash:
            raise StoreMismatchError(f"{self.path} was written by extractor config {old_hash!r} "
                                     f"({(existing.get('extractor') or {}).get('name')!r}); this writer has "
                                     f"{new_hash!r}: features of two extractors cannot share a store")
        return existing

    def _recover(self) -> None:
        """Deletes this writer's uncommitted shard directories (a crash between rename and list update)
        and its leftover temporaries."""
        listed = {s.name for s in self._shards}
        shards_dir = self.path / SHARDS_DIR
        for entry in shards_dir.iterdir():
            name = entry.name
            mine_tmp = name.startswith(f"{_TMP_PREFIX}{self.writer_name}-")
            mine_unlisted = re.fullmatch(re.escape(self.writer_name) + r"-\d{6}", name) and name not in listed
            if mine_tmp or mine_unlisted:
                log.warning("feature store %s: discarding uncommitted shard %s", self.path, name)
                shutil.rmtree(entry, ignore_errors=True)
        for entry in (self.path / WRITERS_DIR).glob(f"{_TMP_PREFIX}{self.writer_name}.json.*"):
            entry.unlink(missing_ok=True)

    # -- adding ------------------------------------------------------------------------------------------

    def is_committed(self, image_id: Any) -> bool:
        """Whether an id is already committed (by any writer of the store, including this one)."""
        key = str(image_id)
        return key in self._new_ids or key in self._committed

    def committed_mask(self, image_ids: Sequence[Any]) -> np.ndarray:
        """Vectorised :meth:`is_committed`: ``(len(image_ids),)`` bool array."""
        mask = self._committed.contains_many(image_ids)
        if self._new_ids:
            mask |= np.array([str(i) in self._new_ids for i in image_ids], dtype=bool)
        return mask

    @property
    def num_pending(self) -> int:
        """Images added but not yet committed."""
        return len(self._buffer)

    def add(self, image_id: Any, regions: "RegionFeatures") -> None:
        """Buffers one image's regions (moved to CPU; features and soft labels cast to the store dtype).

        Raises:
            InvalidRegionsError: see :meth:`add_arrays`.
        """
        arrays = regions.to_numpy_dict(feature_dtype=self.feature_dtype)
        self.add_arrays(image_id, boxes=arrays["boxes"], features=arrays["features"], scores=arrays["scores"],
                        image_size=regions.image_size, cls_probs=arrays.get("cls_probs"),
                        attr_probs=arrays.get("attr_probs"))

    def add_arrays(
        self,
        image_id: Any,
        *,
        boxes: np.ndarray,
        features: np.ndarray,
        scores: np.ndarray,
        image_size: Sequence[int],
        cls_probs: Optional[np.ndarray] = None,
        attr_probs: Optional[np.ndarray] = None,
    ) -> None:
        """Buffers one image given as arrays.

        Args:
            image_id: the id (stored as its ``str``).
            boxes: ``(N, 4)`` xyxy pixels.
            features: ``(N, D)``.
            scores: ``(N,)``.
            image_size: ``(h, w)`` in pixels.
            cls_probs: ``(N, C)``, required exactly when the store has ``cls_dim``.
            attr_probs: ``(N, A)``, required exactly when the store has ``attr_dim``.

        Raises:
            InvalidRegionsError: wrong shapes, a missing/unexpected soft-label array, NaN or infinite values,
                a non-positive image size, or an id already added to this writer.
        """
        key = str(image_id)
        if key in self._buffered_ids or key in self._new_ids:
            raise InvalidRegionsError(f"image id {key!r} was already added to this writer")
        boxes = np.asarray(boxes, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float32)
        features = np.asarray(features)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InvalidRegionsError(f"{key}: boxes must be (N, 4), got {boxes.shape}")
        n = boxes.shape[0]
        if features.shape != (n, self.feature_dim):
            raise InvalidRegionsError(f"{key}: features must be (N={n}, D={self.feature_dim}), got {features.shape}")
        if scores.shape != (n,):
            raise InvalidRegionsError(f"{key}: scores must be (N={n},), got {scores.shape}")
        size = tuple(int(v) for v in np.asarray(image_size).reshape(-1).tolist())
        if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
            raise InvalidRegionsError(f"{key}: image_size must be (h, w) > 0, got {image_size!r}")
        # C order throughout: shards are memory-mapped row-major (a Fortran-order input would be saved as one)
        entry = {"boxes": np.ascontiguousarray(boxes), "scores": scores,
                 "features": np.ascontiguousarray(features, dtype=self.feature_dtype),
                 "image_size": np.asarray(size, dtype=np.int32)}
        for name, value in (("cls_probs", cls_probs), ("attr_probs", attr_probs)):
            width = self.manifest[_PROB_DIM_KEYS[name]]
            if width is None and value is not None:
                raise InvalidRegionsError(f"{key}: the store has no {name} ({_PROB_DIM_KEYS[name]}=None)")
            if width is not None:
                if value is None:
                    raise InvalidRegionsError(f"{key}: the store needs {name} of width {width}")
                value = np.asarray(value)
                if value.shape != (n, width):
                    raise InvalidRegionsError(f"{key}: {name} must be (N={n}, {width}), got {value.shape}")
                entry[name] = np.ascontiguousarray(value, dtype=self.feature_dtype)
        for name in ("boxes", "scores", "features", "cls_probs", "attr_probs"):
            if name in entry and not np.isfinite(entry[name]).all():
                raise InvalidRegionsError(f"{key}: {name} has NaN or infinite values (after casting to "
                                          f"{entry[name].dtype})")
        self._buffer.append((key, entry))
        self._buffered_ids.add(key)

    # -- committing ----------------------------------------------------------------------------------------

    def commit_if_full(self) -> bool:
        """Commits the buffer when it holds at least ``images_per_shard`` images; returns whether it did."""
        if len(self._buffer) >= self.images_per_shard:
            self.commit()
            return True
        return False

    def commit(self) -> Optional[str]:
        """Writes the buffered images as one shard and publishes it atomically; returns its name (None if empty)."""
        if not self._buffer:
            return None
        ids = [key for key, _ in self._buffer]
        entries = [entry for _, entry in self._buffer]
        counts = np.array([len(e["boxes"]) for e in entries], dtype=np.int64)
        arrays: Dict[str, np.ndarray] = {
            "ids": _encode_ids(ids),
            "image_sizes": np.stack([e["image_size"] for e in entries]).astype(np.int32),
            "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            "boxes": np.concatenate([e["boxes"] for e in entries]).reshape(-1, 4),
            "scores": np.concatenate([e["scores"] for e in entries]),
            "features": np.concatenate([e["features"] for e in entries]).reshape(-1, self.feature_dim),
        }
        for name in _PROB_ARRAYS:
            width = self.manifest[_PROB_DIM_KEYS[name]]
            if width is not None:
                arrays[name] = np.concatenate([e[name] for e in entries]).reshape(-1, width)

        name = _shard_name(self.writer_name, self._next_seq)
        shards_dir = self.path / SHARDS_DIR
        tmp_dir = shards_dir / f"{_TMP_PREFIX}{name}"
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir()
        for array_name, array in arrays.items():
            _save_npy_durably(tmp_dir / f"{array_name}.npy", array)
        _fsync_dir(tmp_dir)
        final_dir = shards_dir / name
        if final_dir.exists():  # an unlisted leftover (removed by _recover, so only after outside tampering)
            shutil.rmtree(final_dir)
        os.rename(tmp_dir, final_dir)
        _fsync_dir(shards_dir)
        # the shard becomes part of the store here, in one atomic replace of this writer's list
        info = ShardInfo(name, len(ids), int(counts.sum()))
        self._write_shard_list(self._shards + [info])
        self._shards.append(info)
        self._next_seq += 1
        self._new_ids.update(ids)
        self._buffer.clear()
        self._buffered_ids.clear()
        self.images_committed += len(ids)
        return name

    def _write_shard_list(self, shards: List[ShardInfo]) -> None:
        _atomic_write_json(self.path / WRITERS_DIR / f"{self.writer_name}.json", {
            "writer": self.writer_name,
            "shards": [{"name": s.name, "num_images": s.num_images, "num_regions": s.num_regions} for s in shards],
        })

    def log_error(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON line to ``errors/<writer>.jsonl`` (flushed at once)."""
        line = json.dumps(dict(record), sort_keys=True, default=str)
        with open(self.path / ERRORS_DIR / f"{self.writer_name}.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def close(self) -> None:
        """Commits what is buffered and releases the writer's lock."""
        try:
            self.commit()
        finally:
            self._release_lock()

    def abort(self) -> None:
        """Drops the buffer (nothing uncommitted is written) and releases the lock."""
        self._buffer.clear()
        self._buffered_ids.clear()
        self._release_lock()

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_errors(path: PathLike) -> List[Dict[str, Any]]:
    """Every line of every ``errors/*.jsonl`` file of a store (unparseable lines are skipped with a warning)."""
    out: List[Dict[str, Any]] = []
    errors_dir = Path(path) / ERRORS_DIR
    if not errors_dir.is_dir():
        return out
    for entry in sorted(errors_dir.glob("*.jsonl")):
        with open(entry, "r", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s:%d is not JSON; skipped", entry, number)
    return out
