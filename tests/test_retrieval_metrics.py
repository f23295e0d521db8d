"""Recall@K and median rank against a brute-force Python loop (ties, several positives, K >= gallery size)."""

from __future__ import annotations

import math

import pytest
import torch

from dsanchor.metrics import MetricInputError
from dsanchor.metrics.retrieval import median_rank, ranks_of_first_positive, recall_at_k


def _brute_ranks(scores: torch.Tensor, positives: torch.Tensor) -> list[int]:
    """Rank of the best positive; a negative tied with it ranks ahead (the documented pessimistic rule)."""
    out = []
    for s, p in zip(scores.tolist(), positives.tolist(), strict=True):
        pos = [v for v, is_pos in zip(s, p, strict=True) if is_pos]
        if not pos:
            out.append(len(s) + 1)
            continue
        best = max(pos)
        out.append(1 + sum(1 for v, is_pos in zip(s, p, strict=True) if not is_pos and v >= best))
    return out


def _brute_recall(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """CLIP_benchmark's definition: a hit when ANY positive is among the top K (ties as above)."""
    hits = 0
    for s, p in zip(scores.tolist(), positives.tolist(), strict=True):
        # sort by score descending, negatives before positives on ties
        order = sorted(range(len(s)), key=lambda j: (-s[j], p[j]))
        hits += any(p[j] for j in order[:k])
    return hits / len(scores)


def _random_case(seed: int, n_q: int = 37, n_g: int = 23, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n_q, n_g), generator=gen).float() / levels  # few values: many ties
    positives = torch.rand(n_q, n_g, generator=gen) < 0.1
    positives[torch.arange(n_q), torch.randint(0, n_g, (n_q,), generator=gen)] = True  # >= 1 positive each
    return scores, positives


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties_and_several_positives(seed):
    scores, positives = _random_case(seed)
    assert (positives.sum(1) > 1).any()
    ranks = ranks_of_first_positive(scores, positives)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == _brute_ranks(scores, positives)
    ks = (1, 2, 5, 10, 23, 50)  # 23 = gallery size, 50 > it
    got = recall_at_k(scores, positives, ks)
    assert list(got) == [f"R@{k}" for k in ks]
    for k in ks:
        assert got[f"R@{k}"] == pytest.approx(_brute_recall(scores, positives, k), abs=1e-12)
    assert got["R@23"] == got["R@50"] == 1.0


def test_continuous_scores_and_chunking():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(101, 40, generator=gen)
    positives = torch.rand(101, 40, generator=gen) < 0.05
    whole = ranks_of_first_positive(scores, positives)
    assert torch.equal(whole, ranks_of_first_positive(scores, positives, chunk=7))
    assert whole.tolist() == _brute_ranks(scores, positives)


def test_tie_rule_is_pessimistic():
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1]])
    positives = torch.tensor([[False, True, False, False]])
    assert ranks_of_first_positive(scores, positives).tolist() == [3]
    assert recall_at_k(scores, positives, (1, 2, 3))["R@2"] == 0.0
    # tied positives do not push each other down
    both = torch.tensor([[True, True, False, False]])
    assert ranks_of_first_positive(scores, both).tolist() == [2]


def test_query_without_positive_never_hits():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    positives = torch.tensor([[True, False], [False, False]])
    assert ranks_of_first_positive(scores, positives).tolist() == [1, 3]
    assert recall_at_k(scores, positives, (1, 5)) == {"R@1": 0.5, "R@5": 0.5}


def test_median_rank():
    scores, positives = _random_case(7, n_q=30)
    ranks = sorted(_brute_ranks(scores, positives))
    assert median_rank(scores, positives) == float(math.floor((ranks[14] + ranks[15]) / 2))
    odd = median_rank(scores[:29], positives[:29])
    assert odd == float(sorted(_brute_ranks(scores[:29], positives[:29]))[14])
    assert median_rank(torch.eye(4), torch.eye(4, dtype=torch.bool)) == 1.0


def test_bad_inputs_raise():
    s, p = torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool)
    with pytest.raises(MetricInputError, match="shape of scores"):
        recall_at_k(s, p[:, :2])
    with pytest.raises(MetricInputError, match="bool"):
        recall_at_k(s, p.int())
    with pytest.raises(MetricInputError, match="matrix"):
        recall_at_k(s[0], p[0])
    with pytest.raises(MetricInputError, match="positive integers"):
        recall_at_k(s, p, ks=(0,))
    with pytest.raises(MetricInputError, match="NaN"):
        recall_at_k(torch.full((3, 4), float("nan")), p)
    with pytest.raises(MetricInputError, match="empty"):
        recall_at_k(torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.bool))


def test_chance_recall_is_the_mean_over_random_rankings():
    import itertools

    from dsanchor.metrics.retrieval import chance_recall

    pos = torch.tensor([[True, False, False, False], [True, True, False, False]])
    ch = chance_recall(pos, ks=(1, 2, 10))
    assert ch["R@1"] == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert ch["R@2"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert ch["R@10"] == pytest.approx(1.0)
    # brute force: every ordering of the gallery is equally likely
    hits = {1: [], 2: []}
    for perm in itertools.permutations(range(4)):
        for k in hits:
            hits[k].append(pos[:, list(perm[:k])].any(1).double().mean().item())
    assert ch["R@1"] == pytest.approx(sum(hits[1]) / len(hits[1]))
    assert ch["R@2"] == pytest.approx(sum(hits[2]) / len(hits[2]))
