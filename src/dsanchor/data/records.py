"""The one record type every loader returns (DESIGN.md "Records")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["GRANULARITIES", "Caption", "ObjectAnnotation", "Sample"]

GRANULARITIES: tuple[str, ...] = ("scene", "object", "relation")


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object."""

    name: str  # canonical name, e.g. "red cube" (synth) or "dog" (COCO)
    box: tuple[float, float, float, float] | None  # x, y, w, h in pixels; None: known from captions, not located
    attributes: tuple[str, ...] = ()  # e.g. ("large", "metal")


@dataclass(frozen=True)
class Caption:
    """One caption of an image."""

    text: str
    granularity: str | None = None  # "scene", "object", "relation" or None when unknown
    # the structured fact the caption states (dsanchor.data.facts), where the data has scene graphs
    fact: dict[str, Any] | None = field(default=None, compare=False)


@dataclass
class Sample:
    """One image with its captions and objects."""

    image_id: int
    image_path: str  # relative to the dataset root
    width: int
    height: int
    captions: list[Caption] = field(default_factory=list)
    objects: list[ObjectAnnotation] = field(default_factory=list)
    split: str | None = None  # "train", "val", "test" or None when the dataset has no split
    scene: dict[str, Any] | None = None  # the CLEVR scene graph, where the data has one (synth, CLEVR)
