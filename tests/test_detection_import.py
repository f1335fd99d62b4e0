"""torchvision Faster R-CNN checkpoints imported into RegionExtractor give torchvision's own detections."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from vlptm.detection import import_torchvision_checkpoint, torchvision_extractor_config
from vlptm.structures import RegionFeatures


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)  # random weights: there is no model hub here, and equality does not need trained ones
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=160, max_size=240,
                                   rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=100).eval()


def test_same_weights_give_torchvision_detections(torchvision_model, tmp_path):
    path = tmp_path / "frcnn.pth"
    torch.save({"model": torchvision_model.state_dict(), "epoch": 3}, path)  # reference-script layout
    config = torchvision_extractor_config("resnet50", num_classes=91, min_size=160, max_size=240,
                                          **{"rpn.pre_nms_top_n_test": 100, "rpn.post_nms_top_n_test": 100})
    extractor = import_torchvision_checkpoint(path, config=config)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 240, 320, generator=g), torch.rand(3, 300, 200, generator=g)]
    with torch.inference_mode():
        expected = torchvision_model(images)
    got = extractor.detect(images)
    for e, o in zip(expected, got):
        assert len(e["boxes"]) > 0 and len(e["boxes"]) == len(o["boxes"])
        assert torch.allclose(e["boxes"], o["boxes"], atol=1e-4)
        assert torch.allclose(e["scores"], o["scores"], atol=1e-5)
        assert torch.equal(e["labels"], o["labels"])
    # The same network also gives bottom-up-attention regions with 1024-d features and 91-way soft labels.
    regions = extractor.extract(images[:1])[0]
    assert isinstance(regions, RegionFeatures) and regions.cls_probs.shape == (len(regions), 91)
    assert extractor.feature_dim == 1024 and regions.attr_probs is None


def test_import_refuses_other_state_dicts(torchvision_model):
    state = dict(torchvision_model.state_dict())
    with pytest.raises(KeyError):
        import_torchvision_checkpoint({k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor")})
    state.pop("rpn.head.conv.0.0.weight")
    with pytest.raises(KeyError, match="missing"):
        import_torchvision_checkpoint(state)


def test_converter_script_writes_a_loadable_extractor(tmp_path):
    """The script on a ResNet-18-FPN Faster R-CNN with 5 classes (another arch, another label space)."""
    import importlib.util
    from pathlib import Path

    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from vlptm.detection import build_extractor

    torch.manual_seed(0)
    torchvision_model = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None), num_classes=5,
                                   min_size=160, max_size=240, rpn_pre_nms_top_n_test=100,
                                   rpn_post_nms_top_n_test=100).eval()

    script = Path(__file__).resolve().parents[1] / "detectors" / "convert_torchvision.py"
    spec = importlib.util.spec_from_file_location("convert_torchvision", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(torchvision_model.state_dict(), tmp_path / "frcnn.pth")
    assert module.main([str(tmp_path / "frcnn.pth"), str(tmp_path / "out"), "--min-size=160", "--max-size=240",
                        "--fixed-boxes=36", "--arch=resnet18"]) == 0
    extractor = build_extractor(tmp_path / "out")
    assert extractor.config.selection.fixed_boxes == 36 and extractor.config.min_size == 160
    assert extractor.config.class_names == ["__background__", "class_1", "class_2", "class_3", "class_4"]
    # The script keeps torchvision's 1000 proposals; match the fixture's 100 to compare detections.
    extractor.rpn._pre_nms_top_n["testing"] = extractor.rpn._post_nms_top_n["testing"] = 100
    image = torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = torchvision_model([image])[0]
    got = extractor.detect([image])[0]
    assert len(expected["boxes"]) > 0 and torch.equal(got["labels"], expected["labels"])
    assert torch.allclose(got["boxes"], expected["boxes"], atol=1e-4)
