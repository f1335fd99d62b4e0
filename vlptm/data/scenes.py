"""The generated scene world: the embedded default data set, deterministic from a seed.

Each image holds 1-6 flat shapes (7 kinds, 8 colours, 2 sizes) on a noisy or textured background.
Everything a later stage needs is written in the on-disk formats of the real readers, so generated and
real data travel one path:

- ``images/NNNNNN.jpg`` (or ``.png``)
- ``instances.json`` — COCO detection JSON; categories are shapes, each annotation also carries
  ``attribute_ids`` = [colour id, size id] into the top-level ``attribute_categories`` list.
- ``captions.json`` — ``[{"image", "captions", "split", "image_id"}]`` (the format of ``../shared/data``).
- ``vqa.json`` — ``[{"image", "image_id", "question", "answers", "split", "question_type", "answer_type"}]``.

The three files agree on image ids (COCO image id = scene index + 1) and splits.

Captions and questions are derived from the same object list as the boxes, so they always agree with them.

Example:
    >>> scene = make_scene(seed=0, index=3)
    >>> image = render_scene(scene, seed=0)
    >>> image.size, 1 <= len(scene.objects) <= 6
    ((256, 256), True)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache, partial
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
COLORS = {  # name -> nominal RGB; each object jitters it slightly
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SIZES = {"small": (0.055, 0.075), "large": (0.11, 0.15)}  # radius as a fraction of the image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIONS = ("left of", "right of", "above", "below")
MAX_OBJECTS = 6

# Attribute ids in instances.json: colours first, then sizes, numbered from 1 like COCO categories.
ATTRIBUTES = tuple((name, "color") for name in COLORS) + tuple((name, "size") for name in SIZES)
_ATTRIBUTE_ID = {name: i + 1 for i, (name, _) in enumerate(ATTRIBUTES)}
_CATEGORY_ID = {name: i + 1 for i, name in enumerate(SHAPES)}


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: kind, colour, size and its pixel box (xyxy, inclusive-exclusive)."""

    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)

    def phrase(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"


@dataclass
class Scene:
    """A scene description: the objects in drawing order and everything needed to render it."""

    index: int
    image_size: int
    objects: list[SceneObject]
    background: str  # background style name
    split: str = "train"
    image_format: str = "jpg"  # "jpg" (quality 95, no chroma subsampling) or "png" (lossless)
    _geometry: list[dict] = field(default_factory=list, repr=False)  # per-object drawing parameters

    @property
    def file_name(self) -> str:
        return f"{self.index:06d}.{self.image_format}"


# --------------------------------------------------------------------------------------------------
# Layout


def _shape_polygon(shape: str, cx: float, cy: float, r: float, aspect: float) -> list[tuple[float, float]]:
    """Vertices of a shape centred at (cx, cy) with radius r (circle is handled by the caller)."""
    rx, ry = r * aspect, r
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        rx, ry = rx * 0.85, ry * 0.85
    elif shape == "diamond":
        pts = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.8), (-0.95, 0.8)]
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.arange(6) * math.pi / 3]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t),
               (-1, -t), (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(cx + x * rx, cy + y * ry) for x, y in pts]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _splitmix(seed: int, index: int) -> np.random.Generator:
    # Per-image generator: identical output whatever the number of worker processes.
    return np.random.default_rng([int(seed), int(index)])


def make_scene(seed: int, index: int, image_size: int = 256, val_fraction: float = 0.1,
               overlap_prob: float = 0.15, image_format: str = "jpg") -> Scene:
    """Lay out scene ``index`` of the world with ``seed`` (pure function of its arguments).

    Objects never leave the image. Boxes overlap only occasionally: a placement that overlaps an earlier
    box is accepted with probability ``overlap_prob`` and only up to IoU 0.3, so no object hides another.
    """
    rng = _splitmix(seed, index)
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[SceneObject] = []
    geometry: list[dict] = []
    boxes: list[tuple[float, float, float, float]] = []
    attempts = 0
    while len(objects) < n_objects and attempts < 200:
        attempts += 1
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        size = "small" if rng.random() < 0.5 else "large"
        lo, hi = SIZES[size]
        r = float(rng.uniform(lo, hi)) * image_size
        aspect = float(rng.uniform(0.9, 1.1))
        margin = r * 1.1 + 2
        cx = float(rng.uniform(margin, image_size - margin))
        cy = float(rng.uniform(margin, image_size - margin))
        if shape == "circle":
            box = (cx - r * aspect, cy - r, cx + r * aspect, cy + r)
            vertices = None
        else:
            vertices = _shape_polygon(shape, cx, cy, r, aspect)
            xs, ys = [p[0] for p in vertices], [p[1] for p in vertices]
            box = (min(xs), min(ys), max(xs), max(ys))
        box = tuple(round(v, 2) for v in box)
        overlaps = [_iou(box, b) for b in boxes]
        if any(o > 0 for o in overlaps):
            if max(overlaps) > 0.3 or rng.random() >= overlap_prob:
                continue
        jitter = rng.integers(-18, 19, size=3)
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter))
        objects.append(SceneObject(shape, color, size, box))
        geometry.append({"vertices": vertices, "rgb": rgb})
        boxes.append(box)
    background = ("noise", "gradient", "stripes", "checker", "blotches")[rng.integers(5)]
    split = "val" if rng.random() < val_fraction else "train"
    return Scene(index, image_size, objects, background, split, image_format, geometry)


# --------------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=4)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A muted, mid-luminance textured background (H, W, 3) float32, roughly in [0, 255]."""
    base = (rng.uniform(70, 185) + rng.uniform(-25, 25, size=3)).astype(np.float32)  # desaturated tint
    yy, xx = _unit_grid(size)
    if style == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (math.cos(angle) * xx + math.sin(angle) * yy)[..., None]
        return base + ramp * rng.uniform(-50, 50, size=3).astype(np.float32)
    if style == "stripes":
        period = rng.uniform(8, 32)
        angle = rng.uniform(0, math.pi)
        wave = np.sin((2 * math.pi * size / period) * (math.cos(angle) * xx + math.sin(angle) * yy))
        return base + wave[..., None] * np.float32(rng.uniform(8, 22))
    if style == "checker":
        cell = int(rng.integers(12, 40))
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2).astype(np.float32)
        return base + (board[..., None] - 0.5) * np.float32(rng.uniform(15, 35))
    if style == "blotches":
        coarse = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float32)
        return base + (smooth - 127.5) * np.float32(60 / 255)
    return np.broadcast_to(base, (size, size, 3))  # "noise": flat tint, noise added after drawing


def render_scene(scene: Scene, seed: int) -> Image.Image:
    """Draw a scene as an RGB PIL image (deterministic for a given seed and scene index).

    Shapes are drawn on the textured background, then per-pixel sensor-like noise covers everything.
    """
    rng = np.random.default_rng([int(seed), int(scene.index), 1])
    size = scene.image_size
    canvas = Image.fromarray(np.clip(_background(scene.background, size, rng), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj, geo in zip(scene.objects, scene._geometry):
        if geo["vertices"] is None:
            draw.ellipse(obj.box, fill=geo["rgb"])
        else:
            draw.polygon(geo["vertices"], fill=geo["rgb"])
    # Sensor-like noise: a random window of a fixed unit-Gaussian bank (cheaper than fresh draws per pixel).
    bank = _noise_bank(size)
    oy, ox = rng.integers(0, size, size=2)
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += bank[oy:oy + size, ox:ox + size] * np.float32(rng.uniform(3, 12))
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8))


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    return np.random.default_rng(size).standard_normal((2 * size, 2 * size, 1), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Language: captions and questions derived from the object list


def _count_phrase(n: int, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {noun}{'' if n == 1 else 's'}"


def _relation(a: SceneObject, b: SceneObject, margin: float) -> Optional[str]:
    """The dominant spatial relation of a to b, or None when it is not clear-cut."""
    dx = a.center[0] - b.center[0]
    dy = a.center[1] - b.center[1]
    if abs(dx) > margin and abs(dx) > 1.5 * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) > margin and abs(dy) > 1.5 * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def _region_name(obj: SceneObject, size: int) -> str:
    cx, cy = obj.center
    col = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else ""
    row = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else ""
    if not row and not col:
        return "in the center"
    if row and col:
        return f"in the {row} {col} corner"
    return f"on the {row or col}"


def _unique(objects: Sequence[SceneObject], key) -> dict:
    values = [key(o) for o in objects]
    return {v: o for v, o in zip(values, objects) if values.count(v) == 1}


def _pairs_with_relation(scene: Scene) -> list[tuple[SceneObject, str, SceneObject]]:
    """(a, relation, b) for pairs whose descriptions are unambiguous (unique size+colour+shape)."""
    margin = 0.08 * scene.image_size
    unique = _unique(scene.objects, lambda o: o.phrase())
    objs = list(unique.values())
    out = []
    for a in objs:
        for b in objs:
            if a is not b:
                rel = _relation(a, b, margin)
                if rel:
                    out.append((a, rel, b))
    return out


def scene_captions(scene: Scene, rng: np.random.Generator, min_captions: int = 3) -> list[str]:
    """At least ``min_captions`` varied captions: a listing, counts, a spatial relation, a location."""
    objs = scene.objects
    n = len(objs)
    listing = ", ".join(f"a {o.phrase()}" for o in objs[:-1])
    listing = f"{listing} and a {objs[-1].phrase()}" if n > 1 else f"a {objs[0].phrase()}"
    captions = [
        rng.choice([f"{listing}.", f"an image of {listing}.", f"{listing} on a {scene.background} background."])
        if n > 1 else rng.choice([f"a single {objs[0].phrase()}.", f"one {objs[0].phrase()} on its own."])
    ]
    # Counts by shape ("two circles and a star").
    by_shape: dict[str, int] = {}
    for o in objs:
        by_shape[o.shape] = by_shape.get(o.shape, 0) + 1
    parts = [_count_phrase(c, s) for s, c in by_shape.items()]
    counted = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    captions.append(rng.choice([f"there {'is' if n == 1 else 'are'} {counted}.",
                                f"{_count_phrase(n, 'shape')}: {counted}.",
                                f"a picture with {counted}."]))
    # Counts by colour ("three red shapes and one blue shape").
    by_color: dict[str, int] = {}
    for o in objs:
        by_color[o.color] = by_color.get(o.color, 0) + 1
    color_parts = [f"{NUMBER_WORDS[c]} {col} {'shape' if c == 1 else 'shapes'}" for col, c in by_color.items()]
    captions.append((" and ".join(color_parts) if len(color_parts) <= 2
                     else ", ".join(color_parts[:-1]) + " and " + color_parts[-1]) + ".")
    # A spatial relation.
    pairs = _pairs_with_relation(scene)
    if pairs:
        a, rel, b = pairs[rng.integers(len(pairs))]
        with_size = bool(rng.random() < 0.5)
        captions.append(rng.choice([f"a {a.phrase(with_size)} {rel} a {b.phrase(with_size)}.",
                                    f"the {a.phrase(with_size)} is {rel} the {b.phrase(with_size)}."]))
    # A location in the frame.
    o = objs[rng.integers(n)]
    captions.append(f"a {o.phrase()} {_region_name(o, scene.image_size)}.")
    return [str(c) for c in captions[: max(min_captions, len(captions))]]


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[dict]:
    """VQA questions with answers: colour, shape, count, existence (yes/no), size and spatial relation."""
    objs = scene.objects
    qs: list[dict] = []

    def add(question: str, answer, qtype: str) -> None:
        answer = str(answer)
        atype = "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"
        qs.append({"question": question, "answers": [answer], "question_type": qtype, "answer_type": atype})

    by_shape = _unique(objs, lambda o: o.shape)
    if by_shape:
        s = sorted(by_shape)[rng.integers(len(by_shape))]
        add(f"what color is the {s}?", by_shape[s].color, "color")
    by_color = _unique(objs, lambda o: o.color)
    if by_color:
        c = sorted(by_color)[rng.integers(len(by_color))]
        add(f"what shape is the {c} object?", by_color[c].shape, "shape")
        add(f"what size is the {c} {by_color[c].shape}?", by_color[c].size, "size")
    add("how many objects are there?", len(objs), "count")
    shape = SHAPES[rng.integers(len(SHAPES))]
    add(f"how many {shape}s are there?", sum(o.shape == shape for o in objs), "count")
    color = list(COLORS)[rng.integers(len(COLORS))]
    add(f"how many {color} shapes are there?", sum(o.color == color for o in objs), "count")
    # Existence, balanced: half the time ask about a present object, else about a random one.
    if rng.random() < 0.5:
        o = objs[rng.integers(len(objs))]
        c, s = o.color, o.shape
    else:
        c, s = list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
    present = any(o.color == c and o.shape == s for o in objs)
    add(f"is there a {c} {s}?", "yes" if present else "no", "exists")
    pairs = _pairs_with_relation(scene)
    if pairs:
        a, rel, b = pairs[rng.integers(len(pairs))]
        if rng.random() < 0.5:
            add(f"is the {a.phrase()} {rel} the {b.phrase()}?", "yes", "spatial")
        else:
            wrong = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
            add(f"is the {a.phrase()} {wrong} the {b.phrase()}?", "no", "spatial")
        if _only_object_in_relation(scene, a, rel, b):
            add(f"what shape is {rel} the {b.phrase()}?", a.shape, "spatial")
    return qs


def _only_object_in_relation(scene: Scene, a: SceneObject, rel: str, b: SceneObject) -> bool:
    """True when ``a`` is the only object in the scene standing in ``rel`` to ``b``."""
    margin = 0.08 * scene.image_size
    return [o for o in scene.objects if o is not b and _relation(o, b, margin) == rel] == [a]


# --------------------------------------------------------------------------------------------------
# Writing a world to disk


def _render_one(index: int, seed: int, image_size: int, val_fraction: float, image_format: str,
                image_dir: str) -> dict:
    scene = make_scene(seed, index, image_size, val_fraction, image_format=image_format)
    image = render_scene(scene, seed)
    path = os.path.join(image_dir, scene.file_name)
    if image_format == "png":
        image.save(path, compress_level=1)
    else:
        image.save(path, quality=95, subsampling=0)
    text_rng = np.random.default_rng([int(seed), int(index), 2])
    return {
        "scene": scene,
        "captions": scene_captions(scene, text_rng),
        "questions": scene_questions(scene, text_rng),
    }


def iter_world(num_images: int, image_dir: str, seed: int = 0, image_size: int = 256, val_fraction: float = 0.1,
               image_format: str = "jpg", workers: int = 1) -> Iterator[dict]:
    """Render scenes ``0..num_images-1`` into ``image_dir``, yielding scene, captions and questions."""
    job = partial(_render_one, seed=seed, image_size=image_size, val_fraction=val_fraction,
                  image_format=image_format, image_dir=image_dir)
    if workers <= 1:
        yield from map(job, range(num_images))
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(job, range(num_images), chunksize=16)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def generate_world(out_dir: str | os.PathLike, num_images: int, seed: int = 0, image_size: int = 256,
                   val_fraction: float = 0.1, image_format: str = "jpg", workers: int = 1,
                   progress: bool = False) -> dict:
    """Write a scene world (images + instances.json + captions.json + vqa.json) to ``out_dir``.

    Args:
        out_dir: destination folder (created).
        num_images: number of images.
        seed: world seed; the same seed and size give byte-identical files.
        image_size: side of the square images in pixels.
        val_fraction: fraction of images whose ``split`` is ``"val"`` (the rest are ``"train"``).
        image_format: ``"jpg"`` (default; quality 95 without chroma subsampling) or ``"png"``.
        workers: processes used for rendering.
        progress: show a progress bar.

    Returns:
        Counts: ``{"images", "objects", "captions", "questions"}``.

    Example:
        >>> counts = generate_world("/tmp/world", num_images=8, seed=1)
        >>> counts["images"]
        8
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 pixels, got {image_size}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations, captions, questions = [], [], [], []
    items = iter_world(num_images, str(out / "images"), seed, image_size, val_fraction, image_format, workers)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=num_images, unit="img", desc="generate-scenes")
    for item in items:
        scene: Scene = item["scene"]
        image_id = scene.index + 1
        images.append({"id": image_id, "file_name": scene.file_name, "width": image_size, "height": image_size,
                       "split": scene.split})
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": _CATEGORY_ID[obj.shape],
                "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)], "area": round((x2 - x1) * (y2 - y1), 2),
                "iscrowd": 0, "attribute_ids": [_ATTRIBUTE_ID[obj.color], _ATTRIBUTE_ID[obj.size]],
            })
        captions.append({"image": scene.file_name, "captions": item["captions"], "split": scene.split,
                         "image_id": image_id})
        for q in item["questions"]:
            questions.append({"image": scene.file_name, "image_id": image_id, "split": scene.split, **q})
    instances = {
        "info": {"description": "vlptm generated scene world", "seed": seed, "image_size": image_size},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": _CATEGORY_ID[s], "name": s, "supercategory": "shape"} for s in SHAPES],
        "attribute_categories": [{"id": _ATTRIBUTE_ID[n], "name": n, "type": t} for n, t in ATTRIBUTES],
    }
    _atomic_json(out / "instances.json", instances)
    _atomic_json(out / "captions.json", captions)
    _atomic_json(out / "vqa.json", questions)
    return {"images": len(images), "objects": len(annotations),
            "captions": sum(len(c["captions"]) for c in captions), "questions": len(questions)}
