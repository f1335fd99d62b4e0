"""Region extraction: Faster R-CNN from torchvision parts on a timm backbone, grid features, training."""
from vlptm.detection.backbone import BackboneConfig, build_backbone, build_timm_classifier
from vlptm.detection.config import ExtractorConfig, GridConfig, RoiHeadsConfig, RpnConfig
from vlptm.detection.extractor import GridExtractor, RegionExtractor, build_extractor, load_extractor
from vlptm.detection.heads import AttributeHead
from vlptm.detection.selection import SelectionConfig, grid_boxes, select_regions
from vlptm.detection.torchvision_import import import_torchvision_checkpoint, torchvision_extractor_config

__all__ = [
    "AttributeHead",
    "BackboneConfig",
    "ExtractorConfig",
    "GridConfig",
    "GridExtractor",
    "RegionExtractor",
    "RoiHeadsConfig",
    "RpnConfig",
    "SelectionConfig",
    "build_backbone",
    "build_extractor",
    "build_timm_classifier",
    "grid_boxes",
    "import_torchvision_checkpoint",
    "load_extractor",
    "select_regions",
    "torchvision_extractor_config",
]
