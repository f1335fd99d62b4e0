"""``vlptm extract``: images -> region features in a sharded, resumable feature store."""
from __future__ import annotations

import argparse
import json
import logging

NAME = "extract"
HELP = "extract region (or grid) features of a folder, list or annotation file into a feature store"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True,
                        help="folder of images, annotation file (COCO, Karpathy, captions.json, vqa.json, ...) "
                             "or list file of 'path' / 'id<TAB>path' lines")
    parser.add_argument("--image-root", default=None, help="folder an annotation file's image paths are relative to")
    parser.add_argument("--out", required=True, help="feature store directory (created, or resumed)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--extractor", default="effnet-lite0-fpn",
                        help="extractor variant name (detectors/<name>.yaml, e.g. effnet-lite0-fpn, grid-effnet-lite0) "
                             "or a YAML recipe (default effnet-lite0-fpn)")
    source.add_argument("--checkpoint", default=None, help="directory of a saved (e.g. trained) extractor")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extractor config override, e.g. --set selection.fixed_boxes=36 (repeatable; "
                             "with --checkpoint only selection.* keys)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decoding processes (default 2)")
    parser.add_argument("--shard", default=None, metavar="i/n",
                        help="process only every n-th image starting at i (n processes split one list)")
    parser.add_argument("--writer-name", default=None,
                        help="store writer name (default 'main', or 'shard<i>of<n>' with --shard)")
    parser.add_argument("--images-per-shard", type=int, default=512, help="images per committed shard (default 512)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none", help="autocast dtype")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="refuse images with more pixels than this (default: the loader's limit)")
    parser.add_argument("--feature-dtype", choices=("float16", "float32"), default="float16",
                        help="storage dtype of features and soft labels (default float16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from vlptm.data.images import DEFAULT_MAX_PIXELS
    from vlptm.detection import build_extractor
    from vlptm.features.extract import (
        extract_to_store,
        list_images,
        parse_shard,
        shard_items,
    )
    from vlptm.features.store import StoreError

    try:
        shard_index, shard_count = parse_shard(args.shard)
        overrides = dict(_split_override(text) for text in args.overrides)
        items = list_images(args.images, image_root=args.image_root)
    except (ValueError, FileNotFoundError) as err:
        print(f"extract: {err}")
        return 2
    shard = shard_items(items, shard_index, shard_count)
    writer_name = args.writer_name or ("main" if shard_count == 1 else f"shard{shard_index}of{shard_count}")
    name = args.checkpoint or args.extractor
    try:
        extractor = build_extractor(name, **overrides)
    except (KeyError, TypeError, ValueError) as err:
        print(f"extract: cannot build extractor {name!r}: {err}")
        return 2
    log.info("extractor %s (%s, D=%d); %d of %d images in shard %d/%d", name, type(extractor).__name__,
             extractor.feature_dim, len(shard), len(items), shard_index, shard_count)
    try:
        summary = extract_to_store(
            extractor, shard, args.out, extractor_name=str(name), batch_size=args.batch_size, workers=args.workers,
            device=args.device, amp=None if args.amp == "none" else args.amp, writer_name=writer_name,
            images_per_shard=args.images_per_shard,
            max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
            feature_dtype=args.feature_dtype, progress=not args.no_progress,
        )
    except StoreError as err:
        print(f"extract: {err}")
        return 2
    print(json.dumps(dict(summary.as_dict(), store=args.out, writer=writer_name)))
    return 0


def _split_override(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set needs KEY=VALUE, got {text!r}")
    return key.strip(), value
