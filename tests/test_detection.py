"""Tests of the region extractor: backbone weights, box selection, extraction, grid mode, save/load."""
from __future__ import annotations

import json

import pytest
import torch

from vlptm.detection import (
    ExtractorConfig,
    GridExtractor,
    RegionExtractor,
    SelectionConfig,
    build_extractor,
    grid_boxes,
    select_regions,
)
from vlptm.detection.backbone import (
    build_timm_classifier,
    efficientnet_lite0_weights_path,
    map_efficientnet_lite0_state_dict,
)
from vlptm.detection.config import apply_overrides
from vlptm.structures import RegionFeatures


def tiny_config(**overrides) -> ExtractorConfig:
    """A small, fast extractor: packaged backbone on 128-px images, narrow FPN and box head, 4 classes."""
    base = {
        "backbone.out_indices": [2, 3, 4], "backbone.fpn_channels": 32, "min_size": 128, "max_size": 160,
        "rpn.anchor_sizes": [32, 64, 128, 256], "rpn.pre_nms_top_n_test": 100, "rpn.post_nms_top_n_test": 50,
        "rpn.pre_nms_top_n_train": 100, "rpn.post_nms_top_n_train": 50, "roi_heads.representation_size": 64,
        "roi_heads.batch_size_per_image": 32, "roi_heads.class_embed_dim": 8, "roi_heads.attribute_hidden_dim": 16,
        "class_names": ["__background__", "circle", "square", "star"], "category_ids": [0, 1, 2, 3],
        "attribute_names": ["red", "blue", "small", "large"], "attribute_types": ["color", "color", "size", "size"],
    }
    base.update(overrides)
    return apply_overrides(ExtractorConfig(), base)


@pytest.fixture(scope="module")
def tiny_extractor() -> RegionExtractor:
    torch.manual_seed(0)
    return RegionExtractor(tiny_config()).eval()


def _images():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8, generator=g), torch.rand(3, 90, 70, generator=g)]


# --------------------------------------------------------------------------------------------- backbone
def test_efficientnet_lite0_mapping_consumes_every_tensor_with_equal_shapes():
    import timm

    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_efficientnet_lite0_state_dict(source, list(target), {k: v.shape for k, v in target.items()})
    real_source = [k for k in source if not k.endswith("num_batches_tracked")]
    assert len(mapped) == len(real_source) == 247
    assert set(mapped) == {k for k in target if not k.endswith("num_batches_tracked")}
    assert all(mapped[k].shape == target[k].shape for k in mapped)
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    # A source whose order or shapes disagree is refused, not silently loaded.
    shuffled = dict(reversed(list(source.items())))
    with pytest.raises(ValueError):
        map_efficientnet_lite0_state_dict(shuffled, list(target), {k: v.shape for k, v in target.items()})


def test_packaged_backbone_is_loaded_into_the_detector(tiny_extractor):
    source = torch.load(efficientnet_lite0_weights_path(), map_location="cpu")
    body = tiny_extractor.backbone.body.state_dict()
    assert torch.equal(body["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.allclose(body["bn1.running_var"], source["_bn0.running_var"])


def test_classifier_labels_real_photos(shared_data):
    """The mapped ImageNet weights recognise COCO photos that instances.json says show a zebra / a cat."""
    import torchvision.transforms.functional as TF

    from vlptm.data.images import load_image

    coco = json.loads((shared_data / "coco128" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file = {i["file_name"]: i["id"] for i in coco["images"]}
    model = build_timm_classifier("tf_efficientnet_lite0").eval()
    # ImageNet indices: 340 zebra; 281-285 domestic cats.
    for file_name, coco_name, imagenet_ids, min_prob in [("000000000034.jpg", "zebra", {340}, 0.5),
                                                          ("000000000599.jpg", "cat", set(range(281, 286)), 0.3)]:
        labels = {names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == by_file[file_name]}
        assert coco_name in labels
        image = load_image(shared_data / "coco128" / "images" / file_name)
        x = (TF.to_tensor(TF.center_crop(TF.resize(image, 224), 224)) - 0.5) / 0.5  # (3, 224, 224)
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]  # (1000,)
        top5 = set(probs.topk(5).indices.tolist())
        assert top5 & imagenet_ids, f"{file_name}: top-5 {sorted(top5)} has no {coco_name} class"
        assert float(probs[list(imagenet_ids)].sum()) >= min_prob


# --------------------------------------------------------------------------------------------- selection
def _selection_case():
    # 4 proposals, classes: background, A, B.  Proposals 0 and 1 overlap heavily (IoU 0.81).
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    class_boxes = boxes[:, None, :].expand(4, 3, 4).clone()  # (P, C, 4)
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.0], [0.7, 0.05, 0.25], [0.95, 0.04, 0.01]])
    return class_boxes, probs


def test_select_regions_per_class_nms_and_threshold():
    class_boxes, probs = _selection_case()
    index, boxes, conf = select_regions(class_boxes, probs, SelectionConfig(min_boxes=1, max_boxes=10))
    # proposal 1 is suppressed by 0 (same class, IoU > 0.3); proposal 3 fails the 0.2 threshold.
    assert index.tolist() == [0, 2]
    assert torch.allclose(conf, torch.tensor([0.9, 0.25]))
    assert torch.equal(boxes[1], class_boxes[2, 2])


def test_select_regions_fills_to_min_and_clamps_to_max_and_fixed():
    class_boxes, probs = _selection_case()
    # Filling: the best of the below-threshold survivors first (proposal 3, 0.04), then suppressed ones.
    index, _, conf = select_regions(class_boxes, probs, SelectionConfig(min_boxes=3, max_boxes=10))
    assert index.tolist() == [0, 2, 3] and torch.isclose(conf[2], torch.tensor(0.04))
    index, _, conf = select_regions(class_boxes, probs, SelectionConfig(min_boxes=4, max_boxes=10))
    assert index.tolist() == [0, 2, 3, 1] and conf[3] == 0
    index, _, _ = select_regions(class_boxes, probs, SelectionConfig(min_boxes=1, max_boxes=1))
    assert index.tolist() == [0]
    index, _, _ = select_regions(class_boxes, probs, SelectionConfig(fixed_boxes=4))
    assert sorted(index.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        SelectionConfig(min_boxes=5, max_boxes=2)


def test_grid_boxes_tile_the_image():
    boxes = grid_boxes(30, 60, 3)
    assert boxes.shape == (9, 4)
    assert torch.allclose(boxes[0], torch.tensor([0.0, 0.0, 20.0, 10.0]))
    assert torch.allclose(boxes[-1], torch.tensor([40.0, 20.0, 60.0, 30.0]))
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    assert torch.isclose(area, torch.tensor(1800.0))


# --------------------------------------------------------------------------------------------- extraction
def test_extract_regions_shapes_and_soft_labels(tiny_extractor):
    regions = tiny_extractor.extract(_images())
    assert [r.image_size for r in regions] == [(120, 160), (90, 70)]
    for r in regions:
        assert isinstance(r, RegionFeatures)
        assert 10 <= len(r) <= 100
        assert r.features.shape == (len(r), tiny_extractor.feature_dim) == (len(r), 64)
        assert torch.isfinite(r.features).all()
        assert torch.allclose(r.cls_probs.sum(1), torch.ones(len(r)), atol=1e-5)
        assert torch.allclose(r.scores, r.cls_probs[:, 1:].max(1).values)
        assert r.attr_probs.shape == (len(r), 4) and ((r.attr_probs >= 0) & (r.attr_probs <= 1)).all()
        h, w = r.image_size
        assert (r.boxes[:, 0] >= 0).all() and (r.boxes[:, 2] <= w + 1e-3).all() and (r.boxes[:, 3] <= h + 1e-3).all()


def test_blank_image_never_gives_zero_regions(tiny_extractor):
    blank = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for config in (SelectionConfig(score_threshold=0.99), SelectionConfig(fixed_boxes=36, score_threshold=0.99)):
        tiny_extractor.config.selection = config
        try:
            regions = tiny_extractor.extract([blank])[0]
        finally:
            tiny_extractor.config.selection = SelectionConfig()
        low, high = config.count_range
        assert low <= len(regions) <= high


def test_fixed_k_and_proposal_boxes(tiny_extractor):
    tiny_extractor.config.selection = SelectionConfig(fixed_boxes=36, box_source="proposals")
    try:
        regions = tiny_extractor.extract(_images())
    finally:
        tiny_extractor.config.selection = SelectionConfig()
    assert [len(r) for r in regions] == [36, 36]


def test_extract_restores_training_mode_and_matches_detect_attributes(tiny_extractor):
    tiny_extractor.train()
    detections = tiny_extractor.detect(_images()[:1])[0]
    assert tiny_extractor.training
    tiny_extractor.eval()
    assert set(detections) == {"boxes", "labels", "scores", "attr_probs"}
    assert detections["attr_probs"].shape == (len(detections["boxes"]), 4)


def test_save_load_roundtrip_and_config_hash(tiny_extractor, tmp_path):
    path = tiny_extractor.save(tmp_path / "extractor")
    loaded = RegionExtractor.load(path)
    assert loaded.config_hash() == tiny_extractor.config_hash()
    a, b = tiny_extractor.extract(_images()), loaded.extract(_images())
    for x, y in zip(a, b):
        assert torch.allclose(x.features, y.features, atol=1e-5) and torch.equal(x.boxes, y.boxes)
    assert build_extractor(path, **{"selection.fixed_boxes": 36}).config.selection.fixed_boxes == 36
    with torch.no_grad():
        loaded.roi_heads.box_predictor.cls_score.bias[0] += 1.0
    assert loaded.config_hash() != tiny_extractor.config_hash()
    with pytest.raises(KeyError):
        build_extractor(path, min_size=64)  # only selection can change on a trained extractor


def test_named_variants_and_override_checking():
    assert build_extractor.__module__ == "vlptm.detection.extractor"
    from vlptm.detection.extractor import variant_config

    kind, config = variant_config("effnet-lite0-fpn")
    assert kind == "region" and config.backbone.name == "tf_efficientnet_lite0" and config.num_classes == 91
    assert variant_config("torchvision-resnet50-fpn")[1].min_size == 800
    assert variant_config("grid-effnet-lite0")[0] == "grid"
    with pytest.raises(KeyError):
        variant_config("no-such-detector")
    with pytest.raises(KeyError):
        apply_overrides(config, {"selection.no_such_key": 1})
    with pytest.raises(TypeError):
        apply_overrides(config, {"selection.max_boxes": "many"})
    assert apply_overrides(config, {"selection.max_boxes": "50", "rpn.nms_threshold": "6e-1"}).rpn.nms_threshold == 0.6


# --------------------------------------------------------------------------------------------- grid mode
def test_grid_extractor_pools_the_backbone_map():
    torch.manual_seed(0)
    grid = GridExtractor().eval()
    grid.config.grid_size = 4
    image = torch.rand(3, 96, 96)  # resized to 512 x 512: a 16 x 16 map, 4 x 4 cells per grid region
    region = grid.extract([image])[0]
    assert region.boxes.shape == (16, 4) and region.features.shape == (16, grid.feature_dim) == (16, 1280)
    assert torch.allclose(region.boxes[-1], torch.tensor([72.0, 72.0, 96.0, 96.0]))
    with torch.no_grad():
        x = torch.nn.functional.interpolate(image[None], size=(512, 512), mode="bilinear", align_corners=False)
        fmap = grid.network.forward_features((x - 0.5) / 0.5)[0]  # (1280, 16, 16)
    expected = fmap[:, :4, 4:8].mean(dim=(1, 2))  # cell (row 0, column 1)
    assert torch.allclose(region.features[1], expected, atol=1e-4)
    assert region.cls_probs is None and torch.equal(region.scores, torch.ones(16))


def test_extract_under_bf16_autocast_returns_float32_regions(tiny_extractor):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        regions = tiny_extractor.extract(_images())
    for r in regions:
        assert 10 <= len(r) <= 100
        assert r.features.dtype == r.boxes.dtype == r.cls_probs.dtype == r.attr_probs.dtype == torch.float32
        assert torch.isfinite(r.features).all() and torch.allclose(r.cls_probs.sum(1), torch.ones(len(r)), atol=1e-3)


def test_any_timm_backbone_builds_without_a_hub():
    """Other timm names work with weights="none" (random init), the documented path without a model hub."""
    torch.manual_seed(0)
    config = tiny_config(**{"backbone.name": "resnet18", "backbone.weights": "none"})
    extractor = RegionExtractor(config)
    assert extractor.backbone.strides == [8, 16, 32]
    regions = extractor.extract(_images()[:1])[0]
    assert regions.features.shape == (len(regions), 64) and len(regions) >= 10
    with pytest.raises(ValueError):
        RegionExtractor(tiny_config(**{"backbone.name": "resnet18", "backbone.weights": "packaged"}))
