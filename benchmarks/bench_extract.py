"""Extraction throughput: the whole pipeline against the bare model forward, grid against detector.

For each extractor (grid features, then the Faster R-CNN region extractor), on the same images:

- **bare forward**: the images are decoded into memory first; only ``extractor.extract`` runs, in the
  same batches the pipeline uses;
- **end to end**: :func:`vlptm.features.extract.extract_to_store` from the files: DataLoader decoding,
  forward, fp16 conversion, shard writes with fsync, atomic commits, into a fresh store.

Pipeline overhead = end-to-end time / bare time - 1 (goal: at most 15%). Each measurement is repeated
(``--repeats``) alternating the two, and the fastest run of each is kept, which filters out the load of
other processes on a shared machine. The images are the generated scene world unless ``--images`` is
given.

Usage:
    python benchmarks/bench_extract.py                                  # 32 generated 256-px images
    python benchmarks/bench_extract.py --images ../shared/data/coco128/images --num-images 32
    python benchmarks/bench_extract.py --device cuda --batch-size 16 --amp bf16
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

GOAL_OVERHEAD = 0.15


def _bare_seconds(extractor, images, batch_size: int, device: torch.device, amp) -> float:
    start = time.perf_counter()
    for first in range(0, len(images), batch_size):
        batch = [img.to(device) for img in images[first:first + batch_size]]  # B x (3, H, W) uint8
        with amp():
            results = extractor.extract(batch)
        for regions in results:
            regions.to("cpu")  # the pipeline moves results to the CPU too
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=None, help="folder of images (default: generated scenes)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256, help="side of generated images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader decoding processes")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to both extractors (e.g. min_size=384)")
    parser.add_argument("--extractors", default="grid-effnet-lite0,effnet-lite0-fpn")
    args = parser.parse_args()

    from vlptm.data.images import load_image_tensor
    from vlptm.data.scenes import generate_world
    from vlptm.detection import build_extractor
    from vlptm.features.extract import _autocast, extract_to_store, list_images

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = _autocast(device, None if args.amp == "none" else args.amp)
    overrides = dict(text.split("=", 1) for text in args.overrides)
    work = Path(tempfile.mkdtemp(prefix="vlptm-extract-bench-"))
    try:
        if args.images:
            items = list_images(args.images)[: args.num_images]
        else:
            generate_world(work / "world", num_images=args.num_images, seed=0, image_size=args.image_size)
            items = list_images(work / "world" / "images")
        images = [load_image_tensor(item.path) for item in items]  # N x (3, H, W) uint8
        sizes = sorted({tuple(img.shape[1:]) for img in images})
        print(f"{len(items)} images ({sizes[0]}..{sizes[-1]}), batch {args.batch_size}, workers {args.workers}, "
              f"device {device}, amp {args.amp}, torch threads {torch.get_num_threads()}", file=sys.stderr)
        rows = []
        for name in args.extractors.split(","):
            extractor = build_extractor(name, **overrides).to(device).eval()
            _bare_seconds(extractor, images[: args.batch_size], args.batch_size, device, amp)  # warm-up
            bare, e2e = [], []
            for repeat in range(args.repeats):
                bare.append(_bare_seconds(extractor, images, args.batch_size, device, amp))
                store = work / f"store-{name}-{repeat}"
                summary = extract_to_store(extractor, items, store, extractor_name=name, batch_size=args.batch_size,
                                           workers=args.workers, device=device,
                                           amp=None if args.amp == "none" else args.amp, progress=False)
                assert summary.done == len(items), summary
                e2e.append(summary.seconds)
                shutil.rmtree(store)
                print(f"  {name} repeat {repeat}: bare {bare[-1]:.2f} s, end-to-end {e2e[-1]:.2f} s", file=sys.stderr)
            rows.append((name, type(extractor).__name__, len(items) / min(bare), len(items) / min(e2e),
                         min(e2e) / min(bare) - 1.0))
            del extractor
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nextraction throughput ({len(items)} images, batch {args.batch_size}, {args.workers} decode workers, "
          f"{device}, fastest of {args.repeats})")
    print(f"{'extractor':<22}{'kind':<17}{'bare img/s':>11}{'e2e img/s':>11}{'overhead':>10}  goal <= 15%")
    for name, kind, bare_rate, e2e_rate, overhead in rows:
        verdict = "MET" if overhead <= GOAL_OVERHEAD else "NOT MET"
        print(f"{name:<22}{kind:<17}{bare_rate:>11.2f}{e2e_rate:>11.2f}{100 * overhead:>9.1f}%  {verdict}")
    if len(rows) == 2:
        print(f"{rows[0][0]} vs {rows[1][0]}: {rows[0][3] / rows[1][3]:.1f}x end-to-end, "
              f"{rows[0][2] / rows[1][2]:.1f}x bare forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
