"""``vlptm pretrain --config RECIPE.yaml [--resume] [--key=value ...]``: pretrain an encoder.

Works the same under ``torchrun --nproc_per_node=N -m vlptm.cli pretrain ...`` (DDP; rank 0 logs and
checkpoints). Overrides use the recipe's dotted keys: ``--optim.lr=1e-4 --data.batch_size=64``.
"""
from __future__ import annotations

import argparse
import logging

from vlptm.commands import accept_key_value_overrides

NAME = "pretrain"
HELP = "pretrain an encoder with MLM/MRM/ITM/ITC from a YAML recipe (--key=value overrides, --resume)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/pretrain/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN/checkpoint (weights, optimiser, schedule, RNG, data position)")
    parser.epilog = "Any recipe key can be overridden as --section.key=value, e.g. --optim.max_steps=100."
    accept_key_value_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from vlptm.config import ConfigError, load_config
    from vlptm.train.config import PretrainConfig
    from vlptm.train.pretrain import pretrain

    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except (ConfigError, FileNotFoundError, KeyError, TypeError) as err:
        log.error("%s", err)
        return 2
    run_dir = pretrain(cfg, resume=args.resume)
    log.info("done: %s (latest checkpoint: %s/checkpoint)", run_dir, run_dir)
    return 0
