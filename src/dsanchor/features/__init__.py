"""Feature store: sharded safetensors + JSON manifest, and the extraction that fills it.

Later stages read only :class:`FeatureStore`, never images (DESIGN.md "Feature store"). The names load their
module on first use (:mod:`dsanchor.lazy`), so reading a store never imports the extraction (encoders, scipy).
"""

from dsanchor.lazy import lazy_exports

_WHERE = {
    "GRANULARITY_CODES": "dsanchor.features.types",
    "ImageFeatures": "dsanchor.features.types",
    "TextFeatures": "dsanchor.features.types",
    "FeatureStore": "dsanchor.features.store",
    "ShardData": "dsanchor.features.store",
    "StoreWriter": "dsanchor.features.store",
    "ExtractConfig": "dsanchor.features.extract",
    "ExtractResult": "dsanchor.features.extract",
    "TextCache": "dsanchor.features.extract",
    "extract_features": "dsanchor.features.extract",
    "init_distributed": "dsanchor.distributed",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
