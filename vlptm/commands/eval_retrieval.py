"""``vlptm eval-retrieval --model CKPT --store STORE --captions FILE [--split test]``: R@1/5/10 in three modes.

Modes: ``itc`` (FAISS over ITC embeddings), ``two-stage`` (top-k re-ranked by ITM) and ``exhaustive`` (ITM
over every caption-image pair, the UNITER protocol), each with its wall time.
"""
from __future__ import annotations

import argparse
import json
import logging

NAME = "eval-retrieval"
HELP = "text-to-image and image-to-text R@1/5/10 (ITC only, two-stage, exhaustive ITM) on a captions file"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="pretraining run directory or checkpoint")
    parser.add_argument("--store", required=True, help="feature store holding the captions' images")
    parser.add_argument("--captions", required=True, help="captions file (COCO, Karpathy, Flickr, captions.json ...)")
    parser.add_argument("--split", default=None, help="evaluate this split only (e.g. test, val)")
    parser.add_argument("--image-root", default=None, help="image folder for the captions reader")
    parser.add_argument("--modes", default="itc,two-stage,exhaustive",
                        help="comma-separated subset of itc,two-stage,exhaustive (default all three)")
    parser.add_argument("--rerank", type=int, default=16, help="candidates per query re-ranked by ITM (default 16)")
    parser.add_argument("--itc-weight", type=float, default=0.0, help="weight of the ITC cosine in the final score")
    parser.add_argument("--factory", default="Flat", help="FAISS layout of the first stage (default Flat)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate the first N images only")
    parser.add_argument("--captions-per-image", type=int, default=None,
                        help="keep at most this many captions per image (5 for the COCO/Flickr protocols)")
    parser.add_argument("--max-vectors", type=int, default=None,
                        help="region-pooled models: at most this many vectors per image (default all)")
    parser.add_argument("--batch-size", type=int, default=128, help="pairs per forward pass")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from vlptm.data.readers import DatasetFormatError, read_records
    from vlptm.features.store import FeatureStore, StoreError
    from vlptm.retrieval import EvalSet, RetrievalModel, evaluate_retrieval, format_results

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        store = FeatureStore.open(args.store)
        kwargs = {"split": args.split} if args.split else {}
        records = list(read_records(args.captions, image_root=args.image_root, **kwargs))
        data = EvalSet.from_records(records, store, max_images=args.max_images,
                                    captions_per_image=args.captions_per_image)
        model = RetrievalModel.from_checkpoint(args.model, device=args.device, max_vectors=args.max_vectors)
        results = evaluate_retrieval(model, store, data, modes=modes, rerank=args.rerank, itc_weight=args.itc_weight,
                                     factory=args.factory, batch_size=args.batch_size, progress=True)
    except (StoreError, DatasetFormatError, FileNotFoundError, ValueError) as err:
        print(f"eval-retrieval: {err}")
        return 2
    print(format_results(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
