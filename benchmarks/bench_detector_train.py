"""Detector training benchmark: COCO mAP and colour accuracy against the issue's goals, in one run.

Scene world (default): generates a training world and a held-out world with another seed, trains the
``scenes-effnet-lite0`` recipe for ``--minutes`` and prints mAP@[.5:.95], mAP@.5 and colour accuracy on the
held-out images next to the goals (mAP@[.5:.95] >= 0.85, colour accuracy >= 0.95), with the wall and CPU time
the training got.

Real photos (``--coco``): trains the default ``effnet-lite0-fpn`` on ``../shared/data/coco128`` and evaluates
on ``../shared/data/coco_mini_train``.

Usage::

    python benchmarks/bench_detector_train.py --minutes 15 [--budget-clock process] [--out runs/detector-scenes]
    python benchmarks/bench_detector_train.py --coco --minutes 15 --out runs/detector-coco128
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

GOALS = {"map": 0.85, "color_accuracy": 0.95}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget")
    parser.add_argument("--budget-clock", choices=("wall", "process"), default="wall")
    parser.add_argument("--out", default=None, help="run folder (default runs/detector-scenes or -coco128)")
    parser.add_argument("--coco", action="store_true", help="train on coco128, evaluate on coco_mini_train")
    parser.add_argument("--train-images", type=int, default=3000, help="scene world: training images")
    parser.add_argument("--heldout-images", type=int, default=300, help="scene world: held-out images")
    parser.add_argument("--lr", type=float, default=6e-4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vlptm.data.scenes import generate_world
    from vlptm.detection.config import DetectorTrainConfig
    from vlptm.detection.train import train_detector

    overrides = {}
    if args.coco:
        out = Path(args.out or "runs/detector-coco128")
        data, val_data = SHARED_DATA / "coco128", SHARED_DATA / "coco_mini_train"
        if not data.is_dir():
            raise SystemExit(f"{data} not found")
        variant = "effnet-lite0-fpn"
        # The default variant's parts at CPU-friendly sizes: 320-px short side, FPN on strides 8-32.
        overrides = {"min_size": 320, "max_size": 512, "train_min_sizes": [288, 352],
                     "backbone.out_indices": [2, 3, 4], "backbone.fpn_channels": 128,
                     "rpn.anchor_sizes": [32, 64, 128, 256], "rpn.pre_nms_top_n_train": 1000,
                     "rpn.post_nms_top_n_train": 500, "roi_heads.batch_size_per_image": 128}
    else:
        out = Path(args.out or "runs/detector-scenes")
        data, val_data = Path("runs/scenes-train"), Path("runs/scenes-heldout")
        for folder, n, seed in ((data, args.train_images, 0), (val_data, args.heldout_images, 1)):
            if not (folder / "instances.json").is_file():
                generate_world(folder, num_images=n, seed=seed, image_size=256, val_fraction=0.0,
                               workers=max(1, (os.cpu_count() or 1) // 2))
        variant = "scenes-effnet-lite0"
    config = DetectorTrainConfig(data=str(data), val_data=str(val_data), out=str(out), variant=variant,
                                 minutes=args.minutes, budget_clock=args.budget_clock, lr=args.lr,
                                 checkpoint_minutes=5.0)
    result = train_detector(config, overrides)
    m = result["metrics"]
    print(f"\n{'figure':<28}{'value':>10}{'goal':>10}{'value/goal':>12}")
    for key in ("map", "map50", "map75", "color_accuracy", "size_accuracy", "matched_fraction"):
        if key in m:
            goal = GOALS.get(key) if not args.coco else None
            ratio = f"{m[key] / goal:.3f}" if goal else "-"
            print(f"{key:<28}{m[key]:>10.4f}{(goal or float('nan')):>10.2f}{ratio:>12}")
    print(f"{'train wall seconds':<28}{result['train_seconds']:>10.0f}")
    print(f"{'train CPU seconds':<28}{result['train_cpu_seconds']:>10.0f}   ({result['threads']} threads)")
    print(f"{'steps':<28}{result['steps']:>10d}")
    print(f"{'held-out images':<28}{m.get('images', 0):>10.0f}")
    print(json.dumps({"out": str(out), **result}))


if __name__ == "__main__":
    main()
