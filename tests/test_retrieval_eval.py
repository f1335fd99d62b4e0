"""Retrieval evaluation (three modes) and the index / search / eval-retrieval commands on a real checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_fixtures import built_assets, make_checkpoint, make_model, make_world
from vlptm.cli import main
from vlptm.data.readers import read_records
from vlptm.features.store import FeatureStore
from vlptm.retrieval import EvalSet, evaluate_retrieval, format_results, recalls_from_ranks


def test_recalls_from_ranks():
    ranks = np.array([0, 0, 3, 7, 12, np.inf])
    assert recalls_from_ranks(ranks) == pytest.approx({"r1": 200 / 6, "r5": 300 / 6, "r10": 400 / 6})


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    world, store_dir = make_world(tmp_path_factory.mktemp("eval"), num_images=10, seed=2)
    store = FeatureStore.open(store_dir)
    return store, EvalSet.from_records(list(read_records(world / "captions.json")), store)


@pytest.mark.parametrize("kind", ["single-tiny", "dual-tiny"])
def test_two_stage_equals_exhaustive_when_every_pair_is_reranked(small_set, kind):
    store, data = small_set
    model = make_model(kind)
    full = evaluate_retrieval(model, store, data, rerank=len(data.captions))
    assert full["two-stage"]["itm_pairs"] == full["exhaustive"]["itm_pairs"] == len(data.captions) * 10
    for direction in ("t2i", "i2t"):
        assert full["two-stage"][direction] == pytest.approx(full["exhaustive"][direction])
    shallow = evaluate_retrieval(model, store, data, modes=["two-stage"], rerank=3)
    assert shallow["two-stage"]["itm_pairs"] < full["two-stage"]["itm_pairs"]
    assert "itc" not in shallow and "exhaustive" not in shallow
    cache: dict = {}
    first = evaluate_retrieval(model, store, data, rerank=3, itc_weight=0.5, itm_cache=cache)
    again = evaluate_retrieval(model, store, data, rerank=3, itc_weight=0.5, itm_cache=cache)
    for mode in ("two-stage", "exhaustive"):  # reused ITM scores give the same recalls
        assert again[mode]["t2i"] == first[mode]["t2i"] and again[mode]["i2t"] == first[mode]["i2t"]


@pytest.mark.parametrize("pooling", ["mean", "regions"])
def test_itc_recalls_match_brute_force(small_set, pooling):
    store, data = small_set
    model = make_model("single-tiny", pooling=pooling)
    result = evaluate_retrieval(model, store, data, modes=["itc"])
    text = model.embed_texts(data.captions)
    image = model.embed_regions([model.regions(store[i]) for i in data.image_ids])
    if pooling == "mean":
        sim = text @ image.T  # (T, I)
    else:  # an image is a set of region vectors: its score is its best region's
        assert [len(s) for s in image] == [min(10, len(store[i])) for i in data.image_ids]
        sim = np.array([[max(float(row @ t) for row in s) for s in image] for t in text])  # (T, I)
    t2i = np.array([(sim[t] > sim[t, g]).sum() for t, g in enumerate(data.caption_image)])
    expected = recalls_from_ranks(t2i)
    assert result["itc"]["t2i"] == pytest.approx(expected, abs=1e-6)
    i2t = []
    for i in range(len(data.image_ids)):
        column = sim[:, i]
        best = column[data.caption_image == i].max()
        i2t.append((column > best).sum())
    assert result["itc"]["i2t"] == pytest.approx(recalls_from_ranks(np.array(i2t)), abs=1e-6)
    assert "itc" in format_results(result)


def test_eval_set_skips_images_missing_from_store(small_set, tmp_path):
    store, data = small_set
    records = [r for r in read_records(store.path.parent / "world" / "captions.json")]
    subset = EvalSet.from_records(records, store, max_images=4, captions_per_image=2)
    assert len(subset.image_ids) == 4 and len(subset.captions) == 8
    with pytest.raises(ValueError, match="feature store"):
        EvalSet.from_records(records, FeatureStore.open(_empty_store(tmp_path)))


def _empty_store(tmp_path):
    from vlptm.features.store import FeatureStoreWriter

    with FeatureStoreWriter(tmp_path / "empty", feature_dim=16) as writer:
        writer.commit()
    return tmp_path / "empty"


def test_commands_on_a_pretraining_checkpoint(tmp_path, capsys):
    assets = built_assets()
    index = tmp_path / "index"
    assert main(["index", "--store", str(assets["store"]), "--model", str(assets["run"]), "--out", str(index),
                 "--images", str(assets["world"] / "captions.json"), "--factory", "HNSW8", "--ef-search", "32"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["images"] == 12 and built["added"] == 12
    assert main(["search", "--index", str(index), "--json", "-k", "3", "a red circle"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["query"] == "a red circle" and len(line["results"]) == 3
    assert all(r["itm"] is not None and r["payload"].endswith(".jpg") for r in line["results"])
    # image-to-text needs a caption index: the shared one has it, this one has not
    assert main(["search", "--index", str(index), "--image-id", "1"]) == 2
    assert "caption index" in capsys.readouterr().out
    assert main(["search", "--index", str(assets["index"]), "--image-id", "1", "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]) == 2
    out_json = tmp_path / "eval.json"
    assert main(["eval-retrieval", "--model", str(assets["run"]), "--store", str(assets["store"]), "--captions",
                 str(assets["world"] / "captions.json"), "--rerank", "4", "--max-images", "6", "--json",
                 str(out_json)]) == 0
    results = json.loads(out_json.read_text())
    assert set(results) >= {"itc", "two-stage", "exhaustive"} and results["images"] == 6
    assert "exhaustive" in capsys.readouterr().out


def test_commands_reject_another_model(tmp_path, capsys):
    assets = built_assets()
    run2 = tmp_path / "run2"
    make_checkpoint(run2, assets["world"], assets["store"], steps=1)  # other weights than the index's run
    assert main(["search", "--index", str(assets["index"]), "--model", str(run2), "a red circle"]) == 2
    assert "rebuild" in capsys.readouterr().out
    assert main(["eval-retrieval", "--model", str(run2), "--store", str(assets["store"]), "--captions",
                 str(assets["world"] / "captions.json"), "--modes", "itc,bogus"]) == 2
