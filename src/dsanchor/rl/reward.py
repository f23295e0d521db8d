"""The retrieval reward: R_acc from the query's rank, R_hall from the hallucination detector.

The query pool of a split is its T caption queries (text-to-image) followed by its N image queries
(image-to-text). Relevance is the split's :attr:`~dsanchor.eval.views.SplitView.relevant` matrix: exact
(every image a caption is true of) where the data has scene graphs, else paired.

* R_acc is the reciprocal rank of the first relevant item by default. Under exact relevance hit@10 is
  nearly always 1 (R@10 saturates), so it cannot tell two g apart; the reciprocal rank, like R@1, still can.
  ``--no-dense`` gives hit@K.
* R_hall reads the detector's (T, N) estimate ``share[m, n]`` of the objects named in caption m that
  image n lacks, at the top-1 pair (t2i query m: ``[m, top image]``; i2t query n: ``[top caption, n]``),
  and scores it with :func:`~dsanchor.hallucination.matrices.grounded_score`: ``1 - 2 * share`` when the
  caption names an object, 0 when it names none. So a correct object caption ranked first (+1) is rewarded
  over a caption that names nothing (0), which is rewarded over a wrong one (-1), and the penalty cannot be
  lowered by ranking object-free captions first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from dsanchor.retrieval import PairTerms

__all__ = ["AccuracyConfig", "RetrievalReward"]


@dataclass
class AccuracyConfig:
    k: int = field(default=10, metadata={"help": "K of the hit@K accuracy reward (with --no-dense)"})
    dense: bool = field(default=True, metadata={"help": "reciprocal rank of the first relevant item (else hit@K)"})


def _cos(fine, coarse, cross, g: float) -> np.ndarray:
    den = np.sqrt(np.maximum(g * g + (1 - g) ** 2 + 2 * g * (1 - g) * cross, 1e-12))
    return (g * fine + (1 - g) * coarse) / den


class RetrievalReward:
    """(R_acc, R_hall) of a query of the pool at a g.

    Args:
        terms: (T, N) pair terms of the split (rows texts).
        positives: (T, N) bool relevance (exact where it exists).
        hall: (T, N) estimated share of a caption's named objects that an image lacks, or None for no
            hallucination term.
        names_object: (T,) bool, the caption names an object (needed with ``hall``).
        config: hit@K or reciprocal rank.
    """

    def __init__(self, terms: PairTerms, positives: torch.Tensor, hall: torch.Tensor | None,
                 config: AccuracyConfig, names_object: torch.Tensor | None = None):
        self.t, self.n = positives.shape
        self.fine, self.coarse, self.cross = (x.double().numpy() for x in (terms.fine, terms.coarse, terms.cross))
        self.pos = positives.numpy()
        self.config = config
        self.hall = None
        if hall is not None:
            if names_object is None:
                raise ValueError("a hallucination matrix needs names_object, which captions name an object")
            from dsanchor.hallucination.matrices import grounded_score

            self.hall = grounded_score(hall.double(), names_object.view(-1, 1)).numpy()  # (T, N)

    def __len__(self) -> int:
        return self.t + self.n

    def fingerprint(self) -> str:
        """Identifies the reward's inputs (for PPO's resume check)."""
        h = hashlib.sha256()
        for a in (self.fine, self.coarse, self.cross, self.pos, self.hall):
            h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes())
        h.update(repr((self.config.k, self.config.dense)).encode())
        return h.hexdigest()[:16]

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
        return r_acc, float(self.hall[q, top] if q < self.t else self.hall[top, q - self.t])
