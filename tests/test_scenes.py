"""The generated scene world: determinism, variety, and language that agrees with the boxes."""
import json
import re
from collections import Counter

import numpy as np
import pytest

from vlptm.cli import main
from vlptm.data.scenes import COLORS, SHAPES, SIZES, generate_world, make_scene, render_scene

NUM = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    counts = generate_world(out, NUM, seed=7)
    load = lambda name: json.loads((out / name).read_text())  # noqa: E731
    return out, counts, load("instances.json"), load("captions.json"), load("vqa.json")


def _objects_by_file(instances):
    cats = {c["id"]: c["name"] for c in instances["categories"]}
    attrs = {a["id"]: a for a in instances["attribute_categories"]}
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    objs = {f: [] for f in files.values()}
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        named = {attrs[i]["type"]: attrs[i]["name"] for i in ann["attribute_ids"]}
        objs[files[ann["image_id"]]].append(
            {"shape": cats[ann["category_id"]], "color": named["color"], "size": named["size"],
             "box": (x, y, x + w, y + h)})
    return objs


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, 6, seed=3)
    generate_world(b, 6, seed=3, workers=2)  # worker count must not change the world
    generate_world(c, 6, seed=4)
    for name in ("instances.json", "captions.json", "vqa.json", "images/000005.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "captions.json").read_bytes() != (c / "captions.json").read_bytes()


def test_world_has_the_promised_variety(world):
    out, counts, instances, captions, questions = world
    assert counts["images"] == NUM == len(instances["images"]) == len(captions)
    per_image = Counter(a["image_id"] for a in instances["annotations"])
    assert set(per_image.values()) == set(range(1, 7))  # 1-6 objects, every count seen
    objs = [o for os_ in _objects_by_file(instances).values() for o in os_]
    assert {o["shape"] for o in objs} == set(SHAPES) and len(SHAPES) >= 6
    assert {o["color"] for o in objs} == set(COLORS) and len(COLORS) >= 8
    assert {o["size"] for o in objs} == set(SIZES)
    assert {make_scene(7, i).background for i in range(NUM)} >= {"noise", "gradient", "stripes", "checker"}
    assert {c["split"] for c in captions} == {"train", "val"}
    assert {q["question_type"] for q in questions} >= {"color", "shape", "count", "exists", "spatial", "size"}
    assert Counter(q["answers"][0] for q in questions if q["answer_type"] == "yes/no").keys() == {"yes", "no"}


def test_boxes_inside_image_and_overlap_is_occasional(world):
    out, _, instances, _, _ = world
    overlapping_images = 0
    for file_name, objs in _objects_by_file(instances).items():
        boxes = np.array([o["box"] for o in objs])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 256).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        x1 = np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        x2 = np.minimum(boxes[:, None, 2], boxes[None, :, 2])
        y1 = np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        y2 = np.minimum(boxes[:, None, 3], boxes[None, :, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        np.fill_diagonal(inter, 0)
        overlapping_images += bool(inter.any())
    assert 0 < overlapping_images < 0.5 * NUM


def test_objects_are_drawn_in_their_colour():
    scene = make_scene(seed=11, index=0)
    pixels = np.asarray(render_scene(scene, seed=11), dtype=np.float32)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.box
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        if obj.shape == "star" or any(o is not obj and o.box[0] <= cx <= o.box[2] and o.box[1] <= cy <= o.box[3]
                                      for o in scene.objects):
            continue  # a star's centre is filled too, but skip centres another box could cover
        patch = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(0)
        assert np.abs(patch - np.array(COLORS[obj.color])).max() < 45, (obj, patch)


def test_answers_agree_with_the_boxes(world):
    _, _, instances, _, questions = world
    objs = _objects_by_file(instances)
    checked = Counter()
    for q in questions:
        scene, text, answer = objs[q["image"]], q["question"], q["answers"][0]
        if text == "how many objects are there?":
            assert int(answer) == len(scene)
        elif m := re.fullmatch(r"how many (\w+) shapes are there\?", text):
            assert int(answer) == sum(o["color"] == m[1] for o in scene)
        elif m := re.fullmatch(r"how many (\w+)s are there\?", text):
            assert int(answer) == sum(o["shape"] == m[1] for o in scene)
        elif m := re.fullmatch(r"what color is the (\w+)\?", text):
            assert [o["color"] for o in scene if o["shape"] == m[1]] == [answer]
        elif m := re.fullmatch(r"what shape is the (\w+) object\?", text):
            assert [o["shape"] for o in scene if o["color"] == m[1]] == [answer]
        elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", text):
            assert answer == ("yes" if any(o["color"] == m[1] and o["shape"] == m[2] for o in scene) else "no")
        elif m := re.fullmatch(r"is the (\w+) (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+) (\w+)\?",
                               text):
            a = [o for o in scene if (o["size"], o["color"], o["shape"]) == m.group(1, 2, 3)]
            b = [o for o in scene if (o["size"], o["color"], o["shape"]) == m.group(5, 6, 7)]
            assert len(a) == len(b) == 1
            truth = _holds(a[0]["box"], m[4], b[0]["box"])
            assert answer == ("yes" if truth else "no"), (q, a, b)
        else:
            continue
        checked[q["question_type"]] += 1
    assert set(checked) >= {"count", "color", "shape", "exists", "spatial"}


def _holds(a, relation, b):
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def test_captions_agree_with_the_boxes(world):
    _, _, instances, captions, _ = world
    objs = _objects_by_file(instances)
    relations = 0
    for entry in captions:
        scene = objs[entry["image"]]
        assert len(entry["captions"]) >= 3 and len(set(entry["captions"])) == len(entry["captions"])
        # The listing caption names every object with its size and colour.
        listing = entry["captions"][0]
        for o in scene:
            assert f"{o['size']} {o['color']} {o['shape']}" in listing
        for caption in entry["captions"]:
            m = re.fullmatch(r"(?:a|the) (?:(small|large) )?(\w+) (\w+) (?:is )?(left of|right of|above|below) "
                             r"(?:a|the) (?:(small|large) )?(\w+) (\w+)\.", caption)
            if not m:
                continue
            match = lambda size, color, shape: [  # noqa: E731
                o for o in scene if o["color"] == color and o["shape"] == shape and size in (None, o["size"])]
            a, b = match(*m.group(1, 2, 3)), match(*m.group(5, 6, 7))
            assert a and b and any(_holds(x["box"], m[4], y["box"]) for x in a for y in b), (caption, scene)
            relations += 1
    assert relations > NUM // 3


def test_cli_writes_a_world(tmp_path, capsys):
    assert main(["generate-scenes", "--out", str(tmp_path), "--num-images", "5", "--seed", "1",
                 "--image-size", "128", "--format", "png"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["images"] == 5
    assert sorted(p.name for p in (tmp_path / "images").iterdir())[0] == "000000.png"


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"num_images": 2, "image_size": 16},
                                    {"num_images": 2, "image_format": "gif"}])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_world(tmp_path, **kwargs)


def test_readers_agree_on_ids_and_splits(world):
    from vlptm.data.readers import read_records

    out = world[0]
    splits = {}
    for name in ("captions.json", "vqa.json", "instances.json"):
        records = read_records(out / name, image_root=out / "images")
        for r in records:
            assert splits.setdefault(r.image_id, (r.split, r.path.name)) == (r.split, r.path.name), name
    assert len(splits) == NUM
