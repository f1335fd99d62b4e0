"""Pretraining data: the toy caption/feature world the pretraining tests share, collate and bucketing.

``make_toy_world`` writes a real ``captions.json`` and a real feature store whose region features encode
each image's objects (colour and shape one-hot codes plus noise) and whose class probabilities peak at the
object's shape, so every objective has something learnable on a CPU in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlptm.data.pretrain import (BucketBatchSampler, MaskingOptions, PretrainDataset, PretrainSource,
                                 collate_pretrain, padding_fraction)
from vlptm.data.readers import read_records
from vlptm.features.store import FeatureStore, FeatureStoreWriter
from vlptm.objectives.masking import IGNORE_INDEX
from vlptm.text import load_tokenizer

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "diamond")
FEATURE_DIM = 24
NUM_CLASSES = len(SHAPES) + 1  # background first


def make_toy_world(root: Path, num_images: int = 64, seed: int = 0) -> dict:
    """Write ``root/captions.json`` and the store ``root/features``; return their paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    with FeatureStoreWriter(root / "features", feature_dim=FEATURE_DIM, cls_dim=NUM_CLASSES,
                            extractor_name="toy", images_per_shard=16) as writer:
        for i in range(num_images):
            count = int(rng.integers(1, 4))
            colors = rng.integers(len(COLORS), size=count)
            shapes = rng.integers(len(SHAPES), size=count)
            n = count + int(rng.integers(0, 3))  # plus background regions
            features = rng.normal(0, 0.1, size=(n, FEATURE_DIM)).astype(np.float32)
            probs = np.full((n, NUM_CLASSES), 0.02, np.float32)
            probs[:, 0] = 1.0
            for k in range(count):
                features[k, colors[k]] += 1.0
                features[k, len(COLORS) + shapes[k]] += 1.0
                probs[k] = 0.02
                probs[k, 1 + shapes[k]] = 1.0
            probs /= probs.sum(1, keepdims=True)
            corners = np.sort(rng.uniform(0, 100, size=(n, 2, 2)), axis=1)  # (n, [min, max], [x, y])
            boxes = np.ascontiguousarray(corners.reshape(n, 4)[:, [0, 1, 2, 3]])
            boxes[:, 2:] += 1.0
            writer.add_arrays(f"img{i:04d}", boxes=boxes, features=features, scores=np.ones(n, np.float32),
                              image_size=(101, 101), cls_probs=probs)
            writer.commit_if_full()
            objects = [f"{COLORS[c]} {SHAPES[s]}" for c, s in zip(colors, shapes)]
            captions = ["a " + " and a ".join(objects), "there is a " + objects[0] + " in the picture"]
            entries.append({"image": f"img{i:04d}.jpg", "image_id": f"img{i:04d}", "captions": captions,
                            "split": "train"})
    (root / "captions.json").write_text(json.dumps(entries))
    return {"captions": str(root / "captions.json"), "features": str(root / "features")}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("toy"))


def _dataset(toy, **kwargs) -> PretrainDataset:
    records = read_records(toy["captions"])
    return PretrainDataset([PretrainSource(list(records), FeatureStore.open(toy["features"]))], load_tokenizer(),
                           **kwargs)


def test_dataset_items_and_collate(toy):
    ds = _dataset(toy, max_regions=3, pos_dim=7)
    assert len(ds) == 128 and len(ds.images) == 64 and ds.num_region_classes == NUM_CLASSES
    batch = collate_pretrain([ds[i] for i in range(8)])
    B, T = batch["input_ids"].shape
    R = batch["region_feats"].shape[1]
    assert B == 8 and R <= 3
    assert batch["region_feats"].shape == (B, R, FEATURE_DIM) and batch["region_pos"].shape == (B, R, 7)
    assert batch["region_cls_probs"].shape == (B, R, NUM_CLASSES)
    # padding is never masked and never a target
    assert not (batch["region_masked"] & (batch["region_mask"] == 0)).any()
    assert ((batch["mlm_labels"] != IGNORE_INDEX) <= (batch["attention_mask"] == 1)).all()
    assert ((batch["mlm_labels"] != IGNORE_INDEX).sum(1) >= 1).all()
    # where a token is a target, the label is the original token
    target = batch["mlm_labels"] != IGNORE_INDEX
    assert torch.equal(batch["mlm_labels"][target], batch["input_ids"][target])
    # positives keep their own pair
    pos = batch["itm_labels"] == 1
    width = min(T, batch["itm_input_ids"].shape[1])
    assert torch.equal(batch["itm_input_ids"][pos][:, :width], batch["input_ids"][pos][:, :width])


def test_items_are_deterministic_per_seed_epoch_index(toy):
    ds = _dataset(toy)
    a, b = ds[5], ds[5]
    assert np.array_equal(a["mlm_input_ids"], b["mlm_input_ids"]) and a["itm_label"] == b["itm_label"]
    ds.set_epoch(1)
    changed = any(not np.array_equal(ds[i]["region_masked"], _dataset(toy)[i]["region_masked"]) for i in range(10))
    assert changed


def test_random_itm_negatives(toy):
    ds = _dataset(toy, masking=MaskingOptions(itm_negative_prob=0.5))
    items = [ds[i] for i in range(len(ds))]
    labels = np.array([it["itm_label"] for it in items])
    assert 0.35 < labels.mean() < 0.65
    for it in items:
        same_text = np.array_equal(it["itm_input_ids"], it["input_ids"])
        same_image = it["itm_region_feats"].shape == it["region_feats"].shape and np.array_equal(
            it["itm_region_feats"], it["region_feats"])
        if it["itm_label"] == 1:
            assert same_text and same_image
        else:
            assert same_text != same_image  # exactly one side swapped


def test_missing_images_are_skipped_with_a_count(toy, tmp_path):
    entries = json.loads(Path(toy["captions"]).read_text())
    entries.append({"image": "ghost.jpg", "image_id": "ghost", "captions": ["a ghost"]})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(entries))
    ds = PretrainDataset([PretrainSource(list(read_records(path)), FeatureStore.open(toy["features"]), name="x")],
                         load_tokenizer())
    assert ds.skipped == {"x": 1} and len(ds) == 128


def test_bucket_sampler_shards_global_batches_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=203)
    single = BucketBatchSampler(lengths, batch_size=8, bucket_batches=4, seed=3)
    ranks = [BucketBatchSampler(lengths, batch_size=4, num_replicas=2, rank=r, bucket_batches=4, seed=3)
             for r in range(2)]
    for s in [single] + ranks:
        s.set_epoch(2)
    merged = [a + b for a, b in zip(*[list(r) for r in ranks])]
    assert merged == list(single)
    assert len(single) == 203 // 8
    flat = sorted(i for b in single for i in b)
    assert len(flat) == len(set(flat)) == 25 * 8
    single.set_epoch(2, skip_batches=5)
    assert list(single) == merged[5:]
    single.set_epoch(3)
    assert list(single) != merged


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(1)
    text = rng.integers(6, 40, size=2000)
    regions = rng.integers(10, 37, size=2000)
    fractions = {}
    for bucket in (1, 50):
        sampler = BucketBatchSampler(np.stack([regions, text], 1), batch_size=32, bucket_batches=bucket, seed=0)
        fractions[bucket] = padding_fraction(list(sampler), text, regions)
    assert fractions[50] < 0.7 * fractions[1]


def write_recipe(path: Path, toy: dict, run_dir: Path, **sections) -> Path:
    """A tiny pretraining recipe on the toy world (``sections`` replace whole recipe sections/keys)."""
    import yaml

    recipe = {
        "model": "single-tiny",
        "model_overrides": {"vocab_size": 30522},
        "run_dir": str(run_dir),
        "data": {"sources": [toy], "batch_size": 8, "max_regions": 4, "bucket_batches": 4},
        "tasks": {"weights": {"mlm": 1.0, "mrfr": 1.0, "mrc": 1.0, "itm": 1.0, "itc": 1.0}, "sampling": "ratio",
                  "itc_embed_dim": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "max_steps": 12},
        "device": "cpu", "seed": 3, "log_every": 1, "save_every": 4, "progress": False,
    }
    recipe.update(sections)
    path.write_text(yaml.safe_dump(recipe))
    return path
