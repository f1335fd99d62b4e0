"""Two-stage search and word-to-region attention with freshly initialised tiny encoders of both stream types."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval_fixtures import make_model, make_world
from vlptm.features.store import FeatureStore
from vlptm.retrieval import EmbeddingIndex, IndexMismatchError, RetrievalModelError, Searcher
from vlptm.retrieval.build import build_index, open_index

# encoder and ITC pooling: one vector per image, or one per region ("regions": the index holds sets)
ENCODERS = [("single-tiny", "mean"), ("dual-tiny", "mean"), ("single-tiny", "regions")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    world_dir, store_dir = make_world(root, num_images=12, seed=1)
    return {"root": root, "world": world_dir, "store": FeatureStore.open(store_dir)}


@pytest.fixture(scope="module", params=ENCODERS, ids=["-".join(e) for e in ENCODERS])
def searcher(request, world):
    kind, pooling = request.param
    model = make_model(kind, pooling=pooling)
    out = world["root"] / f"index-{kind}-{pooling}"
    build_index(model, world["store"], out, images=world["world"] / "captions.json",
                captions=world["world"] / "captions.json", progress=False)
    indexes = open_index(out, model, world["store"])
    return Searcher(model, indexes["images"], world["store"], indexes["captions"], rerank=6)


def test_index_holds_every_store_image_with_its_file(searcher, world):
    store = world["store"]
    assert sorted(searcher.images.ids()) == sorted(store.ids())
    for image_id in store.ids():
        assert Path(searcher.images.payload(image_id)).is_file()
    from vlptm.data.readers import read_records

    records = list(read_records(world["world"] / "captions.json"))
    assert len(searcher.captions) == sum(len(r.captions) for r in records)
    first = records[0]
    assert searcher.captions.payload(f"{first.image_id}#1") == first.captions[1]


def test_text_to_image_reranks_by_itm(searcher, world):
    model = searcher.model
    queries = ["a red circle", "two large blue squares on a stripes background"]
    results = searcher.text_to_image(queries, k=4)
    assert [len(r) for r in results] == [4, 4]
    itc_only = searcher.text_to_image(queries, k=6, rerank=0)
    for q, hits in enumerate(results):
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        candidates = {h.item_id for h in itc_only[q]}
        assert {h.item_id for h in hits} <= candidates  # re-ranking only reorders the FAISS candidates
        for hit in hits:  # the batched, padded ITM score equals the pair scored alone
            alone = model.itm_scores(model.tokenize([queries[q]]), [model.regions(world["store"][hit.item_id])],
                                     [(0, 0)])[0]
            assert hit.itm == pytest.approx(float(alone), abs=1e-5)
            rows = searcher.images.vectors(hit.item_id)  # (r, E): one row, or one per region
            expected_itc = float((rows @ model.embed_texts([queries[q]])[0]).max())
            assert hit.itc == pytest.approx(expected_itc, abs=1e-5)


def test_image_to_text_returns_captions(searcher, world):
    image_id = world["store"].ids()[0]
    hits = searcher.image_to_text([world["store"][image_id]], k=3)[0]
    assert len(hits) == 3 and all(isinstance(h.payload, str) and h.payload for h in hits)
    assert all(h.itm is not None for h in hits)


def test_word_region_attention_rows_are_distributions(searcher, world):
    image_id = world["store"].ids()[2]
    out = searcher.word_region_attention("a small red circle", image_id)
    attention = np.asarray(out["attention"])
    assert out["tokens"] == ["a", "small", "red", "circle"]
    assert attention.shape == (4, len(out["boxes"]))
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-4)
    assert out["image_size"] == list(world["store"].image_size(image_id))
    with pytest.raises(KeyError):
        searcher.word_region_attention("x", "no-such-image")


def test_index_of_another_model_is_refused(world):
    model_a, model_b = make_model("single-tiny", seed=0), make_model("single-tiny", seed=1)
    assert model_a.fingerprint != model_b.fingerprint
    out = world["root"] / "index-a"
    build_index(model_a, world["store"], out, progress=False)
    with pytest.raises(IndexMismatchError, match="vlptm index"):
        open_index(out, model_b, world["store"])
    with pytest.raises(IndexMismatchError):
        Searcher(model_b, EmbeddingIndex.load(out), world["store"])
    with pytest.raises(IndexMismatchError):  # rebuilding into it with another model needs rebuild=True
        build_index(model_b, world["store"], out, progress=False)
    assert build_index(model_b, world["store"], out, rebuild=True, progress=False)["added"] == 12


def test_incremental_build_adds_and_removes(world, tmp_path):
    from vlptm.features.store import FeatureStoreWriter

    model = make_model("single-tiny")
    store_dir = tmp_path / "store"
    source = world["store"]
    ids = source.ids()

    def write(chosen, writer_name):
        with FeatureStoreWriter(store_dir, feature_dim=source.feature_dim, extractor_name="test-gt-boxes",
                                extractor_config_hash="feedbeef", writer_name=writer_name) as writer:
            for image_id in chosen:
                arrays = source.get_arrays(image_id)
                writer.add_arrays(image_id, boxes=arrays["boxes"], features=arrays["features"],
                                  scores=arrays["scores"], image_size=arrays["image_size"])
            writer.commit()

    write(ids[:8], "first")
    first = build_index(model, FeatureStore.open(store_dir), tmp_path / "index", progress=False)
    write(ids[8:], "second")
    second = build_index(model, FeatureStore.open(store_dir), tmp_path / "index", progress=False)
    assert (first["added"], second["added"], second["images"]) == (8, 4, 12)
    fresh = build_index(model, FeatureStore.open(store_dir), tmp_path / "fresh", progress=False)
    assert fresh["images"] == 12
    query = model.embed_texts(["a green star"])
    a = EmbeddingIndex.load(tmp_path / "index").search(query, k=12)
    b = EmbeddingIndex.load(tmp_path / "fresh").search(query, k=12)
    assert a[1] == b[1]


def test_region_index_keeps_at_most_max_vectors_per_image(world, tmp_path):
    from vlptm.cli import main
    from vlptm.retrieval import RetrievalModel
    from vlptm.retrieval.build import open_searcher
    from vlptm.retrieval.index import read_index_manifest

    from retrieval_fixtures import make_checkpoint

    store = world["store"]
    run = make_checkpoint(tmp_path / "run", world["world"], Path(store.path), pooling="regions")
    full = RetrievalModel.from_checkpoint(run, device="cpu")
    capped = RetrievalModel.from_checkpoint(run, device="cpu", max_vectors=2)
    regions = [full.regions(store[i]) for i in store.ids()]
    counts = [len(r.feats) for r in regions]
    assert max(counts) > 2  # the cap bites
    for whole, cut, n in zip(full.embed_regions(regions), capped.embed_regions(regions), counts):
        assert len(whole) == n and len(cut) == min(2, n)
        np.testing.assert_allclose(cut, whole[: len(cut)], atol=1e-6)  # the first (most confident) regions

    out = tmp_path / "index"
    assert main(["index", "--store", str(store.path), "--model", str(run), "--out", str(out),
                 "--max-vectors", "2"]) == 0
    assert read_index_manifest(out)["model"]["max_vectors"] == 2
    assert EmbeddingIndex.load(out).ntotal == sum(min(2, n) for n in counts)
    with pytest.raises(IndexMismatchError, match="vectors per image"):  # updating it with another cap
        build_index(full, store, out, progress=False)
    searcher = open_searcher(out, device="cpu")
    assert searcher.model.max_vectors == 2  # image queries are cut like the indexed images
    assert searcher.text_to_image(["a red circle"], k=3, rerank=0)[0]
    with pytest.raises(ValueError, match="max_vectors"):
        RetrievalModel.from_checkpoint(run, device="cpu", max_vectors=0)


def test_model_without_itm_head_cannot_rerank(world):
    model = make_model("single-tiny", tasks=("itc",))
    with pytest.raises(RetrievalModelError, match="ITM"):
        model.itm_scores(model.tokenize(["a"]), [model.regions(world["store"][world["store"].ids()[0]])], [(0, 0)])
    out = world["root"] / "index-itc-only"
    build_index(model, world["store"], out, progress=False)
    searcher = Searcher(model, EmbeddingIndex.load(out), world["store"], rerank=8)
    hits = searcher.text_to_image(["a red circle"], k=3)[0]
    assert [h.itm for h in hits] == [None, None, None]  # falls back to ITC ranking


def test_query_batcher_gives_each_caller_its_own_results(searcher):
    from concurrent.futures import ThreadPoolExecutor

    from vlptm.retrieval import QueryBatcher

    batcher = QueryBatcher(searcher, max_batch=8)
    queries = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("circle", "star")]
    direct = {q: [(h.item_id, round(h.score, 5)) for h in searcher.text_to_image([q], k=3)[0]] for q in queries}
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        batched = list(pool.map(lambda q: batcher.text_to_image(q, k=3, timeout=60), queries * 2))
    for query, hits in zip(queries * 2, batched):
        assert [(h.item_id, round(h.score, 5)) for h in hits] == direct[query]
    with pytest.raises(ValueError):  # an error reaches the caller instead of killing the worker
        batcher.text_to_image("a red circle", k=0, timeout=60)
    assert len(batcher.text_to_image("a red circle", k=2, timeout=60)) == 2
