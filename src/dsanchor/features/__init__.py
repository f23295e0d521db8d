"""Feature store: sharded safetensors + JSON manifest, and the extraction that fills it.

Later stages read only :class:`FeatureStore`, never images (DESIGN.md "Feature store").
"""

from __future__ import annotations

from dsanchor.features.extract import ExtractConfig, ExtractResult, TextCache, extract_features, init_distributed
from dsanchor.features.store import FeatureStore, ShardData, StoreWriter
from dsanchor.features.types import GRANULARITY_CODES, ImageFeatures, TextFeatures

__all__ = [
    "GRANULARITY_CODES",
    "ExtractConfig",
    "ExtractResult",
    "FeatureStore",
    "ImageFeatures",
    "ShardData",
    "StoreWriter",
    "TextCache",
    "TextFeatures",
    "extract_features",
    "init_distributed",
]
