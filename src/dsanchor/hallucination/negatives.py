"""POPE-style negative sampling (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models").

For an image with ground-truth objects O, a negative is an object of the dataset vocabulary that is not
in O. POPE draws it three ways:

* ``random``: uniformly among the absent objects;
* ``popular``: the absent objects that occur in the most images of the dataset;
* ``adversarial``: the absent objects that co-occur most often with the objects of O (summed over O).

``popular`` and ``adversarial`` are rankings (ties go to the more frequent, then the lower vocabulary row),
so they are deterministic; ``random`` is deterministic for a ``torch.Generator`` seed.
:func:`build_pairs` turns this into balanced (image, object, label) pairs for training and evaluation.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from dsanchor.errors import ConfigError

__all__ = ["SAMPLINGS", "ObjectStats", "PresencePairs", "object_rows", "sample_negatives", "build_pairs"]

SAMPLINGS: tuple[str, ...] = ("random", "popular", "adversarial")


@dataclass
class ObjectStats:
    """Image-level object statistics of a dataset (what POPE's popular and adversarial samplings rank by).

    The co-occurrence counts are sparse, so a vocabulary of tens of thousands of names (Visual Genome)
    stays small.
    """

    frequency: torch.Tensor  # (V,) int64, number of images that contain each object
    cooccurrence: torch.Tensor  # (V, V) sparse COO int64, images that contain both objects; no diagonal

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], n_objects: int) -> ObjectStats:
        """Count over images given as lists of distinct vocabulary rows (see :func:`object_rows`)."""
        img = torch.tensor([i for i, r in enumerate(rows) for _ in r], dtype=torch.long)
        obj = torch.tensor([o for r in rows for o in r], dtype=torch.long)
        freq = torch.bincount(obj, minlength=n_objects) if len(obj) else torch.zeros(n_objects, dtype=torch.long)
        incidence = torch.sparse_coo_tensor(torch.stack([img, obj]), torch.ones(len(obj)), (len(rows), n_objects),
                                            check_invariants=True).coalesce()  # (N, V)
        with warnings.catch_warnings():  # sparse @ sparse goes through CSR, whose support torch calls beta
            warnings.simplefilter("ignore", UserWarning)
            co = torch.sparse.mm(incidence.t().coalesce(), incidence).coalesce()  # (V, V)
        idx, val = co.indices(), co.values()
        off = idx[0] != idx[1]
        co = torch.sparse_coo_tensor(idx[:, off], val[off].round().long(), (n_objects, n_objects),
                                     check_invariants=True).coalesce()
        return cls(frequency=freq, cooccurrence=co)

    def __len__(self) -> int:
        return int(self.frequency.shape[0])

    @functools.cached_property
    def _co_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The co-occurrence counts as CSR arrays (crow (V + 1,), col (nnz,), val (nnz,)) for row lookups."""
        idx, val = self.cooccurrence.indices(), self.cooccurrence.values()  # coalesced: sorted by row
        crow = torch.zeros(len(self) + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(idx[0], minlength=len(self)), 0)
        return crow, idx[1], val

    def cooccurring(self, present: Sequence[int]) -> torch.Tensor:
        """(V,) int64: for each object, its co-occurrence counts summed over the ``present`` objects."""
        crow, col, val = self._co_rows
        rows = torch.as_tensor(sorted(set(present)), dtype=torch.long)
        lo, n = crow[rows], crow[rows + 1] - crow[rows]  # (K,) start and length of each row's entries
        start = torch.repeat_interleave(lo - torch.cumsum(n, 0) + n, n)  # (E,) per entry: row start - offset
        at = start + torch.arange(int(n.sum()))  # (E,) positions in col / val
        return torch.bincount(col[at], weights=val[at].double(), minlength=len(self)).round().long()

    @functools.cached_property
    def popular_order(self) -> torch.Tensor:
        """(V,) rows from the most to the least frequent (ties: lower row first)."""
        return torch.argsort(self.frequency, descending=True, stable=True)


@dataclass
class PresencePairs:
    """(image, object) questions with their answers."""

    image: torch.Tensor  # (P,) int64, row of the image in its ImageFeatures
    object: torch.Tensor  # (P,) int64, row of the object in the vocabulary
    label: torch.Tensor  # (P,) float32, 1 if the object is in the image

    def __len__(self) -> int:
        return int(self.image.shape[0])


def object_rows(objects: Sequence[Sequence[str]], index: dict[str, int]) -> list[list[int]]:
    """Each image's distinct ground-truth objects as sorted vocabulary rows; names outside ``index`` are dropped."""
    return [sorted({index[n] for n in names if n in index}) for names in objects]


def _first_not_in(order: Iterable[int], excluded: set[int], k: int) -> list[int]:
    out: list[int] = []
    for r in order:
        if r not in excluded:
            out.append(r)
            if len(out) == k:
                break
    return out


def _adversarial(present: Sequence[int], stats: ObjectStats, excluded: set[int], k: int) -> list[int]:
    """The k objects that co-occur most with ``present`` (ties: more frequent, then lower row)."""
    v = len(stats)
    score = stats.cooccurring(present)  # (V,)
    # one distinct integer per row that orders by (score, frequency, -row); < 2**63 for realistic datasets
    key = (score * (int(stats.frequency.max()) + 1) + stats.frequency) * v + torch.arange(v - 1, -1, -1)
    top = torch.topk(key, min(v, k + len(excluded))).indices  # (k + |excluded|,) in descending key order
    return _first_not_in(top.tolist(), excluded, k)


def _random(stats: ObjectStats, excluded: set[int], k: int, generator: torch.Generator | None) -> list[int]:
    """k distinct absent rows, uniformly: rejection sampling when most rows are absent, else a permutation."""
    v = len(stats)
    if 2 * len(excluded) > v:
        return _first_not_in(torch.randperm(v, generator=generator).tolist(), excluded, k)
    out: list[int] = []
    seen = set(excluded)
    while len(out) < min(k, v - len(excluded)):
        for r in torch.randint(v, (2 * k + 8,), generator=generator).tolist():
            if r not in seen:
                seen.add(r)
                out.append(r)
                if len(out) == k:
                    break
    return out


def sample_negatives(present: Sequence[int], k: int, sampling: str, stats: ObjectStats,
                     generator: torch.Generator | None = None, exclude: Sequence[int] = ()) -> list[int]:
    """Up to ``k`` absent objects of an image, drawn POPE-style.

    Args:
        present: the image's ground-truth objects (vocabulary rows).
        k: how many to return (fewer when fewer objects are absent).
        sampling: ``"random"``, ``"popular"`` or ``"adversarial"``.
        stats: dataset statistics over the same vocabulary.
        generator: seeds ``random``.
        exclude: further rows never to return (e.g. negatives already drawn by another sampling).

    Returns:
        Distinct vocabulary rows, none of them in ``present`` or ``exclude``.
    """
    if sampling not in SAMPLINGS:
        raise ConfigError(f"unknown negative sampling {sampling!r}; valid ones are {list(SAMPLINGS)}")
    excluded = set(present) | set(exclude)
    if k <= 0:
        return []
    if sampling == "random":
        return _random(stats, excluded, k, generator)
    if sampling == "popular":
        return _first_not_in(stats.popular_order[:k + len(excluded)].tolist(), excluded, k)
    return _adversarial(present, stats, excluded, k)


def _choose(rows: list[int], k: int, generator: torch.Generator | None) -> list[int]:
    """A random subset of ``k`` rows (all of them when k <= 0 or k >= len)."""
    if k <= 0 or k >= len(rows):
        return list(rows)
    return sorted(rows[i] for i in torch.randperm(len(rows), generator=generator)[:k].tolist())


def build_pairs(rows: Sequence[Sequence[int]], stats: ObjectStats, samplings: Sequence[str] = SAMPLINGS,
                max_positives: int = 0, generator: torch.Generator | None = None,
                cache: dict[tuple[int, str, int], list[int]] | None = None) -> PresencePairs:
    """Balanced presence questions: per image, its positives and as many negatives.

    Images without a ground-truth object are skipped (POPE asks only about annotated images). The
    negatives of an image are split as evenly as possible over ``samplings`` (the share that does not
    divide evenly rotates over images), each drawn without repeating another's. The ranked samplings
    (popular, adversarial) draw before ``random``, so their draws depend only on the image.

    Args:
        rows: per image, its ground-truth objects as vocabulary rows.
        stats: dataset statistics for the popular and adversarial samplings.
        samplings: which samplings to draw negatives from.
        max_positives: at most this many positives per image, drawn at random (0 = all).
        generator: seeds every random choice; the result is deterministic for a seed.
        cache: keeps the ranked samplings' draws between calls with the same ``rows``, ``stats``,
            ``samplings`` and ``max_positives`` (e.g. one per training epoch); pass an empty dict.
    """
    if not samplings:
        raise ConfigError(f"give at least one negative sampling out of {list(SAMPLINGS)}")
    img: list[int] = []
    obj: list[int] = []
    lab: list[float] = []
    n_s = len(samplings)
    order = sorted(range(n_s), key=lambda j: samplings[j] == "random")
    for i, present in enumerate(rows):
        if not present:
            continue
        pos = _choose(list(present), max_positives, generator)
        neg: list[int] = []
        for j in order:
            s = samplings[j]
            quota = len(pos) // n_s + (1 if (j - i) % n_s < len(pos) % n_s else 0)
            keep = cache is not None and s != "random"
            if keep and (i, s, quota) in cache:
                drawn = cache[(i, s, quota)]
            else:
                drawn = sample_negatives(present, quota, s, stats, generator, exclude=neg)
                if keep:
                    cache[(i, s, quota)] = drawn
            neg += drawn
        img += [i] * (len(pos) + len(neg))
        obj += pos + neg
        lab += [1.0] * len(pos) + [0.0] * len(neg)
    return PresencePairs(torch.tensor(img, dtype=torch.long), torch.tensor(obj, dtype=torch.long),
                         torch.tensor(lab, dtype=torch.float32))
