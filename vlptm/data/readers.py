"""Readers for the caption, VQA and detection annotation formats users have, into uniform records.

Every reader takes the annotation file and an image root (image paths are resolved against it; when it is
``None`` each format looks in the places ``datasets/README.md`` lists) and returns a :class:`RecordSet`:
a sequence of one record type plus what was skipped and, for detection, the category lists.

=====================  ====================================================  ========================
format name            file                                                  records
=====================  ====================================================  ========================
``coco_captions``      ``captions_train2017.json``                           :class:`CaptionRecord`
``coco_instances``     ``instances_train2017.json`` (and generated scenes)   :class:`DetectionRecord`
``karpathy``           ``dataset_coco.json`` / ``dataset_flickr30k.json``    :class:`CaptionRecord`
``flickr_token``       ``Flickr8k.token.txt`` / ``results_20130124.token``   :class:`CaptionRecord`
``flickr30k_csv``      ``results.csv`` (``image_name| comment_number| ...``) :class:`CaptionRecord`
``vqa2_questions``     ``v2_OpenEnded_mscoco_*_questions.json``              :class:`QuestionRecord`
``vqa2_annotations``   ``v2_mscoco_*_annotations.json``                      :class:`QuestionRecord`
``daquar``             ``qa.894.raw.train.txt``                              :class:`QuestionRecord`
``simple_captions``    ``captions.json`` (``../shared/data``, generated)     :class:`CaptionRecord`
``simple_vqa``         ``vqa.json`` (``../shared/data``, generated)          :class:`QuestionRecord`
=====================  ====================================================  ========================

A :class:`RecordSet`'s ``format`` is the name above, except that both VQA v2 files give ``"vqa2"``.

Malformed entries (missing keys, empty captions, boxes with width or height <= 0, unknown categories) are
logged (the first few of each kind at WARNING) and skipped; ``RecordSet.skipped`` counts them by reason.
A file that is not the format asked for raises :class:`DatasetFormatError`.

Example:
    >>> records = read_records("datasets/coco/annotations/captions_train2017.json")
    >>> records.format, len(records), records[0].captions[0]
    ('coco_captions', 118287, 'A woman wearing a net on her head cutting a cake.')
"""
from __future__ import annotations

import glob
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
SplitFilter = Union[str, Sequence[str], None]

# How many skipped entries of each reason are logged at WARNING before the rest go to DEBUG.
_WARN_PER_REASON = 5


class DatasetFormatError(ValueError):
    """An annotation file that is not (or not valid) in the format it was read as."""


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


@dataclass
class CaptionRecord:
    """One image and its captions.

    Attributes:
        image_id: The data set's image id as a string (COCO id, Flickr file stem, ...).
        path: The image file (image root joined with the file name); it may not exist.
        captions: Non-empty captions in file order, with runs of whitespace collapsed to one space.
        split: ``"train"``, ``"val"``, ``"test"``, ``"restval"``, ``"train2017"``, ... or ``None`` if unknown.
        meta: Extra per-image keys the file carried (e.g. ``width``, ``height``, ``license``).
    """

    image_id: str
    path: Path
    captions: list[str]
    split: Optional[str] = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuestionRecord:
    """One question about one image, with its answers.

    Two answer conventions, told apart by ``multi_label``:

    - ``multi_label=False`` (VQA v2): ``answers`` holds every annotator answer in file order (10 for
      VQA v2; empty for the unannotated test split) and ``answer_counts`` how often each was given, which
      the VQA soft score ``min(1, count / 3)`` is computed from.
    - ``multi_label=True`` (DAQUAR, ``vqa.json`` without counts): ``answers`` is a set of gold answers,
      any one of which is correct; ``answer_counts`` gives each a count of 1.

    Answers are kept as written (the VQA evaluation's normalisation belongs to the VQA task).

    Attributes:
        question_id: The data set's question id, or the question's position in the file when it has none.
        image_id: The image's id as a string.
        path: The image file.
        question: The question text.
        answers: See above.
        answer_counts: See above.
        split: The split, or ``None`` if unknown.
        question_type: VQA v2's ``question_type`` (e.g. ``"what color is the"``) or the file's own label.
        answer_type: ``"yes/no"``, ``"number"``, ``"other"`` where the file says.
        multi_label: See above.
        meta: Extra keys the file carried.
    """

    question_id: str
    image_id: str
    path: Path
    question: str
    answers: list[str]
    answer_counts: dict[str, int]
    split: Optional[str] = None
    question_type: Optional[str] = None
    answer_type: Optional[str] = None
    multi_label: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def top_answer(self) -> Optional[str]:
        """The most frequent answer (first in file order on ties), or ``None`` without answers."""
        if not self.answer_counts:
            return None
        return max(self.answer_counts, key=self.answer_counts.__getitem__)


@dataclass
class DetectionRecord:
    """One image and its annotated boxes (parallel lists, one entry per box).

    Attributes:
        image_id: The image's id as a string.
        path: The image file.
        width: Image width in pixels, from the annotation file.
        height: Image height in pixels, from the annotation file.
        boxes_xyxy: ``[x1, y1, x2, y2]`` in pixels (COCO's ``[x, y, w, h]`` converted), as stored: not clipped.
        category_ids: The data set's category id of each box (ids into ``RecordSet.categories``).
        attribute_ids: Attribute ids of each box (ids into ``RecordSet.attribute_categories``); an empty
            list per box when the file has no attributes.
        iscrowd: COCO's crowd flag of each box.
        split: The image's ``split`` key where the file has one.
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes_xyxy: list[list[float]]
    category_ids: list[int]
    attribute_ids: list[list[int]]
    iscrowd: list[bool]
    split: Optional[str] = None


Record = Union[CaptionRecord, QuestionRecord, DetectionRecord]


@dataclass(frozen=True)
class Category:
    """A detection category or attribute: ``id``, ``name`` and its group (COCO ``supercategory``, or an
    attribute's ``type`` such as ``"color"``)."""

    id: int
    name: str
    supercategory: Optional[str] = None


@dataclass
class RecordSet(Sequence):
    """What a reader returns: the records of one file, in file order, and what was skipped.

    Attributes:
        format: The format name (see the module table).
        source: The annotation file read.
        image_root: The folder image paths were resolved against.
        records: The records.
        skipped: Count of skipped entries by reason (``"missing_key"``, ``"empty_caption"``, ``"bad_box"``, ...).
        categories: Detection categories (empty for caption and VQA formats).
        attribute_categories: Detection attributes (empty when the file has none).
    """

    format: str
    source: Path
    image_root: Path
    records: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    categories: list[Category] = field(default_factory=list)
    attribute_categories: list[Category] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def image_paths(self) -> list[Path]:
        """Distinct image paths in first-seen order."""
        return list(dict.fromkeys(record.path for record in self.records))


# --------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------


class _Skips:
    """Counts skipped entries by reason, logging the first few of each reason at WARNING."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.counts: Counter = Counter()

    def __call__(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        level = logging.WARNING if self.counts[reason] <= _WARN_PER_REASON else logging.DEBUG
        logger.log(level, "%s: skipping %s (%s)", self.source.name, where, reason)

    def report(self) -> Counter:
        if self.counts:
            total = sum(self.counts.values())
            logger.warning("%s: skipped %d entries: %s", self.source, total, dict(self.counts))
        return self.counts


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path} is not UTF-8 text: {err}") from err


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path} is not UTF-8 text: {err}") from err


def _check_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if path.is_dir():
        raise DatasetFormatError(f"{path} is a directory; give the annotation file inside it")
    return path


def _image_root(image_root: Optional[PathLike], candidates: Iterable[Path]) -> Path:
    """The given root, else the first existing candidate, else the first candidate (the documented place)."""
    if image_root is not None:
        return Path(image_root)
    candidates = list(candidates)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def _split_matcher(split: SplitFilter) -> Callable[[Optional[str]], bool]:
    if split is None:
        return lambda _: True
    wanted = {split} if isinstance(split, str) else set(split)
    return lambda value: value in wanted


def _clean_text(value: Any) -> Optional[str]:
    """A stripped non-empty string, or None."""
    if not isinstance(value, str):
        return None
    value = " ".join(value.split())
    return value or None


def _clean_captions(values: Iterable[Any], skip: _Skips, where: str) -> list[str]:
    captions = []
    for value in values:
        text = _clean_text(value)
        if text is None:
            skip("empty_caption", where)
        else:
            captions.append(text)
    return captions


def _id_string(value: Any) -> Optional[str]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, str)) and str(value).strip():
        return str(value).strip()
    return None


def _positive_int(value: Any) -> Optional[int]:
    """A positive whole number (``640`` or ``640.0``; not ``True``) as int, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value <= 0:
        return None
    return int(value)


def _is_key(value: Any) -> bool:
    """An id usable as a dict key: an int or a string (not a bool, list or dict)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _optional_str(value: Any) -> Optional[str]:
    """A split or type label: strings and numbers as strings, anything else (None, lists, ...) as None."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _split_from_name(path: Path, pattern: str) -> Optional[str]:
    match = re.search(pattern, path.name)
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------------------------
# COCO captions and instances
# --------------------------------------------------------------------------------------------------------


def _coco_image_root(path: Path, subset: Optional[str]) -> list[Path]:
    candidates = [path.parent / "images"]
    if subset:  # datasets/coco/annotations/captions_train2017.json -> datasets/coco/train2017/
        candidates = [path.parent.parent / subset, path.parent / subset] + candidates
    return candidates + [path.parent]


def _coco_images(data: dict, path: Path, skip: _Skips) -> dict[Any, dict]:
    images = {}
    for i, image in enumerate(data.get("images") or []):
        valid = isinstance(image, dict) and _id_string(image.get("id")) is not None
        if not valid or not _clean_text(image.get("file_name")):
            skip("bad_image_entry", f"images[{i}]")
            continue
        images[image["id"]] = image
    return images


def read_coco_captions(path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None) -> RecordSet:
    """Reads a COCO captions JSON (``captions_train2017.json``) into one record per captioned image.

    Args:
        path: The JSON file: ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
            "caption"}, ...]}``.
        image_root: Folder holding the ``file_name``\\ s; by default ``../train2017`` (the subset in the
            file name) next to the ``annotations/`` folder, else ``images/`` beside the file.
        split: Keep only these splits. The split is the image's ``split`` key where present, else the
            subset in the file name (``"train2017"``).

    Returns:
        :class:`CaptionRecord` per image with at least one non-empty caption, in ``images`` order.

    Raises:
        DatasetFormatError: If the file is not COCO captions JSON.
    """
    path = _check_file(path)
    return _coco_captions_from(_load_json(path), path, image_root, split)


def _coco_captions_from(data: Any, path: Path, image_root: Optional[PathLike], split: SplitFilter) -> RecordSet:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise DatasetFormatError(
            f"{path} is not COCO captions JSON: expected an object with 'images' and 'annotations'"
        )
    if data["annotations"] and not any(isinstance(a, dict) and "caption" in a for a in data["annotations"][:50]):
        raise DatasetFormatError(f"{path} is not COCO captions JSON: its annotations have no 'caption' (instances?)")
    subset = _split_from_name(path, r"captions_(\w+?)\.json$")
    root = _image_root(image_root, _coco_image_root(path, subset))
    skip = _Skips(path)
    images = _coco_images(data, path, skip)
    captions: dict[Any, list[str]] = {image_id: [] for image_id in images}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            skip("missing_key", where)
        elif not _is_key(ann["image_id"]) or ann["image_id"] not in images:
            skip("unknown_image", where)
        else:
            captions[ann["image_id"]].extend(_clean_captions([ann["caption"]], skip, where))
    keep = _split_matcher(split)
    records = []
    for image_id, image in images.items():
        image_split = _optional_str(image.get("split", subset))
        if not keep(image_split):
            continue
        if not captions[image_id]:
            skip("no_captions", f"image {image_id}")
            continue
        meta = {k: image[k] for k in ("width", "height", "license") if k in image}
        records.append(CaptionRecord(str(image_id), root / image["file_name"], captions[image_id], image_split, meta))
    return RecordSet("coco_captions", path, root, records, skip.report())


def read_coco_instances(path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None) -> RecordSet:
    """Reads a COCO detection JSON (``instances_train2017.json``, or a generated scene world's).

    Boxes are converted from COCO's ``[x, y, w, h]`` to ``[x1, y1, x2, y2]`` pixels. Besides the standard
    keys it reads the optional top-level ``attribute_categories`` list (``[{"id", "name", "type"}]``) and a
    per-annotation ``attribute_ids`` list, which the generated scene world (and Visual Genome converted to
    COCO form) carry. Images without annotations are kept with empty lists.

    Args:
        path: The JSON file: ``{"images", "annotations": [{"image_id", "bbox", "category_id", "iscrowd"}],
            "categories"}``.
        image_root: Folder of the images; by default ``../train2017`` next to ``annotations/``, else
            ``images/`` beside the file.
        split: Keep only images whose ``split`` key (or the subset in the file name) is one of these.

    Returns:
        :class:`DetectionRecord` per image in ``images`` order, with ``categories`` and
        ``attribute_categories`` filled.

    Raises:
        DatasetFormatError: If the file is not COCO detection JSON.
    """
    path = _check_file(path)
    return _coco_instances_from(_load_json(path), path, image_root, split)


def _categories(entries: Any, path: Path, key: str) -> list[Category]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DatasetFormatError(f"{path}: '{key}' must be a list")
    categories = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("name"), str)):
            raise DatasetFormatError(f"{path}: {key}[{i}] needs an integer 'id' and a string 'name'")
        categories.append(Category(entry["id"], entry["name"], entry.get("supercategory", entry.get("type"))))
    return categories


def _box_xyxy(bbox: Any) -> Optional[list[float]]:
    """[x, y, w, h] -> [x1, y1, x2, y2], or None if it is not four finite numbers with w, h > 0."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None
    return [x, y, x + w, y + h]


def _coco_instances_from(data: Any, path: Path, image_root: Optional[PathLike], split: SplitFilter) -> RecordSet:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or "categories" not in data:
        raise DatasetFormatError(
            f"{path} is not COCO detection JSON: expected an object with 'images', 'annotations' and 'categories'"
        )
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise DatasetFormatError(f"{path}: 'annotations' must be a list")
    categories = _categories(data["categories"], path, "categories")
    attributes = _categories(data.get("attribute_categories"), path, "attribute_categories")
    category_ids = {c.id for c in categories}
    attribute_ids = {a.id for a in attributes}
    subset = _split_from_name(path, r"instances_(\w+?)\.json$")
    root = _image_root(image_root, _coco_image_root(path, subset))
    skip = _Skips(path)
    images = _coco_images(data, path, skip)
    keep = _split_matcher(split)
    records: dict[Any, DetectionRecord] = {}
    for image_id, image in images.items():
        width, height = _positive_int(image.get("width")), _positive_int(image.get("height"))
        if width is None or height is None:
            skip("bad_image_size", f"image {image_id}")
            continue
        image_split = _optional_str(image.get("split", subset))
        if keep(image_split):
            records[image_id] = DetectionRecord(
                str(image_id), root / image["file_name"], width, height, [], [], [], [], image_split
            )
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or not {"image_id", "bbox", "category_id"} <= ann.keys():
            skip("missing_key", where)
            continue
        if not _is_key(ann["image_id"]) or ann["image_id"] not in images:
            skip("unknown_image", where)
            continue
        record = records.get(ann["image_id"])
        if record is None:  # image filtered out by split, or skipped above
            continue
        box = _box_xyxy(ann["bbox"])
        if box is None:
            skip("bad_box", where)
            continue
        if not _is_key(ann["category_id"]) or ann["category_id"] not in category_ids:
            skip("unknown_category", where)
            continue
        attrs = ann.get("attribute_ids") or []
        if not isinstance(attrs, list) or any(not _is_key(a) or a not in attribute_ids for a in attrs):
            skip("unknown_attribute", where)
            continue
        record.boxes_xyxy.append(box)
        record.category_ids.append(int(ann["category_id"]))
        record.attribute_ids.append([int(a) for a in attrs])
        record.iscrowd.append(bool(ann.get("iscrowd", 0)))
    return RecordSet("coco_instances", path, root, list(records.values()), skip.report(), categories, attributes)


# --------------------------------------------------------------------------------------------------------
# Karpathy splits
# --------------------------------------------------------------------------------------------------------


def read_karpathy(
    path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None, merge_restval: bool = False
) -> RecordSet:
    """Reads a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``, ``dataset_flickr8k.json``).

    Args:
        path: The JSON file: ``{"dataset": "coco", "images": [{"filepath"?, "filename", "split",
            "sentences": [{"raw", "tokens"}], "cocoid"?}]}``.
        image_root: Folder the ``filepath/filename`` are relative to; by default ``../coco`` (COCO, whose
            ``filepath`` is ``train2014``/``val2014``), ``../flickr30k/flickr30k-images`` or
            ``../flickr8k/Flicker8k_Dataset`` next to the file, else ``images/`` beside it.
        split: Keep only these splits (``"train"``, ``"val"``, ``"test"``, ``"restval"``).
        merge_restval: Relabel ``restval`` images as ``train`` (the usual 113k-image COCO training set)
            before filtering.

    Returns:
        :class:`CaptionRecord` per image; ``image_id`` is the COCO id where given, else the file stem.

    Raises:
        DatasetFormatError: If the file is not a Karpathy split file.
    """
    path = _check_file(path)
    return _karpathy_from(_load_json(path), path, image_root, split, merge_restval)


def _karpathy_from(
    data: Any, path: Path, image_root: Optional[PathLike], split: SplitFilter, merge_restval: bool
) -> RecordSet:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(f"{path} is not a Karpathy split file: expected an object with 'images'")
    if data["images"] and not any(isinstance(e, dict) and "sentences" in e for e in data["images"][:50]):
        raise DatasetFormatError(f"{path} is not a Karpathy split file: its images have no 'sentences'")
    name = str(data.get("dataset", ""))
    defaults = {
        "coco": [path.parent.parent / "coco", path.parent / "coco"],
        "flickr30k": [path.parent.parent / "flickr30k" / "flickr30k-images", path.parent / "flickr30k-images"],
        "flickr8k": [path.parent.parent / "flickr8k" / "Flicker8k_Dataset", path.parent / "Flicker8k_Dataset"],
    }.get(name, [])
    # A Karpathy file never sits beside its images, so an unknown layout falls back to the documented one.
    candidates = defaults + [path.parent / "images"] if defaults else [path.parent / "images", path.parent]
    root = _image_root(image_root, candidates)
    skip = _Skips(path)
    keep = _split_matcher(split)
    records = []
    for i, entry in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(entry, dict) or not _clean_text(entry.get("filename")) or not isinstance(
            entry.get("sentences"), list
        ):
            skip("missing_key", where)
            continue
        entry_split = _optional_str(entry.get("split"))
        if merge_restval and entry_split == "restval":
            entry_split = "train"
        if not keep(entry_split):
            continue
        raws = [s.get("raw") if isinstance(s, dict) else None for s in entry["sentences"]]
        captions = _clean_captions(raws, skip, where)
        if not captions:
            skip("no_captions", where)
            continue
        image_id = _id_string(entry.get("cocoid")) or Path(entry["filename"]).stem
        filepath = entry.get("filepath")
        relative = Path(entry["filename"])
        if isinstance(filepath, str) and filepath:
            relative = Path(filepath) / relative
        records.append(CaptionRecord(image_id, root / relative, captions, entry_split))
    return RecordSet("karpathy", path, root, records, skip.report())


# --------------------------------------------------------------------------------------------------------
# Flickr8k / Flickr30k caption files
# --------------------------------------------------------------------------------------------------------

_TOKEN_LINE = re.compile(r"^(?P<image>[^\t#]+)#(?P<index>\d+)\t(?P<caption>.*)$")
_SPLIT_LIST_NAMES = {"train": "train", "dev": "val", "val": "val", "test": "test"}


def read_flickr_captions(path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None) -> RecordSet:
    """Reads Flickr8k/Flickr30k caption files into one record per image.

    Two layouts, told apart by content:

    - ``Flickr8k.token.txt`` / Flickr30k ``results_20130124.token``: ``name.jpg#0<TAB>caption`` per line
      (format ``flickr_token``); captions ordered by the ``#n`` index.
    - Flickr30k ``results.csv``: a ``image_name| comment_number| comment`` header, then one
      ``name.jpg| 0| caption`` line per caption (format ``flickr30k_csv``).

    Flickr8k's split lists (``Flickr_8k.trainImages.txt``, ``...devImages.txt``, ``...testImages.txt``)
    beside the file, when present, give each image its split (``dev`` is called ``"val"``); otherwise the
    split is ``None``.

    Args:
        path: The caption file.
        image_root: Folder of the images; by default ``Flicker8k_Dataset/`` (sic, as in the Flickr8k zip),
            ``Flickr8k_Dataset/``, ``flickr30k-images/`` or ``images/`` beside or one level above the file.
        split: Keep only these splits.

    Returns:
        :class:`CaptionRecord` per image in first-seen order; ``image_id`` is the file stem.

    Raises:
        DatasetFormatError: If no line of the file is in either layout.
    """
    path = _check_file(path)
    return _flickr_from(_read_lines(path), path, image_root, split)


def _flickr_from(lines: list[str], path: Path, image_root: Optional[PathLike], split: SplitFilter) -> RecordSet:
    fmt = "flickr30k_csv" if lines and lines[0].replace(" ", "").startswith("image_name|") else "flickr_token"
    names = ("Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k-images", "flickr30k_images", "images")
    root = _image_root(image_root, [base / n for n in names for base in (path.parent, path.parent.parent)])
    skip = _Skips(path)
    captions: dict[str, list[tuple[int, str]]] = {}
    parsed = 0
    first = 1 if fmt == "flickr30k_csv" else 0  # skip the CSV header
    for number, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        where = f"line {number}"
        if fmt == "flickr30k_csv":
            parts = [p.strip() for p in line.split("|", 2)]
            if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
                skip("malformed_line", where)
                continue
            image, index, caption = parts[0], int(parts[1]), parts[2]
        else:
            match = _TOKEN_LINE.match(line)
            if not match:
                skip("malformed_line", where)
                continue
            image, index, caption = match["image"].strip(), int(match["index"]), match["caption"]
        parsed += 1
        text = _clean_text(caption)
        if text is None:
            skip("empty_caption", where)
            continue
        captions.setdefault(image, []).append((index, text))
    if parsed == 0:
        raise DatasetFormatError(
            f"{path} is not a Flickr caption file: no line looks like 'name.jpg#0<TAB>caption' "
            "or 'image_name| comment_number| comment'"
        )
    splits = _flickr8k_split_lists(path)
    keep = _split_matcher(split)
    records = []
    for image, entries in captions.items():
        image_split = splits.get(image)
        if keep(image_split):
            ordered = [text for _, text in sorted(entries, key=lambda entry: entry[0])]
            records.append(CaptionRecord(Path(image).stem, root / image, ordered, image_split))
    return RecordSet(fmt, path, root, records, skip.report())


def _flickr8k_split_lists(path: Path) -> dict[str, str]:
    """Image name -> split from ``Flickr_8k.{train,dev,test}Images.txt`` beside ``path``."""
    splits = {}
    for list_file in sorted(path.parent.glob("*Images.txt")):
        match = re.search(r"(train|dev|val|test)Images\.txt$", list_file.name)
        if match:
            for name in _read_lines(list_file):
                if name.strip():
                    splits[name.strip()] = _SPLIT_LIST_NAMES[match.group(1)]
    return splits


# --------------------------------------------------------------------------------------------------------
# VQA v2
# --------------------------------------------------------------------------------------------------------


def read_vqa2(
    questions_path: PathLike,
    annotations_path: Optional[PathLike] = None,
    image_root: Optional[PathLike] = None,
    split: SplitFilter = None,
) -> RecordSet:
    """Reads VQA v2 (or v1) questions, with their 10 annotator answers where annotations exist.

    Args:
        questions_path: ``v2_OpenEnded_mscoco_train2014_questions.json``: ``{"data_subtype",
            "questions": [{"image_id", "question", "question_id"}]}``.
        annotations_path: ``v2_mscoco_train2014_annotations.json``: ``{"annotations": [{"question_id",
            "answers": [{"answer", ...}] * 10, "question_type", "answer_type", "multiple_choice_answer"}]}``.
            When ``None``, the file of that name beside the questions is used if it exists; the test
            splits have none, and their records have no answers.
        image_root: Folder of ``COCO_<subtype>_<image id:012d>.jpg``; by default ``../coco/<subtype>``
            next to the file (``test-dev2015`` uses ``test2015``), else ``<subtype>/`` or ``images/``
            beside it.
        split: Keep only these splits (the file's ``data_subtype``, e.g. ``"train2014"``).

    Returns:
        :class:`QuestionRecord` per question with ``multi_label=False``; ``meta`` holds
        ``multiple_choice_answer`` where annotated.

    Raises:
        DatasetFormatError: If either file is not in VQA form, or an annotation file's question ids do not
            match the questions.
    """
    questions_path = _check_file(questions_path)
    if annotations_path is None:
        annotations_path = _paired_vqa_file(questions_path, "annotations")
    annotations = _load_json(_check_file(annotations_path)) if annotations_path is not None else None
    return _vqa2_from(_load_json(questions_path), questions_path, annotations, annotations_path, image_root, split)


def _paired_vqa_file(path: Path, want: str, subtype: Optional[str] = None) -> Optional[Path]:
    """The annotations file for a questions file (``want="annotations"``) or the reverse."""
    if want == "annotations":
        name = path.name.replace("OpenEnded_", "").replace("_questions", "_annotations")
        candidate = path.parent / name
        return candidate if candidate.is_file() and candidate != path else None
    pattern = f"*OpenEnded*{glob.escape(subtype)}_questions.json" if subtype else "*OpenEnded*_questions.json"
    matches = sorted(path.parent.glob(pattern))
    return matches[0] if len(matches) == 1 else None


def _vqa2_from(
    questions: Any,
    path: Path,
    annotations: Any,
    annotations_path: Optional[PathLike],
    image_root: Optional[PathLike],
    split: SplitFilter,
) -> RecordSet:
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise DatasetFormatError(f"{path} is not a VQA questions file: expected an object with a 'questions' list")
    subtype = _optional_str(questions.get("data_subtype"))
    image_subtype = "test2015" if isinstance(subtype, str) and subtype.startswith("test-dev") else subtype
    if image_subtype:  # images are never beside the question files in the standard layout
        candidates = [path.parent.parent / "coco" / image_subtype, path.parent / image_subtype, path.parent / "images"]
    else:
        candidates = [path.parent / "images", path.parent]
    root = _image_root(image_root, candidates)
    skip = _Skips(path)
    answers_by_question: dict[Any, dict] = {}
    if annotations is not None:
        if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
            raise DatasetFormatError(
                f"{annotations_path} is not a VQA annotations file: expected an 'annotations' list"
            )
        for i, ann in enumerate(annotations["annotations"]):
            if not (isinstance(ann, dict) and _is_key(ann.get("question_id")) and isinstance(ann.get("answers"), list)):
                skip("bad_annotation", f"annotations[{i}]")
                continue
            answers_by_question[ann["question_id"]] = ann
    keep = _split_matcher(split)
    if not keep(subtype):
        return RecordSet("vqa2", path, root, [], skip.report())
    file_prefix = f"COCO_{image_subtype}_" if image_subtype else ""
    records = []
    for i, entry in enumerate(questions["questions"]):
        where = f"questions[{i}]"
        if not isinstance(entry, dict):
            skip("missing_key", where)
            continue
        question = _clean_text(entry.get("question"))
        image_id = entry.get("image_id")
        if question is None or not isinstance(image_id, int) or _id_string(entry.get("question_id")) is None:
            skip("missing_key", where)
            continue
        ann = answers_by_question.get(entry["question_id"])
        if annotations is not None and ann is None:
            skip("unannotated_question", where)
            continue
        answers: list[str] = []
        meta: dict[str, Any] = {}
        if ann is not None:
            answers = _vqa_answers(ann["answers"])
            if not answers:
                skip("no_answers", where)
                continue
            if "multiple_choice_answer" in ann:
                meta["multiple_choice_answer"] = ann["multiple_choice_answer"]
        records.append(
            QuestionRecord(
                question_id=str(entry["question_id"]),
                image_id=str(image_id),
                path=root / f"{file_prefix}{image_id:012d}.jpg",
                question=question,
                answers=answers,
                answer_counts=dict(Counter(answers)),
                split=subtype,
                question_type=_optional_str(ann.get("question_type")) if ann else None,
                answer_type=_optional_str(ann.get("answer_type")) if ann else None,
                multi_label=False,
                meta=meta,
            )
        )
    return RecordSet("vqa2", path, root, records, skip.report())


def _vqa_answers(entries: list) -> list[str]:
    """The stripped non-empty ``answer`` strings of VQA answer dicts (a hot loop: 4.4M answers in train)."""
    answers = []
    for entry in entries:
        text = entry.get("answer") if isinstance(entry, dict) else None
        if isinstance(text, str):
            text = text.strip()
            if text:
                answers.append(text)
    return answers


# --------------------------------------------------------------------------------------------------------
# DAQUAR
# --------------------------------------------------------------------------------------------------------

_DAQUAR_IMAGE = re.compile(r"\bimage(\d+)\b")
_DAQUAR_TRAILING_IMAGE = re.compile(r"\s*\b(?:in|of|on)\s+(?:the|this)\s+image\d+\s*(?=\?|$)")


def read_daquar(
    path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None, image_ext: Optional[str] = None
) -> RecordSet:
    """Reads DAQUAR's original text format (``qa.894.raw.train.txt``, ``qa.37.raw.reduced.test.txt``, ...).

    The file alternates a question line, ``what is on the table in the image1 ?``, and an answer line,
    ``cup, book``. The image id comes from the last ``imageN``; the trailing ``in the imageN`` is removed
    from the question (``what is on the table?``) and any other ``imageN`` becomes ``image``. Answers are
    comma-separated gold answers, multi-word ones joined by underscores (``garbage_bin``); any one is
    correct, so records are ``multi_label=True`` with counts of 1.

    Args:
        path: The question-answer file.
        image_root: Folder of ``imageN.png`` (the NYU-Depth v2 frames); by default ``nyu_depth_images/``
            or ``images/`` beside the file.
        split: Keep only these splits; the split is ``train``/``test`` from the file name.
        image_ext: Image file extension; by default ``png`` unless only ``jpg`` files exist in the root.

    Returns:
        :class:`QuestionRecord` per question; ``question_id`` is its position in the file.

    Raises:
        DatasetFormatError: If no question line names an image.
    """
    path = _check_file(path)
    return _daquar_from(_read_lines(path), path, image_root, split, image_ext)


def _daquar_from(
    lines: list[str], path: Path, image_root: Optional[PathLike], split: SplitFilter, image_ext: Optional[str]
) -> RecordSet:
    root = _image_root(image_root, [path.parent / "nyu_depth_images", path.parent / "images", path.parent])
    lines = [line.strip() for line in lines if line.strip()]
    if not any(_DAQUAR_IMAGE.search(line) for line in lines[0::2]):
        raise DatasetFormatError(
            f"{path} is not a DAQUAR file: expected question lines ending 'in the imageN ?' alternating with answers"
        )
    file_split = _split_from_name(path, r"\.(train|test|val)\.txt$")
    if not _split_matcher(split)(file_split):
        return RecordSet("daquar", path, root, [], Counter())
    if image_ext is None:
        image_ext = "jpg" if not any(root.glob("image*.png")) and any(root.glob("image*.jpg")) else "png"
    skip = _Skips(path)
    if len(lines) % 2:
        skip("question_without_answer", f"line {len(lines)}")
    records = []
    for index in range(len(lines) // 2):
        question_line, answer_line = lines[2 * index], lines[2 * index + 1]
        where = f"question {index}"
        image_numbers = _DAQUAR_IMAGE.findall(question_line)
        if not image_numbers:
            skip("no_image_id", where)
            continue
        question = _DAQUAR_TRAILING_IMAGE.sub("", question_line)
        question = _DAQUAR_IMAGE.sub("image", question)
        question = re.sub(r"\s+\?", "?", question).strip()
        answers = [a.strip() for a in answer_line.split(",") if a.strip()]
        if not answers:
            skip("no_answers", where)
            continue
        image_id = f"image{image_numbers[-1]}"
        records.append(
            QuestionRecord(
                question_id=str(index),
                image_id=image_id,
                path=root / f"{image_id}.{image_ext}",
                question=question,
                answers=answers,
                answer_counts={a: 1 for a in answers},
                split=file_split,
                multi_label=True,
            )
        )
    return RecordSet("daquar", path, root, records, skip.report())


# --------------------------------------------------------------------------------------------------------
# The simple project formats: captions.json and vqa.json
# --------------------------------------------------------------------------------------------------------

_SIMPLE_CAPTION_KEYS = {"image", "captions", "split", "image_id"}
_SIMPLE_VQA_KEYS = {"image", "question", "answers", "split", "image_id", "question_id", "question_type",
                    "answer_type", "answer_counts"}


def _simple_image_id(entry: dict) -> str:
    """The entry's ``image_id``, else its ``coco_id``, else the image file's stem."""
    return _id_string(entry.get("image_id")) or _id_string(entry.get("coco_id")) or Path(entry["image"]).stem


def read_simple_captions(path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None) -> RecordSet:
    """Reads the project's ``captions.json``: ``[{"image": "a.jpg", "captions": [...], "split"?, ...}]``.

    Args:
        path: The JSON list.
        image_root: Folder of the images; by default ``images/`` beside the file, else its folder.
        split: Keep only these splits.

    Returns:
        :class:`CaptionRecord` per entry; ``image_id`` is the entry's ``image_id``, else ``coco_id``, else
        the image's file stem; other keys go to ``meta``.

    Raises:
        DatasetFormatError: If the file is not a list of caption entries.
    """
    path = _check_file(path)
    return _simple_captions_from(_load_json(path), path, image_root, split)


def _simple_list(data: Any, path: Path, required: str, what: str) -> list:
    if not isinstance(data, list) or (data and not any(isinstance(e, dict) and required in e for e in data[:50])):
        raise DatasetFormatError(f"{path} is not a {what}: expected a JSON list of objects with '{required}'")
    return data


def _simple_captions_from(data: Any, path: Path, image_root: Optional[PathLike], split: SplitFilter) -> RecordSet:
    entries = _simple_list(data, path, "captions", "captions.json")
    root = _image_root(image_root, [path.parent / "images", path.parent])
    skip = _Skips(path)
    keep = _split_matcher(split)
    records = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        if not isinstance(entry, dict) or not _clean_text(entry.get("image")) or not isinstance(
            entry.get("captions"), list
        ):
            skip("missing_key", where)
            continue
        entry_split = _optional_str(entry.get("split"))
        if not keep(entry_split):
            continue
        captions = _clean_captions(entry["captions"], skip, where)
        if not captions:
            skip("no_captions", where)
            continue
        meta = {k: v for k, v in entry.items() if k not in _SIMPLE_CAPTION_KEYS}
        image_id = _simple_image_id(entry)
        records.append(CaptionRecord(image_id, root / entry["image"], captions, entry_split, meta))
    return RecordSet("simple_captions", path, root, records, skip.report())


def read_simple_vqa(path: PathLike, image_root: Optional[PathLike] = None, split: SplitFilter = None) -> RecordSet:
    """Reads the project's ``vqa.json``: ``[{"image", "question", "answers", "split"?, "question_type"?,
    "answer_type"?, "answer_counts"?, "question_id"?}]``.

    ``answers`` is a set of gold answers (``multi_label=True``, counts of 1) unless the entry carries
    ``answer_counts`` (``{"answer": count}``, annotator answers as in VQA v2), which makes it
    ``multi_label=False``.

    Args:
        path: The JSON list.
        image_root: Folder of the images; by default ``images/`` beside the file, else its folder.
        split: Keep only these splits.

    Returns:
        :class:`QuestionRecord` per entry; ``question_id`` is the entry's, else its position in the file.

    Raises:
        DatasetFormatError: If the file is not a list of question entries.
    """
    path = _check_file(path)
    return _simple_vqa_from(_load_json(path), path, image_root, split)


def _simple_vqa_from(data: Any, path: Path, image_root: Optional[PathLike], split: SplitFilter) -> RecordSet:
    entries = _simple_list(data, path, "question", "vqa.json")
    root = _image_root(image_root, [path.parent / "images", path.parent])
    skip = _Skips(path)
    keep = _split_matcher(split)
    records = []
    for i, entry in enumerate(entries):
        where = f"entry {i}"
        if not (isinstance(entry, dict) and _clean_text(entry.get("image")) and isinstance(entry.get("answers"), list)):
            skip("missing_key", where)
            continue
        question = _clean_text(entry.get("question"))
        if question is None:
            skip("empty_question", where)
            continue
        entry_split = _optional_str(entry.get("split"))
        if not keep(entry_split):
            continue
        answers = [_clean_text(str(a)) for a in entry["answers"] if a is not None]
        answers = [a for a in answers if a]
        counts = entry.get("answer_counts")
        if counts is not None:
            valid = isinstance(counts, dict) and all(
                isinstance(k, str) and _positive_int(v) is not None for k, v in counts.items()
            )
            if not valid or not counts:
                skip("bad_answer_counts", where)
                continue
            answer_counts = {k: _positive_int(v) for k, v in counts.items()}
            answers = answers or [a for a, n in counts.items() for _ in range(n)]
        else:
            answers = list(dict.fromkeys(answers))  # a gold set: drop repeats, keep order
            answer_counts = {a: 1 for a in answers}
        if not answers:
            skip("no_answers", where)
            continue
        meta = {k: v for k, v in entry.items() if k not in _SIMPLE_VQA_KEYS}
        records.append(
            QuestionRecord(
                question_id=_id_string(entry.get("question_id")) or str(i),
                image_id=_simple_image_id(entry),
                path=root / entry["image"],
                question=question,
                answers=answers,
                answer_counts=answer_counts,
                split=entry_split,
                question_type=_optional_str(entry.get("question_type")),
                answer_type=_optional_str(entry.get("answer_type")),
                multi_label=counts is None,
                meta=meta,
            )
        )
    return RecordSet("simple_vqa", path, root, records, skip.report())


# --------------------------------------------------------------------------------------------------------
# Format detection and dispatch
# --------------------------------------------------------------------------------------------------------

FORMATS = (
    "coco_captions",
    "coco_instances",
    "karpathy",
    "flickr_token",
    "flickr30k_csv",
    "vqa2_questions",
    "vqa2_annotations",
    "daquar",
    "simple_captions",
    "simple_vqa",
)


def _sniff_json(data: Any) -> Optional[str]:
    if isinstance(data, list):
        sample = [e for e in data[:50] if isinstance(e, dict)]
        if any("question" in e for e in sample):
            return "simple_vqa"
        if any("captions" in e for e in sample):
            return "simple_captions"
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("questions"), list):
        return "vqa2_questions"
    annotations = data.get("annotations")
    sample = [a for a in annotations[:50] if isinstance(a, dict)] if isinstance(annotations, list) else []
    if any("answers" in a and "question_id" in a for a in sample):
        return "vqa2_annotations"
    if isinstance(data.get("images"), list):
        images = [e for e in data["images"][:50] if isinstance(e, dict)]
        if any("sentences" in e for e in images):
            return "karpathy"
        if any("caption" in a for a in sample):
            return "coco_captions"
        if any("bbox" in a for a in sample) or "categories" in data:
            return "coco_instances"
    return None


def _sniff_text(lines: list[str]) -> Optional[str]:
    sample = [line for line in lines[:200] if line.strip()]
    if not sample:
        return None
    if sample[0].replace(" ", "").startswith("image_name|"):
        return "flickr30k_csv"
    if sum(bool(_TOKEN_LINE.match(line)) for line in sample) >= len(sample) / 2:
        return "flickr_token"
    if sum(bool(_DAQUAR_IMAGE.search(line)) for line in sample[0::2]) >= len(sample[0::2]) / 2:
        return "daquar"
    return None


def _sniff(path: Path) -> tuple[str, Any]:
    """(format, parsed content) of an annotation file."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] in (b"{", b"["):
        data = _load_json(path)
        fmt = _sniff_json(data)
    else:
        data = _read_lines(path)
        fmt = _sniff_text(data)
    if fmt is None:
        raise DatasetFormatError(
            f"cannot tell the format of {path}; known formats: {', '.join(FORMATS)} (see datasets/README.md)"
        )
    return fmt, data


def detect_format(path: PathLike) -> str:
    """Names the annotation format of a file from its content (see the module table for the names).

    Args:
        path: An annotation file.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        FileNotFoundError: If there is no such file.
        DatasetFormatError: If the content matches no known format.
    """
    return _sniff(_check_file(path))[0]


def read_records(path: PathLike, image_root: Optional[PathLike] = None, **kwargs: Any) -> RecordSet:
    """Reads any supported annotation file, choosing the reader by :func:`detect_format`.

    Args:
        path: An annotation file. For VQA v2 either file of the pair may be given; the other is found
            beside it by its standard name (or pass ``annotations_path=``/``questions_path=``).
        image_root: Folder the image paths are resolved against (format-specific default when ``None``).
        **kwargs: Passed to the reader: ``split`` for all; ``merge_restval`` (Karpathy); ``image_ext``
            (DAQUAR); ``annotations_path`` or ``questions_path`` (VQA v2).

    Returns:
        The reader's :class:`RecordSet`.

    Raises:
        FileNotFoundError: If the file does not exist.
        DatasetFormatError: If the content matches no known format or is invalid in its format.
    """
    path = _check_file(path)
    fmt, data = _sniff(path)
    split = kwargs.pop("split", None)
    if fmt == "coco_captions":
        result = _coco_captions_from(data, path, image_root, split)
    elif fmt == "coco_instances":
        result = _coco_instances_from(data, path, image_root, split)
    elif fmt == "karpathy":
        result = _karpathy_from(data, path, image_root, split, kwargs.pop("merge_restval", False))
    elif fmt in ("flickr_token", "flickr30k_csv"):
        result = _flickr_from(data, path, image_root, split)
    elif fmt == "daquar":
        result = _daquar_from(data, path, image_root, split, kwargs.pop("image_ext", None))
    elif fmt == "simple_captions":
        result = _simple_captions_from(data, path, image_root, split)
    elif fmt == "simple_vqa":
        result = _simple_vqa_from(data, path, image_root, split)
    elif fmt == "vqa2_questions":
        annotations_path = kwargs.pop("annotations_path", None) or _paired_vqa_file(path, "annotations")
        annotations = _load_json(_check_file(annotations_path)) if annotations_path else None
        result = _vqa2_from(data, path, annotations, annotations_path, image_root, split)
    else:  # vqa2_annotations: find the questions
        questions_path = kwargs.pop("questions_path", None)
        subtype = _optional_str(data.get("data_subtype"))
        questions_path = questions_path or _paired_vqa_file(path, "questions", subtype)
        if questions_path is None:
            raise DatasetFormatError(
                f"{path} holds VQA answers only; put the matching *_questions.json beside it or pass questions_path="
            )
        questions_path = _check_file(questions_path)
        result = _vqa2_from(_load_json(questions_path), questions_path, data, path, image_root, split)
    if kwargs:
        raise TypeError(f"unexpected arguments for format {fmt!r}: {sorted(kwargs)}")
    return result
