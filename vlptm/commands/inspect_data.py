"""``vlptm inspect-data``: sniff an annotation file's format, read it and summarise it; optionally check images.

Examples::

    vlptm inspect-data ../shared/data/daquar_train/vqa.json
    vlptm inspect-data datasets/coco/annotations/captions_val2017.json --check-images --limit 500
    vlptm inspect-data ../shared/data/coco_mini_train            # every annotation file in a folder
    vlptm inspect-data world/instances.json --json               # the summary as JSON
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

NAME = "inspect-data"
HELP = "detect an annotation file's format, summarise it, and optionally check that every image loads"

log = logging.getLogger(__name__)

# Files in a folder worth sniffing; anything else is ignored.
_ANNOTATION_SUFFIXES = (".json", ".txt", ".token", ".csv")
_TOP = 10  # entries shown in "most common" lists
# Bad images named in the log per error reason before the rest are only counted.
_LOG_PER_REASON = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="an annotation file, or a folder whose annotation files are all inspected")
    parser.add_argument("--images", metavar="DIR", help="image folder (default: the format's usual place, see "
                                                        "datasets/README.md)")
    parser.add_argument("--split", action="append", help="only this split (repeatable)")
    parser.add_argument("--check-images", action="store_true", help="load every image and count failures by reason")
    parser.add_argument("--limit", type=int, metavar="N", help="check only the first N images (with --check-images)")
    parser.add_argument("--max-pixels", type=int, metavar="P", help="image pixel limit for --check-images "
                                                                    "(default: vlptm.data.images.DEFAULT_MAX_PIXELS)")
    parser.add_argument("--examples", type=int, default=3, metavar="K", help="records to show (default 3)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from vlptm.data.readers import DatasetFormatError, read_records

    if args.limit is not None and args.limit < 0:
        print("error: --limit must be >= 0", file=sys.stderr)
        return 2
    path = Path(args.path)
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    try:
        files = _annotation_files(path) if path.is_dir() else [path]
    except DatasetFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summaries = []
    seen: dict[Path, Any] = {}  # image path -> (width, height) or ImageLoadError, shared by the files
    for file in files:
        try:
            records = read_records(file, image_root=args.images, split=args.split)
        except (DatasetFormatError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        summary = _summarise(records, args.examples)
        if args.check_images:
            summary["image_check"] = _check_images(
                records.image_paths(), args.limit, args.max_pixels, _annotated_sizes(records), seen
            )
        summaries.append(summary)
    if args.json:
        print(json.dumps(summaries[0] if not path.is_dir() else summaries, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(_format_text(summary) for summary in summaries))
    return 0


def _annotation_files(folder: Path) -> list[Path]:
    """The recognised annotation files directly inside ``folder`` (one VQA v2 file per question/answer pair)."""
    from vlptm.data.readers import DatasetFormatError, detect_format

    found: dict[Path, str] = {}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix.lower() in _ANNOTATION_SUFFIXES:
            try:
                found[file] = detect_format(file)
            except DatasetFormatError:
                log.info("%s: not an annotation file, ignored", file.name)
    has_questions = "vqa2_questions" in found.values()
    files = [f for f, fmt in found.items() if not (fmt == "vqa2_annotations" and has_questions)]
    if not files:
        raise DatasetFormatError(f"no annotation file in a known format in {folder} (see datasets/README.md)")
    return files


def _summarise(records, examples: int) -> dict[str, Any]:
    """Counts and examples of one RecordSet, as plain JSON-able values."""
    from vlptm.data.readers import CaptionRecord, DetectionRecord, QuestionRecord

    items = records.records
    summary: dict[str, Any] = {
        "path": str(records.source),
        "format": records.format,
        "image_root": str(records.image_root),
        "records": len(items),
        "images": len(records.image_paths()),
        "splits": dict(Counter(r.split or "unspecified" for r in items).most_common()),
        "skipped": dict(records.skipped),
    }
    kinds = {type(r) for r in items}
    if kinds == {CaptionRecord}:
        lengths = [len(c.split()) for r in items for c in r.captions]
        summary["captions"] = len(lengths)
        summary["captions_per_image"] = _range_of([len(r.captions) for r in items])
        summary["words_per_caption"] = _range_of(lengths)
        summary["examples"] = [{"image": r.path.name, "captions": r.captions[:2]} for r in items[:examples]]
    elif kinds == {QuestionRecord}:
        summary["questions"] = len(items)
        summary["questions_per_image"] = round(len(items) / max(1, summary["images"]), 2)
        summary["answered"] = sum(bool(r.answers) for r in items)
        summary["multi_label"] = sum(r.multi_label for r in items)
        summary["answers_per_question"] = _range_of([len(r.answers) for r in items])
        summary["answer_types"] = dict(Counter(r.answer_type or "unspecified" for r in items).most_common())
        summary["question_types"] = dict(Counter(r.question_type or "unspecified" for r in items).most_common(_TOP))
        top = Counter(r.top_answer for r in items if r.top_answer is not None)
        summary["distinct_top_answers"] = len(top)
        summary["top_answers"] = dict(top.most_common(_TOP))
        summary["examples"] = [{"image": r.path.name, "question": r.question, "answers": r.answers}
                               for r in items[:examples]]
    elif kinds == {DetectionRecord}:
        names = {c.id: c.name for c in records.categories}
        per_category = Counter(names.get(c, str(c)) for r in items for c in r.category_ids)
        summary["boxes"] = sum(len(r.boxes_xyxy) for r in items)
        summary["boxes_per_image"] = _range_of([len(r.boxes_xyxy) for r in items])
        summary["images_without_boxes"] = sum(not r.boxes_xyxy for r in items)
        summary["crowd_boxes"] = sum(sum(r.iscrowd) for r in items)
        summary["categories"] = len(records.categories)
        summary["categories_used"] = len(per_category)
        summary["top_categories"] = dict(per_category.most_common(_TOP))
        summary["attribute_categories"] = len(records.attribute_categories)
        summary["boxes_with_attributes"] = sum(bool(a) for r in items for a in r.attribute_ids)
        summary["examples"] = [
            {"image": r.path.name, "size": [r.width, r.height],
             "boxes": [[names.get(c, str(c))] + [round(v, 1) for v in box]
                       for c, box in zip(r.category_ids[:3], r.boxes_xyxy[:3])]}
            for r in items[:examples]
        ]
    return summary


def _range_of(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def _annotated_sizes(records) -> dict[Path, tuple[int, int]]:
    """Image path -> (width, height) the annotation file states (detection records, or ``meta``)."""
    sizes = {}
    for r in records:
        width = getattr(r, "width", None) or getattr(r, "meta", {}).get("width")
        height = getattr(r, "height", None) or getattr(r, "meta", {}).get("height")
        if isinstance(width, int) and isinstance(height, int):
            sizes[r.path] = (width, height)
    return sizes


def _check_images(
    paths: list[Path],
    limit: Optional[int],
    max_pixels: Optional[int],
    sizes: dict[Path, tuple[int, int]],
    seen: dict[Path, Any],
) -> dict[str, Any]:
    """Loads each image with :func:`vlptm.data.images.load_image`; counts successes and errors by reason.

    Where the annotation file states an image's size, a loaded image of another size is counted as
    ``size_mismatch``; ``size_swapped`` when only width and height differ, which usually means the
    annotations were made on the stored pixels of a photo with an EXIF rotation (boxes would land in the
    wrong place; load such data with ``apply_exif_orientation=False``). ``seen`` maps each path already
    loaded in this run to its size or ImageLoadError, so files sharing images decode them once."""
    from vlptm.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

    chosen = paths if limit is None else paths[:limit]
    errors: Counter = Counter()
    examples: dict[str, list[str]] = {}
    widths, heights = [], []
    mismatches: Counter = Counter()
    for path in chosen:
        if path not in seen:
            try:
                seen[path] = load_image(path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS).size
            except ImageLoadError as err:
                seen[path] = err
        outcome = seen[path]
        if isinstance(outcome, ImageLoadError):
            err = outcome
            errors[err.reason] += 1
            examples.setdefault(err.reason, [])
            if errors[err.reason] <= _LOG_PER_REASON:
                examples[err.reason].append(str(path))
                log.warning("bad image, skipped: %s", err)
            else:
                log.debug("bad image, skipped: %s", err)
            continue
        widths.append(outcome[0])
        heights.append(outcome[1])
        expected = sizes.get(path)
        if expected is not None and outcome != expected:
            kind = "size_swapped" if outcome == expected[::-1] else "size_mismatch"
            mismatches[kind] += 1
            if mismatches[kind] <= _LOG_PER_REASON:
                log.warning("%s: %s, annotated %dx%d, loaded %dx%d", path, kind, *expected, *outcome)
    return {
        "checked": len(chosen),
        "of": len(paths),
        "ok": len(chosen) - sum(errors.values()),
        "errors": dict(errors.most_common()),
        "error_examples": examples,
        "size_mismatches": dict(mismatches),
        "width": _range_of(widths),
        "height": _range_of(heights),
    }


def _format_text(summary: dict[str, Any]) -> str:
    lines = [summary["path"]]

    def row(label: str, value: Any) -> None:
        if isinstance(value, dict):
            if set(value) == {"min", "mean", "max"}:
                value = f"{value['min']} .. {value['max']} (mean {value['mean']})"
            else:
                value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
        lines.append(f"  {label:<22}{value}")

    for key, value in summary.items():
        if key in ("path", "examples", "image_check"):
            continue
        row(key.replace("_", " "), value)
    for example in summary.get("examples", []):
        lines.append("  example  " + json.dumps(example, ensure_ascii=False))
    check = summary.get("image_check")
    if check is not None:
        partial = f" (first {check['checked']} of {check['of']} images)" if check["checked"] < check["of"] else ""
        lines.append(f"  image check           {check['ok']} of {check['checked']} loaded{partial}")
        for reason, count in check["errors"].items():
            lines.append(f"    {reason:<20}{count}   e.g. {check['error_examples'][reason][0]}")
        for kind, count in check["size_mismatches"].items():
            lines.append(f"    {kind:<20}{count}   (loaded size differs from the annotated width/height)")
        if check["ok"]:
            row("image width", check["width"])
            row("image height", check["height"])
    return "\n".join(lines)
