"""EmbeddingIndex: FAISS layouts, id map, add/remove, persistence, provenance checks."""
from __future__ import annotations

import numpy as np
import pytest

from vlptm.retrieval import (EmbeddingIndex, IndexFormatError, IndexMismatchError, IndexTrainingError,
                             RetrievalIndexError)

DIM = 16


def _clustered(n: int, seed: int = 0, clusters: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("factory, rescore", [("Flat", 0), ("IVF4,Flat", 0), ("HNSW8", 0), ("PQ4x4", 64),
                                               ("IVF4,PQ4x4", 64)])
def test_layouts_find_exact_neighbours(factory, rescore):
    base, queries = _clustered(400), _clustered(20, seed=1)
    index = EmbeddingIndex(DIM, factory, search_params={"nprobe": 4} if factory.startswith("IVF") else None)
    ids = [f"img{i}" for i in range(len(base))]
    index.add(ids, base)
    assert index.is_trained and len(index) == 400 and index.ntotal == 400
    scores, found = index.search(queries, k=5, rescore=rescore)
    expected = _exact_top(base, queries, 5)
    hits = np.mean([len({ids[j] for j in row} & set(f)) / 5 for row, f in zip(expected, found)])
    assert hits >= 0.9, f"{factory}: recall@5 {hits}"
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores must be sorted best first"


def test_flat_scores_are_inner_products():
    base, queries = _clustered(50), _clustered(3, seed=2)
    index = EmbeddingIndex(DIM, "Flat")
    index.add([str(i) for i in range(50)], base)
    scores, found = index.search(queries, k=50)
    for q in range(3):
        np.testing.assert_allclose(scores[q], queries[q] @ base[[int(i) for i in found[q]]].T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8", "PQ4x4"])
def test_remove_and_incremental_add(factory, tmp_path):
    base = _clustered(300)
    index = EmbeddingIndex(DIM, factory)
    index.add([f"a{i}" for i in range(300)], base)
    assert index.remove(["a0", "a1", "missing"]) == 2
    assert "a0" not in index and len(index) == 298
    _, found = index.search(base[:2], k=10, rescore=32 if "PQ" in factory else 0)
    assert all("a0" not in row and "a1" not in row for row in found)
    index.add(["new"], base[:1])  # the removed vector comes back under a new id
    _, found = index.search(base[:1], k=1, rescore=32 if "PQ" in factory else 0)
    assert found[0] == ["new"]
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert loaded.ids() == index.ids() and loaded.factory == factory
    a, b = index.search(base[5:9], k=7), loaded.search(base[5:9], k=7)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    assert a[1] == b[1]


def test_hnsw_compact_drops_hidden_vectors():
    base = _clustered(100)
    index = EmbeddingIndex(DIM, "HNSW8")
    index.add([str(i) for i in range(100)], base)
    index.remove([str(i) for i in range(50)])
    assert index.ntotal == 100 and len(index) == 50  # HNSW cannot delete: hidden
    _, found = index.search(base[:10], k=10)
    assert all(int(i) >= 50 for row in found for i in row) and all(len(row) == 10 for row in found)
    index.compact()
    assert index.ntotal == 50 and sorted(index.ids(), key=int) == [str(i) for i in range(50, 100)]


def test_payloads_and_vectors_persist(tmp_path):
    base = _clustered(5)
    index = EmbeddingIndex(DIM, "Flat", modality="text", model={"fingerprint": "abc"}, extractor={"config_hash": "e1"})
    index.add(["c0", "c1", "c2", "c3", "c4"], base, payloads=["zero", "one", None, "three", "four"])
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx", model_fingerprint="abc", extractor_hash="e1")
    assert loaded.modality == "text" and loaded.payload("c1") == "one" and loaded.payload("c2") is None
    np.testing.assert_array_equal(loaded.vector("c3"), base[3])
    with pytest.raises(KeyError):
        loaded.payload("nope")


def test_other_model_or_extractor_is_an_error(tmp_path):
    index = EmbeddingIndex(DIM, "Flat", model={"fingerprint": "model-a", "source": "runs/a"},
                           extractor={"config_hash": "ext-a"})
    index.add(["x"], _clustered(1))
    index.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="model-a"):
        EmbeddingIndex.load(tmp_path / "idx", model_fingerprint="model-b")
    with pytest.raises(IndexMismatchError, match="ext-a"):
        EmbeddingIndex.load(tmp_path / "idx", extractor_hash="ext-b")


def test_bad_inputs_raise_typed_errors(tmp_path):
    index = EmbeddingIndex(DIM, "Flat")
    with pytest.raises(ValueError, match="shape"):
        index.add(["a"], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["a"], np.full((1, DIM), np.nan, np.float32))
    index.add(["a"], _clustered(1))
    with pytest.raises(ValueError, match="already indexed"):
        index.add(["a"], _clustered(1))
    with pytest.raises(ValueError, match="factory"):
        EmbeddingIndex(DIM, "NotALayout99")
    with pytest.raises(IndexTrainingError, match="IVF64"):
        EmbeddingIndex(DIM, "IVF64,Flat").add([str(i) for i in range(10)], _clustered(10))
    with pytest.raises(IndexFormatError):
        EmbeddingIndex.load(tmp_path)
    no_vectors = EmbeddingIndex(DIM, "Flat", keep_vectors=False)
    no_vectors.add(["a"], _clustered(1))
    with pytest.raises(RetrievalIndexError):
        no_vectors.search(_clustered(1), k=1, rescore=10)
    assert index.search(_clustered(2), k=5)[1] == [["a"], ["a"]]  # k larger than the index


def test_save_replaces_atomically(tmp_path):
    index = EmbeddingIndex(DIM, "Flat")
    index.add(["a"], _clustered(1))
    index.save(tmp_path / "idx")
    index.add(["b"], _clustered(1, seed=3))
    index.save(tmp_path / "idx")
    assert EmbeddingIndex.load(tmp_path / "idx").ids() == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporaries left behind


@pytest.mark.parametrize("factory, rescore", [("Flat", 0), ("HNSW8", 0), ("PQ4x4", 64)])
def test_vector_sets_score_by_their_best_vector(factory, rescore, tmp_path):
    base = _clustered(600)
    sizes = np.random.default_rng(3).integers(1, 6, size=150)  # 150 sets of 1-5 vectors
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sets = [base[a: a + n] for a, n in zip(starts, sizes)]
    ids = [f"img{i}" for i in range(len(sets))]
    index = EmbeddingIndex(DIM, factory, search_params={"efSearch": 64} if factory.startswith("HNSW") else None)
    index.add(ids, sets)
    assert len(index) == 150 and index.ntotal == int(sizes.sum())
    queries = _clustered(12, seed=4)
    best = np.array([[(s @ q).max() for s in sets] for q in queries])  # (Q, sets) exact set scores
    scores, found = index.search(queries, k=8, rescore=rescore)
    assert all(len(set(row)) == 8 for row in found), "each id once, however many of its vectors match"
    expected = np.argsort(-best, axis=1, kind="stable")[:, :8]
    hits = np.mean([len({ids[j] for j in row} & set(f)) / 8 for row, f in zip(expected, found)])
    assert hits >= (1.0 if factory == "Flat" else 0.9), hits
    if factory == "Flat":
        np.testing.assert_allclose(scores, np.sort(best, axis=1)[:, ::-1][:, :8], rtol=1e-5, atol=1e-6)
    # a set query scores by its best row: the same as searching each row and keeping each id's best
    set_scores, set_found = index.search([queries[:3], queries[3:4]], k=5, rescore=rescore)
    if factory == "Flat":
        per_set = np.stack([best[:3].max(axis=0), best[3]])  # (2, sets)
        np.testing.assert_allclose(set_scores, np.sort(per_set, axis=1)[:, ::-1][:, :5], rtol=1e-5, atol=1e-6)
    # removing an id removes its whole set; the rows survive a save and load
    assert index.remove(["img0", "img1"]) == 2 and len(index) == 148
    _, found = index.search(base[:1], k=20, rescore=rescore)
    assert "img0" not in found[0] and "img1" not in found[0]
    multi = next(i for i in range(2, len(sets)) if sizes[i] > 1)  # an id owning several vectors
    np.testing.assert_array_equal(index.vectors(f"img{multi}"), sets[multi])
    index.save(tmp_path / "sets")
    loaded = EmbeddingIndex.load(tmp_path / "sets")
    assert loaded.search(queries, k=8, rescore=rescore)[1] == index.search(queries, k=8, rescore=rescore)[1]
    with pytest.raises(RetrievalIndexError, match="vectors"):
        loaded.vector(f"img{multi}")


def test_empty_vector_set_is_refused():
    index = EmbeddingIndex(DIM, "Flat")
    with pytest.raises(ValueError, match="at least one vector"):
        index.add(["a", "b"], [_clustered(2), np.zeros((0, DIM), np.float32)])
