"""COCO-format detection data for training and evaluating the region extractor.

Reads annotation files through :func:`vlptm.data.readers.read_coco_instances` (which also reads the scene
world's ``attribute_categories`` / ``attribute_ids``) and decodes images through
:func:`vlptm.data.images.load_image_tensor`. Training samples get a random horizontal flip (boxes
mirrored; the scene world has no left/right attributes to swap); scale jitter is the extractor transform's
``train_min_sizes``.

Letters: M boxes of an image, A attributes.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vlptm.data.images import ImageLoadError, load_image_tensor
from vlptm.data.readers import DetectionRecord, RecordSet, read_coco_instances

__all__ = ["LabelSpace", "DetectionDataset", "read_detection_data", "collate_detection", "hflip"]

logger = logging.getLogger(__name__)


@dataclass
class LabelSpace:
    """Mapping between a data set's category/attribute ids and the detector's contiguous indices."""

    class_names: List[str]  # index 0 = "__background__"
    category_ids: List[int]  # data set category id per class index (0 for background)
    attribute_names: List[str]  # attribute index -> name
    attribute_ids: List[int]  # data set attribute id per attribute index
    attribute_types: List[str]  # per attribute, e.g. "color" / "size"

    @classmethod
    def from_records(cls, records: RecordSet) -> "LabelSpace":
        """Classes and attributes of an annotation file, in file order."""
        return cls(
            class_names=["__background__"] + [c.name for c in records.categories],
            category_ids=[0] + [c.id for c in records.categories],
            attribute_names=[a.name for a in records.attribute_categories],
            attribute_ids=[a.id for a in records.attribute_categories],
            attribute_types=[a.supercategory or "attribute" for a in records.attribute_categories],
        )

    def label_of(self, category_id: int) -> int:
        return self.category_ids.index(category_id)


def read_detection_data(path: Union[str, Path], split: Optional[Sequence[str]] = None) -> RecordSet:
    """Reads ``path`` (an ``instances.json`` or a folder holding one) as COCO detection records."""
    path = Path(path)
    if path.is_dir():
        path = path / "instances.json"
    return read_coco_instances(path, split=split)


class DetectionDataset(Dataset):
    """``(image, target)`` pairs: uint8 ``(3, H, W)`` image and a dict of tensors.

    Target keys: ``boxes (M, 4)`` float xyxy pixels (clipped, degenerate and crowd boxes dropped),
    ``labels (M,)`` long class indices, ``attributes (M, A)`` float multi-hot, ``image_id`` (str).
    An image that fails to decode is logged and replaced by the next one, so a long run never stops on it.

    Args:
        records: detection records (from :func:`read_detection_data`).
        labels: the label space of the detector being trained.
        hflip_prob: probability of a horizontal flip (0 for evaluation).
    """

    def __init__(self, records: Sequence[DetectionRecord], labels: LabelSpace, hflip_prob: float = 0.0) -> None:
        self.records = list(records)
        self.labels = labels
        self.hflip_prob = hflip_prob
        self._attr_index = {a: i for i, a in enumerate(labels.attribute_ids)}
        self._class_index = {c: i for i, c in enumerate(labels.category_ids) if i > 0}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        for offset in range(len(self.records)):
            record = self.records[(index + offset) % len(self.records)]
            try:
                image = load_image_tensor(record.path)  # (3, H, W) uint8
            except ImageLoadError as err:
                logger.warning("skipping %s: %s", record.path, err)
                continue
            target = self.target(record, image.shape[-2:])
            if self.hflip_prob and random.random() < self.hflip_prob:
                image, target["boxes"] = hflip(image, target["boxes"])
            return image, target
        raise RuntimeError("no image of the data set could be decoded")

    def target(self, record: DetectionRecord, size: Tuple[int, int]) -> Dict[str, Tensor]:
        """The training target of a record on an image of ``size`` ``(h, w)``."""
        h, w = int(size[0]), int(size[1])
        boxes, labels, attrs = [], [], []
        for box, cat, attr_ids, crowd in zip(record.boxes_xyxy, record.category_ids, record.attribute_ids,
                                             record.iscrowd):
            if crowd or cat not in self._class_index:
                continue
            x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            row = [0.0] * len(self.labels.attribute_ids)
            for a in attr_ids:
                if a in self._attr_index:
                    row[self._attr_index[a]] = 1.0
            boxes.append([x1, y1, x2, y2])
            labels.append(self._class_index[cat])
            attrs.append(row)
        num_attrs = len(self.labels.attribute_ids)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # (M, 4)
            "labels": torch.tensor(labels, dtype=torch.int64),  # (M,)
            "attributes": torch.tensor(attrs, dtype=torch.float32).reshape(len(boxes), num_attrs),  # (M, A)
            "image_id": record.image_id,
        }


def hflip(image: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
    """Mirrors an image ``(3, H, W)`` and its xyxy boxes ``(M, 4)`` left-right."""
    width = image.shape[-1]
    flipped = boxes.clone()  # (M, 4)
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image.flip(-1), flipped


def collate_detection(batch: List[Tuple[Tensor, Dict[str, Tensor]]]) -> Tuple[List[Tensor], List[Dict[str, Tensor]]]:
    """Keeps images and targets as lists (they have different sizes and box counts)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
