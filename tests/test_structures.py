"""Tests of :class:`vlptm.structures.RegionFeatures`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlptm.structures import RegionFeatures


def _regions(n: int = 3, d: int = 8, with_probs: bool = True) -> RegionFeatures:
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 50.0, 20.0], [10.0, 10.0, 20.0, 40.0], [90.0, 0.0, 100.0, 40.0]])[:n]
    return RegionFeatures(
        boxes=boxes,
        features=torch.randn(n, d, generator=g),
        scores=torch.tensor([0.9, 0.3, 0.6])[:n],
        image_size=(40, 100),
        cls_probs=torch.softmax(torch.randn(n, 5, generator=g), -1) if with_probs else None,
        attr_probs=torch.rand(n, 4, generator=g) if with_probs else None,
    )


def test_len_and_boolean_mask_keeps_rows_aligned():
    r = _regions()
    kept = r[r.scores > 0.5]
    assert len(r) == 3 and len(kept) == 2
    assert torch.equal(kept.boxes, r.boxes[[0, 2]])
    assert torch.equal(kept.features, r.features[[0, 2]])
    assert torch.equal(kept.cls_probs, r.cls_probs[[0, 2]])
    assert torch.equal(kept.attr_probs, r.attr_probs[[0, 2]])
    assert kept.image_size == (40, 100)


def test_index_tensor_list_slice_and_int():
    r = _regions()
    assert torch.equal(r[torch.tensor([2, 0])].scores, torch.tensor([0.6, 0.9]))
    assert torch.equal(r[[1]].boxes, r.boxes[1:2])
    assert len(r[1:]) == 2
    assert r[-1].boxes.shape == (1, 4) and torch.equal(r[-1].boxes[0], r.boxes[2])
    with pytest.raises(IndexError):
        r[torch.tensor([True, False])]


def test_to_dtype_applies_to_float_tensors_only():
    r = _regions()
    half = r.to(torch.float16)
    assert half.features.dtype == torch.float16 and half.cls_probs.dtype == torch.float16
    mask_idx = RegionFeatures(boxes=r.boxes, features=r.features, scores=r.scores, image_size=(40, 100))
    assert mask_idx.to("cpu", torch.float64).features.dtype == torch.float64
    # A non-float tensor keeps its dtype under a dtype cast (only moves device).
    ints = RegionFeatures(boxes=r.boxes, features=torch.ones(3, 2, dtype=torch.int32), scores=r.scores,
                          image_size=(40, 100))
    assert ints.to(torch.float16).features.dtype == torch.int32


def test_normalized_positions_conventions():
    r = _regions()
    p4, p5, p7 = (r.normalized_positions(d) for d in (4, 5, 7))
    assert p4.shape == (3, 4) and p5.shape == (3, 5) and p7.shape == (3, 7)
    # Box 0: (0,0)-(50,20) in a 100 wide, 40 high image.
    assert torch.allclose(p4[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert torch.allclose(p5[0, 4], torch.tensor(0.25))
    # Box 1: (10,10)-(20,40): w=0.1, h=0.75.
    assert torch.allclose(p7[1], torch.tensor([0.1, 0.25, 0.2, 1.0, 0.1, 0.75, 0.075]))
    with pytest.raises(ValueError):
        r.normalized_positions(6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boxes": torch.zeros(3, 5)}, "boxes"),
        ({"features": torch.zeros(2, 8)}, "features"),
        ({"scores": torch.zeros(3, 1)}, "scores"),
        ({"cls_probs": torch.zeros(2, 5)}, "cls_probs"),
        ({"image_size": (40,)}, "image_size"),
        ({"image_size": (0, 10)}, "image_size"),
    ],
)
def test_shape_validation_errors(kwargs, message):
    r = _regions()
    base = dict(boxes=r.boxes, features=r.features, scores=r.scores, image_size=r.image_size,
                cls_probs=r.cls_probs)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RegionFeatures(**base)


def test_numpy_roundtrip_and_cat():
    r = _regions()
    arrays = r.to_numpy_dict(feature_dtype=np.float16)
    assert arrays["features"].dtype == np.float16 and arrays["boxes"].dtype == np.float32
    back = RegionFeatures.from_numpy_dict(arrays, dtype=torch.float32)
    assert torch.allclose(back.features, r.features, atol=1e-2)
    assert torch.equal(back.boxes, r.boxes) and back.image_size == r.image_size
    both = RegionFeatures.cat([r[:1], r[1:]])
    assert torch.equal(both.features, r.features) and torch.equal(both.attr_probs, r.attr_probs)
    with pytest.raises(ValueError):
        RegionFeatures.cat([r, _regions(with_probs=False)])
