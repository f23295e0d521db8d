"""Encoders: images -> coarse + region vectors, texts -> vectors (DESIGN.md "Encoders").

``create_encoder(name, **config)`` builds a backend by name; ``list_encoders()`` names them. Backend
modules import their heavy libraries (transformers, sentence-transformers) only when a backend is
built, so importing this package is cheap.
"""

from __future__ import annotations

import functools
from typing import Any

from dsanchor.config import config_from_dict
from dsanchor.encoders.base import EncoderBackend, EncoderConfig, EncoderDims, ImageEncoding, pool_coarse
from dsanchor.encoders.clip import CLIPEncoder, CLIPEncoderConfig, save_tiny_clip
from dsanchor.encoders.detectors import RegionDetector, check_detector, nms, save_tiny_detr, save_tiny_owlvit
from dsanchor.encoders.effnet_minilm import EffnetMiniLMConfig, EffnetMiniLMEncoder
from dsanchor.encoders.regions import RegionConfig, propose_boxes, roi_align, roi_vectors, sample_boxes
from dsanchor.encoders.transforms import ImageTransform, load_rgb

__all__ = [
    "CLIPEncoder",
    "CLIPEncoderConfig",
    "DEFAULT_ENCODER",
    "EffnetMiniLMConfig",
    "EffnetMiniLMEncoder",
    "EncoderBackend",
    "EncoderConfig",
    "EncoderDims",
    "ImageEncoding",
    "ImageTransform",
    "RegionConfig",
    "RegionDetector",
    "check_detector",
    "create_encoder",
    "encoder_config_class",
    "encoder_from_spec",
    "list_encoders",
    "load_rgb",
    "nms",
    "pool_coarse",
    "propose_boxes",
    "roi_align",
    "roi_vectors",
    "sample_boxes",
    "save_tiny_clip",
    "save_tiny_detr",
    "save_tiny_owlvit",
]

DEFAULT_ENCODER = "effnet-minilm"

_ENCODERS: dict[str, type[EncoderBackend]] = {
    EffnetMiniLMEncoder.name: EffnetMiniLMEncoder,
    CLIPEncoder.name: CLIPEncoder,
}


def list_encoders() -> list[str]:
    """Names of the registered encoder backends, default first."""
    return list(_ENCODERS)


def _backend(name: str) -> type[EncoderBackend]:
    if name not in _ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid encoders are: {', '.join(_ENCODERS)}")
    return _ENCODERS[name]


def encoder_config_class(name: str) -> type[EncoderConfig]:
    """The config dataclass of backend ``name``."""
    return _backend(name).config_class


def encoder_from_spec(spec: dict[str, Any], where: str = "encoder spec") -> EncoderBackend:
    """The backend a feature store's manifest or a pipeline's ``pipeline.json`` records (``{"name", "config"}``),
    built once per process for each distinct spec."""
    import json

    return _cached_encoder(json.dumps({"name": spec["name"], "config": spec.get("config", {})}, sort_keys=True),
                           where)


@functools.cache
def _cached_encoder(spec_json: str, where: str) -> EncoderBackend:
    import json

    spec = json.loads(spec_json)
    return create_encoder(spec["name"], config_from_dict(encoder_config_class(spec["name"]), spec["config"],
                                                         where=where))


def create_encoder(name: str = DEFAULT_ENCODER, config: EncoderConfig | None = None,
                   **overrides: Any) -> EncoderBackend:
    """Build encoder backend ``name`` from its config, or from keyword overrides of its defaults.

    Example:
        ``create_encoder("clip", model_path="weights/clip-vit-b32", coarse_layer=4)``
    """
    cls = _backend(name)
    if config is None:
        config = config_from_dict(cls.config_class, overrides, where=f"encoder {name}")
    elif overrides:
        raise ValueError("pass either a config or keyword overrides, not both")
    return cls(config)
