"""Extraction throughput: the whole pipeline against the bare model forward, grid against detector.

For each extractor (grid features, then the Faster R-CNN region extractor), on the same images:

- **bare forward**: the images are decoded into memory first; only ``extractor.extract`` runs, in the
  same batches the pipeline uses;
- **end to end**: :func:`vlptm.features.extract.extract_to_store` from the files: DataLoader decoding,
  forward, fp16 conversion, shard writes with fsync, atomic commits, into a fresh store.

Pipeline overhead = end-to-end time / bare time - 1 (goal: at most 15%). Each measurement is repeated
(``--repeats``), alternating which of the two goes first, and the fastest run of each is kept, which
filters out the load of other processes on a shared machine (each repeat's own ratio is printed too). The images are the generated scene world unless ``--images`` is
given.

Usage:
    python benchmarks/bench_extract.py                 # 96 generated 256-px images (16 for the detector)
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
    parser.add_argument("--num-images", type=int, default=96, help="images for the grid extractor")
    parser.add_argument("--detector-images", type=int, default=16,
                        help="the first this many images for region (detector) extractors, which are far slower")
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
        all_items, all_images = items, images
        for name in args.extractors.split(","):
            extractor = build_extractor(name, **overrides).to(device).eval()
            count = len(all_items) if type(extractor).__name__ == "GridExtractor" else args.detector_images
            items, images = all_items[:count], all_images[:count]
            _bare_seconds(extractor, images[: args.batch_size], args.batch_size, device, amp)  # warm-up
            bare, e2e, parts = [], [], []
            for repeat in range(args.repeats):
                order = ("bare", "e2e") if repeat % 2 == 0 else ("e2e", "bare")  # cancels drifts in machine load
                for what in order:
                    if what == "bare":
                        bare.append(_bare_seconds(extractor, images, args.batch_size, device, amp))
                        continue
                    store = work / f"store-{name}-{repeat}"
                    summary = extract_to_store(extractor, items, store, extractor_name=name,
                                               batch_size=args.batch_size, workers=args.workers, device=device,
                                               amp=None if args.amp == "none" else args.amp, progress=False)
                    assert summary.done == len(items), summary
                    e2e.append(summary.seconds)
                    parts.append(summary)
                    shutil.rmtree(store)
                print(f"  {name} repeat {repeat}: bare {bare[-1]:.2f} s, end-to-end {e2e[-1]:.2f} s "
                      f"({100 * (e2e[-1] / bare[-1] - 1):+.1f}%)", file=sys.stderr)
            best = min(parts, key=lambda p: p.seconds)
            rows.append((name, type(extractor).__name__, len(items) / min(bare), len(items) / min(e2e),
                         min(e2e) / min(bare) - 1.0, best))
            del extractor
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nextraction throughput (batch {args.batch_size}, {args.workers} decode workers, {device}, "
          f"fastest of {args.repeats})")
    print(f"{'extractor':<22}{'kind':<17}{'images':>7}{'bare img/s':>11}{'e2e img/s':>11}{'overhead':>10}  goal <= 15%")
    for name, kind, bare_rate, e2e_rate, overhead, best in rows:
        verdict = "MET" if overhead <= GOAL_OVERHEAD else "NOT MET"
        print(f"{name:<22}{kind:<17}{best.done:>7}{bare_rate:>11.2f}{e2e_rate:>11.2f}{100 * overhead:>9.1f}%  {verdict}")
    print("\nwhere the end-to-end time goes (fastest run; measured inside one run, so machine load affects both "
          "sides alike)")
    print(f"{'extractor':<22}{'total s':>9}{'forward s':>11}{'wait s':>8}{'store s':>9}{'other s':>9}{'overhead':>10}")
    for name, _, _, _, _, s in rows:
        other = s.seconds - s.forward_seconds - s.wait_seconds - s.store_seconds
        print(f"{name:<22}{s.seconds:>9.2f}{s.forward_seconds:>11.2f}{s.wait_seconds:>8.2f}{s.store_seconds:>9.2f}"
              f"{other:>9.2f}{100 * (s.seconds / s.forward_seconds - 1):>9.1f}%")
    if len(rows) == 2:
        print(f"{rows[0][0]} vs {rows[1][0]}: {rows[0][3] / rows[1][3]:.1f}x end-to-end, "
              f"{rows[0][2] / rows[1][2]:.1f}x bare forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
