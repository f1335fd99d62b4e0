"""``vlptm search --index INDEX "a red circle"``: top images of a text (or captions of an image), re-ranked by ITM.

The model and feature store default to the ones the index was built with (its manifest names them).
"""
from __future__ import annotations

import argparse
import json
import logging

NAME = "search"
HELP = "text-to-image (or --image: image-to-text) search in an index, FAISS top-k re-ranked by ITM"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="*", help="query text(s) (text-to-image)")
    parser.add_argument("--index", required=True, help="index directory (vlptm index)")
    parser.add_argument("--model", default=None, help="pretraining checkpoint (default: the one the index names)")
    parser.add_argument("--store", default=None, help="feature store (default: the one the index names)")
    parser.add_argument("--image", default=None, help="query image file (image-to-text; regions are extracted "
                                                      "with the store's extractor)")
    parser.add_argument("--image-id", default=None, help="query image by its id in the store (image-to-text)")
    parser.add_argument("-k", "--top", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--rerank", type=int, default=16, help="candidates re-ranked by ITM (0: ITC only; default 16)")
    parser.add_argument("--itc-weight", type=float, default=0.0, help="weight of the ITC cosine in the final score")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")


def _query_regions(args: argparse.Namespace, searcher):
    if args.image_id is not None:
        return searcher.store[args.image_id]
    from vlptm.data.images import load_image_tensor
    from vlptm.detection import build_extractor
    from vlptm.detection.config import dotted_overrides
    from vlptm.retrieval import IndexMismatchError

    extractor_info = searcher.store.manifest.get("extractor") or {}
    recorded = (extractor_info.get("config") or {}).get("config") or {}
    try:  # the variant with the settings the store recorded (e.g. --set min_size=256 at extraction)
        extractor = build_extractor(extractor_info.get("name"), **dotted_overrides(recorded))
    except (KeyError, TypeError, ValueError):
        extractor = build_extractor(extractor_info.get("name"))
    if extractor.config_hash() != extractor_info.get("config_hash"):
        raise IndexMismatchError(f"extractor {extractor_info.get('name')!r} rebuilt here has config hash "
                                 f"{extractor.config_hash()}, the store's features came from "
                                 f"{extractor_info.get('config_hash')}: the query image cannot be compared")
    return extractor.extract([load_image_tensor(args.image)])[0].to("cpu")


def run(args: argparse.Namespace) -> int:
    from vlptm.data.images import ImageLoadError
    from vlptm.features.store import StoreError
    from vlptm.retrieval import RetrievalIndexError
    from vlptm.retrieval.build import open_searcher

    if not args.query and args.image is None and args.image_id is None:
        print("search: give a query text, --image or --image-id")
        return 2
    try:
        searcher = open_searcher(args.index, args.model, args.store, rerank=args.rerank, itc_weight=args.itc_weight,
                                 device=args.device)
        if args.image is not None or args.image_id is not None:
            queries = [args.image or args.image_id]
            results = searcher.image_to_text([_query_regions(args, searcher)], k=args.top)
        else:
            queries = list(args.query)
            results = searcher.text_to_image(queries, k=args.top)
    except (RetrievalIndexError, StoreError, ImageLoadError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"search: {err}")
        return 2
    for query, hits in zip(queries, results):
        if args.json:
            print(json.dumps({"query": query, "results": [h.as_dict() for h in hits]}))
            continue
        print(f"query: {query}")
        print(f"  {'rank':>4} {'score':>7} {'itm':>6} {'itc':>6}  result")
        for rank, hit in enumerate(hits, 1):
            itm = f"{hit.itm:6.3f}" if hit.itm is not None else f"{'-':>6}"
            shown = hit.payload if hit.payload else hit.item_id
            print(f"  {rank:4d} {hit.score:7.3f} {itm} {hit.itc:6.3f}  {hit.item_id}  {shown}")
    return 0
