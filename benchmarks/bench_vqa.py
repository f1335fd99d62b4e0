"""Does vision-language pretraining pay for VQA? Fine-tune with one budget from (a) a pretrained checkpoint
and (b) the same encoder without VL pretraining, beside image-blind baselines, on two data sets:

- the generated world: train on the questions of ``split: train`` images, evaluate on the held-out
  ``split: val`` images' questions;
- DAQUAR (``../shared/data/daquar_train``): an image-disjoint split of it (``--test-fraction`` of the
  images held out for evaluation), beside the published DAQUAR-all figures.

Rows per data set: majority answer; question lookup (the most frequent answers of the same training
question, else of its first words); a question-only model (encoder (b), regions never seen); (b); (a).
Accuracy is exact-set accuracy for gold-set questions (the published DAQUAR measure) with any-gold
(top answer is a gold answer) beside it; on the world each question has one answer, so the two coincide
up to the set threshold. Within a data set every model gets the same steps, batch size and learning rates.

DAQUAR: (a) is configs/vqa/pretrain-daquar-cpu.yaml, the MiniLM-initialised single stream (6 x 384) after
vision-language pretraining on real photos (DAQUAR's *training* images' question-answer texts, Flickr8k and
COCO-mini captions; the test and validation images never); (b) and the question-only model start from the
same MiniLM weights without that step. 10% of the training part's images validate (keep-best weights, the
answer-set threshold); the test part is only evaluated. The published DAQUAR-all figures are on its official
test split, ours on a held-out part of the train split: the comparison is indicative.

Prepare (9-region grid features at 256 px; the world's store as in configs/vqa/pretrain-for-vqa-cpu.yaml):
    for d in daquar_train/vqa.json:daquar flickr8k_train/captions.json:flickr8k coco_mini_train/captions.json:coco-mini; do
      vlptm extract --images ../shared/data/${d%%:*} --out runs/vqa-bench/${d##*:}-grid3 \
          --extractor grid-effnet-lite0 --set min_size=256 --set max_size=256 --set grid_size=3
    done
    # task-adaptive pretraining text of the DAQUAR *training* images only (test and validation images never):
    python benchmarks/bench_vqa.py --write-daquar-captions runs/vqa-bench/daquar-train-captions.json
    vlptm pretrain --config configs/vqa/pretrain-daquar-cpu.yaml          # ~15 min on one CPU thread
    # the world's (single-tiny) run: configs/vqa/pretrain-for-vqa-cpu.yaml, then 800 more steps from it:
    vlptm pretrain --config configs/vqa/pretrain-for-vqa-cpu.yaml --init_from=runs/vqa-bench/pretrain \
        --run_dir=runs/vqa-bench/pretrain2 --optim.max_steps=800 --optim.warmup_steps=40
Run (one CPU thread; the world rows on the tiny encoder, the DAQUAR rows on the MiniLM-sized one):
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vqa.py --threads 1 \
        --world runs/pretrain-bench/world --world-features runs/pretrain-bench/grid \
        --world-pretrained runs/vqa-bench/pretrain2 --world-train-images 600 --world-max-steps 200 --world-lr 3e-4 \
        --daquar-features runs/vqa-bench/daquar-grid3 --daquar-pretrained runs/vqa-bench/pretrain-daquar \
        --daquar-epochs 6 --daquar-lr 1e-4

Measured (2026-11-29, one CPU thread of a shared 2-core machine, 40.3 min wall; test accuracy, exact-set / any-gold):
    world:  majority 0.156, question lookup 0.387, question-only 0.312, (b) 0.364, (a) 0.400
    DAQUAR: majority 0.035 / 0.035, question lookup 0.189 / 0.208, question-only 0.215 / 0.253,
            (b) 0.235 / 0.266, (a) 0.223 / 0.257; published DAQUAR-all: 0.194 (Neural-Image-QA), 0.290 (DPPnet)
    (1,390 DAQUAR test questions: one standard error is about 0.011.)
A second fine-tuning seed on the same split and pretraining run (2026-11-30, 38.3 min wall, DAQUAR only):
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vqa.py --threads 1 \
        --daquar-features runs/vqa-bench/daquar-grid3 --daquar-pretrained runs/vqa-bench/pretrain-daquar \
        --daquar-epochs 6 --daquar-lr 1e-4 --fit-seed 1
    DAQUAR: question-only 0.224 / 0.258, (b) 0.227 / 0.259, (a) 0.241 / 0.275
    Mean of fine-tuning seeds 0 and 1 (exact-set): question-only 0.219, (b) 0.231, (a) 0.232; seed-to-seed
    differences (up to 0.018) are as large as the test's standard error, so (a) and (b) are not told apart.
A third seed (2026-11-30, 37.4 min wall, ``--fit-seed 2``): question-only 0.219 / 0.248, (b) 0.222 / 0.251,
    (a) 0.236 / 0.271. Mean of seeds 0-2 (exact-set): question-only 0.219, (b) 0.228, (a) 0.233; (a) beats the
    question-only model in all three seeds and (b) in two.
Tried on validation only (the training part re-split by image, 30% of its images as a 1,591-question dev set;
encoder (b), 6 epochs; dev exact-set): 3x3 grid at 256 px 0.2225; 5x5 grid at 416-560 px (25 regions, 1.4x the
step time) 0.2219; 3x3 with ``--pooling mean`` 0.2231. Answer-set decoding: 8.5% of the questions have several
gold answers; thresholds from 0.5 to 0.9 and the top answer alone all land within 0.003 (0.220-0.2225).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from vlptm.data.readers import read_records
from vlptm.features import FeatureStore
from vlptm.tasks import MajorityAnswerBaseline, QuestionLookupBaseline, VQAExamples, VQAFineTuner, split_by_image

PUBLISHED_DAQUAR_ALL = {"Neural-Image-QA (Malinowski et al. 2015)": 0.1943, "DPPnet (Noh et al. 2016)": 0.2898}
DAQUAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "daquar_train" / "vqa.json"


def _daquar_split(path: Path, test_fraction: float, seed: int) -> Tuple[list, list, list]:
    """``(train, val, test)``: image-disjoint; ``test_fraction`` of the images for the test, 10% of the rest
    for validation (keep-best, answer-set threshold)."""
    rest, test = split_by_image(list(read_records(path)), test_fraction, seed)
    train, val = split_by_image(rest, 0.1, seed)
    return train, val, test


def write_daquar_captions(out: Path, path: Path, test_fraction: float, seed: int) -> None:
    """``captions.json`` of the DAQUAR training-part images: each question with its answers as one text.

    Neither the test images nor the validation images (which pick the fine-tuned weights and the answer-set
    threshold) are written.
    """
    train, val, test = _daquar_split(path, test_fraction, seed)
    by_image: Dict[str, Dict[str, Any]] = {}
    for record in train:
        entry = by_image.setdefault(record.image_id, {"image": record.path.name, "image_id": record.image_id,
                                                      "captions": [], "split": "train"})
        answers = " and ".join(a.replace("_", " ") for a in record.answers)
        entry["captions"].append(f"{record.question} {answers}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(list(by_image.values())))
    print(f"wrote {out}: {len(by_image)} training images, {len(train)} texts ({len({r.image_id for r in test})} "
          f"test and {len({r.image_id for r in val})} validation images left out)")


def _pretraining_images(run: Path) -> set:
    """Image ids every source of a pretraining run's recipe saw (to check the held-out images are not among them)."""
    from vlptm.train.checkpoint import CONFIG_FILE, resolve_checkpoint

    checkpoint = resolve_checkpoint(run)
    recipe = yaml.safe_load((checkpoint / CONFIG_FILE).read_text()) or {}
    seen = set()
    for source in (recipe.get("data") or {}).get("sources") or []:
        try:
            seen.update(r.image_id for r in read_records(source["captions"]))
        except (OSError, ValueError) as err:
            logging.warning("cannot read pretraining source %s: %s", source.get("captions"), err)
    return seen


def _recipe_encoder(run: Path, feature_dim: int) -> Tuple[str, Dict[str, Any]]:
    """The variant and overrides a pretraining run started from: encoder (b), without its VL pretraining."""
    from vlptm.train.checkpoint import CONFIG_FILE, resolve_checkpoint

    recipe = yaml.safe_load((resolve_checkpoint(run) / CONFIG_FILE).read_text()) or {}
    overrides = dict(recipe.get("model_overrides") or {})
    overrides["region_feat_dim"] = feature_dim
    return recipe.get("model", "single-small"), overrides


def _fine_tune(name: str, tuner: VQAFineTuner, train: VQAExamples, val: VQAExamples, test: VQAExamples,
               train_args: Dict[str, Any]) -> Dict[str, Any]:
    start = time.perf_counter()
    tuner.fit(train, val, **train_args)
    seconds = time.perf_counter() - start
    metrics = tuner.evaluate(test)
    row = {"model": name, "accuracy": metrics["accuracy"], "any_gold": metrics.get("any_gold"),
           "seconds": round(seconds, 1), "by_question_type": {k: round(v["accuracy"], 4)
                                                               for k, v in metrics["by_question_type"].items()}}
    print(f"    {name:34s} accuracy {row['accuracy']:.4f}  any-gold {row['any_gold'] or 0:.4f}  "
          f"fine-tune {seconds:7.1f} s", flush=True)
    return row


def _fit_seed(args: argparse.Namespace) -> int:
    """The fine-tuning seed (head init, data order, dropout); the splits always follow ``--seed``."""
    return args.seed if args.fit_seed is None else args.fit_seed


def _budget(args: argparse.Namespace, key: str) -> Dict[str, Any]:
    """The fine-tuning schedule of data set ``key`` ("world" or "daquar"): its own flags, else the shared ones."""
    def pick(name: str) -> Any:
        own = getattr(args, f"{key}_{name}")
        return getattr(args, name) if own is None else own

    return dict(epochs=pick("epochs"), max_steps=pick("max_steps"), batch_size=args.batch_size, lr=pick("lr"),
                head_lr_mult=pick("head_lr_mult"), device=args.device, precision=args.precision, log_every=10 ** 9,
                seed=_fit_seed(args))


def run_dataset(title: str, train: VQAExamples, val: VQAExamples, test: VQAExamples, pretrained: Optional[Path],
                args: argparse.Namespace, train_args: Dict[str, Any]) -> List[Dict[str, Any]]:
    budget = (f"{train_args['max_steps']} steps" if train_args["max_steps"] else f"{train_args['epochs']:g} epochs")
    print(f"\n== {title}: {len(train)} training / {len(val)} validation / {len(test)} test questions "
          f"({len({r.image_id for r in test.records})} test images)\n   every model: {budget} of "
          f"{train_args['batch_size']}, lr {train_args['lr']:g} (head x{train_args['head_lr_mult']:g}), fine-tuning "
          f"seed {train_args['seed']}, {args.pooling} pooling", flush=True)
    rows = []
    for name, baseline in (("majority answer", MajorityAnswerBaseline()),
                           ("question lookup", QuestionLookupBaseline())):
        metrics = baseline.fit(list(train.records) + list(val.records)).evaluate(test.records)
        rows.append({"model": name, "accuracy": metrics["accuracy"], "any_gold": metrics.get("any_gold")})
        print(f"    {name:34s} accuracy {metrics['accuracy']:.4f}  any-gold {metrics.get('any_gold') or 0:.4f}")
    feature_dim = int(train.features.feature_dim)
    if pretrained is None:
        print("    (no pretraining run given: only the baselines)")
        return rows
    variant, overrides = _recipe_encoder(pretrained, feature_dim)
    torch.manual_seed(_fit_seed(args))
    tuned = VQAFineTuner.from_pretrained(pretrained, args.answers)  # (a); its options: the run's tokenizer
    tuned = VQAFineTuner(tuned.encoder, args.answers, replace(tuned.options, pooling=args.pooling))
    blind = VQAFineTuner.from_pretrained(variant, args.answers, options=replace(tuned.options, use_regions=False),
                                         **overrides)
    rows.append(_fine_tune("question-only (no VL pretraining)", blind, train, val, test, train_args))
    base = VQAFineTuner.from_pretrained(variant, args.answers, options=replace(tuned.options), **overrides)
    rows.append(_fine_tune(f"(b) {variant}, no VL pretraining", base, train, val, test, train_args))
    rows.append(_fine_tune("(a) VL-pretrained", tuned, train, val, test, train_args))
    return rows


def _world(args: argparse.Namespace) -> Tuple[VQAExamples, VQAExamples, VQAExamples]:
    store = FeatureStore.open(args.world_features)
    # The world's captions.json names images by "image_id" (the COCO id), its vqa.json by file stem; a store
    # extracted from captions.json uses the former, so questions are mapped through the file names.
    ids = {Path(r.path).name: r.image_id for r in read_records(Path(args.world) / "captions.json")}
    records = [replace(r, image_id=ids.get(Path(r.path).name, r.image_id))
               for r in read_records(Path(args.world) / "vqa.json")]
    records = [r for r in records if r.image_id in store]
    held = [r for r in records if r.split == "val"]
    train = [r for r in records if r.split != "val"]
    if args.world_train_images:
        keep = sorted({r.image_id for r in train})[: args.world_train_images]
        train = [r for r in train if r.image_id in set(keep)]
    if args.world_test_images:
        keep = sorted({r.image_id for r in held})[: args.world_test_images]
        held = [r for r in held if r.image_id in set(keep)]
    train, val = split_by_image(train, 0.1, args.seed)
    return VQAExamples(train, store, "world"), VQAExamples(val, store, "world"), VQAExamples(held, store, "world")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", help="generated world folder (vqa.json with train/val splits)")
    parser.add_argument("--world-features", help="feature store of the world's images")
    parser.add_argument("--world-pretrained", type=Path, help="pretraining run on the world")
    parser.add_argument("--world-train-images", type=int, default=2000, help="training images used (0 = all)")
    parser.add_argument("--world-test-images", type=int, default=1000, help="held-out images evaluated (0 = all)")
    parser.add_argument("--daquar", type=Path, default=DAQUAR, help="DAQUAR vqa.json")
    parser.add_argument("--daquar-features", help="feature store of the DAQUAR images")
    parser.add_argument("--daquar-pretrained", type=Path,
                        help="pretraining run for DAQUAR (its images: the training part only)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="DAQUAR images held out for evaluation")
    parser.add_argument("--write-daquar-captions", type=Path, help="write the training part's texts and exit")
    parser.add_argument("--answers", type=int, default=1000, help="top-K training answers")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=0, help="steps per fine-tune (0 = from --epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--head-lr-mult", type=float, default=10.0)
    for key in ("world", "daquar"):
        parser.add_argument(f"--{key}-epochs", type=float, help=f"{key}: epochs (default --epochs)")
        parser.add_argument(f"--{key}-max-steps", type=int, help=f"{key}: steps (default --max-steps)")
        parser.add_argument(f"--{key}-lr", type=float, help=f"{key}: encoder lr (default --lr)")
        parser.add_argument(f"--{key}-head-lr-mult", type=float, help=f"{key}: head lr factor (default --head-lr-mult)")
    parser.add_argument("--pooling", default="cls", choices=("cls", "mean"),
                        help="what every fine-tuned model's answer head reads (VQAOptions.pooling)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="the data splits (and, by default, fine-tuning)")
    parser.add_argument("--fit-seed", type=int, help="fine-tuning seed only (default --seed): runs of several seeds "
                        "on one split, against one pretraining run")
    parser.add_argument("--out", type=Path, default=Path("runs/vqa-bench/results.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.write_daquar_captions:
        write_daquar_captions(args.write_daquar_captions, args.daquar, args.test_fraction, args.seed)
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: Dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    print(f"VQA fine-tuning, one budget per data set for every model, top-{args.answers} answers, device "
          f"{args.device}, {torch.get_num_threads()} CPU threads")
    if args.world and args.world_features:
        results["world"] = run_dataset("generated world, held-out images", *_world(args), args.world_pretrained,
                                       args, _budget(args, "world"))
    if args.daquar_features:
        store = FeatureStore.open(args.daquar_features)
        train, val, test = _daquar_split(args.daquar, args.test_fraction, args.seed)
        if args.daquar_pretrained is not None:
            seen = _pretraining_images(args.daquar_pretrained)
            leaked = seen & {r.image_id for r in test}
            if leaked:
                print(f"refusing: the DAQUAR pretraining run saw {len(leaked)} held-out test images")
                return 2
            if seen & {r.image_id for r in val}:
                print(f"note: the DAQUAR pretraining run saw {len(seen & {r.image_id for r in val})} validation "
                      f"images (their keep-best and threshold choices are optimistic)")
        rows = run_dataset("DAQUAR (image-disjoint split of daquar_train)", VQAExamples(train, store, "daquar"),
                           VQAExamples(val, store, "daquar"), VQAExamples(test, store, "daquar"),
                           args.daquar_pretrained, args, _budget(args, "daquar"))
        for name, value in PUBLISHED_DAQUAR_ALL.items():
            print(f"    published DAQUAR-all: {name:40s} {value:.4f}")
            rows.append({"model": f"published: {name}", "accuracy": value})
        results["daquar"] = rows
    wall = time.perf_counter() - start
    results["wall_seconds"] = round(wall, 1)
    print(f"\nwall time {wall / 60:.1f} min")
    for key in ("world", "daquar"):
        rows = {r["model"]: r["accuracy"] for r in results.get(key, [])}
        pre = rows.get("(a) VL-pretrained")
        if pre is None:
            continue
        blind = rows.get("question-only (no VL pretraining)", 0.0)
        base = next((v for k, v in rows.items() if k.startswith("(b)")), 0.0)
        verdict = [f"pretrained {pre:.4f} vs no VL pretraining {base:.4f} ({pre - base:+.4f})",
                   f"vs question-only {blind:.4f}: {'beats' if pre > blind else 'does NOT beat'}"]
        if key == "daquar":
            verdict.append(f"vs DPPnet 0.2898: {'beats' if pre > 0.2898 else 'does NOT beat'}")
        print(f"{key}: " + "; ".join(verdict))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
