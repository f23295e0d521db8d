"""The object-detection module: which regions of an image get a region vector, and RoI-align.

Boxes come from the dataset's object annotations where an image has them. An image without boxes
gets the boxes of a transformers object detector when one is configured (``RegionConfig.detector``,
run by :class:`dsanchor.encoders.detectors.RegionDetector`), else a class-agnostic fallback: the
connected components of the pixels that differ from a uniform background (CLEVR-like renders),
followed by the cells of a multi-scale grid.

Boxes are ``x, y, w, h``: in pixels on the way in, normalised to [0, 1] by the image size in the
store and in :func:`roi_align`.

RoI-align follows He et al., "Mask R-CNN" (2017) with the half-pixel correction (``aligned=True``) of
Detectron2; with a fixed ``sampling_ratio`` it matches ``torchvision.ops.roi_align``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from dsanchor.data.records import ObjectAnnotation

__all__ = [
    "RegionConfig",
    "annotated_boxes",
    "annotation_boxes",
    "component_boxes",
    "grid_boxes",
    "normalize_boxes",
    "pad_boxes",
    "propose_boxes",
    "roi_align",
    "roi_vectors",
    "sample_boxes",
]


@dataclass
class RegionConfig:
    """Which boxes an image gets: annotations first, else a local detector's (if set), else class-agnostic proposals."""

    max_regions: int = field(default=10, metadata={"help": "regions per image R; padded and masked; "
                                                           "keeps the R largest annotated boxes"})
    grid_scales: tuple[int, ...] = field(default=(1, 2, 3), metadata={
        "help": "fallback grid: an s x s grid of cells for each s, in this order"})
    components: bool = field(default=True, metadata={
        "help": "fallback: connected components against a uniform background before the grid"})
    background_tolerance: float = field(default=0.12, metadata={
        "help": "max per-channel difference (0-1) from the background colour that is still background"})
    background_min_fraction: float = field(default=0.6, metadata={
        "help": "share of border pixels near their median colour for the background to count as uniform"})
    min_component_area: float = field(default=0.002, metadata={
        "help": "smallest component kept, as a fraction of the image area"})
    max_components: int = field(default=0, metadata={
        "help": "fallback: at most this many components (largest first) before the grid; 0: no limit"})
    proposal_size: int = field(default=128, metadata={
        "help": "longest side of the downsampled copy that components are found on"})
    annotations: bool = field(default=True, metadata={
        "help": "use annotated boxes where an image has them; off: every image gets what images without boxes "
                "get, the detector's boxes or the fallback (e.g. to train on synth the way real CLEVR renders "
                "are seen)"})
    detector: str = field(default="", metadata={
        "help": "local transformers object detector (DETR family or OWL-ViT/OWLv2, a save_pretrained folder) "
                "for images without annotated boxes; empty: none, they get the fallback"})
    detector_threshold: float = field(default=0.3, metadata={
        "help": "detector score threshold in [0, 1]; an image with no box above it gets the fallback "
                "(OWL-ViT scores run lower than DETR's: try 0.1)"})
    detector_iou: float = field(default=0.5, metadata={
        "help": "non-maximum suppression: a box overlapping a higher-scored one by more IoU than this is dropped"})
    detector_queries: tuple[str, ...] = field(default=("an object", "a person", "an animal", "a vehicle"),
                                              metadata={"help": "OWL-ViT/OWLv2 text queries (open vocabulary), "
                                                                "e.g. 'a cube' 'a sphere' 'a cylinder' for CLEVR"})
    detector_batch_size: int = field(default=8, metadata={
        "help": "images per detector forward pass (in extraction, at most the images of one batch)"})

    def __post_init__(self) -> None:
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.max_components < 0:
            raise ValueError(f"max_components must be >= 0, got {self.max_components}")
        if not self.grid_scales or min(self.grid_scales) < 1:
            raise ValueError(f"grid_scales must be positive integers, got {self.grid_scales}")
        for name in ("detector_threshold", "detector_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.detector_batch_size < 1:
            raise ValueError(f"detector_batch_size must be >= 1, got {self.detector_batch_size}")
        if not self.detector_queries or not all(q.strip() for q in self.detector_queries):
            raise ValueError(f"detector_queries must be non-empty texts, got {self.detector_queries}")


def region_record(config: RegionConfig) -> dict:
    """The config as a feature store records it: fields added after the first stores (``annotations`` and the
    ``detector*`` fields) are left out at their defaults, so a store made before them still matches its plan
    and resumes."""
    from dsanchor.config import config_to_dict

    d = config_to_dict(config)
    if d.get("annotations", True):
        d.pop("annotations", None)
    if not d.get("max_components"):  # added later, like annotations: absent at its default
        d.pop("max_components", None)
    if not d.get("detector"):
        for k in [k for k in d if k.startswith("detector")]:
            d.pop(k)
    return d


def annotation_boxes(objects: Sequence[ObjectAnnotation], width: float, height: float,
                     max_regions: int) -> torch.Tensor:
    """Usable annotated boxes, clipped to the image; the ``max_regions`` largest, in annotation order.

    Returns:
        (n, 4) float32 pixel boxes, n <= max_regions; degenerate boxes are dropped.
    """
    kept: list[tuple[float, float, float, float]] = []
    for obj in objects:
        if obj.box is None:  # a label without a place (dsanchor.data.caption_objects)
            continue
        x, y, w, h = (float(v) for v in obj.box)
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 - x0 > 0 and y1 - y0 > 0:
            kept.append((x0, y0, x1 - x0, y1 - y0))
    if len(kept) > max_regions:  # stable: ties keep the earlier box
        largest = sorted(range(len(kept)), key=lambda i: -kept[i][2] * kept[i][3])[:max_regions]
        kept = [kept[i] for i in sorted(largest)]
    return torch.tensor(kept, dtype=torch.float32).reshape(-1, 4)


def grid_boxes(width: float, height: float, scales: Sequence[int]) -> torch.Tensor:
    """Cells of an s x s grid for each scale s, row-major. Returns (sum s^2, 4) pixel boxes."""
    cells = []
    for s in scales:
        cw, ch = width / s, height / s
        cells += [(j * cw, i * ch, cw, ch) for i in range(s) for j in range(s)]
    return torch.tensor(cells, dtype=torch.float32).reshape(-1, 4)


def component_boxes(image: Image.Image, config: RegionConfig) -> torch.Tensor:
    """Boxes of the blobs that stand out from a uniform background, largest first.

    Returns an empty (0, 4) tensor when the border pixels do not share one colour (a natural photo).

    Returns:
        (n, 4) float32 pixel boxes in the frame of ``image``.
    """
    width, height = image.size
    small = image.convert("RGB")
    small.thumbnail((config.proposal_size, config.proposal_size), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.float32) / 255.0  # (h, w, 3)
    h, w = arr.shape[:2]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])  # (2w + 2h, 3)
    background = np.median(border, axis=0)  # (3,)
    near = np.abs(border - background).max(axis=1) <= config.background_tolerance
    if near.mean() < config.background_min_fraction:
        return torch.zeros(0, 4)
    foreground = np.abs(arr - background).max(axis=2) > config.background_tolerance  # (h, w)
    labels, n = ndimage.label(foreground)
    if n == 0:
        return torch.zeros(0, 4)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]  # (n,)
    min_area = config.min_component_area * h * w
    boxes = []
    for idx, sl in enumerate(ndimage.find_objects(labels)):
        if sl is not None and areas[idx] >= min_area:
            ys, xs = sl
            boxes.append((areas[idx], xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start))
    boxes.sort(key=lambda b: -b[0])  # stable: ties keep label order (top-left first)
    sx, sy = width / w, height / h
    out = [(x * sx, y * sy, bw * sx, bh * sy) for _, x, y, bw, bh in boxes]
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def propose_boxes(image: Image.Image, config: RegionConfig) -> torch.Tensor:
    """Class-agnostic fallback: components (if any), then grid cells, up to ``max_regions``.

    Returns:
        (n, 4) float32 pixel boxes, n <= max_regions.
    """
    parts = []
    if config.components:
        parts.append(component_boxes(image, config)[: config.max_components or None])
    parts.append(grid_boxes(*image.size, config.grid_scales))
    return torch.cat(parts)[: config.max_regions]


def normalize_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """(n, 4) pixel xywh -> (n, 4) xywh in [0, 1] of the image size."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return (boxes.float() / scale).clamp_(0.0, 1.0)


def annotated_boxes(objects: Sequence[ObjectAnnotation], declared_size: tuple[int, int], image: Image.Image,
                    config: RegionConfig) -> torch.Tensor:
    """The annotated boxes :func:`sample_boxes` uses, normalised; empty when there are none (or annotations are off).

    Annotated boxes are in the frame of the size the dataset declares (``declared_size``, the
    Sample's width and height); when that is unknown (zero) the image's own size is used.

    Returns:
        (n, 4) float32 xywh in [0, 1], 0 <= n <= max_regions.
    """
    width, height = declared_size
    if width <= 0 or height <= 0:
        width, height = image.size
    boxes = annotation_boxes(objects if config.annotations else (), width, height, config.max_regions)
    return normalize_boxes(boxes, width, height)


def sample_boxes(objects: Sequence[ObjectAnnotation], declared_size: tuple[int, int], image: Image.Image,
                 config: RegionConfig, detected: torch.Tensor | None = None) -> torch.Tensor:
    """The normalised boxes of one image: its annotations (unless ``config.annotations`` is off), else the
    detector's boxes ``detected``, else the proposal fallback.

    Args:
        objects: the image's annotations (see :func:`annotated_boxes` for their frame).
        declared_size: the Sample's width and height.
        image: the opened image.
        config: the region settings.
        detected: (n, 4) pixel xywh boxes in the frame of ``image``, from
            :meth:`dsanchor.encoders.detectors.RegionDetector.detect`; None (or empty) when there is no
            detector, which gives the fallback.

    Returns:
        (n, 4) float32 xywh in [0, 1], 1 <= n <= max_regions.
    """
    boxes = annotated_boxes(objects, declared_size, image, config)
    if boxes.shape[0] > 0:
        return boxes
    if detected is not None and detected.shape[0] > 0:
        return normalize_boxes(detected[: config.max_regions], *image.size)
    return normalize_boxes(propose_boxes(image, config), *image.size)


def pad_boxes(boxes: torch.Tensor, num_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (n, 4) boxes to (R, 4) with zeros; returns the boxes and an (R,) bool mask of real ones."""
    n = min(int(boxes.shape[0]), num_regions)
    padded = torch.zeros(num_regions, 4, dtype=torch.float32)
    padded[:n] = boxes[:n]
    mask = torch.zeros(num_regions, dtype=torch.bool)
    mask[:n] = True
    return padded, mask


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int] = 1,
              sampling_ratio: int = 2, aligned: bool = True) -> torch.Tensor:
    """RoI-align of normalised boxes over a feature map.

    Each output bin averages ``sampling_ratio`` x ``sampling_ratio`` bilinear samples taken at the
    centres of a regular sub-grid of the bin. Samples more than one cell outside the map are zero and
    samples within that margin are clamped to the edge, as in torchvision.

    Args:
        features: (B, C, H, W) feature map.
        boxes: (B, R, 4) boxes, x, y, w, h normalised to [0, 1] of the map's extent.
        output_size: bins per side (oh, ow), or one int for both.
        sampling_ratio: samples per bin side (> 0).
        aligned: shift by half a cell so pixel centres line up (Detectron2's ``aligned=True``).

    Returns:
        (B, R, C, oh, ow) pooled features.
    """
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    s = int(sampling_ratio)
    if s < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    B, C, H, W = features.shape
    R = boxes.shape[1]
    off = 0.5 if aligned else 0.0
    x0 = boxes[..., 0] * W - off  # (B, R)
    y0 = boxes[..., 1] * H - off
    bw, bh = boxes[..., 2] * W, boxes[..., 3] * H
    if not aligned:
        bw, bh = bw.clamp(min=1.0), bh.clamp(min=1.0)
    tx = (torch.arange(ow * s, dtype=features.dtype) + 0.5) / (ow * s)  # (ow*s,) fractions of the box
    ty = (torch.arange(oh * s, dtype=features.dtype) + 0.5) / (oh * s)  # (oh*s,)
    xs = x0[..., None] + bw[..., None] * tx  # (B, R, ow*s) map coordinates
    ys = y0[..., None] + bh[..., None] * ty  # (B, R, oh*s)
    gx = (2 * xs + 1) / W - 1  # grid_sample's align_corners=False normalisation
    gy = (2 * ys + 1) / H - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)  # (B, R, oh*s, ow*s, 2)
    grid = grid.reshape(B, R * oh * s, ow * s, 2)
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.view(B, C, R, oh * s, ow * s)  # (B, C, R, oh*s, ow*s)
    valid = ((ys >= -1) & (ys <= H))[:, :, :, None] & ((xs >= -1) & (xs <= W))[:, :, None, :]  # (B, R, oh*s, ow*s)
    sampled = sampled * valid[:, None].to(sampled.dtype)
    pooled = sampled.view(B, C, R, oh, s, ow, s).mean(dim=(4, 6))  # (B, C, R, oh, ow)
    return pooled.permute(0, 2, 1, 3, 4)  # (B, R, C, oh, ow)


def roi_vectors(features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor, samples: int) -> torch.Tensor:
    """One vector per box: the mean of ``samples`` x ``samples`` bilinear samples inside it.

    Args:
        features: (B, C, H, W) feature map.
        boxes: (B, R, 4) normalised xywh.
        mask: (B, R) bool, True for a real box.
        samples: samples per box side.

    Returns:
        (B, R, C), zero where ``mask`` is False.
    """
    pooled = roi_align(features, boxes, output_size=1, sampling_ratio=samples)  # (B, R, C, 1, 1)
    return pooled.flatten(2) * mask[..., None].to(pooled.dtype)  # (B, R, C)
