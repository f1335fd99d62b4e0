"""Held-out validation during pretraining (``validation`` in the recipe, ``vlptm.train.validate``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_pretrain_data import make_toy_world, write_recipe
from vlptm.commands.plot_log import plot_log
from vlptm.config import load_config
from vlptm.features.store import FeatureStoreWriter
from vlptm.train import VALIDATION_FILE, evaluate_pretraining, load_pretraining_model, pretrain, read_log
from vlptm.train.checkpoint import resolve_checkpoint
from vlptm.train.config import PretrainConfig
from vlptm.train.pretrain import build_validation_dataset
from vlptm.train.validate import recall_at, text_to_image_ranks


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    return root, make_toy_world(root / "train", num_images=48, seed=5), make_toy_world(root / "held", 24, seed=6)


def _weights(run_dir) -> dict:
    return load_file(str(resolve_checkpoint(run_dir) / "encoder" / "model.safetensors"))


def test_validation_is_logged_and_leaves_training_unchanged(worlds):
    root, train, held = worlds
    plain = write_recipe(root / "plain.yaml", train, root / "plain", optim={"lr": 1e-3, "warmup_steps": 2,
                                                                           "max_steps": 7})
    pretrain(load_config(PretrainConfig, plain))
    checked = write_recipe(root / "checked.yaml", train, root / "checked",
                           optim={"lr": 1e-3, "warmup_steps": 2, "max_steps": 7},
                           validation={"sources": [held], "every": 3, "max_images": 20, "batch_size": 16})
    pretrain(load_config(PretrainConfig, checked))

    entries = read_log(root / "checked" / VALIDATION_FILE)
    assert [e["step"] for e in entries] == [3, 6, 7]  # every 3 steps, then the final weights
    for entry in entries:
        assert entry["images"] == 20 and entry["queries"] == 40  # two captions per toy image
        for key in ("mlm_acc", "mrc_acc", "itm_acc"):
            assert 0.0 <= entry[key] <= 1.0
        assert 0.0 <= entry["R@1"] <= entry["R@5"] <= entry["R@10"] <= 1.0
    assert [e["step"] for e in read_log(root / "checked")] == list(range(1, 8))  # train log untouched
    keys = plot_log(str(root / "checked"), str(root / "curves.png"))  # held-out points join the curves
    assert {"R@1", "R@10", "itm_acc", "mlm"} <= set(keys) and (root / "curves.png").stat().st_size > 0

    # evaluation runs in eval mode under its own RNG streams: the trained weights are those of a run without it
    a, b = _weights(root / "plain"), _weights(root / "checked")
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_evaluation_is_repeatable_and_recall_counts_ranks(worlds):
    root, train, held = worlds
    recipe = write_recipe(root / "eval.yaml", train, root / "eval", optim={"lr": 1e-3, "warmup_steps": 2,
                                                                          "max_steps": 4},
                          validation={"sources": [held], "max_images": 12})
    cfg = load_config(PretrainConfig, recipe)
    pretrain(cfg)
    model = load_pretraining_model(str(root / "eval")).train()
    heldout = build_validation_dataset(cfg, pos_dim=int(model.encoder.config.region_pos_dim))
    assert len(heldout.images) == 12

    state = torch.random.get_rng_state()
    first, second = evaluate_pretraining(model, heldout), evaluate_pretraining(model, heldout)
    assert first == second
    assert model.training and model.itm_negatives == cfg.tasks.itm_negatives  # the caller's state is back
    assert torch.equal(torch.random.get_rng_state(), state)

    ranks = text_to_image_ranks(model, heldout)
    assert ranks.shape == (len(heldout),) and ranks.min() >= 0 and ranks.max() < len(heldout.images)
    assert recall_at(ranks)["R@1"] == pytest.approx(first["R@1"])
    # ranks by brute force: images scored strictly above each caption's own image
    model.eval()
    with torch.no_grad():
        images = [heldout.regions(i) for i in range(len(heldout.images))]
        sets = [model.embed_images({"region_feats": torch.from_numpy(r["feats"])[None],
                                    "region_pos": torch.from_numpy(r["pos"])[None],
                                    "region_mask": torch.ones(1, len(r["feats"]), dtype=torch.long)})[0]
                for r in images]
        texts = torch.cat([model.embed_text({"input_ids": torch.from_numpy(ids)[None],
                                             "attention_mask": torch.ones(1, len(ids), dtype=torch.long)})
                           for ids in heldout.text_ids])
    scores = np.array([[float((t @ s.t()).max()) if s.dim() == 2 else float(t @ s) for s in sets] for t in texts])
    gold = scores[np.arange(len(texts)), heldout.example_image]
    expected = (scores > gold[:, None] + 1e-6).sum(1)
    assert np.abs(ranks - expected).max() <= 1  # float ties within 1e-6 may order either way
    assert recall_at(np.array([0, 1, 4, 9, 10]), ks=(1, 5, 10)) == {"R@1": 0.2, "R@5": 0.6, "R@10": 0.8}


def test_a_validation_source_needs_captions_and_features(worlds):
    root, train, _ = worlds
    recipe = write_recipe(root / "bad.yaml", train, root / "bad", validation={"sources": [{"captions": "x.json"}]})
    with pytest.raises(ValueError, match=r"validation.sources\[0\] needs both"):
        pretrain(load_config(PretrainConfig, recipe))


def test_held_out_images_missing_from_their_store_are_a_clear_error(worlds):
    root, train, held = worlds
    captions = root / "elsewhere.json"  # images that no store holds
    captions.write_text(json.dumps([{"image": "gone.jpg", "image_id": "gone", "captions": ["a red cube"]}]))
    recipe = write_recipe(root / "missing.yaml", train, root / "missing",
                          validation={"sources": [{"captions": str(captions), "features": held["features"]}]})
    with pytest.raises(ValueError, match="no held-out image is in its feature store"):
        pretrain(load_config(PretrainConfig, recipe))


def test_held_out_features_of_another_size_are_a_clear_error(worlds):
    root, train, _ = worlds
    with FeatureStoreWriter(root / "narrow", feature_dim=8, extractor_name="other") as writer:
        writer.add_arrays("img0000", boxes=np.array([[0.0, 0.0, 10.0, 10.0]], np.float32),
                          features=np.ones((1, 8), np.float32), scores=np.ones(1, np.float32), image_size=(20, 20))
    recipe = write_recipe(root / "narrow.yaml", train, root / "narrow-run",
                          validation={"sources": [{"captions": train["captions"], "features": str(root / "narrow")}]})
    with pytest.raises(ValueError, match="8-d region features"):
        pretrain(load_config(PretrainConfig, recipe))
