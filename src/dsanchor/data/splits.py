"""Train / val / test splits for a whole-pipeline run: from the dataset, from a split file, or seeded.

The heads are fit on train, the controllers and fixed_best on val, and every number is reported on test, so
a run needs all three. In order of precedence:

1. a split file given by the user (``splits.json`` ``{"train": [ids], ...}`` or Karpathy's
   ``dataset_coco.json``); images it does not list are left out of the run;
2. the dataset's own splits, when train, val and test each hold at least one image;
3. otherwise a seeded random split of the images by ``fractions``, which the caller announces.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsanchor.data.base import SPLIT_NAMES, read_splits
from dsanchor.data.records import Sample
from dsanchor.errors import DataError

__all__ = ["assign_splits"]


def _seeded(samples: Sequence[Sample], fractions: tuple[float, float, float], seed: int) -> list[Sample]:
    f = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    n = len(samples)
    n_val, n_test = max(1, int(round(n * f[1]))), max(1, int(round(n * f[2])))
    order = np.random.default_rng(seed).permutation(n)
    split = np.array(["train"] * n, dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val:n_val + n_test]] = "test"
    return [dataclasses.replace(s, split=str(split[k])) for k, s in enumerate(samples)]


def assign_splits(samples: Sequence[Sample], splits_file: str | Path | None = None,
                  fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 0) -> tuple[list[Sample], str]:
    """The samples with their ``split`` set, and a one-line account of where the splits came from.

    Raises:
        DataError: a split file that leaves a split empty, or fewer than three images for a seeded split.
    """
    if splits_file is not None:
        by_id = read_splits(Path(splits_file))
        kept = [dataclasses.replace(s, split=by_id[s.image_id]) for s in samples if s.image_id in by_id]
        counts = Counter(s.split for s in kept)
        missing = [sp for sp in SPLIT_NAMES if not counts[sp]]
        if missing:
            raise DataError(splits_file, f"no images of the dataset in split(s) {missing}; the file lists "
                                         f"{dict(counts)} of {len(samples)} images")
        left = len(samples) - len(kept)
        return kept, (f"splits from {splits_file}: " + ", ".join(f"{sp} {counts[sp]}" for sp in SPLIT_NAMES)
                      + (f" ({left} images not in the file are left out)" if left else ""))
    counts = Counter(s.split for s in samples)
    if all(counts[sp] for sp in SPLIT_NAMES):
        return list(samples), "splits from the dataset: " + ", ".join(f"{sp} {counts[sp]}" for sp in SPLIT_NAMES)
    if len(samples) < 3:
        raise DataError("dataset", f"a seeded train/val/test split needs at least 3 images, found {len(samples)}")
    out = _seeded(samples, fractions, seed)
    c = Counter(s.split for s in out)
    have = f"only {dict(counts)}" if any(counts.values()) else "none"
    return out, (f"the dataset has no complete train/val/test split ({have}): seeded split, seed {seed}, "
                 + ", ".join(f"{sp} {c[sp]}" for sp in SPLIT_NAMES))
