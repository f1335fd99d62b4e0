"""``vlptm demo``: the main job on the embedded default (the generated scene world), end to end.

The demo is the sequence of ``vlptm`` commands a user would type, run for them and printed as it goes:

1. ``generate-scenes`` — the scene world (images, boxes, captions, questions);
2. ``train-detector`` — the Faster R-CNN region extractor on the world's boxes (mAP on its val split);
3. ``extract`` — region features of every image into a memory-mapped feature store;
4. ``pretrain`` — a small single-stream encoder with MLM, MRFR, ITM and ITC;
5. ``index`` — the FAISS index of image embeddings (and captions, for image-to-text);
6. ``eval-retrieval`` — R@1/5/10 on the held-out split, ITC only and two-stage;
7. ``search`` — a few text queries;
8. ``serve`` — the web demo on http://127.0.0.1:PORT (skipped with ``--no-serve``).

Each finished stage leaves a marker in ``WORKDIR/.done/``; a rerun skips finished stages (and the
interruptible ones, extraction and pretraining, resume where they stopped), so a second run is serving
within a minute.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import List

from vlptm.resources import resource_dir

NAME = "demo"
HELP = "run the main job end to end on the generated scene world (cached between runs)"

log = logging.getLogger(__name__)

# The pretraining recipe the demo starts from (configs/, or its bundled copy; values below override it).
_RECIPE = resource_dir("configs") / "pretrain" / "scenes-cpu.yaml"
_QUERIES = ("a large red circle", "a small blue star left of a yellow square", "two green triangles")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="where every stage writes (default runs/demo)")
    parser.add_argument("--num-images", type=int, default=2000, help="scene-world size (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="scene-world seed")
    parser.add_argument("--detector-minutes", type=float, default=4.0, help="detector training budget")
    parser.add_argument("--pretrain-steps", type=int, default=800, help="pretraining steps")
    parser.add_argument("--pretrain-minutes", type=float, default=6.0, help="pretraining time limit")
    parser.add_argument("--port", type=int, default=8000, help="port of the web demo")
    parser.add_argument("--no-serve", action="store_true", help="stop after the search examples")


def _vlptm(argv: List[str]) -> None:
    """Run one ``vlptm`` command in-process, printing it first; raise if it fails."""
    from vlptm.cli import main

    print("$ vlptm " + " ".join(a if " " not in a else repr(a) for a in argv), flush=True)
    code = main(argv)
    if code:
        raise SystemExit(f"vlptm {argv[0]} failed with exit code {code}")


def _pretrain_recipe(args: argparse.Namespace, root: Path) -> Path:
    import yaml

    recipe = yaml.safe_load(_RECIPE.read_text())
    recipe["run_dir"] = str(root / "pretrain")
    recipe["data"]["sources"] = [
        {"captions": str(root / "scenes" / "captions.json"), "features": str(root / "store"), "split": "train"}]
    recipe["optim"]["max_steps"] = args.pretrain_steps
    recipe["optim"]["warmup_steps"] = max(1, args.pretrain_steps // 10)
    recipe["time_limit_minutes"] = args.pretrain_minutes
    recipe["save_every"] = max(50, args.pretrain_steps // 4)
    recipe["device"] = "auto"
    path = root / "pretrain.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _stages(args: argparse.Namespace, root: Path) -> List[tuple]:
    scenes, store, pretrain, index = root / "scenes", root / "store", root / "pretrain", root / "index"
    captions = str(scenes / "captions.json")
    return [
        ("scene world", lambda: _vlptm(["generate-scenes", "--out", str(scenes), "--num-images", str(args.num_images),
                                         "--seed", str(args.seed), "--workers", "2"])),
        ("region extractor", lambda: _vlptm(["train-detector", f"--data={scenes / 'instances.json'}",
                                             f"--out={root / 'detector'}", "--variant=scenes-effnet-lite0",
                                             f"--minutes={args.detector_minutes}", "--eval_max_images=200"])),
        ("feature extraction", lambda: _vlptm(["extract", "--images", captions, "--out", str(store),
                                               "--checkpoint", str(root / "detector" / "model")])),
        ("pretraining", lambda: _vlptm(["pretrain", "--config", str(_pretrain_recipe(args, root)), "--resume"])),
        ("FAISS index", lambda: _vlptm(["index", "--store", str(store), "--model", str(pretrain), "--out", str(index),
                                        "--images", captions, "--captions", captions, "--rebuild"])),
        ("retrieval evaluation", lambda: _vlptm(["eval-retrieval", "--model", str(pretrain), "--store", str(store),
                                                 "--captions", captions, "--split", "val", "--modes", "itc,two-stage",
                                                 "--json", str(root / "retrieval.json")])),
    ]


def run(args: argparse.Namespace) -> int:
    root = Path(args.workdir)
    done = root / ".done"
    done.mkdir(parents=True, exist_ok=True)
    stamp = {"num_images": args.num_images, "seed": args.seed}
    stamp_file = root / "demo.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) != stamp:
        raise SystemExit(f"{root} holds a demo with other settings ({stamp_file.read_text()}); "
                         f"pass another --workdir or delete it")
    stamp_file.write_text(json.dumps(stamp))
    start = time.perf_counter()
    stages: List[tuple] = _stages(args, root)
    for number, (title, action) in enumerate(stages, 1):
        marker = done / title.replace(" ", "-")
        print(f"\n== {number}. {title}", flush=True)
        if marker.exists():
            print(f"cached ({marker})")
            continue
        began = time.perf_counter()
        action()
        marker.write_text(json.dumps({"seconds": round(time.perf_counter() - began, 1)}))
    rerank = _rerank_depth(root / "retrieval.json")
    print(f"\n== {len(stages) + 1}. search", flush=True)
    _vlptm(["search", "--index", str(root / "index"), "-k", "3", "--rerank", rerank, *_QUERIES])
    print(f"\nall stages done in {time.perf_counter() - start:.0f}s (workdir {root})", flush=True)
    if args.no_serve:
        return 0
    print(f"\n== {len(stages) + 2}. web demo: open http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    _vlptm(["serve", "--index", str(root / "index"), "--port", str(args.port), "--rerank", rerank])
    return 0


def _rerank_depth(results_path: Path) -> str:
    """ITM re-ranking depth for search: 16 when two-stage beat ITC alone on the held-out split, else 0.

    A short CPU pretraining run learns ITC well before ITM; re-ranking with an ITM head that has not
    learned yet would make the results worse, so the held-out figures decide.
    """
    results = json.loads(results_path.read_text())
    itc, two_stage = results["itc"]["mean"], results["two-stage"]["mean"]
    depth = str(results.get("rerank", 16)) if two_stage >= itc else "0"
    print(f"held-out mean recall: ITC {itc:.1f}, two-stage {two_stage:.1f} -> search re-ranks the top {depth} by ITM"
          if depth != "0" else
          f"held-out mean recall: ITC {itc:.1f}, two-stage {two_stage:.1f} -> search ranks by ITC alone "
          f"(the ITM head needs longer pretraining)")
    return depth
