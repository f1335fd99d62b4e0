"""``vlptm inspect-data`` run through the real CLI entry point on fixture files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vlptm.cli import main


def _world(tmp_path: Path) -> Path:
    """captions.json + vqa.json + instances.json over 4 images: 2 good, 1 truncated, 1 missing."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (32, 24)), ("b.png", (20, 40))):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / name)
    good = (images / "a.jpg").read_bytes()
    (images / "c.jpg").write_bytes(good[: len(good) // 2])
    entries = [("a.jpg", "train"), ("b.png", "train"), ("c.jpg", "val"), ("d.jpg", "val")]
    (tmp_path / "captions.json").write_text(json.dumps(
        [{"image": name, "captions": [f"picture {name}", "a photo"], "split": split} for name, split in entries]
    ))
    (tmp_path / "vqa.json").write_text(json.dumps(
        [{"image": "a.jpg", "question": "how many?", "answers": ["2"], "answer_type": "number", "split": "train"},
         {"image": "a.jpg", "question": "is it red?", "answers": ["yes"], "answer_type": "yes/no", "split": "train"},
         {"image": "b.png", "question": "what colour?", "answers": ["red", "pink"], "answer_type": "other"}]
    ))
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 24}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 2, 0, 5], "iscrowd": 0}],
        "categories": [{"id": 2, "name": "circle"}],
    }))
    (tmp_path / "notes.txt").write_text("not annotations\n")
    return tmp_path


def test_captions_summary_and_image_check(tmp_path, capsys):
    root = _world(tmp_path)
    assert main(["inspect-data", str(root / "captions.json"), "--check-images", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "simple_captions"
    assert (summary["records"], summary["images"], summary["captions"]) == (4, 4, 8)
    assert summary["splits"] == {"train": 2, "val": 2}
    check = summary["image_check"]
    assert (check["checked"], check["ok"]) == (4, 2)
    assert check["errors"] == {"truncated": 1, "missing": 1}
    assert check["error_examples"]["missing"] == [str(root / "images" / "d.jpg")]
    assert check["width"] == {"min": 20, "mean": 26.0, "max": 32}


def test_limit_and_split(tmp_path, capsys):
    root = _world(tmp_path)
    assert main(["inspect-data", str(root / "captions.json"), "--check-images", "--limit", "1", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["image_check"]
    assert (check["checked"], check["of"], check["ok"]) == (1, 4, 1)
    assert main(["inspect-data", str(root / "captions.json"), "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 2


def test_vqa_and_detection_text_summaries(tmp_path, capsys):
    root = _world(tmp_path)
    assert main(["inspect-data", str(root / "vqa.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["answer_types"] == {"number": 1, "yes/no": 1, "other": 1}
    assert (summary["questions"], summary["images"], summary["multi_label"]) == (3, 2, 3)

    assert main(["inspect-data", str(root / "instances.json")]) == 0
    text = capsys.readouterr().out
    assert "coco_instances" in text
    assert "boxes                 1" in text
    assert "bad_box: 1" in text


def test_size_check_flags_exif_rotated_images(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 x 20, displayed 20 x 40
    Image.new("RGB", (40, 20)).save(images / "rot.jpg", exif=exif.tobytes())
    Image.new("RGB", (30, 30)).save(images / "odd.jpg")
    Image.new("RGB", (16, 12)).save(images / "fine.jpg")
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "rot.jpg", "width": 40, "height": 20},
                   {"id": 2, "file_name": "odd.jpg", "width": 31, "height": 30},
                   {"id": 3, "file_name": "fine.jpg", "width": 16, "height": 12}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}],
    }))
    assert main(["inspect-data", str(tmp_path / "instances.json"), "--check-images"]) == 0
    text = capsys.readouterr().out
    assert "3 of 3 loaded" in text
    assert "size_swapped        1" in text and "size_mismatch       1" in text


def test_folder_inspects_every_annotation_file(tmp_path, capsys):
    root = _world(tmp_path)
    assert main(["inspect-data", str(root), "--check-images", "--json"]) == 0
    summaries = {s["format"]: s for s in json.loads(capsys.readouterr().out)}
    assert sorted(summaries) == ["coco_instances", "simple_captions", "simple_vqa"]
    # Images shared between the files are decoded once but counted in each file's check.
    checks = {fmt: (s["image_check"]["ok"], s["image_check"]["errors"]) for fmt, s in summaries.items()}
    assert checks == {
        "simple_captions": (2, {"truncated": 1, "missing": 1}),
        "simple_vqa": (2, {}),
        "coco_instances": (1, {}),
    }


def test_unreadable_input_exits_non_zero(tmp_path, capsys):
    assert main(["inspect-data", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"images": [')
    assert main(["inspect-data", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert main(["inspect-data", str(tmp_path / "other.json")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert main(["inspect-data", str(empty)]) == 2
    assert "no annotation file" in capsys.readouterr().err
