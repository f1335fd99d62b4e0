"""``vlptm train-detector``: train the Faster R-CNN region extractor on COCO-format data.

Every field of :class:`vlptm.detection.config.DetectorTrainConfig` is an option (``--lr=3e-4``,
``--batch_size=8``), and so is every field of the extractor config by its dotted name
(``--rpn.post_nms_top_n_train=500``, ``--train_min_sizes=[224,256,288]``); values are type-checked.

Example::

    vlptm generate-scenes --out runs/scenes --num-images 3000
    vlptm train-detector --data runs/scenes --val_data runs/scenes-heldout --out runs/detector-scenes \\
        --variant scenes-effnet-lite0 --minutes 15
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Iterator

NAME = "train-detector"
HELP = "train the region extractor (Faster R-CNN) on COCO-format detection data and report COCO mAP"

# Extractor fields that come from the training data, not from the command line.
_FROM_DATA = ("class_names", "category_ids", "attribute_names", "attribute_types")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from vlptm.detection.config import DetectorTrainConfig, ExtractorConfig

    train = parser.add_argument_group("training (DetectorTrainConfig)")
    for field in dataclasses.fields(DetectorTrainConfig):
        names = [f"--{field.name}"]
        if "_" in field.name:
            names.append(f"--{field.name.replace('_', '-')}")
        train.add_argument(*names, dest=f"train.{field.name}", default=None, metavar="VALUE",
                           help=f"default: {field.default!r}")
    model = parser.add_argument_group("extractor config overrides (default: the --variant's)")
    for key in _leaf_keys(ExtractorConfig):
        if key not in _FROM_DATA:
            model.add_argument(f"--{key}", dest=f"model.{key}", default=None, metavar="VALUE")


def run(args: argparse.Namespace) -> int:
    from vlptm.detection.config import DetectorTrainConfig, apply_overrides
    from vlptm.detection.train import train_detector

    values = vars(args)
    train_overrides = {k[len("train."):]: v for k, v in values.items() if k.startswith("train.") and v is not None}
    model_overrides = {k[len("model."):]: v for k, v in values.items() if k.startswith("model.") and v is not None}
    config = apply_overrides(DetectorTrainConfig(), train_overrides)
    result = train_detector(config, model_overrides)
    print(json.dumps(result, indent=2))
    return 0


def _leaf_keys(cls: type, prefix: str = "") -> Iterator[str]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaf_keys(tp, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}"
