"""Typed containers that leave the feature store (DESIGN.md "Feature store").

Later stages read only these, never images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

__all__ = ["GRANULARITY_CODES", "ImageFeatures", "TextFeatures", "ObjectVocabulary", "exact_relevance",
           "has_scene_graphs"]

# integer code of each caption granularity in the store; -1 is unknown
GRANULARITY_CODES: dict[str, int] = {"scene": 0, "object": 1, "relation": 2}


@dataclass
class ImageFeatures:
    """Encoder outputs for N images with up to R regions each."""

    image_ids: torch.Tensor  # (N,) int64
    coarse: torch.Tensor  # (N, Dc) float32, scene-level vector (global pool of an early stage)
    regions: torch.Tensor  # (N, R, Dr) float32, RoI-aligned region vectors, zero where masked
    boxes: torch.Tensor  # (N, R, 4) float32, x, y, w, h normalised to [0, 1] by image size
    mask: torch.Tensor  # (N, R) bool, True for a real region
    objects: list[list[str]]  # per image: names of its annotated objects (ground truth), may be empty
    splits: list[str | None]  # per image: "train", "val", "test" or None
    scenes: list[dict[str, Any] | None] | None = None  # per image: its CLEVR scene graph (synth, CLEVR), or None

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


@dataclass
class TextFeatures:
    """Encoder outputs for M captions."""

    embeddings: torch.Tensor  # (M, Dt) float32
    image_ids: torch.Tensor  # (M,) int64, the image each caption describes
    granularity: torch.Tensor  # (M,) int64, GRANULARITY_CODES or -1
    captions: list[str]  # (M,) the caption texts
    facts: list[dict[str, Any] | None] | None = None  # (M,) the fact each caption states (dsanchor.data.facts)

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


def has_scene_graphs(images: ImageFeatures, texts: TextFeatures) -> bool:
    """Whether every image has its scene graph and every caption its fact: exact relevance is defined."""
    return (images.scenes is not None and texts.facts is not None and len(images) > 0 and len(texts) > 0
            and all(s is not None for s in images.scenes) and all(f is not None for f in texts.facts))


def exact_relevance(texts: TextFeatures, images: ImageFeatures) -> torch.Tensor | None:
    """(T, N) bool: caption t is true of image n (its fact holds for the image's scene graph), or None when the
    data has no scene graphs (then only the paired protocol exists). A caption is always relevant to its own
    image, so the exact positives contain the paired ones."""
    if not has_scene_graphs(images, texts):
        return None
    from dsanchor.data.facts import holds_matrix

    rel = torch.from_numpy(holds_matrix(texts.facts, images.scenes))  # (T, N)
    own = texts.image_ids[:, None] == images.image_ids[None, :]  # (T, N)
    return rel | own


class ObjectVocabulary(NamedTuple):
    """Every distinct object name of a dataset with its text-encoder embedding (from the feature store)."""

    names: list[str]  # (V,)
    embeddings: torch.Tensor  # (V, Dt)

    def index(self) -> dict[str, int]:
        """Name -> row."""
        return {n: i for i, n in enumerate(self.names)}
