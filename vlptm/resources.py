"""Where the YAML recipes are: the top-level ``detectors/`` and ``configs/`` folders.

A source checkout (or an editable install) reads them from the repository, so edits take effect at once;
an installed wheel reads the copies ``setup.py`` bundled into ``vlptm/_bundled/``.

Example:
    >>> (resource_dir("detectors") / "grid-effnet-lite0.yaml").is_file()
    True
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
RESOURCE_NAMES = ("detectors", "configs")


def resource_dir(name: str) -> Path:
    """The ``detectors`` or ``configs`` folder: the repository's when present, else the bundled copy.

    Raises:
        ValueError: ``name`` is not one of :data:`RESOURCE_NAMES`.
    """
    if name not in RESOURCE_NAMES:
        raise ValueError(f"unknown resource folder {name!r}; choose from {RESOURCE_NAMES}")
    checkout = _PACKAGE.parent / name
    if checkout.is_dir():
        return checkout
    return _PACKAGE / "_bundled" / name
