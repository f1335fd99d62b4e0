"""``vlptm convert-features``: LXMERT TSV, UNITER npz/LMDB or bottom-up-attention npz into a feature store."""
from __future__ import annotations

import argparse
import dataclasses
import json

NAME = "convert-features"
HELP = "convert a peer's region features (lxmert-tsv, uniter-npz, uniter-lmdb, bua-npz) into a feature store"

_FORMATS = ("lxmert-tsv", "uniter-npz", "uniter-lmdb", "bua-npz")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="fmt", required=True, choices=_FORMATS, help="source format")
    parser.add_argument("src", help="TSV file, folder of .npz files, or LMDB directory")
    parser.add_argument("--out", required=True, help="feature store directory (created, or appended to)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="lxmert-tsv/bua-npz: detector classes (1600 for Visual Genome) to store cls_probs "
                             "built from the argmax ids (default: none stored)")
    parser.add_argument("--num-attrs", type=int, default=None,
                        help="lxmert-tsv/bua-npz: detector attributes (400 for Visual Genome) for attr_probs")
    parser.add_argument("--image-sizes", default=None,
                        help="uniter-*: JSON {id: [h, w]} or COCO instances.json, to store boxes in pixels "
                             "(default: normalised boxes with image size (1, 1))")
    parser.add_argument("--no-soft-labels", action="store_true", help="uniter-*: drop soft_labels")
    parser.add_argument("--writer-name", default="convert", help="store writer name (reuse it to resume)")
    parser.add_argument("--images-per-shard", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from vlptm.features.convert import convert_features

    try:
        summary = convert_features(args.fmt, args.src, args.out, num_classes=args.num_classes,
                                   num_attrs=args.num_attrs, image_sizes=args.image_sizes,
                                   with_soft_labels=not args.no_soft_labels, writer_name=args.writer_name,
                                   images_per_shard=args.images_per_shard, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"convert-features: {err}")
        return 2
    print(json.dumps(dict(dataclasses.asdict(summary), store=args.out)))
    return 0 if summary.converted + summary.skipped > 0 or summary.failed == 0 else 1
