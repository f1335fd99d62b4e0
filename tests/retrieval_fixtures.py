"""Shared fixtures of the retrieval, serve and browser tests: a small scene world, its feature store, a model.

The feature store is written through the real :class:`~vlptm.features.FeatureStoreWriter` with the world's
ground-truth boxes and seeded features (the encoders are freshly initialised, so trained features would
add run time and nothing else); the model is a tiny encoder with fresh ITC/ITM heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

FEATURE_DIM = 16


def make_world(root: Path, num_images: int = 12, seed: int = 0) -> Tuple[Path, Path]:
    """Generate a scene world and a feature store of its images: returns ``(world dir, store dir)``."""
    from vlptm.data.readers import read_records
    from vlptm.data.scenes import generate_world
    from vlptm.features.store import FeatureStoreWriter

    world, store = root / "world", root / "store"
    generate_world(world, num_images, seed=seed)
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(store, feature_dim=FEATURE_DIM, extractor_name="test-gt-boxes",
                            extractor_config_hash="feedbeef", images_per_shard=5) as writer:
        for record in read_records(world / "instances.json"):
            boxes = np.asarray(record.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
            writer.add_arrays(record.image_id, boxes=boxes, scores=np.ones(len(boxes), np.float32),
                              features=rng.normal(size=(len(boxes), FEATURE_DIM)).astype(np.float32),
                              image_size=(record.height, record.width))
            writer.commit_if_full()
        writer.commit()
    return world, store


def make_model(kind: str = "single-tiny", seed: int = 0, tasks=("itc", "itm")):
    """A freshly initialised tiny :class:`~vlptm.retrieval.RetrievalModel` on CPU."""
    import torch

    from vlptm.models import create_model
    from vlptm.objectives import PretrainingModel
    from vlptm.retrieval import RetrievalModel
    from vlptm.text import load_tokenizer

    torch.manual_seed(seed)
    net = PretrainingModel(create_model(kind, region_feat_dim=FEATURE_DIM), tasks=list(tasks), itc_embed_dim=24)
    return RetrievalModel(net, load_tokenizer(), max_regions=10, max_text_len=24, source=f"fresh-{kind}-{seed}",
                          device="cpu")
