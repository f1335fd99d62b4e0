"""Extraction pipeline: inputs, sharding, bad images, and SIGKILL-then-resume through the real CLI."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlptm.data.scenes import generate_world
from vlptm.detection import build_extractor
from vlptm.features import FeatureStore, read_errors
from vlptm.features.check import check_store
from vlptm.features.extract import (
    extract_to_store,
    list_images,
    parse_shard,
    shard_items,
)

SIDE = 64  # generated images are SIDE x SIDE; the grid extractor runs at that size


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, num_images=12, seed=3, image_size=SIDE, image_format="png")
    return out


@pytest.fixture(scope="module")
def grid():
    """The real grid extractor (packaged ImageNet EfficientNet-Lite0) at the images' own size."""
    return build_extractor("grid-effnet-lite0", min_size=SIDE, max_size=SIDE, grid_size=2)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width x height``, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" + b"\x80" * 30))


def _bad_files(folder: Path, good_png: bytes, good_jpg: bytes) -> dict:
    """One file of each kind the image loader refuses -> the reason it gives."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty.png": (b"", "empty"),
        "truncated.png": (good_png[: len(good_png) // 2], "truncated"),
        "truncated.jpg": (good_jpg[: len(good_jpg) // 2], "truncated"),
        "notes.jpg": (b"these are not pixels\n" * 20, "not_an_image"),
        "noise.png": (np.random.default_rng(0).bytes(3000), "not_an_image"),
        "huge.png": (_png_header_only(20000, 20000), "too_large"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {Path(name).stem: reason for name, (_, reason) in files.items()}


def test_list_images_folder_list_file_and_annotation(world, tmp_path):
    from_folder = list_images(world / "images")
    assert len(from_folder) == 12
    assert [i.image_id for i in from_folder] == sorted(p.stem for p in (world / "images").glob("*.png"))

    from_captions = list_images(world / "captions.json")  # one item per image, the records' ids
    assert sorted(Path(i.path) for i in from_captions) == sorted(Path(i.path) for i in from_folder)
    assert len({i.image_id for i in from_captions}) == 12

    listing = tmp_path / "list.txt"
    first, second = from_folder[0], from_folder[1]
    listing.write_text(f"# two images\n{first.path}\nother\t{Path(second.path).relative_to(world)}\n")
    (tmp_path / "images").symlink_to(world / "images")
    items = list_images(listing)
    assert [(i.image_id, Path(i.path).name) for i in items] == [(first.image_id, Path(first.path).name),
                                                                  ("other", Path(second.path).name)]
    listing.write_text(f"{first.path}\n{first.path}\n")
    with pytest.raises(ValueError, match="already used"):
        list_images(listing)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nowhere")


def test_shards_partition_the_list():
    items = list(range(23))
    parts = [shard_items(items, i, 4) for i in range(4)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_bad_images_are_logged_and_no_good_image_is_lost(world, grid, tmp_path):
    good = list_images(world / "images")
    good_png = Path(good[0].path).read_bytes()
    buffer = tmp_path / "good.jpg"
    Image.open(good[0].path).save(buffer, quality=90)
    reasons = _bad_files(tmp_path / "bad", good_png, buffer.read_bytes())
    reasons["gone"] = "missing"
    reasons["adir"] = "is_directory"
    (tmp_path / "bad" / "adir").mkdir()
    lines = [f"{i.image_id}\t{i.path}" for i in good]
    lines += [f"{stem}\t{p}" for stem in reasons for p in [next((tmp_path / "bad").glob(f"{stem}*"), None)]
              if p is not None]
    lines.append(f"gone\t{tmp_path / 'bad' / 'gone.png'}")
    mixed = sorted(lines)  # interleave bad files with good ones
    (tmp_path / "list.txt").write_text("\n".join(mixed) + "\n")
    items = list_images(tmp_path / "list.txt")
    assert len(items) == len(good) + len(reasons)

    store_dir = tmp_path / "store"
    summary = extract_to_store(grid, items, store_dir, extractor_name="grid-test", batch_size=3, workers=2,
                               images_per_shard=4, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (len(good), 0, len(reasons))
    store = FeatureStore.open(store_dir)
    assert sorted(store.ids()) == sorted(i.image_id for i in good)
    errors = {e["image_id"]: e["reason"] for e in read_errors(store_dir)}
    assert errors == reasons
    assert check_store(store_dir) == []
    regions = store[good[0].image_id]
    assert regions.features.shape == (4, grid.feature_dim) and regions.image_size == (SIDE, SIDE)

    again = extract_to_store(grid, items, store_dir, extractor_name="grid-test", batch_size=3, workers=0,
                             images_per_shard=4, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, len(good), len(reasons))


def test_sharded_runs_and_bf16_autocast_fill_one_store(world, grid, tmp_path):
    items = list_images(world / "images")
    store_dir = tmp_path / "store"
    for index in range(2):
        summary = extract_to_store(grid, shard_items(items, index, 2), store_dir, extractor_name="grid-test",
                                   batch_size=4, workers=0, writer_name=f"shard{index}of2", progress=False,
                                   amp="bf16" if index else None)
        assert summary.done == 6
    store = FeatureStore.open(store_dir)
    assert sorted(store.ids()) == sorted(i.image_id for i in items)
    assert {s.name.split("-")[0] for s in store.shards} == {"shard0of2", "shard1of2"}
    assert check_store(store_dir) == []
    pixels = torch.from_numpy(np.array(Image.open(items[0].path).convert("RGB"))).permute(2, 0, 1)  # (3, H, W)
    reference = grid.extract([pixels])
    assert torch.allclose(store[items[0].image_id].features, reference[0].features, atol=1e-2, rtol=1e-2)


def _cli(*args: str) -> list:
    return [sys.executable, "-m", "vlptm.cli", *args]


@pytest.mark.parametrize("kind", ["grid", pytest.param("detector", marks=pytest.mark.slow)])
def test_sigkill_midway_then_resume_equals_uninterrupted_run(kind, tmp_path):
    """The real CLI is killed with SIGKILL once some shards are committed; a rerun completes the store,
    which then holds every image exactly once with features equal to an uninterrupted run's."""
    num_images = 32 if kind == "grid" else 24
    world = tmp_path / "world"
    generate_world(world, num_images=num_images, seed=5, image_size=128, image_format="jpg")
    if kind == "grid":  # packaged ImageNet weights: the same network in every process
        name, overrides = "grid-effnet-lite0", {"min_size": "128", "max_size": "128"}
        source = ["--extractor", name] + [f"--set={key}={value}" for key, value in overrides.items()]
        expected_keys = {"boxes", "features", "scores", "image_size"}
    else:  # untrained heads are random: save them once so every run loads the same detector
        name, overrides = str(tmp_path / "detector"), {}
        build_extractor("effnet-lite0-fpn", min_size=128, max_size=128).save(name)
        source = ["--checkpoint", name]
        expected_keys = {"boxes", "features", "scores", "image_size", "cls_probs"}
    common = ["--images", str(world / "captions.json"), *source, "--batch-size", "2", "--images-per-shard", "2",
              "--workers", "1", "--no-progress"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("extract", "--out", str(killed), *common), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer_file = killed / "writers" / "main.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            committed = len(json.loads(writer_file.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            committed = 0
        if committed >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the extraction finished (or failed) before it was killed"
    partial = FeatureStore.open(killed)
    assert 4 <= len(partial) < num_images

    resumed = subprocess.run(_cli("extract", "--out", str(killed), *common), env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (summary["skipped"], summary["done"], summary["failed"]) == (len(partial), num_images - len(partial), 0)

    clean = tmp_path / "clean"  # the uninterrupted run, in this process with the same extractor and batches
    extractor = build_extractor(name, **overrides)
    extract_to_store(extractor, list_images(world / "captions.json"), clean, extractor_name="reference",
                     batch_size=2, workers=0, images_per_shard=2, progress=False)

    store, reference = FeatureStore.open(killed), FeatureStore.open(clean)
    assert len(store) == num_images and store.duplicate_ids() == []
    assert sorted(store.ids()) == sorted(reference.ids())
    assert check_store(killed) == []
    for image_id in reference.ids():
        got, want = store.get_arrays(image_id), reference.get_arrays(image_id)
        assert got.keys() == want.keys() == expected_keys
        for key in want:
            assert np.array_equal(got[key], want[key]), (image_id, key)
