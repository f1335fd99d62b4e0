"""The extraction pipeline behind ``vlptm extract``: images -> region extractor -> feature store.

- **Inputs** (:func:`list_images`): a folder (searched recursively for image files; an image's id is its
  path relative to the folder without the extension, so a flat folder gives file stems), an annotation
  file any :func:`vlptm.data.readers.read_records` format understands (ids and paths from the records,
  one entry per image), or a list file with one ``path`` or ``id<TAB>path`` per line (ids default to
  file stems; relative paths are relative to the list file).
- **Sharding** (:func:`shard_items`): ``--shard i/n`` takes every n-th image starting at i of that list,
  so n processes or machines split one list deterministically and write into one store under writer
  names ``shard<i>of<n>``.
- **Batches**: the shard's list is cut into fixed consecutive batches of ``batch_size`` *before*
  committed images are dropped, and shards are committed only between batches. A resumed run therefore
  feeds the extractor exactly the batches an uninterrupted run would have (minus completed ones), so
  its features are identical even for extractors whose output depends on batch-mates (padding).
- **Decoding** happens in ``DataLoader`` workers through :func:`vlptm.data.images.load_image_tensor`;
  an image that fails to load, or whose extraction fails, is logged with its reason to the store's
  ``errors/<writer>.jsonl`` and the run goes on.
- **Resume**: images committed by any writer of the store are skipped.

Letters: B images in a batch.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from vlptm.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image_tensor
from vlptm.features.store import FeatureStoreWriter, InvalidRegionsError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "ExtractionSummary",
    "list_images",
    "shard_items",
    "parse_shard",
    "extract_to_store",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ImageItem:
    """One image to extract."""

    image_id: str  # the id it is stored under
    path: str  # its file


@dataclass
class ExtractionSummary:
    """Counts and rate of one extraction run."""

    done: int = 0  # images extracted and committed by this run
    skipped: int = 0  # already in the store
    failed: int = 0  # could not be loaded or extracted (see the errors file)
    seconds: float = 0.0  # wall time of the extraction loop (model load excluded)
    images_per_second: float = 0.0  # done / seconds
    forward_seconds: float = 0.0  # of which in extractor.extract (the model)
    wait_seconds: float = 0.0  # of which waiting for decoded batches (DataLoader)
    store_seconds: float = 0.0  # of which buffering, casting and committing shards (fsync included)
    failures: Dict[str, int] = field(default_factory=dict)  # reason -> count

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# inputs


def list_images(source: PathLike, image_root: Optional[PathLike] = None) -> List[ImageItem]:
    """The images named by a folder, an annotation file or a list file, in a deterministic order.

    Args:
        source: a folder of images, an annotation file (COCO, Karpathy, Flickr, VQA, captions.json, ...),
            or a text file of ``path`` / ``id<TAB>path`` lines (``#`` starts a comment).
        image_root: for annotation files, the folder image paths are resolved against (the reader's
            default when ``None``).

    Returns:
        Items with unique ids: sorted by relative path for a folder, in file order otherwise.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: two different files would get the same id.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        return [ImageItem(p.relative_to(source).with_suffix("").as_posix(), str(p)) for p in files]
    if not source.is_file():
        raise FileNotFoundError(f"--images {source}: no such folder or file")
    from vlptm.data.readers import DatasetFormatError, read_records

    try:
        records = read_records(source, image_root=image_root)
    except DatasetFormatError:
        return _read_list_file(source)
    items: Dict[str, ImageItem] = {}
    for record in records:
        image_id = str(record.image_id)
        if image_id in items:
            if Path(items[image_id].path) != Path(record.path):
                raise ValueError(f"{source}: image id {image_id!r} names two files: {items[image_id].path} "
                                 f"and {record.path}")
            continue
        items[image_id] = ImageItem(image_id, str(record.path))
    return list(items.values())


def _read_list_file(path: Path) -> List[ImageItem]:
    items: List[ImageItem] = []
    seen: Dict[str, str] = {}
    with open(path, "r", encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "\t" in line:
                image_id, file = (part.strip() for part in line.split("\t", 1))
            else:
                image_id, file = Path(line).stem, line
            file_path = Path(file) if Path(file).is_absolute() else path.parent / file
            if image_id in seen:
                raise ValueError(f"{path}:{number}: id {image_id!r} already used by {seen[image_id]}; give explicit "
                                 "ids as 'ID<TAB>PATH' lines")
            seen[image_id] = str(file_path)
            items.append(ImageItem(image_id, str(file_path)))
    return items


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; ``None`` -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from err
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def shard_items(items: Sequence[ImageItem], index: int, count: int) -> List[ImageItem]:
    """Every ``count``-th item starting at ``index``: shards are disjoint, cover the list and differ in size
    by at most one."""
    return list(items[index::count])


# ----------------------------------------------------------------------------------------------------------
# decoding


class _ImageDataset(Dataset):
    """Decodes item ``i`` into ``(i, uint8 (3, H, W) tensor or None, failure reason or None, detail)``."""

    def __init__(self, items: Sequence[ImageItem], max_pixels: Optional[int]) -> None:
        self.items = items
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], Optional[str], str]:
        path = self.items[index].path
        try:
            return index, load_image_tensor(path, max_pixels=self.max_pixels), None, ""
        except ImageLoadError as err:
            return index, None, err.reason, str(err)
        except Exception as err:  # noqa: BLE001 - any decoder bug must cost one image, not the run
            return index, None, "load_failed", f"{type(err).__name__}: {err}"


def _collate(batch: List[Any]) -> List[Any]:
    return batch


# ----------------------------------------------------------------------------------------------------------
# the run


def extract_to_store(
    extractor: torch.nn.Module,
    items: Sequence[ImageItem],
    out: PathLike,
    *,
    extractor_name: str,
    batch_size: int = 8,
    workers: int = 2,
    device: Union[str, torch.device, None] = None,
    amp: Optional[str] = None,
    writer_name: str = "main",
    images_per_shard: int = 512,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    feature_dtype: str = "float16",
    progress: bool = True,
) -> ExtractionSummary:
    """Extracts every not-yet-committed image of ``items`` into the store at ``out``.

    Args:
        extractor: a region or grid extractor (``extract(list of uint8 (3, H, W)) -> list[RegionFeatures]``,
            ``feature_dim``, ``config_hash()``, ``config``).
        items: the images (already sharded), in order.
        out: the store directory (created, or resumed).
        extractor_name: recorded in the manifest (variant name or checkpoint path).
        batch_size: images per forward pass.
        workers: ``DataLoader`` decoding processes (0 decodes in this process).
        device: where the extractor runs (``None``: CUDA if available, else CPU).
        amp: ``None``, ``"fp16"`` or ``"bf16"``: autocast dtype of the forward pass.
        writer_name: the store writer's name (a resumed run must reuse it; concurrent runs need distinct ones).
        images_per_shard: a shard is committed after the batch that brings it to this many images.
        max_pixels: images with more pixels are refused (``too_large``) before decoding.
        feature_dtype: storage dtype of features and soft labels (``float16`` or ``float32``).
        progress: show a tqdm bar with images/s.

    Returns:
        The run's :class:`ExtractionSummary`.

    Raises:
        StoreMismatchError: the store holds another extractor's features.
        StoreLockedError: a live process writes to the store under the same writer name.
    """
    from tqdm import tqdm

    from vlptm.detection.config import config_to_dict

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _default_device()
    autocast = _autocast(device, amp)
    extractor = extractor.to(device).eval()
    cls_dim, attr_dim = _soft_label_dims(extractor)
    config = getattr(extractor, "config", None)
    writer = FeatureStoreWriter(
        out, feature_dim=int(extractor.feature_dim), cls_dim=cls_dim, attr_dim=attr_dim,
        extractor_name=extractor_name, extractor_config_hash=extractor.config_hash(),
        extractor_config={"kind": type(extractor).__name__, "config": config_to_dict(config)} if config else None,
        writer_name=writer_name, images_per_shard=images_per_shard, feature_dtype=feature_dtype,
    )
    summary = ExtractionSummary()
    run_id = uuid.uuid4().hex[:12]
    try:
        committed = writer.committed_mask([item.image_id for item in items])
        summary.skipped = int(committed.sum())
        batches = []
        for start in range(0, len(items), batch_size):
            pending = [i for i in range(start, min(start + batch_size, len(items))) if not committed[i]]
            if pending:
                batches.append(pending)
        todo = sum(len(b) for b in batches)
        log.info("%d images: %d already in %s, %d to extract in %d batches", len(items), summary.skipped, out,
                 todo, len(batches))
        loader = DataLoader(_ImageDataset(items, max_pixels), batch_sampler=batches, num_workers=workers,
                            collate_fn=_collate, pin_memory=device.type == "cuda",
                            persistent_workers=False, prefetch_factor=2 if workers > 0 else None)

        def fail(index: int, stage: str, reason: str, detail: str) -> None:
            item = items[index]
            summary.failed += 1
            summary.failures[reason] = summary.failures.get(reason, 0) + 1
            log.warning("skipping %s (%s): %s", item.path, reason, detail)
            writer.log_error({"image_id": item.image_id, "path": item.path, "stage": stage, "reason": reason,
                              "detail": detail, "run": run_id,
                              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

        start_time = time.perf_counter()
        with tqdm(total=todo, unit="img", desc="extract", disable=not progress, dynamic_ncols=True) as bar:
            batches_iter = iter(loader)
            while True:
                tick = time.perf_counter()
                batch = next(batches_iter, None)
                summary.wait_seconds += time.perf_counter() - tick
                if batch is None:
                    break
                good: List[Tuple[int, torch.Tensor]] = []
                for index, image, reason, detail in batch:
                    if image is None:
                        fail(index, "load", reason, detail)
                    else:
                        good.append((index, image))
                tick = time.perf_counter()
                results = list(_extract_batch(extractor, good, device, autocast, fail))
                summary.forward_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                for index, regions in results:
                    try:
                        writer.add(items[index].image_id, regions)
                    except InvalidRegionsError as err:
                        fail(index, "store", "invalid_regions", str(err))
                        continue
                    summary.done += 1
                writer.commit_if_full()  # only between batches: see the module docstring
                summary.store_seconds += time.perf_counter() - tick
                bar.update(len(batch))
            tick = time.perf_counter()
            writer.close()
            summary.store_seconds += time.perf_counter() - tick
        summary.seconds = time.perf_counter() - start_time
    except BaseException:
        writer.abort()  # the buffered batch is redone by the next run
        raise
    summary.images_per_second = summary.done / summary.seconds if summary.seconds > 0 else 0.0
    return summary


def _extract_batch(extractor, good: List[Tuple[int, torch.Tensor]], device: torch.device, autocast, fail
                   ) -> Iterator[Tuple[int, Any]]:
    """Runs the extractor on one batch; when the batch fails, retries image by image to isolate the culprit."""
    if not good:
        return
    images = [image.to(device, non_blocking=True) for _, image in good]  # B x (3, H, W) uint8
    try:
        with autocast():
            results = extractor.extract(images)
        for (index, _), regions in zip(good, results):
            yield index, regions.to("cpu")
        return
    except (RuntimeError, ValueError, IndexError) as err:
        if len(good) == 1:
            index = good[0][0]
            fail(index, "extract", "extract_failed", f"{type(err).__name__}: {err}")
            return
        log.warning("batch of %d failed (%s); retrying its images one by one", len(good), err)
    for index, image in zip((i for i, _ in good), images):
        try:
            with autocast():
                regions = extractor.extract([image])[0]
        except (RuntimeError, ValueError, IndexError) as err:
            fail(index, "extract", "extract_failed", f"{type(err).__name__}: {err}")
            continue
        yield index, regions.to("cpu")


def _soft_label_dims(extractor) -> Tuple[Optional[int], Optional[int]]:
    """``(C, A)`` of the extractor's ``cls_probs``/``attr_probs`` (``None`` where it gives none)."""
    config = getattr(extractor, "config", None)
    if config is None or not hasattr(config, "num_classes"):  # grid features: no detector heads
        return None, None
    attrs = getattr(extractor, "attribute_head", None)
    return int(config.num_classes), (int(config.num_attributes) if attrs is not None else None)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, amp: Optional[str]):
    if amp in (None, "", "none"):
        return contextlib.nullcontext
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if amp not in dtypes:
        raise ValueError(f"amp must be one of none, fp16, bf16; got {amp!r}")
    return lambda: torch.autocast(device_type=device.type, dtype=dtypes[amp])

