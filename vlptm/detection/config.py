"""Configuration dataclasses of the region and grid extractors, and their dict/YAML round trip.

Overrides use dotted keys (``backbone.name``, ``selection.fixed_boxes``) and are type-checked against the
dataclass fields; a value given as a string (from ``--key=value``) is parsed as the field's type
(rules: :mod:`vlptm.coercion`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from vlptm.coercion import build_dataclass, set_dotted, to_dict

__all__ = [
    "BackboneConfig",
    "SelectionConfig",
    "RpnConfig",
    "RoiHeadsConfig",
    "ExtractorConfig",
    "GridConfig",
    "DetectorTrainConfig",
    "config_to_dict",
    "config_from_dict",
    "apply_overrides",
    "default_class_names",
]


def default_class_names() -> List[str]:
    """torchvision's COCO label space: 91 names, ``__background__`` at 0 and ``N/A`` for unused ids."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


@dataclass
class BackboneConfig:
    """How to build the backbone + FPN."""

    name: str = "tf_efficientnet_lite0"  # timm model name, or "torchvision:resnet50" (torchvision ResNet-FPN)
    weights: str = "auto"  # "auto" (packaged, else hub), "packaged", "hub", "none", or a state-dict path
    out_indices: Tuple[int, ...] = (1, 2, 3, 4)  # timm feature levels fed to the FPN (1 = stride 4)
    fpn_channels: int = 256  # FPN output channels (the RPN/RoI heads' input width)
    extra_max_pool: bool = True  # add the stride-2x "pool" level on top of the FPN (as torchvision does)
    trainable_stages: int = 5  # timm: how many of the last stages (of stem + blocks) train; 0 freezes all
    frozen_bn: bool = True  # replace BatchNorm by frozen BatchNorm (small detection batches)


@dataclass
class SelectionConfig:
    """Which regions an image keeps (bottom-up attention's defaults)."""

    score_threshold: float = 0.2  # keep regions whose best class confidence reaches this
    nms_threshold: float = 0.3  # IoU threshold of the per-class NMS
    min_boxes: int = 10  # at least this many regions (filled by rank when fewer pass the threshold)
    max_boxes: int = 100  # at most this many regions
    fixed_boxes: Optional[int] = None  # exactly K regions (e.g. 36), overriding min/max; None: [min, max]
    box_source: str = "regressed"  # "regressed": winning class's regressed box, features pooled on it;
    #                                "proposals": the RPN proposal box and its own RoI feature (original BUTD)
    candidate_threshold: float = 0.01  # (proposal, class) pairs below this probability skip the NMS

    def __post_init__(self) -> None:
        if self.box_source not in ("regressed", "proposals"):
            raise ValueError(f"box_source must be 'regressed' or 'proposals', got {self.box_source!r}")
        if self.fixed_boxes is not None and self.fixed_boxes < 1:
            raise ValueError(f"fixed_boxes must be >= 1, got {self.fixed_boxes}")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")

    @property
    def count_range(self) -> Tuple[int, int]:
        """``(low, high)`` bounds of the number of kept regions."""
        if self.fixed_boxes is not None:
            return self.fixed_boxes, self.fixed_boxes
        return self.min_boxes, self.max_boxes


@dataclass
class RpnConfig:
    """torchvision RegionProposalNetwork settings (its defaults unless noted)."""

    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)  # one anchor size per FPN level (pool level incl.)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor height/width ratios at every level
    pre_nms_top_n_train: int = 2000  # proposals per level before NMS, training
    pre_nms_top_n_test: int = 1000  # proposals per level before NMS, inference
    post_nms_top_n_train: int = 2000  # proposals per image after NMS, training
    post_nms_top_n_test: int = 1000  # proposals per image after NMS, inference
    nms_threshold: float = 0.7  # IoU of the proposal NMS
    fg_iou_threshold: float = 0.7  # anchor IoU for a positive
    bg_iou_threshold: float = 0.3  # anchor IoU below which an anchor is negative
    batch_size_per_image: int = 256  # anchors sampled per image for the loss
    positive_fraction: float = 0.5  # positive share of those anchors


@dataclass
class RoiHeadsConfig:
    """torchvision RoIHeads settings plus the box head and attribute head sizes."""

    pool_size: int = 7  # MultiScaleRoIAlign output size
    sampling_ratio: int = 2  # RoIAlign sampling points per bin side
    representation_size: int = 1024  # D: the box head's (two-MLP) output, i.e. the region feature size
    batch_size_per_image: int = 512  # RoIs sampled per image for the loss
    positive_fraction: float = 0.25  # positive share of those RoIs
    fg_iou_threshold: float = 0.5  # RoI IoU for a positive
    bg_iou_threshold: float = 0.5  # RoI IoU below which a RoI is background
    score_threshold: float = 0.05  # detect(): drop detections below this score
    nms_threshold: float = 0.5  # detect(): per-class NMS IoU
    detections_per_image: int = 100  # detect(): at most this many detections
    class_embed_dim: int = 256  # attribute head: class embedding size
    attribute_hidden_dim: int = 512  # attribute head: hidden layer size
    attribute_loss_weight: float = 1.0  # weight of the attribute BCE in the total loss


@dataclass
class ExtractorConfig:
    """The whole Faster R-CNN region extractor: preprocessing, parts, label spaces, box selection."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # timm/torchvision backbone + FPN
    rpn: RpnConfig = field(default_factory=RpnConfig)  # proposal network
    roi_heads: RoiHeadsConfig = field(default_factory=RoiHeadsConfig)  # box, class and attribute heads
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # which regions extract() keeps
    image_mean: Tuple[float, ...] = (0.5, 0.5, 0.5)  # RGB normalisation mean (EfficientNet-Lite: 0.5)
    image_std: Tuple[float, ...] = (0.5, 0.5, 0.5)  # RGB normalisation std (EfficientNet-Lite: 0.5)
    min_size: int = 512  # inference: resize the short side to this many pixels
    max_size: int = 853  # ... unless the long side would exceed this
    train_min_sizes: Tuple[int, ...] = ()  # training scale jitter: short side drawn from these (+ min_size)
    class_names: List[str] = field(default_factory=default_class_names)  # index 0 = background
    category_ids: List[int] = field(default_factory=list)  # dataset category id per class index ([] = index)
    attribute_names: List[str] = field(default_factory=list)  # empty: no attribute head
    attribute_types: List[str] = field(default_factory=list)  # per attribute, e.g. "color" / "size"

    def __post_init__(self) -> None:
        if len(self.class_names) < 2:
            raise ValueError("class_names needs the background (index 0) and at least one class")
        if self.category_ids and len(self.category_ids) != len(self.class_names):
            raise ValueError("category_ids must give one id per class name (background included)")
        if self.attribute_types and len(self.attribute_types) != len(self.attribute_names):
            raise ValueError("attribute_types must give one type per attribute name")

    @property
    def num_classes(self) -> int:
        """C, classes including background."""
        return len(self.class_names)

    @property
    def num_attributes(self) -> int:
        """A, attributes (0: no attribute head)."""
        return len(self.attribute_names)


@dataclass
class GridConfig:
    """Grid features (Jiang et al., 2020): the backbone's last map average-pooled on an S×S grid."""

    backbone: str = "tf_efficientnet_lite0"  # timm classification model; its forward_features map is pooled
    weights: str = "auto"  # as BackboneConfig.weights
    grid_size: int = 6  # S: S*S regions per image (6 -> 36, the fixed-K of bottom-up attention)
    image_mean: Tuple[float, ...] = (0.5, 0.5, 0.5)  # RGB normalisation mean
    image_std: Tuple[float, ...] = (0.5, 0.5, 0.5)  # RGB normalisation std
    min_size: int = 512  # resize the short side to this many pixels
    max_size: int = 853  # ... unless the long side would exceed this


@dataclass
class DetectorTrainConfig:
    """What ``vlptm train-detector`` runs."""

    data: str = ""  # training instances.json (or its folder)
    val_data: str = ""  # held-out instances.json/folder; "" = the "val" split of data, else its last 10%
    out: str = "runs/detector"  # run folder (checkpoints, model/, metrics.json)
    variant: str = "effnet-lite0-fpn"  # base extractor: variant name, YAML path, or saved extractor folder
    minutes: float = 15.0  # training time budget in minutes (evaluation not included), on budget_clock
    budget_clock: str = "wall"  # "wall": elapsed time; "process": this process's CPU time summed over threads
    max_steps: int = 0  # also stop after this many steps (0: time budget only)
    batch_size: int = 4  # images per step
    optimizer: str = "adamw"  # "adamw" or "sgd"
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # decoupled (AdamW) or L2 (SGD) weight decay
    warmup_steps: int = 50  # linear warm-up steps
    min_lr_ratio: float = 0.02  # cosine floor as a fraction of lr
    hflip_prob: float = 0.5  # horizontal flip probability
    grad_clip: float = 10.0  # gradient-norm clip (0: off)
    num_workers: int = 0  # DataLoader worker processes
    checkpoint_minutes: float = 3.0  # checkpoint period
    eval_max_images: int = 0  # evaluate on at most this many held-out images (0: all)
    eval_batch_size: int = 4  # images per evaluation forward
    log_every: int = 20  # log every this many steps
    seed: int = 0  # random seed (model init, sampling, flips)


config_to_dict = to_dict  # plain nested dict of a config (vlptm.coercion.to_dict)


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Builds dataclass ``cls`` from a (nested) dict; unknown keys raise ``KeyError``, ill-typed values
    ``TypeError`` (rules: :mod:`vlptm.coercion`)."""
    return build_dataclass(cls, data, cls.__name__)


def dotted_overrides(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config dict as the dotted-key overrides :func:`apply_overrides` takes.

    Example:
        >>> dotted_overrides({"selection": {"fixed_boxes": 36}, "min_size": 256})
        {'selection.fixed_boxes': 36, 'min_size': 256}
    """
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(dotted_overrides(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Returns a copy of ``config`` with dotted-key overrides applied (``{"selection.fixed_boxes": 36}``).

    A section given a mapping (``{"selection": {"max_boxes": 50}}``) is rebuilt from it; the rules are
    :func:`vlptm.coercion.set_dotted`'s.

    Raises:
        KeyError: unknown key.
        TypeError: a value that does not fit the field's type.
    """
    return set_dotted(config, overrides)
