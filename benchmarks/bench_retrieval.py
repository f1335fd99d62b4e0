"""Exhaustive ITM against two-stage retrieval (FAISS top-k re-ranked by ITM) with the same trained model.

On N images x 5N captions (N = 200 by default), both directions: the exhaustive mode scores every
caption-image pair with the cross-modal encoder (the UNITER/LXMERT protocol); the two-stage mode embeds
each image and caption once (ITC), takes FAISS's top-k and re-scores only those pairs. Printed side by side
from one run: R@1/5/10 of both directions, wall times, the time ratio (goal >= 0.8 * N / k: the FAISS stage
costs almost nothing; timed for text-to-image, where the exhaustive pass scores all N*5N pairs and the
two-stage one 5N*k, and also for both directions together) and the R@1 difference (goal <= 1 point), and the
per-pair ITM cost measured here extrapolated to COCO-5k.

Usage (the model of the retrieval benchmarks; see runs/retrieval-bench/recipe.yaml in the report):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_retrieval.py --model runs/retrieval-bench/pretrain \\
        --store runs/pretrain-bench/grid --captions runs/retrieval-bench/captions.json --split test
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlptm.data.readers import read_records  # noqa: E402
from vlptm.features.store import FeatureStore  # noqa: E402
from vlptm.retrieval import EvalSet, RetrievalModel, evaluate_retrieval, format_results  # noqa: E402

COCO_IMAGES, COCO_CAPTIONS = 5000, 25000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="trained pretraining run or checkpoint (ITC + ITM heads)")
    parser.add_argument("--store", required=True, help="feature store of the images")
    parser.add_argument("--captions", required=True, help="captions file")
    parser.add_argument("--split", default=None, help="split to evaluate (held out from pretraining)")
    parser.add_argument("--num-images", type=int, default=200, help="N (default 200)")
    parser.add_argument("--captions-per-image", type=int, default=5, help="captions per image (default 5)")
    parser.add_argument("--rerank", type=int, default=16, help="k, candidates re-ranked per query (default 16)")
    parser.add_argument("--itc-weight", type=float, default=0.0, help="ITC weight in the final score")
    parser.add_argument("--also-itc-weights", type=float, nargs="*", default=[],
                        help="also report recalls with these ITC weights (ITM scores reused)")
    parser.add_argument("--batch-size", type=int, default=256, help="pairs per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    store = FeatureStore.open(args.store)
    kwargs = {"split": args.split} if args.split else {}
    records = [r for r in read_records(args.captions, **kwargs)
               if len(r.captions) >= args.captions_per_image and str(r.image_id) in store]
    data = EvalSet.from_records(records, store, max_images=args.num_images,
                                captions_per_image=args.captions_per_image)
    n, k = len(data.image_ids), args.rerank
    model = RetrievalModel.from_checkpoint(args.model, device="cpu")
    print(f"model {args.model} ({model.net.encoder.model_type}, E={model.embed_dim}); {n} images x "
          f"{len(data.captions)} captions of {args.captions} (split {args.split}); k = {k}")
    start = time.perf_counter()
    cache: dict = {}
    results = evaluate_retrieval(model, store, data, rerank=k, itc_weight=args.itc_weight,
                                 batch_size=args.batch_size, progress=True, itm_cache=cache)
    print(f"final score = ITM + {args.itc_weight:g} x ITC")
    print(format_results(results))
    for weight in args.also_itc_weights:  # same ITM scores, another blend: recalls only
        other = evaluate_retrieval(model, store, data, modes=["two-stage", "exhaustive"], rerank=k, itc_weight=weight,
                                   batch_size=args.batch_size, itm_cache=cache)
        print(f"\nfinal score = ITM + {weight:g} x ITC (recalls; ITM scores reused, times not comparable)")
        print("\n".join(format_results(other).splitlines()[1:]))
        results[f"itc_weight={weight:g}"] = other
    exhaustive, two_stage = results["exhaustive"], results["two-stage"]
    ratio = exhaustive["seconds"] / two_stage["t2i_seconds"]  # exhaustive scores every pair either way
    ratio_both = exhaustive["seconds"] / two_stage["seconds"]
    c = args.captions_per_image
    goal_ratio = 0.8 * n / k
    d_t2i = two_stage["t2i"]["r1"] - exhaustive["t2i"]["r1"]
    d_i2t = two_stage["i2t"]["r1"] - exhaustive["i2t"]["r1"]
    per_pair = exhaustive["seconds"] / exhaustive["itm_pairs"]
    print(f"\ntime: exhaustive {exhaustive['seconds']:.1f}s ({exhaustive['itm_pairs']:,} ITM pairs, both directions)"
          f"\n  vs two-stage text-to-image {two_stage['t2i_seconds']:.1f}s ({two_stage['t2i_itm_pairs']:,} ITM pairs "
          f"+ embeddings {results['embed_seconds']:.1f}s and search) -> ratio {ratio:.1f}x "
          f"(goal >= 0.8*N/k = {goal_ratio:.1f}: {'met' if ratio >= goal_ratio else 'NOT met'})"
          f"\n  vs two-stage both directions {two_stage['seconds']:.1f}s ({two_stage['itm_pairs']:,} ITM pairs: "
          f"N*k more for image-to-text) -> ratio {ratio_both:.1f}x (pair ratio cN/((c+1)k) = {c * n / ((c + 1) * k):.1f})")
    print(f"R@1 two-stage minus exhaustive: text-to-image {d_t2i:+.2f}, image-to-text {d_i2t:+.2f} points "
          f"(goal |difference| <= 1: {'met' if max(abs(d_t2i), abs(d_i2t)) <= 1.0 else 'NOT met'})")
    coco_pairs = COCO_IMAGES * COCO_CAPTIONS
    print(f"per-pair ITM cost here {1e3 * per_pair:.3f} ms -> COCO-5k exhaustive ({COCO_IMAGES:,} images x "
          f"{COCO_CAPTIONS:,} captions = {coco_pairs / 1e6:.0f}M pairs): {per_pair * coco_pairs / 3600:.1f} h on this "
          f"CPU ({per_pair * 25e6 / 3600:.1f} h for 25M pairs); two-stage at k = {k}: "
          f"{per_pair * (COCO_IMAGES + COCO_CAPTIONS) * k / 3600:.2f} h of ITM")
    print(f"total benchmark wall time {time.perf_counter() - start:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
