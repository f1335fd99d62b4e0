"""``vlptm check-store``: integrity check of a feature store; exits 1 when it finds an error."""
from __future__ import annotations

import argparse
import json

NAME = "check-store"
HELP = "check a feature store (manifest vs shards, shapes, NaN/inf, duplicate ids, boxes inside images)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", help="feature store directory")
    parser.add_argument("--box-tolerance", type=float, default=0.5,
                        help="pixels a box may reach outside its image (default 0.5)")
    parser.add_argument("--strict", action="store_true", help="warnings also give a non-zero exit")


def run(args: argparse.Namespace) -> int:
    from vlptm.features.check import check_store
    from vlptm.features.store import FeatureStore, StoreError

    problems = check_store(args.store, box_tolerance=args.box_tolerance)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    summary = {"store": args.store, "errors": errors, "warnings": warnings}
    if not errors:
        try:
            store = FeatureStore.open(args.store)
            summary.update(images=len(store), shards=len(store.shards), feature_dim=store.feature_dim,
                           cls_dim=store.cls_dim, attr_dim=store.attr_dim)
        except StoreError as err:  # check_store already reported it
            summary["open_error"] = str(err)
    print(json.dumps(summary))
    return 1 if errors or (args.strict and warnings) else 0
