"""Regions from a transformers object detector loaded from a local directory.

The detector is the third region source (``RegionConfig.detector``): an image without annotated boxes
gets the boxes a detector finds in it. Two families are supported:

- closed-set detectors that load with ``AutoModelForObjectDetection`` + ``AutoImageProcessor``:
  DETR (Carion et al., "End-to-End Object Detection with Transformers", 2020), Conditional DETR and
  Deformable DETR are tested; the other types of that Auto class whose image processor has
  ``post_process_object_detection`` (RT-DETR, YOLOS, ...) go through the same code;
- open-vocabulary OWL-ViT (Minderer et al., "Simple Open-Vocabulary Object Detection with Vision
  Transformers", 2022) and OWLv2, queried with ``RegionConfig.detector_queries``.

The family is read from the saved ``config.json`` (``model_type``). Boxes are class-agnostic: a box's
score is its best class (or query) score. Per image, :meth:`RegionDetector.detect` keeps the boxes
scoring above the threshold, clips them to the image, drops those under a pixel wide or high, applies
non-maximum suppression and keeps the ``max_regions`` best. An image with no box left gets the
class-agnostic proposals of :func:`~dsanchor.encoders.regions.propose_boxes`, so every image has at
least one region.

Nothing is downloaded. :func:`save_tiny_detr` and :func:`save_tiny_owlvit` write tiny random
detectors for tests and smoke runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from dsanchor.encoders.regions import RegionConfig, propose_boxes
from dsanchor.errors import ConfigError, MissingDependencyError
from dsanchor.integrations.small_models import byte_level_clip_tokenizer

__all__ = ["OPEN_VOCABULARY_TYPES", "RegionDetector", "box_iou", "check_detector", "nms", "save_tiny_detr",
           "save_tiny_owlvit"]

OPEN_VOCABULARY_TYPES: tuple[str, ...] = ("owlvit", "owlv2")
MIN_BOX_SIDE = 1.0  # pixels; narrower or lower boxes are dropped as degenerate
_HINT = "pass --detector a local folder written by a transformers detector's save_pretrained (model + processor)"


def _closed_set_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    return list(MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES)


def check_detector(path: str | Path) -> str:
    """The ``model_type`` of the detector saved at ``path``, read from its config.json (no weights loaded).

    Raises:
        ConfigError: the folder or its config.json is missing, or the model is not an object detector.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"detector {path} does not exist; {_HINT}")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"detector {path}: no config.json, so no transformers model here; {_HINT}")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"detector {cfg_file}: not a JSON object with a model_type; {_HINT}") from None
    supported = list(OPEN_VOCABULARY_TYPES) + _closed_set_types()
    if model_type not in supported:
        raise ConfigError(f"detector {path}: model_type {model_type!r} is not an object-detection model; "
                          f"supported types: {', '.join(supported)}")
    return str(model_type)


def _load(path: Path, model_type: str):
    """(model in eval mode, processor) from ``path``, local files only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import (
            AutoImageProcessor,
            AutoModelForObjectDetection,
            AutoProcessor,
            Owlv2ForObjectDetection,
            OwlViTForObjectDetection,
        )
    except ImportError:
        raise MissingDependencyError("a region detector needs transformers: pip install 'transformers>=5'") from None
    try:
        if model_type in OPEN_VOCABULARY_TYPES:
            cls = OwlViTForObjectDetection if model_type == "owlvit" else Owlv2ForObjectDetection
            model = cls.from_pretrained(str(path), local_files_only=True)
            processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        else:
            model = AutoModelForObjectDetection.from_pretrained(str(path), local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"detector {path}: cannot load a {model_type} model and its processor ({first}); "
                          f"{_HINT}") from None
    return model.eval(), processor


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of (n, 4) and (m, 4) x0, y0, x1, y1 boxes. Returns (n, m)."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])  # (n, m, 2)
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (n, m, 2)
    inter = (hi - lo).clamp(min=0).prod(dim=-1)  # (n, m)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=-1)  # (n,)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=-1)  # (m,)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression: a box is dropped when its IoU with a kept, higher-scored box exceeds
    ``iou_threshold`` (torchvision's ``nms`` rule; equal scores keep the earlier box).

    Args:
        boxes: (n, 4) x0, y0, x1, y1.
        scores: (n,).
        iou_threshold: in [0, 1]; 1 keeps every box.
        max_keep: stop after this many kept boxes (None: no limit).

    Returns:
        (k,) int64 indices into ``boxes`` of the kept boxes, highest score first.
    """
    order = torch.argsort(scores, descending=True, stable=True)  # (n,)
    alive = torch.ones(order.numel(), dtype=torch.bool)
    kept: list[int] = []
    for pos in range(order.numel()):
        if not alive[pos]:
            continue
        i = int(order[pos])
        kept.append(i)
        if max_keep is not None and len(kept) >= max_keep:
            break
        rest = order[pos + 1:]
        alive[pos + 1:] &= box_iou(boxes[i:i + 1], boxes[rest])[0] <= iou_threshold  # (n - pos - 1,)
    return torch.tensor(kept, dtype=torch.int64)


class RegionDetector:
    """A local transformers detector that gives each image its region boxes.

    Load it once per process (it holds the model); :meth:`detect` batches images.

    Args:
        config: the region settings: ``detector`` (the folder), ``detector_threshold``, ``detector_iou``,
            ``detector_queries`` (OWL only), ``detector_batch_size``, ``max_regions`` and the fallback's.
    """

    def __init__(self, config: RegionConfig):
        if not config.detector:
            raise ConfigError("RegionDetector needs RegionConfig.detector, a local detector folder; "
                              "pass --detector DIR")
        self.config = config
        self.path = Path(config.detector)
        self.model_type = check_detector(self.path)
        self.model, self.processor = _load(self.path, self.model_type)
        self.fallbacks = 0  # images so far that got the proposal fallback (nothing detected)

    @property
    def open_vocabulary(self) -> bool:
        """Whether the model is queried with texts (OWL-ViT, OWLv2)."""
        return self.model_type in OPEN_VOCABULARY_TYPES

    def detect(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Boxes for each image, ``detector_batch_size`` images per forward pass.

        Returns:
            per image, (n, 4) float32 x, y, w, h pixel boxes in that image's own frame, highest score
            first, 1 <= n <= max_regions; the proposal fallback where nothing scored above the threshold.
        """
        images = [im.convert("RGB") for im in images]
        out: list[torch.Tensor] = []
        bs = self.config.detector_batch_size
        for start in range(0, len(images), bs):
            chunk = images[start:start + bs]
            for image, (scores, boxes) in zip(chunk, self.raw_detections(chunk), strict=True):
                out.append(self._select(image, scores, boxes))
        return out

    @torch.no_grad()
    def raw_detections(self, images: Sequence[Image.Image]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One forward pass: per image, (n,) scores above the threshold and (n, 4) x0, y0, x1, y1 pixel boxes."""
        sizes = [(im.height, im.width) for im in images]
        threshold = self.config.detector_threshold
        if self.open_vocabulary:
            queries = list(self.config.detector_queries)
            inputs = self.processor(text=[queries] * len(images), images=list(images), return_tensors="pt",
                                    truncation=True)
            outputs = self.model(**inputs)
            results = self.processor.post_process_grounded_object_detection(outputs, threshold=threshold,
                                                                            target_sizes=sizes)
        else:
            inputs = self.processor(images=list(images), return_tensors="pt")
            outputs = self.model(**inputs)
            results = self.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
        return [(r["scores"].float(), r["boxes"].float().reshape(-1, 4)) for r in results]

    def _select(self, image: Image.Image, scores: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Clip, drop degenerate boxes, NMS, keep max_regions; the fallback when none is left. Returns (n, 4) xywh."""
        width, height = image.size
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0), limit)  # (n, 4) x0, y0, x1, y1 inside the image
        wh = boxes[:, 2:] - boxes[:, :2]  # (n, 2)
        ok = (wh >= MIN_BOX_SIDE).all(dim=1) & torch.isfinite(boxes).all(dim=1)
        boxes, scores = boxes[ok], scores[ok]
        if boxes.shape[0] == 0:
            self.fallbacks += 1
            return propose_boxes(image, self.config)
        keep = nms(boxes, scores, self.config.detector_iou, max_keep=self.config.max_regions)
        kept = boxes[keep]  # (k, 4)
        return torch.cat([kept[:, :2], kept[:, 2:] - kept[:, :2]], dim=1)  # (k, 4) xywh


# ---- tiny random detectors for tests and smoke runs ----------------------------------------------------------

_DETR_TYPES = ("detr", "conditional_detr", "deformable_detr")


def save_tiny_detr(path: str | Path, model_type: str = "detr", num_queries: int = 20, num_labels: int = 3,
                   image_size: int = 96, seed: int = 0) -> Path:
    """Write a tiny randomly initialised DETR-family detector + image processor to ``path`` (no download).

    The backbone is a two-stage transformers ResNet (no timm). Its boxes and scores mean nothing.

    Args:
        path: the folder to write.
        model_type: ``detr``, ``conditional_detr`` or ``deformable_detr``.
        num_queries: detection slots.
        num_labels: classes (plus DETR's no-object class).
        image_size: the processor's longest edge (shortest edge: two thirds of it).
        seed: torch seed of the random weights.
    """
    import transformers
    from transformers import AutoModelForObjectDetection, ResNetConfig

    if model_type not in _DETR_TYPES:
        raise ValueError(f"model_type must be one of {list(_DETR_TYPES)}, got {model_type!r}")
    deformable = model_type == "deformable_detr"
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage1", "stage2"] if deformable else ["stage2"])
    d_model = 32 if deformable else 16  # deformable DETR's GroupNorm has 32 groups
    extra = dict(num_feature_levels=2, encoder_n_points=2, decoder_n_points=2) if deformable else {}
    config_cls = getattr(transformers, {"detr": "DetrConfig", "conditional_detr": "ConditionalDetrConfig",
                                        "deformable_detr": "DeformableDetrConfig"}[model_type])
    config = config_cls(backbone_config=backbone, d_model=d_model, encoder_layers=1,
                        decoder_layers=2 if deformable else 1,  # deformable ties its box heads over >= 2 layers
                        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model, encoder_attention_heads=2,
                        decoder_attention_heads=2, num_queries=num_queries, num_labels=num_labels, **extra)
    processor_cls = getattr(transformers, {"detr": "DetrImageProcessorPil",
                                           "conditional_detr": "ConditionalDetrImageProcessorPil",
                                           "deformable_detr": "DeformableDetrImageProcessorPil"}[model_type])
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    AutoModelForObjectDetection.from_config(config).eval().save_pretrained(out)
    processor_cls(size={"shortest_edge": 2 * image_size // 3, "longest_edge": image_size}).save_pretrained(out)
    return out


def save_tiny_owlvit(path: str | Path, v2: bool = False, image_size: int = 32, patch_size: int = 8,
                     hidden: int = 16, max_text_length: int = 16, seed: int = 0) -> Path:
    """Write a tiny randomly initialised OWL-ViT (or OWLv2) + processor with a byte-level tokenizer (no download).

    The last layer of the box head starts at zero, so every patch predicts its own prior box (the
    patch's cell, as OWL-ViT's box bias defines it): well-formed, distinct boxes. The class head's
    logit shift and scale start at zero and one, so a score is the sigmoid of a cosine similarity,
    in [0.27, 0.73]. Scores mean nothing.

    Args:
        path: the folder to write.
        v2: OWLv2 instead of OWL-ViT.
        image_size: the vision tower's input side (and the processor's).
        patch_size: patch side; (image_size / patch_size)^2 candidate boxes per image.
        hidden: width of both towers.
        max_text_length: text positions (queries are padded or truncated to it).
        seed: torch seed of the random weights.
    """
    import transformers

    prefix = "Owlv2" if v2 else "OwlViT"
    config_cls = getattr(transformers, f"{prefix}Config")
    model_cls = getattr(transformers, f"{prefix}ForObjectDetection")
    processor_cls = getattr(transformers, f"{prefix}Processor")
    image_processor_cls = getattr(transformers, f"{prefix}ImageProcessorPil")
    tokenizer, bos, eos = byte_level_clip_tokenizer(max_text_length)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2)
    config = config_cls(
        text_config=dict(vocab_size=eos + 1, max_position_embeddings=max_text_length, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos, **common),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **common),
        projection_dim=hidden)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for layer in (model.box_head.dense2, model.class_head.logit_shift, model.class_head.logit_scale):
            layer.weight.zero_()
            layer.bias.zero_()  # logit scale: elu(0) + 1 = 1
    model.save_pretrained(out)
    image_processor = image_processor_cls(size={"height": image_size, "width": image_size})
    processor_cls(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
