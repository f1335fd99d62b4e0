"""Region extraction: Faster R-CNN from torchvision parts on a timm backbone, grid features, training.

Names are imported lazily, so ``vlptm.detection.config`` (plain dataclasses) loads without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackboneConfig": "config",
    "DetectorTrainConfig": "config",
    "ExtractorConfig": "config",
    "GridConfig": "config",
    "RoiHeadsConfig": "config",
    "RpnConfig": "config",
    "SelectionConfig": "config",
    "build_backbone": "backbone",
    "build_timm_classifier": "backbone",
    "AttributeHead": "heads",
    "grid_boxes": "selection",
    "select_regions": "selection",
    "GridExtractor": "extractor",
    "RegionExtractor": "extractor",
    "build_extractor": "extractor",
    "load_extractor": "extractor",
    "import_torchvision_checkpoint": "torchvision_import",
    "torchvision_extractor_config": "torchvision_import",
    "evaluate_detector": "evaluate",
    "train_detector": "train",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlptm.detection' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vlptm.detection.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return __all__
