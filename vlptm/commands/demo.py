"""``vlptm demo``: the main job on the embedded default (the generated scene world), stage by stage.

Each stage writes into ``--workdir`` and is skipped on a rerun when its output is already there, so a
second run is fast. Stages so far: generate the scene world → read it back through the same readers
real data sets use (captions, VQA, detection boxes) and check every image decodes. Later stages
(detector, extraction, pretraining, FAISS index, search) join as they land.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

NAME = "demo"
HELP = "run the main job end to end on the generated scene world (cached between runs)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/demo", help="where every stage writes (default runs/demo)")
    parser.add_argument("--num-images", type=int, default=2000, help="scene-world size (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="scene-world seed")
    parser.add_argument("--workers", type=int, default=2, help="processes for scene rendering")


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _scenes(args: argparse.Namespace, root: Path) -> Path:
    from vlptm.data.scenes import generate_world

    world = root / "scenes"
    info_path = world / "instances.json"
    wanted = {"seed": args.seed, "num_images": args.num_images}
    stamp = world / "world.json"
    if info_path.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        print(f"cached: {world}")
        return world
    start = time.perf_counter()
    counts = generate_world(world, args.num_images, seed=args.seed, workers=args.workers, progress=True)
    stamp.write_text(json.dumps(wanted))
    elapsed = time.perf_counter() - start
    print(f"wrote {counts['images']} images, {counts['objects']} boxes, {counts['captions']} captions, "
          f"{counts['questions']} questions to {world} in {elapsed:.1f}s")
    return world


def _read_back(world: Path) -> None:
    from vlptm.data.images import ImageLoadError, load_image
    from vlptm.data.readers import read_records

    captions = list(read_records(world / "captions.json", image_root=world / "images"))
    questions = list(read_records(world / "vqa.json", image_root=world / "images"))
    detections = list(read_records(world / "instances.json", image_root=world / "images"))
    splits = Counter(r.split for r in captions)
    qtypes = Counter(q.question_type for q in questions)
    print(f"captions: {len(captions)} images, {sum(len(r.captions) for r in captions)} captions, splits {dict(splits)}")
    print(f"questions: {len(questions)} ({', '.join(f'{k} {v}' for k, v in sorted(qtypes.items()))})")
    print(f"boxes: {sum(len(r.boxes_xyxy) for r in detections)} in {len(detections)} images")
    failed = 0
    for record in captions:
        try:
            load_image(record.path)
        except ImageLoadError as err:
            failed += 1
            log.warning("skipping %s: %s", record.path, err)
    print(f"images decoded: {len(captions) - failed} ok, {failed} failed")
    example = captions[0]
    print(f"example {example.path.name}: " + " | ".join(example.captions[:3]))


def run(args: argparse.Namespace) -> int:
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    _stage("1. scene world")
    world = _scenes(args, root)
    _stage("2. read back through the data readers")
    _read_back(world)
    print("\ndone: later stages (detector, extraction, pretraining, FAISS search) are not built yet")
    return 0
