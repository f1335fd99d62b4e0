"""Resident memory of opening a 100k-image feature store and reading random images from it.

Writes a synthetic store on disk with the real FeatureStoreWriter (default: 100,000 images x 36 regions x
1024-d float16 features, float32 boxes and scores, 91-wide float16 class probabilities; about 8.1 GB),
then, in a fresh child process, measures the resident set size (RSS, from /proc/self/status) after
importing torch + vlptm, after ``FeatureStore.open``, and after reading random images as RegionFeatures.
RSS is split into anonymous memory (the process's own allocations) and file-backed pages (memory-mapped
shard pages the reads touched: page cache that the kernel can drop at any time). Goal: the RSS growth of
opening the store and reading from it stays under 300 MB.

Usage:
    python benchmarks/bench_store_memory.py                         # 100k images in a temp dir, deleted after
    python benchmarks/bench_store_memory.py --images 20000 --keep /tmp/store20k
    python benchmarks/bench_store_memory.py --store /tmp/store20k   # reuse a store
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_MB = 300.0


def _rss_mb() -> dict:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024.0
    return fields


def write_store(path: Path, num_images: int, regions: int, dim: int, classes: int, images_per_shard: int) -> float:
    from vlptm.features import FeatureStoreWriter

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with FeatureStoreWriter(path, feature_dim=dim, cls_dim=classes, extractor_name="synthetic",
                            extractor_config_hash="bench", images_per_shard=images_per_shard) as writer:
        for first in range(0, num_images, images_per_shard):
            count = min(images_per_shard, num_images - first)
            feats = rng.random((count, regions, dim), dtype=np.float32).astype(np.float16)  # (n, R, D)
            probs = rng.random((count, regions, classes), dtype=np.float32)
            probs /= probs.sum(-1, keepdims=True)  # (n, R, C)
            xy = rng.uniform(0, 300, (count, regions, 2)).astype(np.float32)
            boxes = np.concatenate([xy, xy + rng.uniform(1, 300, (count, regions, 2))], -1).astype(np.float32)
            scores = rng.random((count, regions), dtype=np.float32)
            for i in range(count):
                writer.add_arrays(f"{first + i:012d}", boxes=boxes[i], features=feats[i], scores=scores[i],
                                  image_size=(640, 640), cls_probs=probs[i])
            writer.commit()
            if (first // images_per_shard) % 10 == 0:
                print(f"  wrote {first + count}/{num_images} images", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def measure(store_path: str, reads: int) -> dict:
    """Runs in the child process: baseline after imports, after open, after random reads."""
    import torch  # noqa: F401 - part of the baseline: every store user has torch loaded

    import vlptm.structures  # noqa: F401
    from vlptm.features import FeatureStore

    base = _rss_mb()
    start = time.perf_counter()
    store = FeatureStore.open(store_path)
    open_s = time.perf_counter() - start
    after_open = _rss_mb()
    ids = store.ids()  # a Python list of all ids, as a DataLoader sampler would hold (freed below)
    rng = np.random.default_rng(1)
    picks = [ids[i] for i in rng.integers(0, len(ids), reads)]
    del ids
    start = time.perf_counter()
    total = 0.0
    for image_id in picks:
        regions = store[image_id]
        total += float(regions.features[0, 0])
    read_s = time.perf_counter() - start
    after_reads = _rss_mb()
    return {"images": len(store), "shards": len(store.shards), "open_s": open_s, "reads": reads,
            "read_us": 1e6 * read_s / reads, "base": base, "after_open": after_open, "after_reads": after_reads,
            "feature_dim": store.feature_dim, "regions_first": store.num_regions(picks[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=91)
    parser.add_argument("--images-per-shard", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=20_000, help="random images read after opening")
    parser.add_argument("--store", default=None, help="measure this existing store instead of writing one")
    parser.add_argument("--keep", default=None, help="write the synthetic store here and keep it")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        print(json.dumps(measure(args._child, args.reads)))
        return 0

    temp_dir = None
    if args.store:
        store_path = Path(args.store)
        write_s = None
    else:
        if args.keep:
            store_path = Path(args.keep)
        else:
            temp_dir = tempfile.mkdtemp(prefix="vlptm-store-bench-")
            store_path = Path(temp_dir) / "store"
        need_gb = args.images * args.regions * (2 * args.dim + 2 * args.classes + 20) / 1e9
        free_gb = shutil.disk_usage(store_path.parent if store_path.parent.exists() else "/").free / 1e9
        print(f"writing {args.images} images x {args.regions} regions x {args.dim}-d fp16 (+{args.classes} class "
              f"probs): ~{need_gb:.1f} GB, {free_gb:.0f} GB free", file=sys.stderr)
        if need_gb > 0.8 * free_gb:
            print("not enough disk space; use fewer --images", file=sys.stderr)
            return 2
        write_s = write_store(store_path, args.images, args.regions, args.dim, args.classes, args.images_per_shard)
    try:
        child = subprocess.run([sys.executable, __file__, "--_child", str(store_path), "--reads", str(args.reads)],
                               capture_output=True, text=True, check=True,
                               env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        result = json.loads(child.stdout.strip().splitlines()[-1])
        disk_gb = sum(f.stat().st_size for f in store_path.rglob("*") if f.is_file()) / 1e9
    finally:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)

    base, opened, read = result["base"], result["after_open"], result["after_reads"]
    print(f"\nfeature store memory: {result['images']} images in {result['shards']} shards, "
          f"{result['regions_first']} regions x {result['feature_dim']}-d fp16, {disk_gb:.2f} GB on disk"
          + (f" (written in {write_s:.0f} s)" if write_s else ""))
    print(f"{'stage':<34}{'RSS MB':>10}{'anon MB':>10}{'file MB':>10}{'RSS delta':>11}")
    for name, row in (("after import torch + vlptm", base), ("after FeatureStore.open", opened),
                      (f"after {result['reads']} random reads", read)):
        print(f"{name:<34}{row['VmRSS']:>10.1f}{row['RssAnon']:>10.1f}{row['RssFile']:>10.1f}"
              f"{row['VmRSS'] - base['VmRSS']:>11.1f}")
    delta_open = opened["VmRSS"] - base["VmRSS"]
    delta_read = read["VmRSS"] - base["VmRSS"]
    print(f"open: {result['open_s']:.2f} s; random read: {result['read_us']:.0f} us/image")
    print(f"RSS delta (open + reads) {delta_read:.1f} MB vs goal < {GOAL_MB:.0f} MB: "
          f"{'MET' if delta_read < GOAL_MB else 'NOT MET'} (open alone {delta_open:.1f} MB; store is "
          f"{1000 * disk_gb / max(delta_read, 1e-6):.0f}x larger than the RSS growth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
