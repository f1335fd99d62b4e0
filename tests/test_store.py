"""Feature store: exact round trip, shards, crash recovery, concurrent writers, integrity check."""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vlptm.commands import check_store as check_store_cmd
from vlptm.features import (
    FeatureStore,
    FeatureStoreWriter,
    InvalidRegionsError,
    StoreLockedError,
    StoreMismatchError,
    read_errors,
)
from vlptm.features.check import check_store
from vlptm.structures import RegionFeatures

D, C, A = 16, 5, 3


def _regions(rng: np.random.Generator, n: int, h: int = 40, w: int = 60, probs: bool = True) -> RegionFeatures:
    x1 = rng.uniform(0, w / 2, n)
    y1 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1)
    cls = rng.random((n, C)) + 1e-3
    attr = rng.random((n, A))
    return RegionFeatures(
        boxes=torch.from_numpy(boxes.astype(np.float32)),
        features=torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32)),
        scores=torch.from_numpy(rng.random(n).astype(np.float32)),
        image_size=(h, w),
        cls_probs=torch.from_numpy((cls / cls.sum(1, keepdims=True)).astype(np.float32)) if probs else None,
        attr_probs=torch.from_numpy(attr.astype(np.float32)) if probs else None,
    )


def _writer(path: Path, **kwargs) -> FeatureStoreWriter:
    opts = dict(feature_dim=D, cls_dim=C, attr_dim=A, extractor_name="test", extractor_config_hash="h1",
                images_per_shard=3)
    opts.update(kwargs)
    return FeatureStoreWriter(path, **opts)


def _fill(path: Path, ids, seed: int = 0, **kwargs):
    rng = np.random.default_rng(seed)
    written = {}
    with _writer(path, **kwargs) as writer:
        for i, image_id in enumerate(ids):
            regions = _regions(rng, n=1 + i % 7)
            writer.add(image_id, regions)
            writer.commit_if_full()
            written[str(image_id)] = regions
    return written


def _assert_same(stored: RegionFeatures, original: RegionFeatures) -> None:
    assert stored.image_size == original.image_size
    assert torch.equal(stored.boxes, original.boxes)
    assert torch.equal(stored.scores, original.scores)
    # fp16 storage: exactly the fp16 rounding of the input, returned as float32
    assert stored.features.dtype == torch.float32
    assert torch.equal(stored.features, original.features.half().float())
    assert torch.equal(stored.cls_probs, original.cls_probs.half().float())
    assert torch.equal(stored.attr_probs, original.attr_probs.half().float())


def test_round_trip_exact_across_shards(tmp_path):
    ids = [f"img_{i:03d}" for i in range(10)] + [7, "ünïcode/ïd"]
    written = _fill(tmp_path / "s", ids)
    store = FeatureStore.open(tmp_path / "s", max_open_shards=1)  # forces unmapping and remapping
    assert len(store) == 12
    assert len(store.shards) == 4  # 3 images per shard
    assert store.ids() == [str(i) for i in ids]
    assert store.feature_dim == D and store.cls_dim == C and store.attr_dim == A
    for image_id in reversed(ids):  # touches shards out of order
        _assert_same(store[image_id], written[str(image_id)])
        assert store.num_regions(image_id) == len(written[str(image_id)])
    assert "7" in store and 7 in store and "img_999" not in store and "img_00" not in store
    assert store.contains_many(["img_003", "nope", "ünïcode/ïd"]).tolist() == [True, False, True]
    with pytest.raises(KeyError):
        store["img_999"]
    half = FeatureStore.open(tmp_path / "s", as_float32=False)["img_004"]
    assert half.features.dtype == torch.float16


def test_store_is_picklable_for_dataloader_workers(tmp_path):
    written = _fill(tmp_path / "s", ["a", "b", "c", "d"])
    store = FeatureStore.open(tmp_path / "s")
    store["a"]  # maps a shard
    clone = pickle.loads(pickle.dumps(store))
    _assert_same(clone["d"], written["d"])


def test_store_without_soft_labels(tmp_path):
    rng = np.random.default_rng(1)
    with _writer(tmp_path / "s", cls_dim=None, attr_dim=None) as writer:
        regions = _regions(rng, 4, probs=False)
        writer.add("x", regions)
    stored = FeatureStore.open(tmp_path / "s")["x"]
    assert stored.cls_probs is None and stored.attr_probs is None
    assert torch.equal(stored.boxes, regions.boxes)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_invalid_regions_are_rejected_with_a_typed_error(tmp_path):
    rng = np.random.default_rng(2)
    good = _regions(rng, 3)
    with _writer(tmp_path / "s") as writer:
        bad_feats = good.features.clone()
        bad_feats[1, 2] = float("nan")
        with pytest.raises(InvalidRegionsError, match="NaN"):
            writer.add("nan", RegionFeatures(good.boxes, bad_feats, good.scores, good.image_size,
                                             good.cls_probs, good.attr_probs))
        with pytest.raises(InvalidRegionsError, match="NaN or infinite"):  # overflows float16
            writer.add("big", RegionFeatures(good.boxes, good.features * 1e6, good.scores, good.image_size,
                                             good.cls_probs, good.attr_probs))
        with pytest.raises(InvalidRegionsError, match="cls_probs"):
            writer.add("nocls", RegionFeatures(good.boxes, good.features, good.scores, good.image_size))
        with pytest.raises(InvalidRegionsError, match="features must be"):
            writer.add_arrays("wide", boxes=good.boxes.numpy(), features=np.zeros((3, D + 1)),
                              scores=good.scores.numpy(), image_size=(4, 4), cls_probs=good.cls_probs.numpy(),
                              attr_probs=good.attr_probs.numpy())
        writer.add("ok", good)
        with pytest.raises(InvalidRegionsError, match="already added"):
            writer.add("ok", good)
    store = FeatureStore.open(tmp_path / "s")
    assert store.ids() == ["ok"]


def test_reopen_with_other_dims_or_extractor_raises(tmp_path):
    _fill(tmp_path / "s", ["a"])
    with pytest.raises(StoreMismatchError, match="feature_dim"):
        _writer(tmp_path / "s", feature_dim=D + 1)
    with pytest.raises(StoreMismatchError, match="config"):
        _writer(tmp_path / "s", extractor_config_hash="other")
    with pytest.raises(StoreMismatchError, match="cls_dim"):
        _writer(tmp_path / "s", cls_dim=None)


def test_same_writer_name_is_locked_while_open(tmp_path):
    first = _writer(tmp_path / "s", writer_name="w0")
    try:
        with pytest.raises(StoreLockedError):
            _writer(tmp_path / "s", writer_name="w0")
        second = _writer(tmp_path / "s", writer_name="w1")  # another name is fine
        second.close()
    finally:
        first.close()
    _writer(tmp_path / "s", writer_name="w0").close()  # released after close


def test_crash_between_shard_rename_and_list_update_is_recovered(tmp_path, monkeypatch):
    path = tmp_path / "s"
    rng = np.random.default_rng(3)
    originals = {f"i{k}": _regions(rng, 2 + k % 3) for k in range(9)}
    writer = _writer(path)
    for k in range(6):
        writer.add(f"i{k}", originals[f"i{k}"])
        writer.commit_if_full()  # two shards committed
    for k in range(6, 9):
        writer.add(f"i{k}", originals[f"i{k}"])

    # crash: the third shard's directory is renamed into place, then the process dies before the writer
    # list is replaced (os.replace is the commit point)
    import vlptm.features.store as store_module

    def die(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(store_module.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        writer.commit()
    monkeypatch.undo()
    assert (path / "shards" / "main-000002").is_dir()  # on disk but not committed
    (path / "shards" / ".tmp-main-000009").mkdir()  # a temp dir from a crash during the array writes
    writer._release_lock()  # the process is gone: its lock with it

    store = FeatureStore.open(path)
    assert store.ids() == [f"i{k}" for k in range(6)]  # readers never see the uncommitted shard
    assert any(p.severity == "warning" and "main-000002" in p.where for p in check_store(path))

    resumed = _writer(path)
    assert not (path / "shards" / "main-000002").exists()  # discarded on reopen
    assert not (path / "shards" / ".tmp-main-000009").exists()
    todo = [k for k in originals if not resumed.is_committed(k)]
    assert todo == ["i6", "i7", "i8"]
    for k in todo:
        resumed.add(k, originals[k])
    resumed.close()
    store = FeatureStore.open(path)
    assert sorted(store.ids()) == sorted(originals)
    assert [s.name for s in store.shards] == ["main-000000", "main-000001", "main-000002"]
    for k, regions in originals.items():
        _assert_same(store[k], regions)
    assert check_store(path) == []


_CONCURRENT_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from vlptm.features import FeatureStoreWriter
    path, name, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(start)
    with FeatureStoreWriter(path, feature_dim=8, writer_name=name, images_per_shard=2,
                            extractor_name="t", extractor_config_hash="h") as w:
        for i in range(start, start + 40):
            n = 1 + i % 4
            w.add_arrays(f"img{i}", boxes=np.tile([[0., 0., 5., 5.]], (n, 1)), features=np.full((n, 8), i),
                         scores=np.ones(n), image_size=(10, 10))
            w.commit_if_full()
""")


def test_two_processes_write_one_store(tmp_path):
    path = tmp_path / "s"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(path), f"part{k}", str(k * 40)],
                              env=env) for k in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = FeatureStore.open(path)
    assert sorted(store.ids()) == sorted(f"img{i}" for i in range(80))
    assert {s.name.split("-")[0] for s in store.shards} == {"part0", "part1"}
    for i in (0, 39, 40, 79):
        assert torch.equal(store[f"img{i}"].features, torch.full((1 + i % 4, 8), float(i)))
    assert check_store(path) == []


def _run_check(path) -> int:
    return check_store_cmd.run(argparse.Namespace(store=str(path), box_tolerance=0.5, strict=False))


def test_check_store_finds_corruption(tmp_path, capsys):
    path = tmp_path / "s"
    _fill(path, [f"i{k}" for k in range(6)])
    assert check_store(path) == [] and _run_check(path) == 0

    feats_file = path / "shards" / "main-000000" / "features.npy"
    feats = np.load(feats_file)
    feats[0, 0] = np.inf
    np.save(feats_file, feats)
    boxes_file = path / "shards" / "main-000001" / "boxes.npy"
    boxes = np.load(boxes_file)
    boxes[-1, 2] = 61.0  # image width is 60
    np.save(boxes_file, boxes)
    problems = [str(p) for p in check_store(path)]
    assert any("NaN or infinite" in p and "'i0'" in p for p in problems)
    assert any("outside the image" in p and "'i5'" in p for p in problems)
    assert _run_check(path) == 1
    assert "ERROR" in capsys.readouterr().out

    (path / "shards" / "main-000001" / "scores.npy").unlink()
    assert any("scores.npy is missing" in str(p) for p in check_store(path))


def test_check_store_finds_duplicates_across_writers(tmp_path):
    path = tmp_path / "s"
    _fill(path, ["a", "b"], writer_name="w0")
    _fill(path, ["b", "c"], writer_name="w1")  # a second writer that did not skip "b"
    problems = check_store(path)
    assert len(problems) == 1 and "stored more than once: 'b'" in problems[0].message
    assert FeatureStore.open(path).duplicate_ids() == ["b"]


def test_errors_file_round_trip(tmp_path):
    with _writer(tmp_path / "s", writer_name="w3") as writer:
        writer.log_error({"image_id": "x", "reason": "truncated"})
        writer.log_error({"image_id": "y", "reason": "missing"})
    assert [(e["image_id"], e["reason"]) for e in read_errors(tmp_path / "s")] == [("x", "truncated"),
                                                                                   ("y", "missing")]


def test_float32_store_keeps_features_exactly(tmp_path):
    rng = np.random.default_rng(4)
    regions = _regions(rng, 5)
    with _writer(tmp_path / "s", feature_dtype="float32") as writer:
        writer.add("x", regions)
    store = FeatureStore.open(tmp_path / "s", as_float32=False)
    assert store.manifest["feature_dtype"] == "float32"
    stored = store["x"]
    assert torch.equal(stored.features, regions.features) and torch.equal(stored.cls_probs, regions.cls_probs)
    with pytest.raises(StoreMismatchError, match="feature_dtype"):
        _writer(tmp_path / "s")  # float16 writer on a float32 store


def test_fortran_order_arrays_are_stored_readably(tmp_path):
    rng = np.random.default_rng(5)
    regions = _regions(rng, 6)
    with _writer(tmp_path / "s", feature_dtype="float32") as writer:
        writer.add_arrays("f", boxes=np.asfortranarray(regions.boxes.numpy()),
                          features=np.asfortranarray(regions.features.numpy()), scores=regions.scores.numpy(),
                          image_size=regions.image_size, cls_probs=np.asfortranarray(regions.cls_probs.numpy()),
                          attr_probs=np.asfortranarray(regions.attr_probs.numpy()))
    stored = FeatureStore.open(tmp_path / "s", as_float32=False)["f"]
    assert torch.equal(stored.features, regions.features) and torch.equal(stored.boxes, regions.boxes)
    assert torch.equal(stored.cls_probs, regions.cls_probs) and torch.equal(stored.attr_probs, regions.attr_probs)


def test_lock_of_a_killed_writer_is_free_while_its_forked_children_live(tmp_path):
    """A SIGKILLed extraction can leave DataLoader workers alive for a while; they must not keep the lock."""
    store = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from vlptm.features import FeatureStoreWriter
        writer = FeatureStoreWriter({str(store)!r}, feature_dim={D}, cls_dim={C}, attr_dim={A},
                                    extractor_name="test", extractor_config_hash="h1", writer_name="main")
        child = os.fork()
        if child == 0:  # a forked worker: inherits the open lock file, outlives its parent
            os.close(1), os.close(2)  # (not the test's output pipe)
            time.sleep(30)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    child = int(proc.stdout.split()[0])
    try:
        os.kill(child, 0)  # the orphaned child still runs
        _writer(store, writer_name="main").close()  # ... and the name is free again
    finally:
        os.kill(child, 9)
