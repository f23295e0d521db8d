"""The rewards PPO learns from: per cached caption R_acc (CIDEr-D) and R_hall (minus the hallucinated share).

R_acc is the CIDEr-D (raw scale) of the caption against the image's references, IDF over the split's
references; R_hall is minus the share of the caption's named objects that the image lacks (CHAIR's mention
extraction and ground truth, :func:`dsanchor.metrics.chair.chair_ground_truth`; 0 for a caption that names no
object). Images without annotated objects cannot be judged by ground truth: their R_hall comes from the
hallucination detector when one is given with its feature store (:class:`DetectorShares`), else it is 0; both
numbers are reported (``n_unjudged``, ``n_detector``). :class:`GridRewardModel` interpolates them linearly
between grid points for PPO; :func:`split_rewards` builds (or resumes) a split's grid cache and scores it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsanchor.captioning.evaluate import cider_per_image
from dsanchor.data.records import Sample
from dsanchor.errors import ConfigError, DataError
from dsanchor.features.store import FeatureStore
from dsanchor.features.types import ImageFeatures
from dsanchor.hallucination import HallucinationDetector
from dsanchor.hallucination.mentions import caption_objects, hallucination_share
from dsanchor.integrations import get_family, processor_fns, state_layout
from dsanchor.mllm.config import GridConfig, MLLMConfig
from dsanchor.mllm.data import MLLMData
from dsanchor.mllm.grid import AnswerLoss, GridCache, GridRow, build_grid_cache, load_grid_cache, model_fingerprint
from dsanchor.mllm.scores import caption_mentions, chair_truth

__all__ = ["GridRewards", "GridRewardModel", "DetectorShares", "grid_rewards",
           "objective_scores", "mllm_objective", "split_rewards", "split_cache", "reward_model"]


@dataclass
class GridRewards:
    """The reward terms of every cached caption of a split (rows in the cache's image order)."""

    cider: np.ndarray  # (N, G) CIDEr-D, raw scale
    hallucination: np.ndarray  # (N, G) hallucinated share of the named objects, in [0, 1]
    judged: np.ndarray  # (N,) bool: CHAIR's ground truth judged the image
    n_unjudged: int  # images without annotated objects
    n_detector: int  # of those, how many the hallucination detector scored
    accuracy_name: str = "cider"  # what R_acc is (items: "accuracy", :class:`dsanchor.mllm.items.ItemRewards`)

    @property
    def accuracy(self) -> np.ndarray:
        """R_acc of every cached caption: its CIDEr-D."""
        return self.cider


class DetectorShares:
    """The hallucination detector's estimate of the share of a caption's named objects an image lacks.

    For images CHAIR cannot judge (no annotated objects): the detector (``dsanchor hallucination train``) reads
    the image's features from the feature store it was trained on, P(present) of every vocabulary object is
    computed once per image, and a caption's share is the mean of 1 - P(present) over the objects it names
    (:func:`~dsanchor.hallucination.mentions.hallucination_share`; 0 when it names none the detector knows).

    Args:
        detector: folder of a saved :class:`~dsanchor.hallucination.HallucinationDetector`.
        features: the feature store of the same dataset (``dsanchor extract``).
        vocabulary: the CHAIR vocabulary of the captions (``"synth"`` or ``"coco"``).
    """

    def __init__(self, detector: str | Path, features: str | Path, vocabulary: str):
        self.detector = HallucinationDetector.from_pretrained(detector)
        self.store = FeatureStore(features)
        self.objects = self.store.object_vocabulary()
        self.index = self.objects.index()
        self.vocabulary = vocabulary
        self.images = self.store.images()
        self.row = {int(i): r for r, i in enumerate(self.images.image_ids.tolist())}
        self._presence: dict[int, torch.Tensor] = {}

    def presence(self, image_ids: Sequence[int]) -> None:
        """Compute P(present) for the images not seen yet (one detector call)."""
        todo = [i for i in dict.fromkeys(image_ids) if i not in self._presence]
        missing = [i for i in todo if i not in self.row]
        if missing:
            raise DataError(self.store.path, f"{len(missing)} images are not in the feature store (e.g. id "
                                             f"{missing[0]}); extract features of the same dataset")
        if not todo:
            return
        rows = torch.tensor([self.row[i] for i in todo])
        im = self.images
        sub = ImageFeatures(im.image_ids[rows], im.coarse[rows], im.regions[rows], im.boxes[rows], im.mask[rows],
                            [im.objects[r] for r in rows.tolist()], [im.splits[r] for r in rows.tolist()], None)
        with torch.no_grad():
            p = self.detector.presence_matrix(sub, self.objects.embeddings.float())  # (n, V)
        self._presence.update({i: p[k] for k, i in enumerate(todo)})

    def __call__(self, image_ids: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        self.presence(image_ids)
        out = np.zeros(len(captions))
        for n, (i, c) in enumerate(zip(image_ids, captions, strict=True)):
            share = hallucination_share(self._presence[i], caption_objects(c, self.vocabulary), self.index,
                                        self.vocabulary)
            out[n] = 0.0 if share is None else share
        return out


def grid_rewards(cache: GridCache, samples: Sequence[Sample], vocabulary: str,
                 detector: DetectorShares | None = None) -> GridRewards:
    """R_acc (CIDEr-D) and the hallucinated share of every cached caption (module docstring).

    Images CHAIR cannot judge (no annotated objects) get the detector's estimate when ``detector`` is given,
    else a share of 0; both counts are returned.
    """
    by_id = {s.image_id: s for s in samples}
    missing = [i for i in cache.image_ids if i not in by_id]
    if missing:
        raise DataError("grid cache", f"{len(missing)} cached images are not in the split (e.g. id {missing[0]})")
    n, g = len(cache.image_ids), len(cache.grid)
    refs = [[c.text for c in by_id[i].captions] for i in cache.image_ids]
    flat = cider_per_image([c for row in cache.captions for c in row], [r for r in refs for _ in range(g)])
    cider = np.nan_to_num(flat.reshape(n, g), nan=0.0)
    truth = chair_truth([by_id[i] for i in cache.image_ids], vocabulary)
    hall = np.zeros((n, g))
    judged = np.array([truth.get(i) is not None for i in cache.image_ids])
    for j in range(g):
        counts = caption_mentions({i: cache.captions[r][j] for r, i in enumerate(cache.image_ids)}, truth,
                                  vocabulary)
        hall[:, j] = [c[0] / c[1] if c and c[1] else 0.0 for c in (counts[i] for i in cache.image_ids)]
    rows = np.flatnonzero(~judged)
    if detector is not None and len(rows):
        ids = [cache.image_ids[r] for r in rows]
        for j in range(g):
            hall[rows, j] = detector(ids, [cache.captions[r][j] for r in rows])
    return GridRewards(cider, hall, judged, int((~judged).sum()), int(len(rows)) if detector is not None else 0)


class GridRewardModel:
    """(R_acc, R_hall) of training image q at g: the cached values linearly interpolated between grid points."""

    def __init__(self, grid: torch.Tensor, cider: np.ndarray, hallucination: np.ndarray):
        self.grid = np.asarray(grid, dtype=np.float64)
        self.cider = np.asarray(cider, dtype=np.float64)
        self.hall = np.asarray(hallucination, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.cider.shape[0])

    def values(self, q: int, g: float) -> tuple[float, float]:
        """Interpolated (CIDEr-D, hallucination share) of image q at g."""
        return float(np.interp(g, self.grid, self.cider[q])), float(np.interp(g, self.grid, self.hall[q]))

    def __call__(self, q: int, g: float) -> tuple[float, float]:
        c, h = self.values(q, g)
        return c, -h

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.grid, self.cider, self.hall):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def subset(self, rows: Sequence[int]) -> GridRewardModel:
        rows = list(rows)
        return GridRewardModel(torch.as_tensor(self.grid), self.cider[rows], self.hall[rows])


def objective_scores(cider: np.ndarray, hallucination: np.ndarray) -> np.ndarray:
    """What picks g (``fixed_best``, ``oracle``, tuning): CIDEr-D minus the hallucinated share (same shape)."""
    return cider - hallucination


def mllm_objective(model: GridRewardModel, g: np.ndarray) -> float:
    """The tuning target at per-image g: mean interpolated CIDEr-D minus mean hallucinated share."""
    vals = [model.values(q, float(gq)) for q, gq in enumerate(g)]
    return float(np.mean([c - h for c, h in vals]))


def split_rewards(cfg: MLLMConfig, data: MLLMData, split: str, grid: GridConfig,
                  progress: bool = True) -> tuple[GridCache, GridRewards]:
    """The grid cache of ``split`` (built or resumed, every rank sharing the work) and its rewards."""
    samples = data.split(split, cfg.limit)
    if not samples:
        raise ConfigError(f"the {split} split is empty ({data.split_note})")
    meta = {"model": model_fingerprint(cfg.model_path), "model_type": cfg.model_type, "prompt": cfg.caption_prompt,
            "adapter": str(cfg.adapter), "split": split}
    rows = [GridRow(s.image_id, s, cfg.caption_prompt) for s in samples]
    cache = split_cache(cfg, data, split, grid, rows, meta, progress)
    detector = None
    if cfg.hall_detector and any(not s.objects for s in samples):
        detector = DetectorShares(cfg.hall_detector, cfg.features, data.vocabulary)
    return cache, grid_rewards(cache, samples, data.vocabulary, detector)


def split_cache(cfg: MLLMConfig, data: MLLMData, split: str, grid: GridConfig, rows: Sequence[GridRow],
                meta: dict[str, Any], progress: bool = True, loss: AnswerLoss | None = None,
                items: bool = False) -> GridCache:
    """Build (or resume) the grid cache of ``split`` over ``rows`` under ``cfg.cache_dir(split)`` and load it."""
    prepare = functools.partial(get_family(cfg.model_type).prepare, data.processor)
    _, decode = processor_fns(cfg.model_type, data.processor)
    out, layout = cfg.cache_dir(split), state_layout(data.model, cfg.coarse_layer)
    build_grid_cache(data.model, prepare, decode, rows, data.root, out, grid, layout, meta,
                     coarse_layer=cfg.coarse_layer, progress=progress, adapter=data.adapter, loss=loss, items=items)
    return load_grid_cache(out)


def reward_model(cache: GridCache, rewards) -> GridRewardModel:
    """The PPO reward of a cache: its reward terms (:class:`GridRewards` or
    :class:`~dsanchor.mllm.items.ItemRewards`) interpolated between its grid points."""
    return GridRewardModel(cache.grid, rewards.accuracy, rewards.hallucination)
