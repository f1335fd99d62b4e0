"""Tests of detector training: data, flips, the loss going down, evaluation metrics, and the CLI end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_detection import tiny_config

from vlptm.cli import main
from vlptm.data.scenes import generate_world
from vlptm.detection import RegionExtractor
from vlptm.detection.data import DetectionDataset, LabelSpace, collate_detection, hflip, read_detection_data
from vlptm.detection.evaluate import attribute_accuracy, coco_map
from vlptm.detection.train import lr_factor, train_steps

# Command-line overrides that make the scene recipe tiny (seconds per step on one CPU core).
TINY_CLI = ["--backbone.fpn_channels=32", "--roi_heads.representation_size=64", "--min_size=128", "--max_size=160",
            "--train_min_sizes=[112]", "--rpn.pre_nms_top_n_train=100", "--rpn.post_nms_top_n_train=50",
            "--rpn.pre_nms_top_n_test=100", "--rpn.post_nms_top_n_test=50", "--roi_heads.batch_size_per_image=32",
            "--roi_heads.class_embed_dim=8", "--roi_heads.attribute_hidden_dim=16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    generate_world(out, num_images=6, seed=5, image_size=128)
    return out


def test_dataset_targets_match_the_annotations(world):
    records = read_detection_data(world)
    labels = LabelSpace.from_records(records)
    assert labels.class_names[0] == "__background__" and len(labels.class_names) == 8
    assert {"color", "size"} == set(labels.attribute_types)
    dataset = DetectionDataset(records.records, labels)
    image, target = dataset[0]
    record = records.records[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    assert target["boxes"].shape == (len(record.boxes_xyxy), 4)
    assert target["labels"].tolist() == [labels.category_ids.index(c) for c in record.category_ids]
    assert target["attributes"].sum(1).tolist() == [2.0] * len(record.boxes_xyxy)  # one colour + one size each
    colour = labels.attribute_ids.index(record.attribute_ids[0][0])
    assert target["attributes"][0, colour] == 1


def test_dataset_without_attributes(world, tmp_path):
    data = json.loads((world / "instances.json").read_text())
    del data["attribute_categories"]
    for ann in data["annotations"]:
        del ann["attribute_ids"]
    (tmp_path / "instances.json").write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(world / "images")
    records = read_detection_data(tmp_path)
    labels = LabelSpace.from_records(records)
    assert labels.attribute_names == []
    _, target = DetectionDataset(records.records, labels)[0]
    assert target["attributes"].shape == (len(records.records[0].boxes_xyxy), 0)


def test_hflip_mirrors_boxes_with_the_pixels():
    image = torch.zeros(3, 10, 20, dtype=torch.uint8)
    image[:, 2:5, 1:4] = 255  # object at x in [1, 4), y in [2, 5)
    flipped, boxes = hflip(image, torch.tensor([[1.0, 2.0, 4.0, 5.0]]))
    assert boxes.tolist() == [[16.0, 2.0, 19.0, 5.0]]
    ys, xs = torch.nonzero(flipped[0], as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1) == (16, 19) and (ys.min().item(), ys.max().item() + 1) == (2, 5)


def test_training_steps_lower_the_loss(world):
    torch.manual_seed(0)
    records = read_detection_data(world)
    labels = LabelSpace.from_records(records)
    config = tiny_config(class_names=labels.class_names, category_ids=labels.category_ids,
                         attribute_names=labels.attribute_names, attribute_types=labels.attribute_types)
    model = RegionExtractor(config)
    batch = collate_detection([DetectionDataset(records.records, labels)[i] for i in range(2)])
    model.train()
    with torch.no_grad():
        before = {k: float(v) for k, v in model.losses(*batch).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    seen = []

    def repeat():
        while True:
            yield batch

    steps = train_steps(model, repeat(), optimizer, lambda s: 5e-4, lambda s: s >= 12,
                        on_step=lambda step, losses: seen.append(losses))
    assert steps == 12 and all(p.grad is not None for n, p in model.named_parameters()
                                if p.requires_grad and n.startswith(("roi_heads", "attribute_head", "rpn")))
    with torch.no_grad():
        after = {k: float(v) for k, v in model.losses(*batch).items()}
    assert after["total"] < 0.7 * before["total"], (before, after)
    assert after["attributes"] < before["attributes"] and after["classifier"] < before["classifier"]
    with pytest.raises(RuntimeError):
        model.eval().losses(*batch)


def test_lr_schedule_warms_up_then_anneals():
    assert lr_factor(0, 0.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(50, 0.5, 10, 0.1) == pytest.approx(0.55)
    assert lr_factor(99, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_coco_map_and_attribute_accuracy_score_known_detections(world):
    records = read_detection_data(world).records
    labels = LabelSpace.from_records(read_detection_data(world))
    category_ids = labels.category_ids
    perfect, shifted = {}, {}
    for r in records:
        boxes = torch.tensor(r.boxes_xyxy)
        attrs = torch.zeros(len(boxes), len(labels.attribute_ids))
        for i, ids in enumerate(r.attribute_ids):
            for a in ids:
                attrs[i, labels.attribute_ids.index(a)] = 1.0
        det = {"boxes": boxes, "labels": torch.tensor([category_ids.index(c) for c in r.category_ids]),
               "scores": torch.linspace(0.9, 0.5, len(boxes)), "attr_probs": attrs}
        perfect[r.image_id] = det
        w = boxes[:, 2] - boxes[:, 0]
        shifted[r.image_id] = {**det, "boxes": boxes + torch.stack([w, 0 * w, w, 0 * w], 1),  # IoU 0: no match
                               "attr_probs": attrs.flip(1)}
    assert coco_map(records, perfect, category_ids)["map"] == pytest.approx(1.0)
    assert coco_map(records, shifted, category_ids)["map"] == pytest.approx(0.0)
    acc = attribute_accuracy(records, perfect, labels.attribute_types, labels.attribute_ids)
    assert acc["color_accuracy"] == 1.0 and acc["size_accuracy"] == 1.0 and acc["matched_fraction"] == 1.0
    # Wrong colours on perfectly placed boxes: matched, but colour accuracy 0.
    wrong = {k: {**v, "attr_probs": torch.roll(v["attr_probs"], 1, dims=1)} for k, v in perfect.items()}
    acc = attribute_accuracy(records, wrong, labels.attribute_types, labels.attribute_ids)
    assert acc["matched_fraction"] == 1.0 and acc["color_accuracy"] < 0.5


def test_train_detector_cli_end_to_end_and_resume(world, tmp_path):
    out = tmp_path / "run"
    args = ["train-detector", f"--data={world}", f"--val_data={world}", f"--out={out}",
            "--variant=scenes-effnet-lite0", "--max_steps=2", "--batch_size=2", "--warmup_steps=1", *TINY_CLI]
    assert main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["steps"] == 2
    assert {"map", "map50", "color_accuracy", "size_accuracy", "matched_fraction"} <= set(result["metrics"])
    model = RegionExtractor.load(out / "model")
    assert model.config.attribute_types.count("color") == 8 and model.feature_dim == 64
    assert len(model.extract([torch.zeros(3, 128, 128, dtype=torch.uint8)])[0]) >= 10
    # A rerun with a larger step budget resumes from the checkpoint instead of starting over.
    assert main(args[:-len(TINY_CLI) - 3] + ["--max_steps=3", "--batch_size=2", "--warmup_steps=1", *TINY_CLI]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    assert json.loads((out / "last.json").read_text())["step"] == 3
