"""Readers: small fixture files in each real format read back with exact values, plus the shared data."""

from __future__ import annotations

import copy
import json
import random
import logging
from pathlib import Path

import pytest

from vlptm.data import readers
from vlptm.data.readers import (
    CaptionRecord,
    DatasetFormatError,
    DetectionRecord,
    QuestionRecord,
    detect_format,
    read_coco_captions,
    read_coco_instances,
    read_daquar,
    read_flickr_captions,
    read_karpathy,
    read_records,
    read_simple_captions,
    read_simple_vqa,
    read_vqa2,
)


def _write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- COCO ------------------------------------------------------------------------------------------------


def _coco_captions(tmp_path: Path) -> Path:
    return _write_json(
        tmp_path / "coco" / "annotations" / "captions_val2017.json",
        {
            "info": {},
            "images": [
                {"id": 139, "file_name": "000000000139.jpg", "width": 640, "height": 426},
                {"id": 285, "file_name": "000000000285.jpg", "width": 586, "height": 640},
                {"id": 632, "file_name": "000000000632.jpg", "width": 640, "height": 483},  # no captions
            ],
            "annotations": [
                {"id": 1, "image_id": 139, "caption": "A woman stands in the dining area at the table. "},
                {"id": 2, "image_id": 285, "caption": "A big brown bear sitting in the grass."},
                {"id": 3, "image_id": 139, "caption": "A room with chairs, a table, and a woman in it."},
                {"id": 4, "image_id": 285, "caption": "   "},  # empty
                {"id": 5, "image_id": 999, "caption": "an image that does not exist"},
                {"id": 6, "image_id": 285},  # no caption key
            ],
        },
    )


def test_coco_captions(tmp_path):
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    path = _coco_captions(tmp_path)
    assert detect_format(path) == "coco_captions"
    result = read_coco_captions(path)
    assert result.format == "coco_captions"
    assert result.image_root == tmp_path / "coco" / "val2017"
    assert result.records == [
        CaptionRecord(
            "139",
            tmp_path / "coco" / "val2017" / "000000000139.jpg",
            ["A woman stands in the dining area at the table.", "A room with chairs, a table, and a woman in it."],
            "val2017",
            {"width": 640, "height": 426},
        ),
        CaptionRecord(
            "285",
            tmp_path / "coco" / "val2017" / "000000000285.jpg",
            ["A big brown bear sitting in the grass."],
            "val2017",
            {"width": 586, "height": 640},
        ),
    ]
    assert result.skipped == {"empty_caption": 1, "unknown_image": 1, "missing_key": 1, "no_captions": 1}
    assert read_records(path, image_root=tmp_path / "imgs")[0].path == tmp_path / "imgs" / "000000000139.jpg"
    assert len(read_coco_captions(path, split="train2017")) == 0


def _coco_instances(tmp_path: Path, attributes: bool = False) -> Path:
    annotations = [
        {"id": 1, "image_id": 9, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0, "area": 1200},
        {"id": 2, "image_id": 9, "category_id": 3, "bbox": [0.5, 1.5, 2.0, 3.0], "iscrowd": 1, "area": 6},
        {"id": 3, "image_id": 9, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        {"id": 4, "image_id": 9, "category_id": 1, "bbox": [5, 5, 10, -1], "iscrowd": 0},  # negative height
        {"id": 5, "image_id": 9, "category_id": 77, "bbox": [1, 1, 1, 1], "iscrowd": 0},  # unknown category
        {"id": 6, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3]},  # three numbers
        {"id": 7, "image_id": 9, "bbox": [1, 2, 3, 4]},  # no category
    ]
    data = {
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480},
            {"id": 25, "file_name": "000000000025.jpg", "width": 427.0, "height": 640},  # no boxes; float width
            {"id": 30, "file_name": "000000000030.jpg", "width": 0, "height": 640},  # impossible size
        ],
        "annotations": annotations,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 3, "name": "car", "supercategory": "vehicle"},
        ],
    }
    if attributes:
        data["attribute_categories"] = [
            {"id": 1, "name": "red", "type": "color"},
            {"id": 2, "name": "small", "type": "size"},
        ]
        annotations[0]["attribute_ids"] = [1, 2]
        annotations[1]["attribute_ids"] = [2]
    return _write_json(tmp_path / "instances_train2017.json", data)


def test_coco_instances(tmp_path):
    path = _coco_instances(tmp_path)
    assert detect_format(path) == "coco_instances"
    result = read_records(path, image_root=tmp_path / "train2017")
    assert result.format == "coco_instances"
    assert [(c.id, c.name, c.supercategory) for c in result.categories] == [
        (1, "person", "person"),
        (3, "car", "vehicle"),
    ]
    assert result.attribute_categories == []
    assert result.records == [
        DetectionRecord(
            image_id="9",
            path=tmp_path / "train2017" / "000000000009.jpg",
            width=640,
            height=480,
            boxes_xyxy=[[10.0, 20.0, 40.0, 60.0], [0.5, 1.5, 2.5, 4.5]],
            category_ids=[1, 3],
            attribute_ids=[[], []],
            iscrowd=[False, True],
            split="train2017",
        ),
        DetectionRecord("25", tmp_path / "train2017" / "000000000025.jpg", 427, 640, [], [], [], [], "train2017"),
    ]
    assert result.skipped == {"bad_image_size": 1, "bad_box": 3, "unknown_category": 1, "missing_key": 1}


def test_coco_instances_with_attributes(tmp_path):
    result = read_coco_instances(_coco_instances(tmp_path, attributes=True))
    assert [(a.id, a.name, a.supercategory) for a in result.attribute_categories] == [
        (1, "red", "color"),
        (2, "small", "size"),
    ]
    assert result[0].attribute_ids == [[1, 2], [2]]
    assert result.image_root == tmp_path  # neither ../train2017 nor images/ exists: the file's folder


def test_malformed_entries_are_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vlptm.data.readers"):
        read_coco_instances(_coco_instances(tmp_path))
    assert "bad_box" in caplog.text and "skipped 6 entries" in caplog.text


# --- Karpathy --------------------------------------------------------------------------------------------


def test_karpathy(tmp_path):
    path = _write_json(
        tmp_path / "karpathy" / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                {
                    "filepath": "val2014",
                    "filename": "COCO_val2014_000000391895.jpg",
                    "imgid": 0,
                    "split": "test",
                    "cocoid": 391895,
                    "sentids": [0, 1],
                    "sentences": [
                        {"raw": "A man with a red helmet on a small moped on a dirt road. ", "tokens": ["a"]},
                        {"raw": "Man riding a motor bike on a dirt road on the countryside.", "tokens": ["man"]},
                    ],
                },
                {
                    "filepath": "val2014",
                    "filename": "COCO_val2014_000000522418.jpg",
                    "imgid": 1,
                    "split": "restval",
                    "cocoid": 522418,
                    "sentences": [{"raw": "A woman wearing a net on her head cutting a cake."}],
                },
                {
                    "filepath": "train2014",
                    "filename": "COCO_train2014_000000318556.jpg",
                    "imgid": 2,
                    "split": "train",
                    "cocoid": 318556,
                    "sentences": [{"raw": "A very clean and well decorated empty bathroom"}],
                },
                {
                    "filepath": "train2014",
                    "filename": "COCO_train2014_000000000001.jpg",
                    "split": "train",
                    "cocoid": 1,
                    "sentences": [{"raw": ""}],
                },  # only an empty sentence
                {"filepath": "train2014", "split": "train", "sentences": []},  # no filename
            ],
        },
    )
    assert detect_format(path) == "karpathy"
    result = read_karpathy(path, image_root=tmp_path / "coco")
    assert [(r.image_id, r.split) for r in result] == [("391895", "test"), ("522418", "restval"), ("318556", "train")]
    assert result[0] == CaptionRecord(
        "391895",
        tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg",
        [
            "A man with a red helmet on a small moped on a dirt road.",
            "Man riding a motor bike on a dirt road on the countryside.",
        ],
        "test",
    )
    assert result.skipped == {"empty_caption": 1, "no_captions": 1, "missing_key": 1}
    assert [r.image_id for r in read_karpathy(path, split="train")] == ["318556"]
    merged = read_records(path, split="train", merge_restval=True)
    assert [(r.image_id, r.split) for r in merged] == [("522418", "train"), ("318556", "train")]
    assert merged.image_root == tmp_path / "coco"  # the documented default for the COCO Karpathy file


def test_karpathy_flickr30k_without_filepath(tmp_path):
    path = _write_json(
        tmp_path / "dataset_flickr30k.json",
        {
            "dataset": "flickr30k",
            "images": [
                {
                    "filename": "1000092795.jpg",
                    "imgid": 0,
                    "split": "train",
                    "sentences": [
                        {"raw": "Two young guys with shaggy hair look at their hands while hanging out in the yard."}
                    ],
                },
            ],
        },
    )
    result = read_records(path, image_root=tmp_path / "flickr30k-images")
    assert result[0].image_id == "1000092795"
    assert result[0].path == tmp_path / "flickr30k-images" / "1000092795.jpg"


# --- Flickr8k / Flickr30k ----------------------------------------------------------------------------------


def test_flickr8k_token_with_split_lists(tmp_path):
    text_dir = tmp_path / "flickr8k"
    path = _write_text(
        text_dir / "Flickr8k.token.txt",
        "1000268201_693b08cb0e.jpg#1\tA girl going into a wooden building .\n"
        "1000268201_693b08cb0e.jpg#0\tA child in a pink dress is climbing up a set of stairs in an entry way .\n"
        "1001773457_577c3a7d70.jpg#0\tA black dog and a spotted dog are fighting\n"
        "this line is broken\n"
        "1002674143_1b742ab4b8.jpg#0\t   \n"
        "\n",
    )
    _write_text(text_dir / "Flickr_8k.trainImages.txt", "1000268201_693b08cb0e.jpg\n")
    _write_text(text_dir / "Flickr_8k.devImages.txt", "1001773457_577c3a7d70.jpg\n")
    (text_dir / "Flicker8k_Dataset").mkdir()
    assert detect_format(path) == "flickr_token"
    result = read_flickr_captions(path)
    assert result.format == "flickr_token"
    assert result.image_root == text_dir / "Flicker8k_Dataset"
    assert result.records == [
        CaptionRecord(
            "1000268201_693b08cb0e",
            text_dir / "Flicker8k_Dataset" / "1000268201_693b08cb0e.jpg",
            [
                "A child in a pink dress is climbing up a set of stairs in an entry way .",  # ordered by #n
                "A girl going into a wooden building .",
            ],
            "train",
        ),
        CaptionRecord(
            "1001773457_577c3a7d70",
            text_dir / "Flicker8k_Dataset" / "1001773457_577c3a7d70.jpg",
            ["A black dog and a spotted dog are fighting"],
            "val",  # from devImages
        ),
    ]
    assert result.skipped == {"malformed_line": 1, "empty_caption": 1}
    assert [r.image_id for r in read_records(path, split="val")] == ["1001773457_577c3a7d70"]


def test_flickr30k_token_and_csv(tmp_path):
    token = _write_text(
        tmp_path / "results_20130124.token",
        "1000092795.jpg#0\tTwo young guys with shaggy hair look at their hands while hanging out in the yard .\n"
        "1000092795.jpg#1\tTwo young , White males are outside near many bushes .\n",
    )
    csv = _write_text(
        tmp_path / "results.csv",
        "image_name| comment_number| comment\n"
        "1000092795.jpg| 0| Two young guys with shaggy hair look at their hands while hanging out in the yard .\n"
        "1000092795.jpg| 1| Two young , White males are outside near many bushes .\n"
        "2199200615.jpg| 4 A dog runs across the grass .\n",  # the known malformed line of the Kaggle copy
    )
    assert (detect_format(token), detect_format(csv)) == ("flickr_token", "flickr30k_csv")
    from_token = read_records(token, image_root=tmp_path / "flickr30k-images")
    from_csv = read_records(csv, image_root=tmp_path / "flickr30k-images")
    assert from_csv.format == "flickr30k_csv"
    assert from_token.records == from_csv.records
    assert from_csv[0].captions[1] == "Two young , White males are outside near many bushes ."
    assert from_csv[0].split is None
    assert from_csv.skipped == {"malformed_line": 1}


# --- VQA v2 ---------------------------------------------------------------------------------------------


def _vqa2_files(tmp_path: Path) -> tuple[Path, Path]:
    questions = _write_json(
        tmp_path / "vqa2" / "v2_OpenEnded_mscoco_val2014_questions.json",
        {
            "info": {},
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": "val2014",
            "license": {},
            "questions": [
                {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
                {
                    "image_id": 262148,
                    "question": "What are the people in the background doing?",
                    "question_id": 262148001,
                },
                {"image_id": 393225, "question": "Is this a bowl?", "question_id": 393225000},  # not annotated
                {"image_id": 393226, "question_id": 393226000},  # no question text
            ],
        },
    )
    answers_1 = ["down"] * 7 + ["at table", "skateboard", "table"]
    answers_2 = ["watching"] * 4 + ["spectating"] * 3 + ["standing", "watching", "watching"]
    annotations = _write_json(
        tmp_path / "vqa2" / "v2_mscoco_val2014_annotations.json",
        {
            "info": {},
            "license": {},
            "data_subtype": "val2014",
            "annotations": [
                {
                    "question_type": "none of the above",
                    "multiple_choice_answer": "down",
                    "image_id": 262148,
                    "answer_type": "other",
                    "question_id": 262148000,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers_1)
                    ],
                },
                {
                    "question_type": "what are the",
                    "multiple_choice_answer": "watching",
                    "image_id": 262148,
                    "answer_type": "other",
                    "question_id": 262148001,
                    "answers": [
                        {"answer": a, "answer_confidence": "maybe", "answer_id": i + 1} for i, a in enumerate(answers_2)
                    ],
                },
            ],
        },
    )
    return questions, annotations


def test_vqa2_with_annotations(tmp_path):
    questions, annotations = _vqa2_files(tmp_path)
    assert (detect_format(questions), detect_format(annotations)) == ("vqa2_questions", "vqa2_annotations")
    result = read_vqa2(questions, image_root=tmp_path / "coco" / "val2014")  # annotations found by name
    assert result.format == "vqa2"
    first = result[0]
    assert first == QuestionRecord(
        question_id="262148000",
        image_id="262148",
        path=tmp_path / "coco" / "val2014" / "COCO_val2014_000000262148.jpg",
        question="Where is he looking?",
        answers=["down"] * 7 + ["at table", "skateboard", "table"],
        answer_counts={"down": 7, "at table": 1, "skateboard": 1, "table": 1},
        split="val2014",
        question_type="none of the above",
        answer_type="other",
        multi_label=False,
        meta={"multiple_choice_answer": "down"},
    )
    assert len(result[1].answers) == 10
    assert result[1].answer_counts == {"watching": 6, "spectating": 3, "standing": 1}
    assert result[1].top_answer == "watching"
    assert len(result) == 2
    assert result.skipped == {"unannotated_question": 1, "missing_key": 1}
    # Either file of the pair can be given; the other is found beside it.
    assert read_records(annotations, image_root=tmp_path / "coco" / "val2014").records == result.records
    assert result.image_root == tmp_path / "coco" / "val2014"


def test_vqa2_test_split_without_annotations(tmp_path):
    questions = _write_json(
        tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
        {
            "data_subtype": "test-dev2015",
            "questions": [{"image_id": 1, "question": "What color is the cat?", "question_id": 10}],
        },
    )
    result = read_records(questions)
    record = result[0]
    assert (record.answers, record.answer_counts, record.top_answer) == ([], {}, None)
    assert record.path.name == "COCO_test2015_000000000001.jpg"  # test-dev images live in test2015
    assert record.split == "test-dev2015"


def test_vqa2_annotations_alone_is_a_clear_error(tmp_path):
    _, annotations = _vqa2_files(tmp_path)
    (tmp_path / "vqa2" / "v2_OpenEnded_mscoco_val2014_questions.json").unlink()
    with pytest.raises(DatasetFormatError, match="questions"):
        read_records(annotations)


# --- DAQUAR ----------------------------------------------------------------------------------------------


def test_daquar_original_text(tmp_path):
    path = _write_text(
        tmp_path / "qa.894.raw.train.txt",
        "what is on the right side of the black telephone and on the left side of the red chair in the image3 ?\n"
        "desk\n"
        "what is on the table in the image12 ?\n"
        "cup, book, garbage_bin\n"
        "how many chairs are at the table in the image12 ?\n"
        "4\n"
        "what is the object in the image912 close to the wall in the image912 ?\n"
        "lamp\n"
        "what is behind the sofa ?\n"  # no image id
        "wall\n"
        "what is under the desk in the image5 ?\n"
        " , \n"  # no answers
        "what is on the floor in the image7 ?\n",  # no answer line
    )
    (tmp_path / "nyu_depth_images").mkdir()
    assert detect_format(path) == "daquar"
    result = read_daquar(path)
    assert result.format == "daquar"
    assert [(r.question_id, r.image_id, r.question, r.answers) for r in result] == [
        (
            "0",
            "image3",
            "what is on the right side of the black telephone and on the left side of the red chair?",
            ["desk"],
        ),
        ("1", "image12", "what is on the table?", ["cup", "book", "garbage_bin"]),
        ("2", "image12", "how many chairs are at the table?", ["4"]),
        ("3", "image912", "what is the object in the image close to the wall?", ["lamp"]),
    ]
    second = result[1]
    assert second.path == tmp_path / "nyu_depth_images" / "image12.png"
    assert second.answer_counts == {"cup": 1, "book": 1, "garbage_bin": 1}
    assert second.multi_label and second.split == "train"
    assert result.skipped == {"question_without_answer": 1, "no_image_id": 1, "no_answers": 1}
    assert len(read_records(path, split="test")) == 0
    assert read_records(path, image_ext="jpg")[0].path.name == "image3.jpg"


# --- simple project formats -------------------------------------------------------------------------------


def test_simple_captions(tmp_path):
    path = _write_json(
        tmp_path / "captions.json",
        [
            {
                "image": "000000493652.jpg",
                "captions": ["Living room decorated for Christmas", ""],
                "split": "train2017",
                "coco_id": 493652,
                "width": 640,
                "height": 399,
                "license": 3,
            },
            {"image": "b.jpg", "captions": ["a dog"], "image_id": 7},
            {"image": "c.jpg", "captions": []},
            {"captions": ["no image key"]},
        ],
    )
    (tmp_path / "images").mkdir()
    assert detect_format(path) == "simple_captions"
    result = read_simple_captions(path)
    assert result.records == [
        CaptionRecord(
            "493652",
            tmp_path / "images" / "000000493652.jpg",
            ["Living room decorated for Christmas"],
            "train2017",
            {"coco_id": 493652, "width": 640, "height": 399, "license": 3},
        ),
        CaptionRecord("7", tmp_path / "images" / "b.jpg", ["a dog"], None, {}),
    ]
    assert result.skipped == {"empty_caption": 1, "no_captions": 1, "missing_key": 1}


def test_simple_vqa_gold_sets_and_counts(tmp_path):
    path = _write_json(
        tmp_path / "vqa.json",
        [
            {
                "image": "image12.jpg",
                "question": "what is on the table?",
                "answers": ["cup", "book", "cup"],
                "split": "train",
            },
            {
                "image": "000001.jpg",
                "question": "how many circles are there?",
                "answers": ["two"],
                "split": "val",
                "question_type": "count",
                "answer_type": "number",
                "question_id": "q9",
            },
            {
                "image": "x.jpg",
                "question": "what is it?",
                "answers": ["cat", "cat", "dog"],
                "answer_counts": {"cat": 2, "dog": 1},
            },
            {"image": "y.jpg", "question": "  ", "answers": ["a"]},
            {"image": "z.jpg", "question": "what?", "answers": []},
            {"image": "w.jpg", "question": "what?", "answers": ["a"], "answer_counts": {"a": 0}},
        ],
    )
    assert detect_format(path) == "simple_vqa"
    result = read_simple_vqa(path)
    assert result.records[0] == QuestionRecord(
        "0",
        "image12",
        tmp_path / "image12.jpg",
        "what is on the table?",
        ["cup", "book"],
        {"cup": 1, "book": 1},
        "train",
        None,
        None,
        True,
        {},
    )
    assert (result[1].question_id, result[1].question_type, result[1].answer_type) == ("q9", "count", "number")
    counted = result[2]
    assert (counted.multi_label, counted.answers, counted.answer_counts) == (
        False,
        ["cat", "cat", "dog"],
        {"cat": 2, "dog": 1},
    )
    assert result.skipped == {"empty_question": 1, "no_answers": 1, "bad_answer_counts": 1}
    assert [r.question_id for r in read_records(path, split="val")] == ["q9"]


# --- wrong formats -----------------------------------------------------------------------------------------


def test_wrong_format_raises_clear_errors(tmp_path):
    vqa = _write_json(tmp_path / "vqa.json", [{"image": "a.jpg", "question": "q?", "answers": ["a"]}])
    with pytest.raises(DatasetFormatError, match="not COCO captions"):
        read_coco_captions(vqa)
    with pytest.raises(DatasetFormatError, match="not a captions.json"):
        read_simple_captions(vqa)
    with pytest.raises(DatasetFormatError, match="not a Karpathy"):
        read_karpathy(_coco_instances(tmp_path))
    with pytest.raises(DatasetFormatError, match="not COCO captions"):
        read_coco_captions(_coco_instances(tmp_path))
    with pytest.raises(DatasetFormatError, match="not a DAQUAR"):
        read_daquar(_write_text(tmp_path / "a.txt", "hello\nworld\n"))
    with pytest.raises(DatasetFormatError, match="not a Flickr"):
        read_flickr_captions(_write_text(tmp_path / "b.txt", "hello\nworld\n"))
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_records(_write_text(tmp_path / "broken.json", '{"images": [1, 2'))
    with pytest.raises(DatasetFormatError, match="cannot tell the format"):
        read_records(_write_json(tmp_path / "other.json", {"hello": 1}))
    with pytest.raises(DatasetFormatError, match="not UTF-8"):
        (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
        read_records(tmp_path / "binary.txt")
    with pytest.raises(DatasetFormatError, match="directory"):
        read_records(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nope.json")
    with pytest.raises(TypeError, match="merge_restval"):
        read_records(vqa, merge_restval=True)
    assert set(readers.FORMATS) >= {
        "coco_captions",
        "coco_instances",
        "karpathy",
        "flickr_token",
        "flickr30k_csv",
        "vqa2_questions",
        "vqa2_annotations",
        "daquar",
        "simple_captions",
        "simple_vqa",
    }


# --- the shared development data (skips when absent) -----------------------------------------------------


def test_shared_coco128_instances(shared_data):
    result = read_records(shared_data / "coco128" / "instances.json")
    assert result.format == "coco_instances" and not result.skipped
    assert len(result) == 128
    assert sum(len(r.boxes_xyxy) for r in result) == 939
    assert len({c for r in result for c in r.category_ids}) == 71
    assert all(r.path.is_file() for r in result)
    assert all(x1 < x2 and y1 < y2 for r in result for x1, y1, x2, y2 in r.boxes_xyxy)


def test_shared_coco_mini(shared_data):
    captions = read_records(shared_data / "coco_mini_train" / "captions.json")
    instances = read_records(shared_data / "coco_mini_train" / "instances.json")
    assert len(captions) == 80 and len(instances) == 80
    assert all(len(r.captions) == 5 for r in captions)
    # captions.json's coco_id and instances.json's image id name the same images.
    assert {r.image_id for r in captions} == {r.image_id for r in instances}
    assert all(r.path.is_file() for r in captions)


def test_shared_flickr8k(shared_data):
    result = read_records(shared_data / "flickr8k_train" / "captions.json")
    assert len(result) == 800 and all(len(r.captions) == 5 for r in result)
    assert all(r.path.is_file() for r in result)


def test_shared_daquar(shared_data):
    result = read_records(shared_data / "daquar_train" / "vqa.json")
    assert result.format == "simple_vqa" and len(result) == 6795
    assert all(r.multi_label and r.split == "train" for r in result)
    assert len(result.image_paths()) == 794
    assert all(p.is_file() for p in result.image_paths())


# --- malformed values anywhere never crash a read --------------------------------------------------------

_JUNK = (None, [], {}, [1, 2], {"a": 1}, "", "x", -1, 0, 2.5, True, float("nan"), [[1]], "../x")


def _positions(node, found):
    """Every (container, key) pair in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append((node, key))
        _positions(value, found)
    return found


@pytest.mark.parametrize("builder", ["coco_captions", "coco_instances", "vqa2", "simple"])
def test_junk_values_give_records_or_a_format_error(tmp_path, builder):
    # Each trial replaces 1-3 random values of a valid file with junk of another type; reading must return
    # a RecordSet or raise DatasetFormatError, and inspect-data must exit 0 or 2 - never an uncaught error.
    from vlptm.cli import main

    rng = random.Random(builder)
    if builder == "coco_captions":
        paths = [_coco_captions(tmp_path)]
    elif builder == "coco_instances":
        paths = [_coco_instances(tmp_path, attributes=True)]
    elif builder == "vqa2":
        paths = list(_vqa2_files(tmp_path))
    else:
        paths = [
            _write_json(tmp_path / "captions.json", [{"image": "a.jpg", "captions": ["x", "y"], "split": "train"}] * 3),
            _write_json(
                tmp_path / "vqa.json",
                [{"image": "a.jpg", "question": "q?", "answers": ["a"], "answer_counts": {"a": 2}, "split": "s"}] * 3,
            ),
        ]
    originals = {path: json.loads(path.read_text()) for path in paths}
    outcomes = set()
    for _ in range(40):
        target = rng.choice(paths)
        data = json.loads(json.dumps(originals[target]))
        positions = _positions(data, [])
        for _ in range(rng.randint(1, 3)):
            container, key = rng.choice(positions)
            container[key] = copy.deepcopy(rng.choice(_JUNK))
            positions = _positions(data, [])
        target.write_text(json.dumps(data))
        try:
            outcomes.add(type(read_records(target)).__name__)
        except DatasetFormatError:
            outcomes.add("DatasetFormatError")
        assert main(["inspect-data", str(target), "--json"]) in (0, 2)
        target.write_text(json.dumps(originals[target]))
    assert "RecordSet" in outcomes
