"""Convert a torchvision Faster R-CNN checkpoint into a vlptm region extractor folder.

Usage::

    python detectors/convert_torchvision.py fasterrcnn_resnet50_fpn_coco.pth runs/extractor-tv-r50 \
        [--arch resnet50] [--min-size 800] [--max-size 1333] [--fixed-boxes 36]

The input is a state dict saved with ``torch.save(model.state_dict(), path)`` (e.g. the file torchvision
downloads for ``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``) or a reference-script checkpoint
``{"model": state_dict, ...}``. The output folder (``config.json`` + ``model.safetensors``) loads with
``vlptm.detection.build_extractor(OUT)`` or ``vlptm extract --extractor OUT``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="torchvision Faster R-CNN state dict (.pth)")
    parser.add_argument("out", help="output extractor folder")
    parser.add_argument("--arch", default="resnet50", help="ResNet of the backbone (default resnet50)")
    parser.add_argument("--min-size", type=int, default=800, help="inference short side (torchvision: 800)")
    parser.add_argument("--max-size", type=int, default=1333, help="inference long side cap (torchvision: 1333)")
    parser.add_argument("--fixed-boxes", type=int, default=None, help="keep exactly K regions per image")
    args = parser.parse_args(argv)

    import torch

    from vlptm.detection import import_torchvision_checkpoint, torchvision_extractor_config

    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
    config = torchvision_extractor_config(args.arch, num_classes, min_size=args.min_size, max_size=args.max_size,
                                          **{"selection.fixed_boxes": args.fixed_boxes})
    extractor = import_torchvision_checkpoint(state, arch=args.arch, config=config)
    extractor.save(args.out)
    print(json.dumps({"out": args.out, "classes": num_classes, "feature_dim": extractor.feature_dim,
                      "config_hash": extractor.config_hash()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
