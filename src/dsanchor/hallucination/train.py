"""Training and POPE evaluation of the hallucination detector.

Training pairs are each image's annotated objects (positives) and as many POPE-style negatives, mixed
over the random, popular and adversarial samplings (:func:`~dsanchor.hallucination.negatives.build_pairs`).
They are redrawn every epoch from ``seed + epoch``, so the run is deterministic for a seed on CPU. The
loss is binary cross-entropy; training stops early on the val split's mean POPE accuracy.

Evaluation follows POPE (Li et al. 2023): for each image with ground-truth objects, up to
``per_image`` of them as "yes" questions and as many absent objects of one sampling as "no" questions;
the detector answers "yes" when P(present) >= ``threshold``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from dsanchor.errors import ConfigError
from dsanchor.features.types import ImageFeatures
from dsanchor.hallucination.detector import DetectorConfig, HallucinationDetector, ObjectVocabulary
from dsanchor.hallucination.negatives import SAMPLINGS, ObjectStats, build_pairs, object_rows
from dsanchor.metrics.pope import pope_metrics
from dsanchor.progress import progress_bar

__all__ = ["DetectorTrainConfig", "PopeConfig", "train_detector", "evaluate_pope", "dataset_stats", "holdout"]


@dataclass
class DetectorTrainConfig:
    epochs: int = field(default=40, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=32, metadata={"help": "images per batch (with all their questions)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=5, metadata={"help": "epochs without val improvement before stopping"})
    samplings: tuple[str, ...] = field(default=SAMPLINGS, metadata={"help": "negative samplings mixed in training"})
    max_positives: int = field(default=0, metadata={"help": "positives per image and epoch (0 = all its objects)"})
    seed: int = field(default=0, metadata={"help": "random seed (training is deterministic for a seed on CPU)"})


@dataclass
class PopeConfig:
    per_image: int = field(default=3, metadata={"help": "POPE questions per image and answer (yes / no)"})
    threshold: float = field(default=0.5, metadata={"help": "answer yes when P(present) >= this"})
    seed: int = field(default=0, metadata={"help": "seed of the random choices in the POPE question sets"})


def dataset_stats(vocabulary: ObjectVocabulary, *sources: ImageFeatures | Sequence[Sequence[str]]) -> ObjectStats:
    """Object frequencies and co-occurrences over the ground truth of all the given images.

    Args:
        vocabulary: the object names.
        sources: image features, or per-image lists of object names (e.g. a whole store's, read
            without its tensors).
    """
    objects = [o for src in sources for o in (src.objects if isinstance(src, ImageFeatures) else src)]
    return ObjectStats.from_rows(object_rows(objects, vocabulary.index()), len(vocabulary.names))


def _subset(images: ImageFeatures, idx: torch.Tensor) -> ImageFeatures:
    keep = idx.tolist()
    return ImageFeatures(images.image_ids[idx], images.coarse[idx], images.regions[idx], images.boxes[idx],
                         images.mask[idx], [images.objects[i] for i in keep], [images.splits[i] for i in keep])


def holdout(images: ImageFeatures, fraction: float, seed: int) -> tuple[ImageFeatures, ImageFeatures]:
    """Split images at random into (rest, held out), holding out ``fraction`` of them (at least one)."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_out = max(1, round(fraction * len(images)))
    return _subset(images, perm[n_out:].sort().values), _subset(images, perm[:n_out].sort().values)


@torch.no_grad()
def evaluate_pope(detector: HallucinationDetector, images: ImageFeatures, vocabulary: ObjectVocabulary,
                  stats: ObjectStats | None = None, config: PopeConfig | None = None) -> dict[str, dict[str, float]]:
    """POPE accuracy, precision, recall, F1 and yes-ratio for each sampling.

    Args:
        detector: the model to evaluate.
        images: held-out images with ground-truth objects.
        vocabulary: object names and embeddings (the questions' phrases).
        stats: dataset statistics for popular / adversarial (default: counted on ``images``).
        config: questions per image, threshold and seed.

    Returns:
        ``{"random": {...}, "popular": {...}, "adversarial": {...}}``, each with the metrics plus ``n``,
        the number of questions.
    """
    cfg = config or PopeConfig()
    rows = object_rows(images.objects, vocabulary.index())
    stats = stats or ObjectStats.from_rows(rows, len(vocabulary.names))
    if not any(rows):
        raise ConfigError("POPE needs images with ground-truth objects; none of these images has one "
                          "in the object vocabulary")
    out: dict[str, dict[str, float]] = {}
    for s in SAMPLINGS:
        gen = torch.Generator().manual_seed(cfg.seed)
        pairs = build_pairs(rows, stats, (s,), max_positives=cfg.per_image, generator=gen)
        prob = detector.presence_pairs(images, pairs.image, vocabulary.embeddings[pairs.object])  # (P,)
        metrics = pope_metrics(prob >= cfg.threshold, pairs.label.bool()).as_dict()
        out[s] = {**{k: float(v) for k, v in metrics.items()}, "n": len(pairs)}
    return out


def _check_inputs(vocabulary: ObjectVocabulary, rows: list[list[int]]) -> None:
    if len(vocabulary.names) < 2:
        raise ConfigError("the object vocabulary needs at least two objects to draw negatives")
    if not any(rows):
        raise ConfigError("no training image has a ground-truth object in the object vocabulary; "
                          "the detector needs annotated objects (COCO instances, VG objects, CLEVR scenes)")


def _epoch(detector: HallucinationDetector, opt: torch.optim.Optimizer, images: ImageFeatures,
           phrases: torch.Tensor, rows: list[list[int]], stats: ObjectStats, cfg: DetectorTrainConfig,
           epoch: int, cache: dict) -> float:
    """One pass over freshly drawn pairs, ``cfg.batch_size`` images (with all their pairs) per step."""
    detector.train()
    gen = torch.Generator().manual_seed(cfg.seed + epoch)
    pairs = build_pairs(rows, stats, cfg.samplings, max_positives=cfg.max_positives, generator=gen, cache=cache)
    asked = torch.unique(pairs.image)
    order = asked[torch.randperm(len(asked), generator=gen)]  # (n_asked,) images in this epoch's order
    rank = torch.full((len(images),), -1, dtype=torch.long)
    rank[order] = torch.arange(len(order))
    pair_rank, by_rank = torch.sort(rank[pairs.image], stable=True)  # (P,) pairs grouped by image position
    bounds = torch.searchsorted(pair_rank, torch.arange(0, len(order) + cfg.batch_size, cfg.batch_size)).tolist()
    total = 0.0
    dev = detector.device
    for b, start in enumerate(range(0, len(order), cfg.batch_size)):
        im = order[start:start + cfg.batch_size]  # (n,) image rows
        sel = by_rank[bounds[b]:bounds[b + 1]]  # (B,) the pairs of these images
        logits = detector(images.coarse[im].to(dev), images.regions[im].to(dev), images.boxes[im].to(dev),
                          images.mask[im].to(dev), phrases[pairs.object[sel]].to(dev),
                          image_index=(pair_rank[bounds[b]:bounds[b + 1]] - start).to(dev))  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits, pairs.label[sel].to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(sel)
    return total / max(len(pairs), 1)


def train_detector(train_images: ImageFeatures, val_images: ImageFeatures, vocabulary: ObjectVocabulary,
                   config: DetectorConfig, train: DetectorTrainConfig, pope: PopeConfig | None = None,
                   stats: ObjectStats | None = None) -> tuple[HallucinationDetector, dict]:
    """Train on the train split with early stopping on the val split's mean POPE accuracy.

    Args:
        train_images, val_images: features with ground-truth objects.
        vocabulary: the dataset's object names and phrase embeddings.
        config: the model config (its input sizes may be 0; they are then taken from the features).
        train: optimisation settings.
        pope: the val POPE protocol.
        stats: statistics for popular / adversarial negatives (default: counted on ``train_images``).

    Returns:
        The best detector (by val) and a history dict with per-epoch loss and val POPE accuracy,
        ``best_epoch``, ``best_val_accuracy`` and ``train_time_s``.
    """
    torch.manual_seed(train.seed)
    index = vocabulary.index()
    rows = object_rows(train_images.objects, index)
    _check_inputs(vocabulary, rows)
    stats = stats or ObjectStats.from_rows(rows, len(vocabulary.names))
    config = _with_input_dims(config, train_images, vocabulary)
    detector = HallucinationDetector(config)
    opt = torch.optim.AdamW(detector.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    phrases = vocabulary.embeddings.float()
    best, best_state, best_epoch, bad, history = -1.0, None, -1, 0, []
    cache: dict = {}  # the ranked negatives of each image, the same every epoch
    t0 = time.perf_counter()
    bar = progress_bar(range(train.epochs), desc="detector", unit="epoch")
    for epoch in bar:
        loss = _epoch(detector, opt, train_images, phrases, rows, stats, train, epoch, cache)
        val = evaluate_pope(detector, val_images, vocabulary, stats, pope)
        score = sum(v["accuracy"] for v in val.values()) / len(val)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": score,
                        **{f"val_accuracy_{s}": v["accuracy"] for s, v in val.items()}})
        bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{score:.3f}")
        if score > best + 1e-4:
            best, best_state, best_epoch, bad = score, copy.deepcopy(detector.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= train.patience:
                break
    bar.close()
    if best_state is not None:
        detector.load_state_dict(best_state)
    detector.eval()
    return detector, {"history": history, "best_epoch": best_epoch, "best_val_accuracy": best,
                      "train_time_s": time.perf_counter() - t0}


def _with_input_dims(config: DetectorConfig, images: ImageFeatures, vocabulary: ObjectVocabulary) -> DetectorConfig:
    """Fill the config's unset (0) input sizes from the features and check the set ones match."""
    dims = {"coarse_dim": images.coarse.shape[1], "region_dim": images.regions.shape[2],
            "text_dim": vocabulary.embeddings.shape[1]}
    for name, actual in dims.items():
        given = getattr(config, name)
        if given and given != actual:
            raise ConfigError(f"DetectorConfig.{name} is {given} but the features have {actual}; leave it 0")
    return dataclasses.replace(config, **dims)
