"""Region-feature storage: the memory-mapped :class:`FeatureStore`, its appending writer, the peers'
format converters (:mod:`vlptm.features.convert`) and the extraction pipeline (:mod:`vlptm.features.extract`)."""
from vlptm.features.store import (
    FeatureStore,
    FeatureStoreWriter,
    InvalidRegionsError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    read_errors,
    read_manifest,
)

__all__ = [
    "FeatureStore",
    "FeatureStoreWriter",
    "InvalidRegionsError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "read_errors",
    "read_manifest",
]
