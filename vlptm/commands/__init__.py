"""Subcommands of the ``vlptm`` CLI, one module each (see :mod:`vlptm.cli`)."""
