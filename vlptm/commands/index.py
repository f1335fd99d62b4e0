"""``vlptm index --store STORE --model CKPT --out INDEX [--factory ...]``: a FAISS index of image embeddings.

Rerunning on an existing index built with the same model adds the store's new images and drops the ones no
longer in it; another model, extractor or layout is refused unless ``--rebuild``.
"""
from __future__ import annotations

import argparse
import json
import logging

NAME = "index"
HELP = "embed a feature store's images with a pretrained model into a FAISS index (incremental)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="feature store directory")
    parser.add_argument("--model", required=True, help="pretraining run directory or checkpoint")
    parser.add_argument("--out", required=True, help="index directory (created, or updated)")
    parser.add_argument("--factory", default="Flat",
                        help="FAISS index-factory layout: Flat, IVF256,Flat, HNSW32, IVF256,PQ32 ... (default Flat)")
    parser.add_argument("--images", default=None,
                        help="folder, annotation or list file naming the image files (the demo serves these)")
    parser.add_argument("--image-root", default=None, help="folder an annotation file's image paths are relative to")
    parser.add_argument("--captions", default=None,
                        help="captions file: also index the captions of the store's images (image-to-text search)")
    parser.add_argument("--split", default=None, help="keep only this split of --captions (and of the images)")
    parser.add_argument("--rebuild", action="store_true", help="replace an existing index instead of updating it")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (stored in the index)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (stored in the index)")
    parser.add_argument("--max-vectors", type=int, default=None,
                        help="region-pooled models: keep at most this many vectors per image (its first, most "
                             "confident regions; default all)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from vlptm.features.store import FeatureStore, StoreError
    from vlptm.retrieval import RetrievalIndexError, RetrievalModel
    from vlptm.retrieval.build import build_index

    params = {}
    if args.nprobe is not None:
        params["nprobe"] = args.nprobe
    if args.ef_search is not None:
        params["efSearch"] = args.ef_search
    try:
        store = FeatureStore.open(args.store)
        model = RetrievalModel.from_checkpoint(args.model, device=args.device, max_vectors=args.max_vectors)
        result = build_index(model, store, args.out, factory=args.factory, images=args.images,
                             image_root=args.image_root, captions=args.captions, split=args.split,
                             rebuild=args.rebuild, search_params=params or None, batch_size=args.batch_size)
    except (StoreError, RetrievalIndexError, FileNotFoundError, ValueError) as err:
        print(f"index: {err}")
        return 2
    print(json.dumps(result))
    return 0
