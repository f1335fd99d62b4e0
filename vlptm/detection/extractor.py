"""Region extractors: a Faster R-CNN composed from torchvision parts, and grid features.

:class:`RegionExtractor` follows torchvision's ``GeneralizedRCNN``: transform -> backbone (+FPN) -> RPN ->
RoI heads, then bottom-up-attention box selection and RoI features of the kept boxes, and an attribute head
on top. Every part is built from the config only when it is not passed in. Its parameter names match
torchvision's ``FasterRCNN`` (``backbone.body``, ``backbone.fpn``, ``rpn``, ``roi_heads``), so torchvision
checkpoints load into it (:func:`vlptm.detection.import_torchvision_checkpoint`).

A detectron2 backend (e.g. for the Visual Genome bottom-up-attention checkpoints) would be another module
with the same ``extract`` / ``feature_dim`` / ``config_hash`` surface returning :class:`RegionFeatures`.

Letters: B images, P proposals, R RoIs, K kept regions, C classes incl. background, A attributes,
D feature size.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, clip_boxes_to_image

from vlptm.detection.backbone import build_backbone, build_timm_classifier
from vlptm.detection.config import (
    ExtractorConfig,
    GridConfig,
    RoiHeadsConfig,
    RpnConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
)
from vlptm.detection.heads import AttributeHead, attribute_loss
from vlptm.detection.selection import grid_boxes, select_regions
from vlptm.resources import resource_dir
from vlptm.structures import RegionFeatures

__all__ = ["RegionExtractor", "GridExtractor", "build_extractor", "load_extractor", "variant_config", "VARIANTS_DIR"]

# Named variants: detectors/<name>.yaml next to the package (source checkouts and editable installs).
VARIANTS_DIR = resource_dir("detectors")
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"

ImageInput = Union[Tensor, Sequence[Tensor]]


class RegionExtractor(nn.Module):
    """Faster R-CNN region extractor with class and attribute soft labels.

    Args:
        config: the whole configuration; ``None`` gives the default (EfficientNet-Lite0 + FPN).
        transform: resize + normalise module (``GeneralizedRCNNTransform``); built from ``config`` if None.
        backbone: module returning an ordered dict of FPN maps, with ``out_channels``; built if None.
        rpn: ``RegionProposalNetwork``; built if None.
        roi_heads: ``RoIHeads`` (box pool, two-MLP box head, class/box predictor); built if None.
        attribute_head: :class:`AttributeHead`; built if None and ``config.attribute_names`` is non-empty.

    Images are ``(3, H, W)`` tensors, uint8 in ``[0, 255]`` or float in ``[0, 1]``; boxes everywhere are xyxy
    in pixels of the original image. Targets for :meth:`losses` are dicts with ``boxes (M, 4)``,
    ``labels (M,)`` (class indices, 1..C-1) and, with an attribute head, ``attributes (M, A)`` multi-hot.

    Example:
        >>> extractor = RegionExtractor()                  # packaged ImageNet backbone, untrained heads
        >>> regions = extractor.extract([torch.zeros(3, 96, 128, dtype=torch.uint8)])
        >>> len(regions[0]) >= 10, regions[0].features.shape[1] == extractor.feature_dim
        (True, True)
    """

    def __init__(
        self,
        config: Optional[ExtractorConfig] = None,
        transform: Optional[nn.Module] = None,
        backbone: Optional[nn.Module] = None,
        rpn: Optional[nn.Module] = None,
        roi_heads: Optional[RoIHeads] = None,
        attribute_head: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else ExtractorConfig()
        cfg = self.config
        if transform is None:
            sizes = tuple(cfg.train_min_sizes) + (cfg.min_size,)  # eval uses the last one
            transform = GeneralizedRCNNTransform(sizes, cfg.max_size, list(cfg.image_mean), list(cfg.image_std))
        self.transform = transform
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone)
        num_levels = len(cfg.backbone.out_indices)
        if rpn is None:
            rpn = _build_rpn(cfg.rpn, self.backbone.out_channels, num_levels + int(cfg.backbone.extra_max_pool))
        self.rpn = rpn
        if roi_heads is None:
            roi_heads = _build_roi_heads(cfg.roi_heads, self.backbone.out_channels, num_levels, cfg.num_classes)
        self.roi_heads = roi_heads
        if attribute_head is None and cfg.num_attributes:
            attribute_head = AttributeHead(self.feature_dim, cfg.num_classes, cfg.num_attributes,
                                           cfg.roi_heads.class_embed_dim, cfg.roi_heads.attribute_hidden_dim)
        self.attribute_head = attribute_head

    @property
    def feature_dim(self) -> int:
        """D, the size of each region feature (the box head's output)."""
        return int(self.roi_heads.box_predictor.cls_score.in_features)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ training
    def losses(self, images: ImageInput, targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Training losses of one batch (call in ``train()`` mode).

        Args:
            images: ``B`` images ``(3, H, W)``.
            targets: ``B`` dicts with ``boxes (M, 4)`` xyxy pixels, ``labels (M,)`` long and, when the
                extractor has an attribute head, ``attributes (M, A)`` multi-hot.

        Returns:
            ``{"rpn_objectness", "rpn_box", "classifier", "box_regression"[, "attributes"]}``, each a
            scalar; their (weighted) sum is ``losses["total"]``.
        """
        if not self.training:
            raise RuntimeError("RegionExtractor.losses needs train() mode (torchvision's RPN only has losses then)")
        image_list, targets = self.transform(_to_float_images(images, self.device), [dict(t) for t in targets])
        features = self.backbone(image_list.tensors)  # {level: (B, F, h, w)}
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        heads = self.roi_heads
        proposals, matched_idxs, labels, regression_targets = heads.select_training_samples(proposals, targets)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, image_list.image_sizes))  # (R, D)
        class_logits, box_regression = heads.box_predictor(box_features)  # (R, C), (R, 4C)
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        out = {"rpn_objectness": rpn_losses["loss_objectness"], "rpn_box": rpn_losses["loss_rpn_box_reg"],
               "classifier": loss_cls, "box_regression": loss_box}
        total = sum(out.values())
        if self.attribute_head is not None:
            label = torch.cat(labels)  # (R,)
            foreground = label > 0  # (R,)
            matched_attrs = [t["attributes"][m] if len(t["attributes"]) else
                             t["attributes"].new_zeros(len(m), self.config.num_attributes)
                             for t, m in zip(targets, matched_idxs)]  # per image (R_i, A)
            attr_target = torch.cat(matched_attrs)[foreground]  # (R_fg, A)
            logits = self.attribute_head(box_features[foreground], label[foreground])  # (R_fg, A)
            out["attributes"] = attribute_loss(logits, [attr_target])
            total = total + self.config.roi_heads.attribute_loss_weight * out["attributes"]
        out["total"] = total
        return out

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def detect(self, images: ImageInput) -> List[Dict[str, Tensor]]:
        """Standard detections (torchvision's postprocess: score threshold, per-class NMS, top-N).

        Returns:
            Per image ``{"boxes": (N, 4), "labels": (N,), "scores": (N,)}`` plus ``"attr_probs": (N, A)``
            with an attribute head; boxes in original-image pixels. Identical to torchvision's
            ``FasterRCNN`` given the same parts and weights.
        """
        with _eval_mode(self):
            images = _to_float_images(images, self.device)
            original_sizes = [tuple(img.shape[-2:]) for img in images]
            image_list, _ = self.transform(images)
            features = self.backbone(image_list.tensors)
            proposals, _ = self.rpn(image_list, features)
            detections, _ = self.roi_heads(features, proposals, image_list.image_sizes)
            if self.attribute_head is not None:
                box_features = self._pooled([d["boxes"] for d in detections], features, image_list.image_sizes)
                attr = self.attribute_head(box_features, torch.cat([d["labels"] for d in detections])).sigmoid()
                for det, probs in zip(detections, attr.split([len(d["boxes"]) for d in detections])):
                    det["attr_probs"] = probs  # (N, A)
            return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @torch.inference_mode()
    def extract(self, images: ImageInput) -> List[RegionFeatures]:
        """Regions of each image with RoI features and class/attribute soft labels.

        Args:
            images: ``B`` images ``(3, H, W)``, uint8 or float in ``[0, 1]``, any sizes.

        Returns:
            ``B`` :class:`RegionFeatures`, each with ``boxes (K, 4)`` (original pixels), ``features (K, D)``,
            ``scores (K,)``, ``cls_probs (K, C)`` (background at 0) and, with an attribute head,
            ``attr_probs (K, A)`` (independent sigmoid probabilities). ``K`` follows
            ``config.selection`` and is never zero.
        """
        sel = self.config.selection
        with _eval_mode(self):
            images = _to_float_images(images, self.device)
            original_sizes = [tuple(img.shape[-2:]) for img in images]
            image_list, _ = self.transform(images)
            sizes = image_list.image_sizes
            features = self.backbone(image_list.tensors)
            proposals, _ = self.rpn(image_list, features)
            low = sel.count_range[0]
            proposals = [_pad_proposals(p, size, low) for p, size in zip(proposals, sizes)]
            box_features = self._pooled(proposals, features, sizes)  # (P_total, D)
            logits, regression = self.roi_heads.box_predictor(box_features)  # (P_total, C), (P_total, 4C)
            probs = F.softmax(logits.float(), dim=-1)  # (P_total, C)
            class_boxes = self.roi_heads.box_coder.decode(regression.float(), proposals)  # (P_total, C, 4)
            counts = [len(p) for p in proposals]
            chosen: List[Tuple[Tensor, Tensor]] = []
            per_image = zip(class_boxes.split(counts), probs.split(counts), proposals, sizes)
            for img_boxes, img_probs, props, size in per_image:
                if sel.box_source == "proposals":
                    img_boxes = props[:, None, :].expand_as(img_boxes)  # (P, C, 4)
                else:
                    img_boxes = clip_boxes_to_image(img_boxes, size)
                index, boxes, _ = select_regions(img_boxes, img_probs, sel)
                chosen.append((index, boxes))
            if sel.box_source == "proposals":
                offsets = torch.tensor([0] + counts[:-1], device=probs.device).cumsum(0)
                flat = torch.cat([idx + off for (idx, _), off in zip(chosen, offsets)])  # (K_total,)
                kept_features, kept_probs = box_features[flat], probs[flat]
            else:
                kept_features = self._pooled([b for _, b in chosen], features, sizes)  # (K_total, D)
                kept_probs = F.softmax(self.roi_heads.box_predictor(kept_features)[0].float(), dim=-1)  # (K_total, C)
            attr_probs = None
            if self.attribute_head is not None:
                labels = kept_probs[:, 1:].argmax(dim=1) + 1  # (K_total,)
                attr_probs = self.attribute_head(kept_features, labels).float().sigmoid()  # (K_total, A)
            out = []
            splits = [len(b) for _, b in chosen]
            per_image = zip(chosen, kept_features.split(splits), kept_probs.split(splits), sizes, original_sizes,
                            attr_probs.split(splits) if attr_probs is not None else [None] * len(chosen))
            for (_, boxes), feats, cls_probs, size, original, attrs in per_image:
                out.append(RegionFeatures(
                    boxes=resize_boxes(boxes, size, original).float(),
                    features=feats.float(),
                    scores=cls_probs[:, 1:].max(dim=1).values,
                    image_size=original,
                    cls_probs=cls_probs,
                    attr_probs=attrs,
                ))
            return out

    def _pooled(self, boxes: List[Tensor], features: Dict[str, Tensor], sizes: List[Tuple[int, int]]) -> Tensor:
        heads = self.roi_heads
        return heads.box_head(heads.box_roi_pool(features, boxes, sizes))  # (sum K_i, D)

    # ------------------------------------------------------------------ identity and files
    def config_hash(self) -> str:
        """Stable hex digest of the configuration and the weights (the feature store's extractor identity)."""
        return _identity_hash("region", self.config, self)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Writes ``path/config.json`` and ``path/model.safetensors`` (each atomically)."""
        return _save(self, "region", self.config, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "RegionExtractor":
        """Loads an extractor written by :meth:`save` (no backbone weights are fetched)."""
        model = load_extractor(path, map_location)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class GridExtractor(nn.Module):
    """Grid features (Jiang et al., 2020): no detector, the backbone's last map pooled on an S×S grid.

    Args:
        config: ``GridConfig``; ``None`` gives EfficientNet-Lite0's 1280-d head map on a 6×6 grid.
        network: a timm classification model (its ``forward_features`` map is pooled); built if None.

    Example:
        >>> grid = GridExtractor()
        >>> r = grid.extract([torch.zeros(3, 100, 200, dtype=torch.uint8)])[0]
        >>> r.boxes.shape, r.features.shape[1] == grid.feature_dim
        (torch.Size([36, 4]), True)
    """

    def __init__(self, config: Optional[GridConfig] = None, network: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.config = config if config is not None else GridConfig()
        cfg = self.config
        self.network = network if network is not None else build_timm_classifier(cfg.backbone, cfg.weights)
        self.transform = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, list(cfg.image_mean), list(cfg.image_std))
        self.stride = int(self.network.feature_info[-1]["reduction"])

    @property
    def feature_dim(self) -> int:
        """D, the channels of the pooled map."""
        return int(self.network.num_features)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def extract(self, images: ImageInput) -> List[RegionFeatures]:
        """``S*S`` grid regions per image: boxes of the grid cells and their pooled features ``(S*S, D)``.

        Scores are 1 and there are no class/attribute probabilities.
        """
        s = self.config.grid_size
        with _eval_mode(self):
            images = _to_float_images(images, self.device)
            original_sizes = [tuple(img.shape[-2:]) for img in images]
            image_list, _ = self.transform(images)
            maps = self.network.forward_features(image_list.tensors)  # (B, D, h, w)
            out = []
            for fmap, (h, w), (oh, ow) in zip(maps, image_list.image_sizes, original_sizes):
                valid = fmap[:, : -(-h // self.stride), : -(-w // self.stride)]  # (D, h', w') unpadded part
                pooled = F.adaptive_avg_pool2d(valid.float(), s)  # (D, S, S)
                feats = pooled.flatten(1).t().contiguous()  # (S*S, D)
                boxes = grid_boxes(oh, ow, s, device=feats.device)  # (S*S, 4)
                out.append(RegionFeatures(boxes=boxes, features=feats, scores=torch.ones(s * s, device=feats.device),
                                          image_size=(oh, ow)))
            return out

    def config_hash(self) -> str:
        """Stable hex digest of the configuration and the weights."""
        return _identity_hash("grid", self.config, self)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Writes ``path/config.json`` and ``path/model.safetensors``."""
        return _save(self, "grid", self.config, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> "GridExtractor":
        """Loads a grid extractor written by :meth:`save`."""
        model = load_extractor(path, map_location)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def build_extractor(name_or_path: Union[str, os.PathLike] = "effnet-lite0-fpn", **overrides: Any) -> nn.Module:
    """Builds a named extractor variant, a YAML recipe, or loads a saved extractor directory.

    Args:
        name_or_path: a variant name (``detectors/<name>.yaml``: ``effnet-lite0-fpn``, ``grid-effnet-lite0``,
            ``torchvision-resnet50-fpn`` ...), a path to such a YAML file, or a directory written by ``save``.
        **overrides: dotted-key config overrides (``selection__fixed_boxes=36`` or
            ``**{"selection.fixed_boxes": 36}``); type-checked, unknown keys raise ``KeyError``.

    Returns:
        A :class:`RegionExtractor` or :class:`GridExtractor`.

    Example:
        >>> extractor = build_extractor("effnet-lite0-fpn", **{"selection.fixed_boxes": 36})
        >>> extractor.config.selection.count_range
        (36, 36)
    """
    overrides = {k.replace("__", "."): v for k, v in overrides.items()}
    path = Path(name_or_path)
    if path.is_dir() and (path / _CONFIG_FILE).is_file():
        model = load_extractor(path)
        not_selection = sorted(k for k in overrides if not k.startswith("selection."))
        if not_selection:
            raise KeyError(f"a saved extractor only takes selection.* overrides, got {not_selection}")
        if overrides:
            model.config = apply_overrides(model.config, overrides)
        return model
    kind, config = variant_config(name_or_path)
    return _KINDS[kind][0](apply_overrides(config, overrides))


def variant_config(name_or_path: Union[str, os.PathLike]) -> Tuple[str, Any]:
    """``(kind, config)`` of a named variant (``detectors/<name>.yaml``) or a YAML file; kind is
    ``"region"`` (:class:`ExtractorConfig`) or ``"grid"`` (:class:`GridConfig`)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = VARIANTS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in VARIANTS_DIR.glob("*.yaml")) if VARIANTS_DIR.is_dir() else []
            raise KeyError(f"unknown extractor variant {str(name_or_path)!r}; known: {known} (or pass a YAML path)")
    with open(path) as f:
        data = dict(yaml.safe_load(f) or {})
    kind = data.pop("kind", "region")
    if kind not in _KINDS:
        raise ValueError(f"{path}: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    return kind, config_from_dict(_KINDS[kind][1], data)


def load_extractor(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Loads a :class:`RegionExtractor` or :class:`GridExtractor` saved with ``save(path)``."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / _CONFIG_FILE).read_text())
    cls, config_cls = _KINDS[meta["kind"]]
    config = config_from_dict(config_cls, meta["config"])
    if meta["kind"] == "region":
        config.backbone.weights = "none"
    else:
        config.weights = "none"
    model = cls(config)
    state = load_file(str(path / _WEIGHTS_FILE), device=str(map_location))
    model.load_state_dict(state, strict=True)
    if meta["kind"] == "region":
        model.config.backbone.weights = meta["config"]["backbone"]["weights"]
    else:
        model.config.weights = meta["config"]["weights"]
    return model.to(map_location).eval()


_KINDS = {"region": (RegionExtractor, ExtractorConfig), "grid": (GridExtractor, GridConfig)}


def _build_rpn(cfg: RpnConfig, channels: int, num_levels: int) -> RegionProposalNetwork:
    if len(cfg.anchor_sizes) != num_levels:
        raise ValueError(f"rpn.anchor_sizes needs one size per FPN level ({num_levels}), got {cfg.anchor_sizes}")
    anchors = AnchorGenerator(tuple((s,) for s in cfg.anchor_sizes), (tuple(cfg.aspect_ratios),) * num_levels)
    head = RPNHead(channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors, head, cfg.fg_iou_threshold, cfg.bg_iou_threshold, cfg.batch_size_per_image, cfg.positive_fraction,
        dict(training=cfg.pre_nms_top_n_train, testing=cfg.pre_nms_top_n_test),
        dict(training=cfg.post_nms_top_n_train, testing=cfg.post_nms_top_n_test), cfg.nms_threshold,
    )


def _build_roi_heads(cfg: RoiHeadsConfig, channels: int, num_levels: int, num_classes: int) -> RoIHeads:
    pool = MultiScaleRoIAlign([str(i) for i in range(num_levels)], cfg.pool_size, cfg.sampling_ratio)
    head = TwoMLPHead(channels * cfg.pool_size ** 2, cfg.representation_size)
    predictor = FastRCNNPredictor(cfg.representation_size, num_classes)
    return RoIHeads(pool, head, predictor, cfg.fg_iou_threshold, cfg.bg_iou_threshold, cfg.batch_size_per_image,
                    cfg.positive_fraction, None, cfg.score_threshold, cfg.nms_threshold, cfg.detections_per_image)


def _to_float_images(images: ImageInput, device: torch.device) -> List[Tensor]:
    """uint8 ``[0, 255]`` or float ``[0, 1]`` images ``(3, H, W)`` -> float32 on ``device``."""
    out = []
    for img in images:
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"expected (3, H, W) image tensors, got {getattr(img, 'shape', type(img))}")
        img = img.to(device)
        out.append(img.float() / 255.0 if img.dtype == torch.uint8 else img.float())
    return out


def _pad_proposals(proposals: Tensor, size: Tuple[int, int], needed: int) -> Tensor:
    """Appends whole-image and grid boxes (1×1, 2×2, 3×3 ...) until there are ``needed`` candidates."""
    extra, s = [], 1
    while len(proposals) + sum(len(e) for e in extra) < needed:
        extra.append(grid_boxes(size[0], size[1], s, device=proposals.device).to(proposals.dtype))
        s += 1
    return torch.cat([proposals, *extra]) if extra else proposals  # (P', 4)


class _eval_mode:
    """Context manager: puts a module in eval mode and restores its previous mode."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.module.train(self.was_training)


def _identity_hash(kind: str, config: Any, module: nn.Module) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "config": config_to_dict(config)}, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _save(module: nn.Module, kind: str, config: Any, path: Union[str, os.PathLike]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    _atomic_write(path / _WEIGHTS_FILE, lambda p: save_file(state, p))
    meta = {"kind": kind, "config": config_to_dict(config)}
    _atomic_write(path / _CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return path


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
