"""``vlptm finetune-vqa --config RECIPE.yaml [--key=value ...]``: fine-tune and evaluate a VQA model.

Overrides use the recipe's dotted keys: ``--init=runs/pretrain --optim.epochs=5 --answers.top_k=1000``.
Writes ``OUT/model`` (load it with ``vlptm.tasks.VQAFineTuner.load``), ``OUT/metrics.json``,
``OUT/history.jsonl`` and ``OUT/config.yaml``.
"""
from __future__ import annotations

import argparse
import json
import logging

from vlptm.commands import accept_key_value_overrides

NAME = "finetune-vqa"
HELP = "fine-tune a VQA model from a pretrained checkpoint or variant (YAML recipe, --key=value overrides)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/vqa/)")
    parser.epilog = "Any recipe key can be overridden as --section.key=value, e.g. --optim.epochs=3."
    accept_key_value_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from vlptm.config import ConfigError, load_config
    from vlptm.tasks.finetune import FinetuneVQAConfig, finetune_vqa

    try:
        cfg = load_config(FinetuneVQAConfig, args.config, args.overrides)
    except (ConfigError, FileNotFoundError, KeyError, TypeError) as err:
        log.error("%s", err)
        return 2
    try:
        metrics = finetune_vqa(cfg)
    except (ValueError, FileNotFoundError, KeyError) as err:
        log.error("finetune-vqa: %s", err)
        return 2
    summary = {name: metrics[name]["accuracy"] for name in ("val", "test") if name in metrics}
    summary.update({k: v for k, v in metrics.items() if k.endswith("_baseline")})
    print(json.dumps({"out": cfg.out, **summary}))
    return 0
