"""Padding with length-bucketed batches vs random batches, on real captions from ../shared/data.

Captions are tokenised with the project's WordPiece tokenizer (max 40 tokens). Region counts come from a
feature store when ``--features`` is given (detector features have 10-100 regions per image); otherwise
every image has the grid extractor's 36 regions. The padding fraction is padded slots (text tokens plus
regions) over all slots of the padded batches, for the whole epoch.

Example:
    python benchmarks/bench_bucketing.py --batch-size 64
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vlptm.data.pretrain import BucketBatchSampler, padding_fraction
from vlptm.data.readers import read_records
from vlptm.text import load_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", nargs="*", default=[str(SHARED_DATA / "flickr8k_train" / "captions.json"),
                                                           str(SHARED_DATA / "coco_mini_train" / "captions.json")])
    parser.add_argument("--features", default=None, help="feature store of those images (region counts)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-regions", type=int, default=100)
    args = parser.parse_args()

    texts, images = [], []
    for path in args.captions:
        for record in read_records(path):
            texts.extend(record.captions)
            images.extend([record.image_id] * len(record.captions))
    tokenizer = load_tokenizer()
    text_lengths = np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=40)["input_ids"]])
    if args.features:
        from vlptm.features.store import FeatureStore

        store = FeatureStore.open(args.features)
        regions = np.array([min(store.num_regions(i), args.max_regions) if i in store else 0 for i in images])
        source = f"region counts from {args.features}"
    else:
        regions = np.full(len(texts), 36)
        source = "36 grid regions per image"
    print(f"{len(texts)} captions of {len(set(images))} images; text length mean {text_lengths.mean():.1f} "
          f"(min {text_lengths.min()}, max {text_lengths.max()}); {source}; batch {args.batch_size}")
    keys = np.stack([regions, text_lengths], axis=1)
    results = {}
    for name, bucket in (("random", 1), ("bucketed x10", 10), ("bucketed x50", 50), ("bucketed x100", 100)):
        fractions, text_only = [], []
        for epoch in range(3):
            sampler = BucketBatchSampler(keys, args.batch_size, bucket_batches=bucket, seed=0)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            fractions.append(padding_fraction(batches, text_lengths, regions))
            text_only.append(padding_fraction(batches, text_lengths, np.zeros_like(regions)))
        results[name] = (float(np.mean(fractions)), float(np.mean(text_only)))
    base = results["random"]
    print(f"{'batching':14s} {'pad (text+regions)':>19s} {'pad (text)':>11s} {'vs random':>10s}")
    for name, (both, text) in results.items():
        print(f"{name:14s} {both:19.3f} {text:11.3f} {both / base[0] if base[0] else float('nan'):10.2f}x")


if __name__ == "__main__":
    main()
