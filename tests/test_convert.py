"""Converters: fixture files written in each peer's format convert into a store with exact values."""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json

import numpy as np
import pytest
import torch

from vlptm.commands import convert_features as convert_cmd
from vlptm.features import FeatureStore, read_errors
from vlptm.features.check import check_store
from vlptm.features.convert import convert_features

D = 32


def _detections(rng: np.random.Generator, n: int, h: int, w: int):
    x1 = rng.uniform(0, w / 2, n).astype(np.float32)
    y1 = rng.uniform(0, h / 2, n).astype(np.float32)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1).astype(np.float32)
    return {
        "boxes": boxes,
        "features": rng.standard_normal((n, D)).astype(np.float32) * 3,
        "objects_id": rng.integers(0, 10, n).astype(np.int64),
        "objects_conf": rng.uniform(0.2, 1.0, n).astype(np.float32),
        "attrs_id": rng.integers(0, 5, n).astype(np.int64),
        "attrs_conf": rng.uniform(0.3, 1.0, n).astype(np.float32),
    }


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _write_lxmert_tsv(path, images):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        for image_id, (h, w, det) in images.items():
            writer.writerow([image_id, h, w, _b64(det["objects_id"]), _b64(det["objects_conf"]),
                             _b64(det["attrs_id"]), _b64(det["attrs_conf"]), len(det["boxes"]),
                             _b64(det["boxes"]), _b64(det["features"])])


def _assert_pixel_record(store: FeatureStore, image_id: str, h: int, w: int, det) -> None:
    regions = store[image_id]
    assert regions.image_size == (h, w)
    assert torch.equal(regions.boxes, torch.from_numpy(det["boxes"]))
    assert torch.equal(regions.scores, torch.from_numpy(det["objects_conf"]))
    assert torch.equal(regions.features, torch.from_numpy(det["features"].astype(np.float16).astype(np.float32)))


def _assert_peaked(probs: torch.Tensor, ids: np.ndarray, confs: np.ndarray, width: int) -> None:
    assert probs.shape == (len(ids), width)
    assert torch.equal(probs.argmax(1), torch.from_numpy(ids + 1))  # column 0: background / no attribute
    assert torch.equal(probs[torch.arange(len(ids)), torch.from_numpy(ids + 1)],
                       torch.from_numpy(confs.astype(np.float16).astype(np.float32)))
    assert torch.allclose(probs.sum(1), torch.ones(len(ids)), atol=1e-2)


def test_lxmert_tsv_round_trip_with_soft_labels_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"COCO_val2014_{k:012d}": (100 + k, 200 - k, _detections(rng, 10 + k, 100 + k, 200 - k))
              for k in range(5)}
    src = tmp_path / "feats.tsv"
    _write_lxmert_tsv(src, images)
    with open(src, "a") as f:  # one broken line: bad base64 in the boxes column
        f.write("broken\t10\t10\tAA==\tAA==\tAA==\tAA==\t1\t!!!notbase64\tAA==\n")

    summary = convert_features("lxmert-tsv", src, tmp_path / "store", num_classes=10, num_attrs=5,
                               images_per_shard=2)
    assert (summary.converted, summary.skipped, summary.failed) == (5, 0, 1)
    store = FeatureStore.open(tmp_path / "store")
    assert store.ids() == list(images)
    assert store.cls_dim == 11 and store.attr_dim == 6
    for image_id, (h, w, det) in images.items():
        _assert_pixel_record(store, image_id, h, w, det)
        regions = store[image_id]
        _assert_peaked(regions.cls_probs, det["objects_id"], det["objects_conf"], 11)
        _assert_peaked(regions.attr_probs, det["attrs_id"], det["attrs_conf"], 6)
    errors = read_errors(tmp_path / "store")
    assert [e["image_id"] for e in errors] == ["broken"] and "base64" in errors[0]["reason"]
    assert check_store(tmp_path / "store") == []

    again = convert_features("lxmert-tsv", src, tmp_path / "store", num_classes=10, num_attrs=5)
    assert (again.converted, again.skipped) == (0, 5)
    assert len(FeatureStore.open(tmp_path / "store")) == 5


def test_lxmert_tsv_without_soft_labels_and_class_id_out_of_range(tmp_path):
    rng = np.random.default_rng(1)
    images = {"a": (50, 60, _detections(rng, 4, 50, 60))}
    images["a"][2]["objects_id"][0] = 7
    _write_lxmert_tsv(tmp_path / "f.tsv", images)
    convert_features("lxmert-tsv", tmp_path / "f.tsv", tmp_path / "plain")
    store = FeatureStore.open(tmp_path / "plain")
    assert store.cls_dim is None and store["a"].cls_probs is None
    _assert_pixel_record(store, "a", 50, 60, images["a"][2])

    summary = convert_features("lxmert-tsv", tmp_path / "f.tsv", tmp_path / "narrow", num_classes=3)
    assert (summary.failed, summary.converted) == (1, 0)  # class id 7 does not fit 3 classes


def test_bottom_up_attention_six_column_tsv(tmp_path):
    rng = np.random.default_rng(2)
    det = _detections(rng, 6, 80, 120)
    with open(tmp_path / "butd.tsv", "w", newline="") as f:  # image_id, image_w, image_h, ...
        csv.writer(f, delimiter="\t").writerow(["42", 120, 80, 6, _b64(det["boxes"]), _b64(det["features"])])
    convert_features("lxmert-tsv", tmp_path / "butd.tsv", tmp_path / "store")
    regions = FeatureStore.open(tmp_path / "store")["42"]
    assert regions.image_size == (80, 120)
    assert torch.equal(regions.boxes, torch.from_numpy(det["boxes"]))


def test_bua_npz_round_trip_and_corrupt_file(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "npz"
    src.mkdir()
    images = {}
    for k in range(4):
        h, w = 300 + k, 400 - k
        det = _detections(rng, 10 + 3 * k, h, w)
        info = {"image_id": f"img{k}", "image_h": h, "image_w": w, "num_boxes": len(det["boxes"]),
                "objects_id": det["objects_id"], "objects_conf": det["objects_conf"],
                "attrs_id": det["attrs_id"], "attrs_conf": det["attrs_conf"]}
        np.savez_compressed(src / f"img{k}", x=det["features"], bbox=det["boxes"], num_bbox=len(det["boxes"]),
                            image_h=h, image_w=w, info=info)
        images[f"img{k}"] = (h, w, det)
    good = (src / "img0.npz").read_bytes()
    (src / "img_trunc.npz").write_bytes(good[: len(good) // 2])

    summary = convert_features("bua-npz", src, tmp_path / "store", num_classes=10, num_attrs=5)
    assert (summary.converted, summary.failed) == (4, 1)
    store = FeatureStore.open(tmp_path / "store")
    assert sorted(store.ids()) == sorted(images)
    for image_id, (h, w, det) in images.items():
        _assert_pixel_record(store, image_id, h, w, det)
        _assert_peaked(store[image_id].cls_probs, det["objects_id"], det["objects_conf"], 11)
    assert [e["image_id"] for e in read_errors(tmp_path / "store")] == ["img_trunc"]
    assert check_store(tmp_path / "store") == []


def _uniter_dump(rng: np.random.Generator, n: int, dtype=np.float32):
    x1 = rng.uniform(0, 0.5, n)
    y1 = rng.uniform(0, 0.5, n)
    x2 = x1 + rng.uniform(0.01, 0.5, n)
    y2 = y1 + rng.uniform(0.01, 0.5, n)
    soft = rng.random((n, 1601))
    return {
        "features": (rng.standard_normal((n, D)) * 2).astype(dtype),
        "norm_bb": np.stack([x1, y1, x2, y2, x2 - x1, y2 - y1], 1).astype(dtype),
        "conf": rng.uniform(0.2, 1, n).astype(dtype),
        "soft_labels": (soft / soft.sum(1, keepdims=True)).astype(dtype),
    }


def _assert_uniter_record(store: FeatureStore, image_id: str, dump, size=None) -> None:
    regions = store[image_id]
    f16 = lambda a: torch.from_numpy(np.asarray(a).astype(np.float16).astype(np.float32))
    assert torch.equal(regions.features, f16(dump["features"]))
    assert torch.equal(regions.cls_probs, f16(dump["soft_labels"]))
    assert torch.equal(regions.scores, torch.from_numpy(dump["conf"].astype(np.float32)))
    norm_bb = torch.from_numpy(dump["norm_bb"].astype(np.float32))
    # UNITER's 7-d position: [x1, y1, x2, y2, w, h] from the file, then w * h
    uniter_pos = torch.cat([norm_bb, norm_bb[:, 4:5] * norm_bb[:, 5:]], dim=1)
    if size is None:
        assert regions.image_size == (1, 1)
        assert torch.equal(regions.normalized_positions(4), norm_bb[:, :4])
        # w and h are recomputed from the corners, the file stores them separately (rounded on their own)
        atol = 2e-3 if dump["norm_bb"].dtype == np.float16 else 1e-6
        assert torch.allclose(regions.normalized_positions(7), uniter_pos, atol=atol)
    else:
        h, w = size
        assert regions.image_size == (h, w)
        assert torch.equal(regions.boxes, norm_bb[:, :4] * torch.tensor([w, h, w, h], dtype=torch.float32))
        assert torch.allclose(regions.normalized_positions(7), uniter_pos, atol=1e-5)


def test_uniter_npz_with_and_without_image_sizes(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "npz"
    src.mkdir()
    dumps = {f"coco_train2014_{k:012d}": _uniter_dump(rng, 10 + k) for k in range(3)}
    for name, dump in dumps.items():
        np.savez(src / f"{name}.npz", **dump)

    convert_features("uniter-npz", src, tmp_path / "normalised")
    store = FeatureStore.open(tmp_path / "normalised")
    assert store.cls_dim == 1601
    for name, dump in dumps.items():
        _assert_uniter_record(store, name, dump)

    coco = {"images": [{"id": k, "file_name": f"COCO_train2014_{k:012d}.jpg", "height": 480 - k, "width": 640}
                       for k in range(3)]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    convert_features("uniter-npz", src, tmp_path / "pixels", image_sizes=tmp_path / "instances.json")
    store = FeatureStore.open(tmp_path / "pixels")
    for k, (name, dump) in enumerate(dumps.items()):
        _assert_uniter_record(store, name, dump, size=(480 - k, 640))
    assert check_store(tmp_path / "pixels") == []


def test_uniter_lmdb_msgpack_and_compressed_values(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    msgpack = pytest.importorskip("msgpack")
    msgpack_numpy = pytest.importorskip("msgpack_numpy")
    rng = np.random.default_rng(5)
    # as UNITER's convert_imgdir.py stores them: float32 arrays cast to float16
    dumps = {f"nlvr2_dev-{k}-img0": _uniter_dump(rng, 8 + k, dtype=np.float16) for k in range(4)}
    env = lmdb.open(str(tmp_path / "feat_th0.2_max100_min10"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, (name, dump) in enumerate(dumps.items()):
            if k % 2 == 0:
                value = msgpack.packb(dump, default=msgpack_numpy.encode, use_bin_type=True)
            else:  # the *_compressed databases hold np.savez_compressed bytes
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **dump)
                value = buffer.getvalue()
            txn.put(f"{name}.npz".encode(), value)
        txn.put(b"__keys__", json.dumps([f"{n}.npz" for n in dumps]).encode())
        txn.put(b"broken.npz", b"\x92\x01\x02")  # a msgpack list, not a feature dict
    env.close()

    args = argparse.ArgumentParser()
    convert_cmd.add_arguments(args)
    rc = convert_cmd.run(args.parse_args(["--from", "uniter-lmdb", str(tmp_path / "feat_th0.2_max100_min10"),
                                          "--out", str(tmp_path / "store"), "--no-progress"]))
    assert rc == 0
    store = FeatureStore.open(tmp_path / "store")
    assert sorted(store.ids()) == sorted(dumps)
    for name, dump in dumps.items():
        _assert_uniter_record(store, name, dump)
    assert [e["image_id"] for e in read_errors(tmp_path / "store")] == ["broken"]


def test_unknown_options_for_format_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        convert_features("uniter-npz", tmp_path, tmp_path / "s", num_classes=5)
    with pytest.raises(ValueError, match="unknown format"):
        convert_features("vinvl-tsv", tmp_path, tmp_path / "s")
