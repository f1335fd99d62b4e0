"""``vlptm serve --index INDEX``: the retrieval web demo and its JSON API (127.0.0.1 by default)."""
from __future__ import annotations

import argparse
import logging

NAME = "serve"
HELP = "serve the text-to-image demo page and JSON API over an index (binds 127.0.0.1 by default)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, help="index directory (vlptm index)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--model", default=None, help="pretraining checkpoint (default: the one the index names)")
    parser.add_argument("--store", default=None, help="feature store (default: the one the index names)")
    parser.add_argument("--rerank", type=int, default=16, help="candidates re-ranked by ITM (default 16)")
    parser.add_argument("--itc-weight", type=float, default=0.0, help="weight of the ITC cosine in the final score")
    parser.add_argument("--max-query-chars", type=int, default=200, help="longest accepted query (default 200)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    from vlptm.features.store import StoreError
    from vlptm.retrieval import RetrievalIndexError
    from vlptm.serve import serve

    try:
        serve(args.index, host=args.host, port=args.port, model=args.model, store=args.store, rerank=args.rerank,
              itc_weight=args.itc_weight, device=args.device, max_query_chars=args.max_query_chars)
    except (RetrievalIndexError, StoreError, FileNotFoundError, ValueError) as err:
        print(f"serve: {err}")
        return 2
    return 0
