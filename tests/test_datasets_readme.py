"""datasets/README.md's commands, run on a tiny copy of the layout it documents.

Every ``vlptm inspect-data datasets/...`` line of the README is run with ``--check-images --json`` in a
temporary folder holding a few entries of each data set at the documented paths, with the images at the
documented places, so a wrong path or default image folder in the README fails here.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

from vlptm.cli import main

README = Path(__file__).resolve().parents[1] / "datasets" / "README.md"


def _commands() -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in README.read_text().splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("vlptm inspect-data datasets/")]


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 200, 30)).save(path, "PNG" if path.suffix == ".png" else "JPEG")


def _build_layout(root: Path) -> None:
    d = root / "datasets"
    coco_images = [{"id": 139, "file_name": "000000000139.jpg", "width": 8, "height": 6}]
    _json(d / "coco/annotations/captions_val2017.json",
          {"images": coco_images, "annotations": [{"id": 1, "image_id": 139, "caption": "a room"}]})
    _json(d / "coco/annotations/instances_val2017.json",
          {"images": coco_images, "categories": [{"id": 1, "name": "person"}],
           "annotations": [{"id": 1, "image_id": 139, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 0}]})
    _image(d / "coco/val2017/000000000139.jpg")
    _json(d / "karpathy/dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895,
         "sentences": [{"raw": "a man on a moped"}]}]})
    _image(d / "coco/val2014/COCO_val2014_000000391895.jpg")
    _json(d / "karpathy/dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "split": "test", "sentences": [{"raw": "two young guys"}]}]})
    _text(d / "flickr30k/results_20130124.token", "1000092795.jpg#0\ttwo young guys\n")
    _image(d / "flickr30k/flickr30k-images/1000092795.jpg")
    _text(d / "flickr8k/Flickr8k.token.txt", "1000268201_693b08cb0e.jpg#0\ta child climbing stairs\n")
    _text(d / "flickr8k/Flickr_8k.testImages.txt", "1000268201_693b08cb0e.jpg\n")
    _image(d / "flickr8k/Flicker8k_Dataset/1000268201_693b08cb0e.jpg")
    _json(d / "vqa2/v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000}]})
    _json(d / "vqa2/v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": [
        {"question_id": 262148000, "image_id": 262148, "question_type": "none of the above", "answer_type": "other",
         "answers": [{"answer": "down", "answer_id": i} for i in range(10)]}]})
    _image(d / "coco/val2014/COCO_val2014_000000262148.jpg")
    _text(d / "daquar/qa.894.raw.train.txt", "what is on the table in the image12 ?\ncup, book\n")
    _image(d / "daquar/nyu_depth_images/image12.png")
    _json(d / "my_data/captions.json", [{"image": "a.jpg", "captions": ["a photo"]}])
    _json(d / "my_data/vqa.json", [{"image": "a.jpg", "question": "what?", "answers": ["a"]}])
    _image(d / "my_data/images/a.jpg")


def test_readme_documents_every_format():
    from vlptm.data.readers import FORMATS

    text = README.read_text()
    assert [f for f in FORMATS if f"`{f}`" not in text] == []
    assert len(_commands()) >= 11


@pytest.mark.parametrize("argv", _commands(), ids=lambda argv: argv[1])
def test_readme_command_runs_on_the_documented_layout(argv, tmp_path, monkeypatch, capsys):
    _build_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a for a in argv if a != "--check-images"] + ["--check-images", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for summary in out if isinstance(out, list) else [out]:
        assert summary["records"] >= 1, summary
        check = summary["image_check"]
        assert check["errors"] == {} and check["ok"] == check["checked"] >= 1, summary


def _shared_data_commands() -> list[tuple[list[str], dict[str, int]]]:
    """(argv, {"images": 128, "boxes": 939, ...}) for the README's ../shared/data lines and their comments."""
    commands = []
    for line in README.read_text().splitlines():
        if line.startswith("vlptm inspect-data ../shared/data"):
            command, _, comment = line.partition("#")
            pairs = re.findall(r"(\d[\d,]*) ([a-z]+)", comment)
            counts = {word: int(number.replace(",", "")) for number, word in pairs}
            commands.append((shlex.split(command)[1:], counts))
    return commands


def test_readme_shared_data_counts(shared_data, monkeypatch, capsys):
    commands = _shared_data_commands()
    assert len(commands) == 4
    monkeypatch.chdir(README.parents[1])  # the README's paths are relative to the project root
    for argv, expected in commands:
        assert main([a for a in argv if a != "--check-images"] + ["--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        summaries = out if isinstance(out, list) else [out]
        found = {key: max(s.get(key, 0) for s in summaries) for key in expected}
        assert found == expected, argv
