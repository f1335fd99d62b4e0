"""Import torchvision Faster R-CNN checkpoints into :class:`RegionExtractor`.

torchvision's ``fasterrcnn_resnet50_fpn`` (and any ``FasterRCNN`` on a ResNet-FPN backbone) names its
parameters ``backbone.body.*``, ``backbone.fpn.*``, ``rpn.*`` and ``roi_heads.*``; the extractor uses the same
names, so importing is a strict ``load_state_dict`` after building the extractor with the matching parts:
torchvision's ResNet-FPN backbone, ImageNet normalisation, 800/1333 resizing and the checkpoint's number
of classes. The imported extractor has no attribute head (torchvision checkpoints have none).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch
from torch import Tensor

from vlptm.detection.backbone import BackboneConfig
from vlptm.detection.config import ExtractorConfig, apply_overrides, default_class_names
from vlptm.detection.extractor import RegionExtractor

__all__ = ["torchvision_extractor_config", "import_torchvision_checkpoint"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def torchvision_extractor_config(arch: str = "resnet50", num_classes: int = 91, **overrides: Any) -> ExtractorConfig:
    """The :class:`ExtractorConfig` of torchvision's ``fasterrcnn_<arch>_fpn`` (v1) with ``num_classes``.

    Class names are torchvision's COCO names when ``num_classes == 91``, else ``class_<i>``.
    """
    names = default_class_names() if num_classes == 91 else ["__background__"] + [
        f"class_{i}" for i in range(1, num_classes)]
    config = ExtractorConfig(
        backbone=BackboneConfig(name=f"torchvision:{arch}", weights="none", out_indices=(1, 2, 3, 4),
                                fpn_channels=256, extra_max_pool=True, trainable_stages=3, frozen_bn=True),
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, min_size=800, max_size=1333,
        class_names=names, category_ids=list(range(num_classes)),
    )
    return apply_overrides(config, overrides) if overrides else config


def import_torchvision_checkpoint(
    checkpoint: Union[str, os.PathLike, Mapping[str, Tensor]],
    arch: str = "resnet50",
    config: Optional[ExtractorConfig] = None,
) -> RegionExtractor:
    """Builds a :class:`RegionExtractor` holding a torchvision Faster R-CNN checkpoint's weights.

    Args:
        checkpoint: a state dict, or a file holding one (``torch.save(model.state_dict())``, or the
            reference training scripts' ``{"model": state_dict, ...}``).
        arch: the ResNet of the checkpoint's backbone (``resnet50`` for ``fasterrcnn_resnet50_fpn``).
        config: the extractor config to build; default: :func:`torchvision_extractor_config` with the
            checkpoint's number of classes (read from ``roi_heads.box_predictor.cls_score.weight``).

    Returns:
        The extractor in eval mode; ``detect`` gives torchvision's detections, ``extract`` the regions.

    Raises:
        KeyError: when the checkpoint is not a torchvision Faster R-CNN state dict (missing/unexpected keys).

    Example:
        >>> from torchvision.models.detection import fasterrcnn_resnet50_fpn
        >>> tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
        >>> extractor = import_torchvision_checkpoint(tv.state_dict())
        >>> extractor.feature_dim
        1024
    """
    state = checkpoint
    if not isinstance(state, Mapping):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise KeyError(f"not a torchvision Faster R-CNN state dict: {key} is missing")
    if config is None:
        config = torchvision_extractor_config(arch, num_classes=int(state[key].shape[0]))
    extractor = RegionExtractor(config)
    missing, unexpected = extractor.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("attribute_head.")]
    if missing or unexpected:
        raise KeyError(f"checkpoint does not fit the extractor: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return extractor.eval()
