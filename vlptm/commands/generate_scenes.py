"""``vlptm generate-scenes``: write the generated scene world (images, boxes, captions, VQA)."""
from __future__ import annotations

import argparse
import json
import logging

NAME = "generate-scenes"
HELP = "generate the synthetic scene world (COCO boxes, captions.json, vqa.json) from a seed"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (images/, instances.json, captions.json, vqa.json)")
    parser.add_argument("--num-images", type=int, default=1000, help="number of images (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; same seed, same files")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="fraction of images in split 'val'")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image file format")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")


def run(args: argparse.Namespace) -> int:
    from vlptm.data.scenes import generate_world

    counts = generate_world(args.out, args.num_images, seed=args.seed, image_size=args.image_size,
                            val_fraction=args.val_fraction, image_format=args.format, workers=args.workers,
                            progress=True)
    log.info("wrote %s", args.out)
    print(json.dumps(counts))
    return 0
