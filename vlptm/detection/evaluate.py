"""Detector evaluation: COCO mAP through pycocotools and attribute accuracy on matched boxes.

mAP uses :meth:`RegionExtractor.detect` (score >= 0.05, per-class NMS 0.5, top 100) and pycocotools'
``COCOeval`` on boxes. Ground-truth areas are box areas (the annotations of the scene world have no
masks; for COCO photos this shifts a few objects between the small/medium/large ranges but not the
overall mAP). Attribute accuracy: ground-truth boxes are matched greedily to detections in descending
score order at IoU >= 0.5 (any class); for every attribute type (e.g. ``color``) the prediction is the
argmax of the detection's ``attr_probs`` over that type's attributes, compared with the ground truth's
attribute of that type.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from vlptm.data.images import ImageLoadError, load_image_tensor
from vlptm.data.readers import DetectionRecord
from vlptm.detection.data import LabelSpace

__all__ = ["evaluate_detector", "coco_map", "attribute_accuracy"]

logger = logging.getLogger(__name__)


def evaluate_detector(
    extractor,
    records: Sequence[DetectionRecord],
    labels: Optional[LabelSpace] = None,
    batch_size: int = 4,
    max_images: Optional[int] = None,
) -> Dict[str, float]:
    """Runs the detector over ``records`` and scores it.

    Args:
        extractor: a :class:`RegionExtractor` (its ``config.category_ids`` map labels back to the data set's).
        records: held-out detection records.
        labels: the records' label space, used to read attribute ids; default: the extractor's config.
        batch_size: images per forward pass.
        max_images: evaluate at most this many images.

    Returns:
        ``{"map", "map50", "map75", "images", "gt_boxes", "matched_fraction", "seconds"}`` plus
        ``"<type>_accuracy"`` per attribute type (e.g. ``"color_accuracy"``) when the detector has attributes.
    """
    records = list(records)[:max_images] if max_images else list(records)
    config = extractor.config
    category_ids = config.category_ids or list(range(config.num_classes))
    start = time.time()
    detections: Dict[str, Dict[str, torch.Tensor]] = {}
    kept: List[DetectionRecord] = []
    for i in range(0, len(records), batch_size):
        batch, images = [], []
        for record in records[i:i + batch_size]:
            try:
                images.append(load_image_tensor(record.path))
                batch.append(record)
            except ImageLoadError as err:
                logger.warning("evaluation skips %s: %s", record.path, err)
        if not images:
            continue
        for record, det in zip(batch, extractor.detect(images)):
            detections[record.image_id] = {k: v.detach().cpu() for k, v in det.items()}
            kept.append(record)
    metrics = coco_map(kept, detections, category_ids)
    if config.num_attributes:
        attr_ids = labels.attribute_ids if labels is not None else None
        metrics.update(attribute_accuracy(kept, detections, config.attribute_types, attr_ids, config.attribute_names))
    metrics["images"] = float(len(kept))
    metrics["seconds"] = time.time() - start
    return metrics


def coco_map(records: Sequence[DetectionRecord], detections: Dict[str, Dict[str, torch.Tensor]],
             category_ids: Sequence[int]) -> Dict[str, float]:
    """COCO box mAP@[.5:.95], @.5 and @.75 of ``detections`` (label indices -> ``category_ids``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    numeric = {r.image_id: i + 1 for i, r in enumerate(records)}
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in sorted(set(category_ids[1:]))]}
    for record in records:
        gt["images"].append({"id": numeric[record.image_id], "width": record.width, "height": record.height})
        for box, cat, crowd in zip(record.boxes_xyxy, record.category_ids, record.iscrowd):
            w, h = box[2] - box[0], box[3] - box[1]
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": numeric[record.image_id],
                                      "bbox": [box[0], box[1], w, h], "area": w * h, "category_id": cat,
                                      "iscrowd": int(crowd)})
    results = []
    for image_id, det in detections.items():
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            results.append({"image_id": numeric[image_id], "category_id": category_ids[label],
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score})
    if not gt["annotations"] or not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(s)) for s in evaluator.stats]  # -1 means "no ground truth in this range"
    return {"map": stats[0], "map50": stats[1], "map75": stats[2]}


def attribute_accuracy(records: Sequence[DetectionRecord], detections: Dict[str, Dict[str, torch.Tensor]],
                       attribute_types: Sequence[str], attribute_ids: Optional[Sequence[int]] = None,
                       attribute_names: Optional[Sequence[str]] = None, iou_threshold: float = 0.5) -> Dict[str, float]:
    """Per attribute type, the accuracy of the matched detections' argmax attribute (see module doc).

    ``attribute_ids`` gives the data set id of each attribute column (default: 1..A, the scene world's).
    """
    num_attrs = len(attribute_types)
    ids = list(attribute_ids) if attribute_ids is not None else list(range(1, num_attrs + 1))
    column = {a: i for i, a in enumerate(ids)}
    columns_of_type = defaultdict(list)
    for i, t in enumerate(attribute_types):
        columns_of_type[t].append(i)
    correct, total = defaultdict(int), defaultdict(int)
    matched = gt_count = 0
    for record in records:
        det = detections.get(record.image_id)
        gt_boxes = [b for b, c in zip(record.boxes_xyxy, record.iscrowd) if not c]
        gt_attrs = [a for a, c in zip(record.attribute_ids, record.iscrowd) if not c]
        gt_count += len(gt_boxes)
        if det is None or not gt_boxes or not len(det["boxes"]):
            continue
        iou = box_iou(det["boxes"].float(), torch.tensor(gt_boxes, dtype=torch.float32)).numpy()  # (N, M)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in det["scores"].argsort(descending=True).tolist():
            candidates = np.where(~taken & (iou[d] >= iou_threshold), iou[d], -1.0)
            g = int(candidates.argmax())
            if candidates[g] < 0:
                continue
            taken[g] = True
            matched += 1
            probs = det["attr_probs"][d]  # (A,)
            for a in gt_attrs[g]:
                if a not in column:
                    continue
                kind = attribute_types[column[a]]
                cols = columns_of_type[kind]
                predicted = cols[int(probs[cols].argmax())]
                correct[kind] += int(predicted == column[a])
                total[kind] += 1
    out = {f"{kind}_accuracy": correct[kind] / total[kind] for kind in total}
    out["matched_fraction"] = matched / gt_count if gt_count else 0.0
    out["gt_boxes"] = float(gt_count)
    return out
