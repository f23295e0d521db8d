"""What a pipeline was trained on, and whether a new image or text query looks like it (out-of-domain notes).

A saved pipeline records its training data (:class:`TrainingDomain`): the dataset's name and format, the
number of training images and the region source the heads were trained on, plus two small references and
their thresholds:

- images: the training images' coarse encoder vectors (at most ``max_images``, evenly spaced in store order).
  A new image's distance is the cosine distance of its coarse vector to the nearest reference vector. The
  threshold is ``image_margin`` (2) times the ``image_quantile`` (99th percentile) of the same distance over
  the validation images, so about 1% of validation images lie above the percentile and almost none above
  twice it. On the demo (1000 scenes) the validation percentile is 0.043 (threshold 0.086); 100 fresh
  demo-style images (another data seed) lie below 0.049, and COCO and Flickr photos at 0.60–0.89.
- text: the unique training captions' text-encoder vectors (at most ``max_captions``). A query's similarity
  is its highest cosine to them. The threshold is ``text_margin`` (0.6) times the ``text_quantile`` (1st
  percentile) of the same similarity over the validation captions. On the demo that is 0.52: "a large green
  metal sphere" has 0.98, "two cylinders" 0.67 and "green" 0.66, while "a dog sitting on a bed" has 0.39
  and "cat" 0.30. With few training captions (tens) the text threshold is lower and weaker.

Without validation images (or captions), the training images (captions) are used, each against the others.
An image or query beyond its threshold gets a one-line note (:meth:`TrainingDomain.image_note`,
:meth:`TrainingDomain.text_note`); the answer is still given. The references are saved as
``domain.safetensors`` (float16) beside ``pipeline.json``; a pipeline saved before this record loads without
one and gives no notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DOMAIN_FILE", "DomainConfig", "TrainingDomain", "fit_domain", "region_source"]

DOMAIN_FILE = "domain.safetensors"


@dataclass(frozen=True)
class DomainConfig:
    """How the out-of-domain thresholds are calibrated (module docstring)."""

    max_images: int = field(default=1000, metadata={"help": "training images kept as the coarse reference"})
    max_captions: int = field(default=2000, metadata={"help": "unique training captions kept as the text reference"})
    image_quantile: float = field(default=0.99, metadata={
        "help": "quantile of the validation images' nearest-training-image distance"})
    image_margin: float = field(default=2.0, metadata={"help": "an image is out of domain beyond margin x quantile"})
    text_quantile: float = field(default=0.01, metadata={
        "help": "quantile of the validation captions' best similarity to the training captions"})
    text_margin: float = field(default=0.6, metadata={"help": "a query is out of domain below margin x quantile"})


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _spaced(x: torch.Tensor, n: int) -> torch.Tensor:
    """At most ``n`` rows of ``x``, evenly spaced (deterministic)."""
    if len(x) <= n:
        return x
    return x[torch.linspace(0, len(x) - 1, n).round().long()]


def _best_cos(query: torch.Tensor, reference: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
    """(Q,) the highest cosine of each query row to the reference rows (unit vectors); with ``leave_one_out``
    the query is the reference and a row is not compared with itself."""
    sims = _unit(query) @ _unit(reference).T  # (Q, N)
    if leave_one_out:
        sims.fill_diagonal_(-2.0)
    return sims.max(dim=1).values


def region_source(regions, images) -> str:
    """The boxes the training images got: "annotation boxes", "proposals", "detector <path>", or a mix."""
    if getattr(regions, "detector", ""):
        return f"detector {regions.detector}"
    if not getattr(regions, "annotations", True):
        return "proposals" if getattr(regions, "components", True) else "grid cells"
    n = len(images.objects)
    with_boxes = sum(1 for objs in images.objects if objs)
    if with_boxes == n:
        return "annotation boxes"
    if with_boxes == 0:
        return "proposals"
    return f"annotation boxes ({with_boxes} images) and proposals ({n - with_boxes})"


@dataclass
class TrainingDomain:
    """What a pipeline was trained on, and the references that tell whether new inputs look like it."""

    dataset: str  # the dataset's name (e.g. "synth")
    format: str  # its loader format
    train_images: int  # number of training images
    region_source: str  # boxes of the training images (region_source())
    image_reference: torch.Tensor | None = None  # (N, Dc) training coarse vectors
    text_reference: torch.Tensor | None = None  # (M, Dt) unique training caption vectors
    image_threshold: float | None = None  # cosine distance above which an image is out of domain
    text_threshold: float | None = None  # similarity below which a text query is out of domain
    calibration: dict[str, Any] = field(default_factory=dict)  # how the thresholds were found

    def describe(self) -> str:
        """'synth (600 training images, annotation boxes)'."""
        return f"{self.dataset} ({self.train_images} training images, {self.region_source})"

    def image_distance(self, coarse: torch.Tensor) -> torch.Tensor:
        """(N,) cosine distance of each coarse vector (N, Dc) to its nearest training image."""
        return 1.0 - _best_cos(coarse, self.image_reference)

    def text_similarity(self, text_raw: torch.Tensor) -> torch.Tensor:
        """(N,) highest cosine of each text vector (N, Dt) to the training captions."""
        return _best_cos(text_raw, self.text_reference)

    def image_notes(self, coarse: torch.Tensor) -> list[str | None]:
        """Per image (coarse vectors (N, Dc)), one line when it looks out of domain, else None."""
        if self.image_reference is None or self.image_threshold is None:
            return [None] * len(coarse)
        return [None if d <= self.image_threshold else
                f"this image looks unlike the pipeline's training images ({self.describe()}: distance {d:.2f} to "
                f"the nearest, above {self.image_threshold:.2f}); its answers may mean little"
                for d in self.image_distance(coarse).tolist()]

    def text_note(self, text_raw: torch.Tensor) -> str | None:
        """One line when the text (its vector (1, Dt)) looks unlike the training captions, else None."""
        if self.text_reference is None or self.text_threshold is None:
            return None
        s = float(self.text_similarity(text_raw)[0])
        if s >= self.text_threshold:
            return None
        return (f"this query looks unlike the pipeline's training captions ({self.describe()}: similarity {s:.2f} "
                f"to the closest, below {self.text_threshold:.2f}); its results may mean little")

    def record(self) -> dict[str, Any]:
        """The JSON part (the references go to :data:`DOMAIN_FILE`)."""
        return {"dataset": self.dataset, "format": self.format, "train_images": self.train_images,
                "region_source": self.region_source, "image_threshold": self.image_threshold,
                "text_threshold": self.text_threshold, "calibration": self.calibration, "file": DOMAIN_FILE}

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write the references into ``folder``; returns :meth:`record`."""
        from safetensors.torch import save_file

        tensors = {k: v.half().contiguous() for k, v in (("images", self.image_reference),
                                                         ("texts", self.text_reference)) if v is not None}
        if tensors:
            save_file(tensors, str(Path(folder) / DOMAIN_FILE))
        return self.record()

    @classmethod
    def load(cls, folder: str | Path, record: dict[str, Any] | None) -> TrainingDomain | None:
        """The domain a pipeline folder records, or None (a pipeline saved before this record)."""
        if not record:
            return None
        from safetensors.torch import load_file

        f = Path(folder) / record.get("file", DOMAIN_FILE)
        refs = load_file(str(f)) if f.is_file() else {}
        return cls(record.get("dataset", "?"), record.get("format", "?"), int(record.get("train_images", 0)),
                   record.get("region_source", "?"), refs["images"].float() if "images" in refs else None,
                   refs["texts"].float() if "texts" in refs else None, record.get("image_threshold"),
                   record.get("text_threshold"), record.get("calibration", {}))


def _unique_captions(texts) -> torch.Tensor:
    """(U, Dt) the vectors of the distinct caption texts, in first-seen order."""
    first: dict[str, int] = {}
    for i, c in enumerate(texts.captions):
        first.setdefault(c, i)
    return texts.embeddings[list(first.values())] if first else texts.embeddings[:0]


def _image_calibration(train, val, config: DomainConfig) -> tuple[torch.Tensor | None, float | None, dict]:
    if len(train) == 0:
        return None, None, {}
    ref = _spaced(_unit(train.coarse), config.max_images)  # (N, Dc)
    if len(val) > 0:
        dist, used = 1.0 - _best_cos(val.coarse, ref), f"{len(val)} validation images"
    else:
        dist, used = 1.0 - _best_cos(ref, ref, leave_one_out=True), f"{len(ref)} training images (no val)"
    q = float(torch.quantile(dist, config.image_quantile))
    return ref, config.image_margin * q, {"images": used, "image_quantile": config.image_quantile,
                                          "image_quantile_value": q, "image_margin": config.image_margin}


def _text_calibration(train, val, config: DomainConfig) -> tuple[torch.Tensor | None, float | None, dict]:
    unique = _unique_captions(train)
    if len(unique) == 0:
        return None, None, {}
    ref = _spaced(_unit(unique), config.max_captions)  # (M, Dt)
    if len(val) > 0:
        sim, used = _best_cos(_unique_captions(val), ref), f"{len(_unique_captions(val))} validation captions"
    else:
        sim, used = _best_cos(ref, ref, leave_one_out=True), f"{len(ref)} training captions (no val)"
    q = float(torch.quantile(sim, config.text_quantile))
    return ref, config.text_margin * q, {"captions": used, "text_quantile": config.text_quantile,
                                         "text_quantile_value": q, "text_margin": config.text_margin}


def fit_domain(store, regions, dataset: str | None = None, config: DomainConfig | None = None) -> TrainingDomain:
    """The :class:`TrainingDomain` of a feature store's train split (the whole store when it has no splits),
    calibrated on its val split; ``regions``: the store's :class:`~dsanchor.encoders.regions.RegionConfig`."""
    config = config or DomainConfig()
    train, val = store.images("train"), store.images("val")
    t_train, t_val = store.texts("train"), store.texts("val")
    if len(train) == 0:
        train, t_train = store.images(), store.texts()
    img_ref, img_thr, img_cal = _image_calibration(train, val, config)
    txt_ref, txt_thr, txt_cal = _text_calibration(t_train, t_val, config)
    fmt = store.manifest.get("source", {}).get("format", "unknown")
    return TrainingDomain(dataset or fmt, fmt, len(train), region_source(regions, train), img_ref, txt_ref,
                          img_thr, txt_thr, {**img_cal, **txt_cal})
