"""Subcommands of the ``vlptm`` CLI, one module each (see :mod:`vlptm.cli`)."""
from __future__ import annotations

import argparse


def accept_key_value_overrides(parser: argparse.ArgumentParser) -> None:
    """Let ``--dotted.key=value`` arguments through argparse into ``args.overrides`` (recipe overrides)."""
    parser.set_defaults(overrides=[])
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, rest = parse_known(args, namespace)
        overrides = [a for a in rest if a.startswith("--") and "=" in a]
        namespace.overrides = list(getattr(namespace, "overrides", [])) + overrides
        return namespace, [a for a in rest if a not in overrides]

    parser.parse_known_args = parse_known_args
