"""Typed containers that leave the feature store (DESIGN.md "Feature store").

Later stages read only these, never images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["GRANULARITY_CODES", "ImageFeatures", "TextFeatures", "ObjectVocabulary"]

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

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


@dataclass
class TextFeatures:
    """Encoder outputs for M captions."""

    embeddings: torch.Tensor  # (M, Dt) float32
    image_ids: torch.Tensor  # (M,) int64, the image each caption describes
    granularity: torch.Tensor  # (M,) int64, GRANULARITY_CODES or -1
    captions: list[str]  # (M,) the caption texts

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


class ObjectVocabulary(NamedTuple):
    """Every distinct object name of a dataset with its text-encoder embedding (from the feature store)."""

    names: list[str]  # (V,)
    embeddings: torch.Tensor  # (V, Dt)

    def index(self) -> dict[str, int]:
        """Name -> row."""
        return {n: i for i, n in enumerate(self.names)}
