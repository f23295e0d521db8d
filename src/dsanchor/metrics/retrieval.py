"""Retrieval metrics: Recall@K as CLIP_benchmark defines it, and median rank.

CLIP_benchmark (LAION-AI/CLIP_benchmark, ``metrics/zeroshot_retrieval.py``) counts a query as a hit at K
when ANY of its positives is among its top K gallery items, and reports the share of hits. Both metrics
here rest on one number per query: the 1-based rank of its best-ranked positive.

Ties are broken pessimistically and deterministically: a negative whose score equals the best positive's
is ranked ahead of it, so ``rank = 1 + #(negatives scoring >= the best positive)``. (CLIP_benchmark's
``torch.topk`` leaves the order of ties unspecified.) A query without any positive never hits; its rank
is ``G + 1``, as CLIP_benchmark's 0/0 recall counts as a miss. K may exceed the gallery size G.

Queries are processed in chunks, so memory stays O(chunk x G) for any number of queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dsanchor.errors import MetricInputError

__all__ = ["ranks_of_first_positive", "recall_at_k", "median_rank", "chance_recall"]

_CHUNK_ELEMENTS = 1 << 24  # scores compared per chunk (x G columns); ~16M bools at a time


def _check(scores: torch.Tensor, positives: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise MetricInputError(f"scores must be a (queries, gallery) matrix; got shape {tuple(scores.shape)}")
    if positives.shape != scores.shape:
        raise MetricInputError(f"positives must have the shape of scores {tuple(scores.shape)}; "
                               f"got {tuple(positives.shape)}")
    if positives.dtype != torch.bool:
        raise MetricInputError(f"positives must be a bool tensor; got {positives.dtype}")
    if scores.numel() == 0:
        raise MetricInputError(f"scores is empty (shape {tuple(scores.shape)}); need >= 1 query and gallery item")
    if scores.is_floating_point() and torch.isnan(scores).any():
        raise MetricInputError("scores contain NaN; ranks would be meaningless")


@torch.no_grad()
def ranks_of_first_positive(scores: torch.Tensor, positives: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """1-based rank of each query's best-ranked positive (ties: negatives first, see the module docstring).

    Args:
        scores: (Q, G) similarity of each query to each gallery item; higher is better.
        positives: (Q, G) bool, True where the gallery item matches the query.
        chunk: queries per chunk (default: about 16M scores per chunk).

    Returns:
        (Q,) int64 ranks in [1, G], or G + 1 for a query with no positive.
    """
    _check(scores, positives)
    n_q, n_g = scores.shape
    chunk = chunk or max(1, _CHUNK_ELEMENTS // n_g)
    out = torch.empty(n_q, dtype=torch.long, device=scores.device)
    for a in range(0, n_q, chunk):
        s, p = scores[a:a + chunk], positives[a:a + chunk]  # (C, G)
        best = s.masked_fill(~p, float("-inf")).amax(dim=1, keepdim=True)  # (C, 1) best positive score
        ahead = ((s >= best) & ~p).sum(dim=1)  # (C,) negatives at or above it
        out[a:a + chunk] = torch.where(p.any(dim=1), ahead + 1, torch.full_like(ahead, n_g + 1))
    return out


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Share of queries with a positive in their top K, for each K.

    Args:
        scores: (Q, G) similarities; higher is better.
        positives: (Q, G) bool, True where the gallery item matches the query.
        ks: the K values; any K >= 1 works, also K >= G.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ...}``, fractions in [0, 1].
    """
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ks):
        raise MetricInputError(f"ks must be positive integers; got {tuple(ks)!r}")
    ranks = ranks_of_first_positive(scores, positives)
    has_positive = positives.any(dim=1)  # a query without one misses even when K > G
    return {f"R@{k}": float(((ranks <= k) & has_positive).double().mean()) for k in ks}


def median_rank(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Median over queries of the rank of the first positive (MedR; 1 is best).

    With an even number of queries the two middle ranks are averaged and the result floored, as VSE++
    and SCAN compute MedR, so the value is always a whole rank.
    """
    ranks = ranks_of_first_positive(scores, positives).cpu().numpy()
    return float(np.floor(np.median(ranks)))


def chance_recall(positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@k of a ranking drawn uniformly at random: the chance level beside a recall.

    A query with n of N gallery items relevant has a relevant item in a random top k with probability
    1 - C(N - n, k) / C(N, k); the result is its mean over the queries (rows of ``positives``).

    Args:
        positives: (Q, N) bool, at least one True per row.
    """
    pos = positives.bool()
    n_rel = pos.sum(1).double()  # (Q,)
    big_n = pos.shape[1]
    out = {}
    for k in ks:
        kk = min(k, big_n)
        # C(N - n, k) / C(N, k) = prod_{i < k} (N - n - i) / (N - i), zero once N - n - i <= 0
        i = torch.arange(kk, dtype=torch.float64)
        miss = ((big_n - n_rel.view(-1, 1) - i).clamp(min=0) / (big_n - i)).prod(1)  # (Q,)
        out[f"R@{k}"] = float((1 - miss).mean())
    return out
