"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

# The project's development data lives next to the repository (``../shared/data``); a user's clone lacks it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (coco128, coco_mini_train, flickr8k_train, daquar_train); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DATA}")
    return SHARED_DATA
