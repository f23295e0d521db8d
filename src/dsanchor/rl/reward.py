"""The retrieval reward: R_acc from the query's rank, R_hall from the hallucination detector.

The query pool of a split is its T caption queries (text-to-image) followed by its N image queries
(image-to-text). For both directions the hallucination term reads one (T, N) matrix
``hall[m, n]``: the detector's estimate of the share of objects named in caption m that image n lacks
(0 when the caption names no object). For a t2i query m it is ``hall[m, top-1 image]``; for an i2t query
n it is ``hall[top-1 caption, n]``. R_hall is minus that share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dsanchor.retrieval import PairTerms

__all__ = ["AccuracyConfig", "RetrievalReward"]


@dataclass
class AccuracyConfig:
    k: int = field(default=10, metadata={"help": "K of the hit@K accuracy reward"})
    dense: bool = field(default=False, metadata={"help": "use the reciprocal rank instead of hit@K"})


def _cos(fine, coarse, cross, g: float) -> np.ndarray:
    den = np.sqrt(np.maximum(g * g + (1 - g) ** 2 + 2 * g * (1 - g) * cross, 1e-12))
    return (g * fine + (1 - g) * coarse) / den


class RetrievalReward:
    """(R_acc, R_hall) of a query of the pool at a g.

    Args:
        terms: (T, N) pair terms of the split (rows texts).
        positives: (T, N) bool.
        hall: (T, N) hallucination estimates in [0, 1], or None for no hallucination term.
        config: K and hit vs reciprocal rank.
    """

    def __init__(self, terms: PairTerms, positives: torch.Tensor, hall: torch.Tensor | None, config: AccuracyConfig):
        self.t, self.n = positives.shape
        self.fine, self.coarse, self.cross = (x.double().numpy() for x in (terms.fine, terms.coarse, terms.cross))
        self.pos = positives.numpy()
        self.hall = None if hall is None else hall.double().numpy()
        self.config = config

    def __len__(self) -> int:
        return self.t + self.n

    def _row(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        if q < self.t:
            return (self.fine[q], self.coarse[q], self.cross[q]), self.pos[q]
        n = q - self.t
        return (self.fine[:, n], self.coarse[:, n], self.cross[:, n]), self.pos[:, n]

    def __call__(self, q: int, g: float) -> tuple[float, float]:
        terms, pos = self._row(q)
        scores = _cos(*terms, g)
        best_pos = scores[pos].max() if pos.any() else -np.inf
        rank = 1 + int((scores[~pos] >= best_pos).sum())  # pessimistic ties, as in metrics.retrieval
        r_acc = 1.0 / rank if self.config.dense else float(rank <= self.config.k)
        if self.hall is None:
            return r_acc, 0.0
        top = int(scores.argmax())
        share = self.hall[q, top] if q < self.t else self.hall[top, q - self.t]
        return r_acc, -float(share)
