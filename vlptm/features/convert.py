"""Converters from the peers' region-feature files into a :class:`~vlptm.features.FeatureStore`.

Supported formats (``vlptm convert-features --from FORMAT SRC --out STORE``):

``lxmert-tsv``
    LXMERT's tab-separated files (one image per line, no header): ``img_id, img_h, img_w, objects_id,
    objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features``; every array is base64 of raw
    little-endian bytes: ``boxes`` float32 ``(N, 4)`` xyxy pixels, ``features`` float32 ``(N, D)``,
    ``objects_id``/``attrs_id`` int64 ``(N,)``, ``objects_conf``/``attrs_conf`` float32 ``(N,)``. The
    6-column files of the original bottom-up-attention ``generate_tsv.py`` (``image_id, image_w, image_h,
    num_boxes, boxes, features``; note width before height) are recognised by their column count.
``bua-npz``
    One ``.npz`` per image as the PyTorch bottom-up-attention repositories write it: ``x`` ``(N, D)``,
    ``bbox`` ``(N, 4)`` xyxy pixels, ``num_bbox``, ``image_h``, ``image_w`` and a pickled ``info`` dict
    with ``objects_id``, ``objects_conf``, ``attrs_id``, ``attrs_conf``. The image id is the file stem.
    Reading ``info`` needs ``allow_pickle=True``: convert only files you trust.
``uniter-npz``
    One ``.npz`` per image as UNITER's ``convert_imgdir.py`` reads them: ``features`` ``(N, D)``,
    ``norm_bb`` ``(N, 6)`` = ``[x1, y1, x2, y2, w, h]`` divided by the image width/height, ``conf``
    ``(N,)``, ``soft_labels`` ``(N, 1601)`` (column 0 = background). The image id is the file stem.
``uniter-lmdb``
    UNITER's image LMDB (e.g. ``img_db/coco_train2014/feat_th0.2_max100_min10``): key ``<name>.npz``,
    value the dict above packed with ``msgpack`` + ``msgpack_numpy``, or ``np.savez_compressed`` bytes in
    the ``*_compressed`` databases (both are detected per record); the ``__keys__`` record is skipped.
    Needs the ``lmdb`` and ``msgpack`` packages (``pip install vlptm[peers]``), imported lazily.

How the peers' fields map onto :class:`~vlptm.structures.RegionFeatures`:

- ``scores`` = the best class confidence (``objects_conf``; UNITER's ``conf``), float32, exact.
- ``boxes`` stay in pixels (LXMERT, bottom-up-attention). UNITER files hold only normalised boxes: with
  ``image_sizes`` (a JSON ``{id: [h, w]}`` file or a COCO ``instances.json``) they are scaled to pixels;
  without, the image size is recorded as ``(1, 1)`` and the boxes are stored normalised, so
  ``normalized_positions`` still returns UNITER's values exactly.
- ``cls_probs`` = UNITER's ``soft_labels`` (same layout: column 0 background). LXMERT and
  bottom-up-attention files keep only the argmax class/attribute id and its confidence, so by default
  they get no soft labels. With ``num_classes=K`` (1600 for the Visual Genome detector) they get a
  ``(N, K + 1)`` ``cls_probs`` in the same layout (column 0 background, class id ``c`` in column
  ``c + 1``, as the Caffe detector's ``cls_prob`` was laid out before its argmax): ``objects_conf`` in the
  argmax column and the remaining mass ``1 - conf`` spread evenly over the other columns, so the
  confidence survives exactly, rows sum to 1, and the id stays the argmax whenever ``conf > 1 / (K + 1)``
  (always, for the class argmax of a real ``K + 1``-way softmax whose background is not the maximum).
  ``num_attrs`` does the same for attributes (column 0 = "no attribute", as in the detector's
  ``attr_prob``).
- Features (and soft labels) are stored as float16.

Converting is resumable like extraction: ids already committed to the store are skipped, and a record
that cannot be read is logged to the store's errors file and the run goes on.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from vlptm.features.store import FeatureStoreWriter, InvalidRegionsError

__all__ = [
    "FORMATS",
    "ConversionSummary",
    "convert_features",
    "load_image_sizes",
    "read_lxmert_tsv",
    "read_bua_npz",
    "read_uniter_npz",
    "read_uniter_lmdb",
]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

LXMERT_TSV_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                     "num_boxes", "boxes", "features")
BUTD_TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


@dataclass
class ConversionSummary:
    """Counts of one conversion run."""

    converted: int = 0  # images written by this run
    skipped: int = 0  # already in the store
    failed: int = 0  # unreadable records (listed in the store's errors file)
    seconds: float = 0.0


class _RecordError(Exception):
    """One source record cannot be converted; ``image_id`` may be a file name."""

    def __init__(self, image_id: str, reason: str) -> None:
        super().__init__(f"{image_id}: {reason}")
        self.image_id = image_id
        self.reason = reason


# A reader yields (image_id, arrays) or a _RecordError for a record it could not read.
_Record = Union[Tuple[str, Dict[str, Any]], _RecordError]


# ----------------------------------------------------------------------------------------------------------
# soft labels from argmax ids


def _peaked_probs(ids: np.ndarray, confs: np.ndarray, num_labels: int, what: str) -> np.ndarray:
    """``(N, num_labels + 1)`` rows with ``conf`` at column ``id + 1`` and ``1 - conf`` spread over the rest."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    confs = np.asarray(confs, dtype=np.float64).reshape(-1)
    if ids.shape != confs.shape:
        raise ValueError(f"{what} ids and confidences differ in length ({ids.shape[0]} vs {confs.shape[0]})")
    if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
        raise ValueError(f"{what} id {int(ids.max()) if ids.max() >= num_labels else int(ids.min())} outside "
                         f"[0, {num_labels}) (set the number of {what} labels to match the detector)")
    if ((confs < 0) | (confs > 1)).any():
        raise ValueError(f"{what} confidences must lie in [0, 1]")
    width = num_labels + 1
    rest = (1.0 - confs) / (width - 1)  # (N,)
    probs = np.repeat(rest[:, None], width, axis=1)  # (N, K + 1)
    probs[np.arange(ids.size), ids + 1] = confs
    return probs.astype(np.float32)


def _label_arrays(arrays: Dict[str, Any], num_classes: Optional[int], num_attrs: Optional[int]) -> Dict[str, Any]:
    out = {}
    if num_classes:
        out["cls_probs"] = _peaked_probs(arrays["objects_id"], arrays["objects_conf"], num_classes, "class")
    if num_attrs:
        if "attrs_id" not in arrays or "attrs_conf" not in arrays:
            raise ValueError("the record has no attrs_id/attrs_conf (convert with num_attrs=None)")
        out["attr_probs"] = _peaked_probs(arrays["attrs_id"], arrays["attrs_conf"], num_attrs, "attribute")
    return out


# ----------------------------------------------------------------------------------------------------------
# readers: each yields (image_id, {boxes, features, scores, image_size, [cls_probs], [attr_probs]})


def read_lxmert_tsv(path: PathLike, num_classes: Optional[int] = None,
                    num_attrs: Optional[int] = None) -> Iterator[_Record]:
    """Reads an LXMERT (10 columns) or bottom-up-attention (6 columns) base64 TSV file, one image a line."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    with open(path, "r", encoding="utf-8", newline="") as f:
        for line_number, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row:
                continue
            label = f"{Path(path).name}:{line_number}"
            try:
                if len(row) == len(LXMERT_TSV_FIELDS):
                    item = dict(zip(LXMERT_TSV_FIELDS, row))
                    image_id, h, w = item["img_id"], int(item["img_h"]), int(item["img_w"])
                elif len(row) == len(BUTD_TSV_FIELDS):
                    item = dict(zip(BUTD_TSV_FIELDS, row))
                    image_id, h, w = item["image_id"], int(item["image_h"]), int(item["image_w"])
                else:
                    raise ValueError(f"{len(row)} columns; expected {len(LXMERT_TSV_FIELDS)} (LXMERT) or "
                                     f"{len(BUTD_TSV_FIELDS)} (bottom-up-attention)")
                label = image_id
                n = int(item["num_boxes"])
                decoded: Dict[str, Any] = {
                    "boxes": _b64_array(item["boxes"], np.float32, (n, 4), "boxes"),
                    "features": _b64_array(item["features"], np.float32, (n, -1), "features"),
                }
                if "objects_id" in item:
                    for key, dtype in (("objects_id", np.int64), ("objects_conf", np.float32),
                                       ("attrs_id", np.int64), ("attrs_conf", np.float32)):
                        decoded[key] = _b64_array(item[key], dtype, (n,), key)
                    scores = decoded["objects_conf"]
                elif num_classes or num_attrs:
                    raise ValueError("a 6-column file has no class/attribute ids for soft labels")
                else:
                    scores = np.ones(n, dtype=np.float32)  # this format keeps no confidences
                arrays = {"boxes": decoded["boxes"], "features": decoded["features"], "scores": scores,
                          "image_size": (h, w)}
                arrays.update(_label_arrays(decoded, num_classes, num_attrs))
            except (ValueError, KeyError, TypeError) as err:
                yield _RecordError(label, f"{type(err).__name__}: {err}")
                continue
            yield image_id, arrays


def _b64_array(text: str, dtype, shape: Tuple[int, ...], name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} is not base64: {err}") from err
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    try:
        return array.reshape(shape).astype(dtype)
    except ValueError as err:
        raise ValueError(f"{name} has {array.size} values, which do not fit shape {shape}") from err


def _npz_files(src: PathLike) -> List[Path]:
    src = Path(src)
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is neither a .npz file nor a folder")
    return sorted(p for p in src.rglob("*.npz") if p.is_file())


def read_bua_npz(src: PathLike, num_classes: Optional[int] = None,
                 num_attrs: Optional[int] = None) -> Iterator[_Record]:
    """Reads bottom-up-attention ``.npz`` files (a folder, searched recursively, or one file)."""
    for file in _npz_files(src):
        image_id = file.stem
        try:
            with np.load(file, allow_pickle=True) as data:  # ``info`` is a pickled dict
                features = np.asarray(data["x"], dtype=np.float32)
                boxes = np.asarray(data["bbox"], dtype=np.float32).reshape(-1, 4)
                n = int(data["num_bbox"]) if "num_bbox" in data.files else len(boxes)
                h, w = int(data["image_h"]), int(data["image_w"])
                info = data["info"].item() if "info" in data.files else {}
            if not isinstance(info, dict):
                raise ValueError(f"info is a {type(info).__name__}, expected a dict")
            if features.ndim != 2 or len(features) != n or len(boxes) != n:
                raise ValueError(f"x {features.shape} / bbox {boxes.shape} disagree with num_bbox={n}")
            if "objects_conf" not in info:
                raise ValueError("info lacks objects_conf (the detection confidences)")
            labels = {k: np.asarray(info[k]) for k in ("objects_id", "objects_conf", "attrs_id", "attrs_conf")
                      if k in info}
            arrays = {"boxes": boxes, "features": features, "image_size": (h, w),
                      "scores": np.asarray(labels["objects_conf"], dtype=np.float32).reshape(-1)}
            arrays.update(_label_arrays(labels, num_classes, num_attrs))
        except Exception as err:  # noqa: BLE001 - a broken file (zip, pickle, shapes) must not stop the run
            yield _RecordError(image_id, f"{type(err).__name__}: {err}")
            continue
        yield image_id, arrays


def _uniter_arrays(image_id: str, dump: Mapping[str, Any],
                   image_sizes: Optional[Mapping[str, Tuple[int, int]]]) -> Dict[str, Any]:
    missing = [k for k in ("features", "norm_bb", "conf") if k not in dump]
    if missing:
        raise ValueError(f"missing keys {missing} (has {sorted(dump)})")
    features = np.asarray(dump["features"])
    norm_bb = np.asarray(dump["norm_bb"], dtype=np.float32)
    conf = np.asarray(dump["conf"], dtype=np.float32).reshape(-1)
    n = len(features)
    if features.ndim != 2 or norm_bb.ndim != 2 or norm_bb.shape[0] != n or norm_bb.shape[1] < 4 or len(conf) != n:
        raise ValueError(f"features {features.shape}, norm_bb {norm_bb.shape}, conf {conf.shape} disagree")
    size = _lookup_size(image_sizes, image_id) if image_sizes is not None else None
    if image_sizes is not None and size is None:
        raise ValueError("no image size for this id in the image-sizes file")
    if size is None:
        size = (1, 1)  # unknown size: boxes stay normalised (see the module docstring)
    h, w = size
    boxes = norm_bb[:, :4] * np.array([w, h, w, h], dtype=np.float32)  # (N, 4)
    arrays = {"boxes": boxes, "features": features, "scores": conf, "image_size": (h, w)}
    if "soft_labels" in dump:
        arrays["cls_probs"] = np.asarray(dump["soft_labels"])
    return arrays


def read_uniter_npz(src: PathLike, image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
                    with_soft_labels: bool = True) -> Iterator[_Record]:
    """Reads UNITER-style per-image ``.npz`` files (a folder, searched recursively, or one file)."""
    for file in _npz_files(src):
        image_id = file.stem
        try:
            with np.load(file, allow_pickle=False) as data:
                dump = {key: data[key] for key in data.files}
            arrays = _uniter_arrays(image_id, dump, image_sizes)
            if not with_soft_labels:
                arrays.pop("cls_probs", None)
        except Exception as err:  # noqa: BLE001 - a broken file must not stop the run
            yield _RecordError(image_id, f"{type(err).__name__}: {err}")
            continue
        yield image_id, arrays


def read_uniter_lmdb(src: PathLike, image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
                     with_soft_labels: bool = True) -> Iterator[_Record]:
    """Reads a UNITER image LMDB (msgpack-numpy or compressed-npz values), in key order."""
    try:
        import lmdb
    except ImportError as err:
        raise ImportError("reading UNITER LMDB needs the 'lmdb' package: pip install 'vlptm[peers]'") from err
    env = lmdb.open(str(src), readonly=True, create=False, lock=False, readahead=False, subdir=Path(src).is_dir())
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                name = key.decode("utf-8", "replace")
                if name == "__keys__":
                    continue
                image_id = name[:-4] if name.endswith(".npz") else name
                try:
                    arrays = _uniter_arrays(image_id, _decode_uniter_value(value), image_sizes)
                    if not with_soft_labels:
                        arrays.pop("cls_probs", None)
                except Exception as err:  # noqa: BLE001 - a broken record must not stop the run
                    yield _RecordError(image_id, f"{type(err).__name__}: {err}")
                    continue
                yield image_id, arrays
    finally:
        env.close()


def _decode_uniter_value(value: bytes) -> Dict[str, Any]:
    if value[:2] == b"PK":  # np.savez(_compressed) bytes: the *_compressed databases
        with np.load(io.BytesIO(value), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    try:
        import msgpack
    except ImportError as err:
        raise ImportError("reading msgpack UNITER LMDB values needs 'msgpack': pip install 'vlptm[peers]'") from err
    dump = msgpack.unpackb(value, raw=False, object_hook=_msgpack_numpy_hook, strict_map_key=False)
    if not isinstance(dump, dict):
        raise ValueError(f"value is a msgpack {type(dump).__name__}, expected a map")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in dump.items()}


def _msgpack_numpy_hook(obj: Dict[Any, Any]) -> Any:
    """Decodes the maps ``msgpack_numpy`` encodes arrays as (``nd``, ``type``, ``kind``, ``shape``, ``data``)."""
    def get(name: str) -> Any:
        return obj.get(name.encode(), obj.get(name))

    nd = get("nd")
    if nd is None or get("data") is None or get("type") is None:
        return obj
    descr = get("type")
    dtype = np.dtype([tuple(field) for field in descr]) if isinstance(descr, (list, tuple)) else np.dtype(descr)
    if nd is True:
        return np.frombuffer(get("data"), dtype=dtype).reshape(get("shape"))
    return np.frombuffer(get("data"), dtype=dtype)[0]  # a numpy scalar


def load_image_sizes(path: PathLike) -> Dict[str, Tuple[int, int]]:
    """Image sizes ``{id: (h, w)}`` from JSON: ``{id: [h, w]}``, ``{id: {"height", "width"}}`` or COCO
    ``instances.json`` (keyed by image id, file name and file stem, each also lower-cased)."""
    with open(path, "r", encoding="utf-8") as f:
        data = json.load(f)
    sizes: Dict[str, Tuple[int, int]] = {}
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for image in data["images"]:
            size = (int(image["height"]), int(image["width"]))
            keys = [str(image["id"])]
            if "file_name" in image:
                keys += [image["file_name"], Path(image["file_name"]).stem]
            for key in keys:
                sizes[key] = size
                sizes[key.lower()] = size
        return sizes
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of image sizes")
    for key, value in data.items():
        if isinstance(value, dict):
            sizes[str(key)] = (int(value["height"]), int(value["width"]))
        else:
            h, w = value
            sizes[str(key)] = (int(h), int(w))
    return sizes


def _lookup_size(sizes: Mapping[str, Tuple[int, int]], image_id: str) -> Optional[Tuple[int, int]]:
    return sizes.get(image_id) or sizes.get(image_id.lower())


# ----------------------------------------------------------------------------------------------------------
# driver

FORMATS: Dict[str, Callable[..., Iterator[_Record]]] = {
    "lxmert-tsv": read_lxmert_tsv,
    "bua-npz": read_bua_npz,
    "uniter-npz": read_uniter_npz,
    "uniter-lmdb": read_uniter_lmdb,
}


def convert_features(
    fmt: str,
    src: PathLike,
    out: PathLike,
    *,
    num_classes: Optional[int] = None,
    num_attrs: Optional[int] = None,
    image_sizes: Optional[PathLike] = None,
    with_soft_labels: bool = True,
    writer_name: str = "convert",
    images_per_shard: int = 1000,
    progress: bool = False,
) -> ConversionSummary:
    """Converts a peer's feature files into a feature store (created, or appended to and resumed).

    Args:
        fmt: one of ``lxmert-tsv``, ``bua-npz``, ``uniter-npz``, ``uniter-lmdb``.
        src: the TSV file, the folder of ``.npz`` files, or the LMDB directory.
        out: the store directory.
        num_classes: LXMERT/bottom-up-attention only: object classes of the detector (1600 for Visual
            Genome) to build ``cls_probs`` from the argmax ids; ``None`` stores none.
        num_attrs: likewise for attributes (400 for Visual Genome).
        image_sizes: UNITER only: JSON of image sizes (see :func:`load_image_sizes`) to store pixel boxes.
        with_soft_labels: UNITER only: keep ``soft_labels`` as ``cls_probs``.
        writer_name: the store writer's name (rerun with the same name to resume).
        images_per_shard: images per committed shard.
        progress: show a tqdm progress bar.

    Returns:
        Counts of converted, skipped (already stored) and failed records.

    Raises:
        ValueError: unknown format or options that do not apply to it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    uniter = fmt.startswith("uniter")
    if uniter and (num_classes or num_attrs):
        raise ValueError("num_classes/num_attrs apply to lxmert-tsv and bua-npz (UNITER files carry soft_labels)")
    if not uniter and image_sizes is not None:
        raise ValueError("image_sizes applies to uniter-npz/uniter-lmdb (the other formats carry image sizes)")
    if uniter:
        sizes = load_image_sizes(image_sizes) if image_sizes is not None else None
        records = FORMATS[fmt](src, image_sizes=sizes, with_soft_labels=with_soft_labels)
    else:
        records = FORMATS[fmt](src, num_classes=num_classes, num_attrs=num_attrs)
    options = {"format": fmt, "num_classes": num_classes, "num_attrs": num_attrs,
               "pixel_boxes": (not uniter) or image_sizes is not None, "soft_labels": with_soft_labels}

    summary = ConversionSummary()
    start = time.perf_counter()
    writer: Optional[FeatureStoreWriter] = None
    bar = _progress_bar(progress, fmt)
    pending_errors: List[_RecordError] = []
    try:
        for record in records:
            bar.update(1)
            if isinstance(record, _RecordError):
                summary.failed += 1
                if writer is None:
                    pending_errors.append(record)
                else:
                    _log_failure(writer, record, src)
                continue
            image_id, arrays = record
            if writer is None:
                writer = _open_writer(out, arrays, options, writer_name, images_per_shard)
                for failure in pending_errors:
                    _log_failure(writer, failure, src)
            if writer.is_committed(image_id):
                summary.skipped += 1
                continue
            try:
                writer.add_arrays(image_id, **arrays)
            except InvalidRegionsError as err:
                summary.failed += 1
                _log_failure(writer, _RecordError(image_id, str(err)), src)
                continue
            summary.converted += 1
            writer.commit_if_full()
        if writer is not None:
            writer.close()
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    if pending_errors and summary.converted == 0 and summary.skipped == 0:
        for failure in pending_errors:
            log.error("could not convert %s: %s", failure.image_id, failure.reason)
    summary.seconds = time.perf_counter() - start
    return summary


def _open_writer(out: PathLike, first: Dict[str, Any], options: Dict[str, Any], writer_name: str,
                 images_per_shard: int) -> FeatureStoreWriter:
    cls_dim = first["cls_probs"].shape[1] if "cls_probs" in first else None
    attr_dim = first["attr_probs"].shape[1] if "attr_probs" in first else None
    config = dict(options, feature_dim=int(first["features"].shape[1]), cls_dim=cls_dim, attr_dim=attr_dim)
    config_hash = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return FeatureStoreWriter(out, feature_dim=int(first["features"].shape[1]), cls_dim=cls_dim, attr_dim=attr_dim,
                              extractor_name=f"converted:{options['format']}", extractor_config_hash=config_hash,
                              extractor_config=config, writer_name=writer_name, images_per_shard=images_per_shard)


def _log_failure(writer: FeatureStoreWriter, failure: _RecordError, src: PathLike) -> None:
    log.warning("skipping %s: %s", failure.image_id, failure.reason)
    writer.log_error({"image_id": failure.image_id, "source": str(src), "stage": "convert",
                      "reason": failure.reason, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _progress_bar(enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)

