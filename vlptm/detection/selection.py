"""Bottom-up-attention box selection and grid boxes.

Anderson et al. (2018) keep, per image, the proposals that survive per-class NMS with a class confidence of
at least 0.2, and clamp their number to [10, 100] (or take a fixed 36). The selection here follows that
recipe on Faster R-CNN outputs: every (proposal, class) pair takes part in a class-wise NMS, a proposal's
confidence is its best surviving class probability, and the count is clamped. When too few proposals pass,
the rest are filled by rank (surviving confidence first, then the raw best class probability), so an image
always gets at least ``min_boxes`` regions, a blank one included.

Letters: P proposals, C classes incl. background, K kept regions.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from vlptm.detection.config import SelectionConfig

__all__ = ["SelectionConfig", "select_regions", "grid_boxes"]


def select_regions(class_boxes: Tensor, class_probs: Tensor, config: SelectionConfig) -> Tuple[Tensor, Tensor, Tensor]:
    """Chooses the regions of one image.

    Args:
        class_boxes: ``(P, C, 4)`` class-specific boxes of each proposal (xyxy); with
            ``box_source="proposals"`` pass the proposal box repeated over C.
        class_probs: ``(P, C)`` softmax class probabilities, background at index 0.
        config: thresholds and count bounds.

    Returns:
        ``(index, boxes, confidence)``: ``(K,)`` long indices into the P proposals (best first),
        ``(K, 4)`` the chosen box of each (the regressed box of its best surviving class), ``(K,)`` its
        surviving confidence (0 for regions filled in by rank). ``K = min(P, clamp(#passing, low, high))``.
    """
    num_props = class_probs.shape[0]
    fg = class_probs[:, 1:]  # (P, C-1)
    max_conf = fg.new_zeros(num_props)  # (P,)
    best_class = fg.argmax(dim=1) + 1 if num_props else fg.new_zeros(0, dtype=torch.long)  # (P,)
    prop_idx, cls_idx = (fg >= config.candidate_threshold).nonzero(as_tuple=True)  # (M,), (M,)
    if prop_idx.numel():
        scores = fg[prop_idx, cls_idx]  # (M,)
        keep = batched_nms(class_boxes[prop_idx, cls_idx + 1].float(), scores.float(), cls_idx, config.nms_threshold)
        kept_prop, kept_cls, kept_score = prop_idx[keep], cls_idx[keep] + 1, scores[keep]
        max_conf.scatter_reduce_(0, kept_prop, kept_score, reduce="amax")
        winner = kept_score >= max_conf[kept_prop]  # the best surviving class of each proposal
        best_class[kept_prop[winner]] = kept_cls[winner]
    low, high = config.count_range
    passing = int((max_conf >= config.score_threshold).sum())
    count = min(num_props, max(low, min(high, passing)))
    raw_best = fg.max(dim=1).values if num_props else max_conf  # (P,)
    rank_key = torch.where(max_conf > 0, 1.0 + max_conf, raw_best)  # survivors first, then by raw score
    index = rank_key.argsort(descending=True)[:count]  # (K,)
    boxes = class_boxes[index, best_class[index]]  # (K, 4)
    return index, boxes, max_conf[index]


def grid_boxes(height: int, width: int, grid_size: int, device: Optional[torch.device] = None) -> Tensor:
    """``(S*S, 4)`` xyxy boxes of an S×S grid over an ``height``×``width`` image, row-major."""
    ys = torch.linspace(0, height, grid_size + 1, device=device)  # (S+1,)
    xs = torch.linspace(0, width, grid_size + 1, device=device)  # (S+1,)
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")  # (S, S)
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")  # (S, S)
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)  # (S*S, 4)
