"""The ``vlptm`` command line: one subcommand per module in :mod:`vlptm.commands`.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
Command modules import heavy dependencies (torch, faiss) inside ``run`` so ``vlptm --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

# Only implemented commands are listed here; each issue adds its own module.
_COMMAND_MODULES = (
    "vlptm.commands.generate_scenes",
    "vlptm.commands.inspect_data",
    "vlptm.commands.demo",
    "vlptm.commands.check_store",
    "vlptm.commands.convert_features",
    "vlptm.commands.extract",
    "vlptm.commands.train_detector",
    "vlptm.commands.pretrain",
    "vlptm.commands.plot_log",
    "vlptm.commands.index",
    "vlptm.commands.search",
    "vlptm.commands.eval_retrieval",
    "vlptm.commands.serve",
    "vlptm.commands.finetune_vqa",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlptm", description="Vision-language pretraining toolkit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
