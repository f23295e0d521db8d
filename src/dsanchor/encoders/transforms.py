"""Image preprocessing in PIL + torch (no torchvision).

Images are resized to a square of the encoder's input size without cropping, so every box of the
original image stays inside the network input and maps to it by a plain scale. The aspect ratio is
not kept; region boxes are stored normalised by the original width and height, which is the same
frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dsanchor.errors import DataError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "EFFNET_LITE_MEAN",
    "EFFNET_LITE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "load_rgb",
    "pil_to_tensor",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# EfficientNet-Lite weights come from the TF checkpoints, trained on (pixel - 127) / 128
EFFNET_LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
EFFNET_LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB, with a :class:`DataError` naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(path, "image file not found; check the dataset root and image paths") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"cannot read image ({exc.__class__.__name__}: {exc})") from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


@dataclass(frozen=True)
class ImageTransform:
    """Resize to ``size`` x ``size`` and normalise per channel; picklable for DataLoader workers."""

    size: int  # network input side in pixels
    mean: tuple[float, float, float]  # per-channel mean of [0, 1] pixels
    std: tuple[float, float, float]  # per-channel std of [0, 1] pixels
    resample: str = "bicubic"  # "bicubic" or "bilinear"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image of any size -> (3, size, size) normalised float32."""
        resized = image.convert("RGB").resize((self.size, self.size), _RESAMPLE[self.resample])
        x = pil_to_tensor(resized)  # (3, S, S)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std
