"""The encoder-backend extension point (DESIGN.md "Encoders").

A backend maps a batch of images plus their boxes to one coarse (scene-level) vector per image and
one vector per region, and a batch of texts to vectors. Each image goes through the backbone once:
the coarse vector pools an early stage, the region vectors are RoI-aligned from the final map.

A new backend subclasses :class:`EncoderBackend`, gives it a config dataclass derived from
:class:`EncoderConfig`, and is added to the registry in :mod:`dsanchor.encoders`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from dsanchor.config import config_to_dict
from dsanchor.encoders.regions import normalize_boxes, pad_boxes
from dsanchor.encoders.transforms import ImageTransform

__all__ = [
    "COARSE_POOLS", "EncoderBackend", "EncoderConfig", "EncoderDims", "ImageEncoding", "coarse_multiplier",
    "pool_coarse",
]


@dataclass
class EncoderConfig:
    """Fields every backend shares; each backend's config adds its own."""

    roi_samples: int = field(default=4, metadata={"help": "bilinear samples per box side in RoI-align"})
    text_batch_size: int = field(default=256, metadata={"help": "texts per forward pass of the text encoder"})
    device: str = field(default="cpu", metadata={"help": "torch device, e.g. cpu or cuda"})


@dataclass(frozen=True)
class EncoderDims:
    """Output widths of a backend."""

    coarse: int  # Dc
    region: int  # Dr
    text: int  # Dt


class ImageEncoding(NamedTuple):
    """Encoder outputs for a batch of B images with R region slots."""

    coarse: torch.Tensor  # (B, Dc) float32
    regions: torch.Tensor  # (B, R, Dr) float32, zero where masked
    boxes: torch.Tensor  # (B, R, 4) float32, xywh normalised by the image size
    mask: torch.Tensor  # (B, R) bool, True for a real region


COARSE_POOLS: tuple[str, ...] = ("avg", "grid2", "avg+grid2")


def pool_coarse(fmap: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool a feature map into the coarse vector.

    ``avg`` is the global average; ``grid2`` the averages of the 2 x 2 quadrants (top-left, top-right,
    bottom-left, bottom-right), which keeps the coarse layout; ``avg+grid2`` both, global first.

    Args:
        fmap: (B, C, H, W) feature map.
        mode: one of :data:`COARSE_POOLS`.

    Returns:
        (B, C), (B, 4C) or (B, 5C).
    """
    if mode not in COARSE_POOLS:
        raise ValueError(f"coarse pool must be one of {list(COARSE_POOLS)}, got {mode!r}")
    parts = []
    if mode in ("avg", "avg+grid2"):
        parts.append(fmap.mean(dim=(2, 3)))  # (B, C)
    if mode in ("grid2", "avg+grid2"):
        quads = F.adaptive_avg_pool2d(fmap, 2)  # (B, C, 2, 2)
        parts.append(quads.flatten(2).transpose(1, 2).flatten(1))  # (B, 4C), cell-major
    return torch.cat(parts, dim=1)


def coarse_multiplier(mode: str) -> int:
    """How many C-wide blocks :func:`pool_coarse` returns for ``mode``."""
    return {"avg": 1, "grid2": 4, "avg+grid2": 5}[mode]


class EncoderBackend(ABC):
    """Base class of an encoder backend; the only abstract class of :mod:`dsanchor.encoders`."""

    name: ClassVar[str]  # registry name, e.g. "effnet-minilm"
    config_class: ClassVar[type[EncoderConfig]]

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.device = torch.device(config.device)

    @property
    @abstractmethod
    def dims(self) -> EncoderDims:
        """Widths of the coarse, region and text vectors."""

    @property
    @abstractmethod
    def transform(self) -> ImageTransform:
        """The picklable preprocessing that turns a PIL image into the network input."""

    @abstractmethod
    def encode_pixels(self, pixels: torch.Tensor, boxes: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode preprocessed images (one backbone pass).

        Args:
            pixels: (B, 3, S, S) output of :attr:`transform`, stacked.
            boxes: (B, R, 4) xywh normalised to [0, 1] of each original image.
            mask: (B, R) bool, True for a real box.

        Returns:
            coarse (B, Dc) and regions (B, R, Dr), zero where masked; float32 on the CPU.
        """

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode texts. Returns (M, Dt) float32 on the CPU, L2-normalised."""

    def encode_images(self, images: Sequence[Image.Image], boxes: Sequence[torch.Tensor],
                      num_regions: int | None = None) -> ImageEncoding:
        """Encode PIL images with their pixel boxes.

        Args:
            images: B images of any size.
            boxes: per image an (n_i, 4) tensor of xywh boxes in that image's pixels.
            num_regions: region slots R; defaults to the largest n_i (at least 1). Extra boxes are dropped.

        Returns:
            The coarse vectors, region vectors, normalised padded boxes and mask.
        """
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box tensors")
        R = num_regions or max([1] + [int(b.shape[0]) for b in boxes])
        pixels = torch.stack([self.transform(im) for im in images])  # (B, 3, S, S)
        padded = [pad_boxes(normalize_boxes(b.reshape(-1, 4), *im.size), R)
                  for im, b in zip(images, boxes, strict=True)]
        box_t = torch.stack([p[0] for p in padded])  # (B, R, 4)
        mask = torch.stack([p[1] for p in padded])  # (B, R)
        coarse, regions = self.encode_pixels(pixels, box_t, mask)
        return ImageEncoding(coarse, regions, box_t, mask)

    def describe(self) -> dict[str, Any]:
        """JSON-ready name, config and dims, as recorded in a feature store's manifest."""
        d = self.dims
        return {"name": self.name, "config": config_to_dict(self.config),
                "dims": {"coarse": d.coarse, "region": d.region, "text": d.text}}
