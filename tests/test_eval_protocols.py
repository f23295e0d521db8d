"""The two relevance protocols of the retrieval evaluation, on hand-built features of real synth scene graphs."""

from __future__ import annotations

import pytest
import torch

from dsanchor.align.heads import AlignConfig, AlignmentHeads
from dsanchor.data import SynthConfig, caption_scene, holds
from dsanchor.data.synth import build_scene
from dsanchor.eval.methods import (
    EvalConfig,
    fixed_g,
    hallucination_rates,
    oracle_g,
    query_ranks,
    retrieval_metrics,
    select_fixed_g,
)
from dsanchor.eval.views import prepare_view, split_halves, subset
from dsanchor.features.types import GRANULARITY_CODES, ImageFeatures, TextFeatures, exact_relevance
from dsanchor.hallucination.matrices import hallucination_matrices
from dsanchor.state import StateConfig


@pytest.fixture(scope="module")
def split():
    gen = torch.Generator().manual_seed(0)
    cfg = SynthConfig(scenes=1, seed=2)
    scenes = [build_scene(i, cfg, "test")[0] for i in range(24)]
    caps = [(i, c) for i, s in enumerate(scenes) for c in caption_scene(s)]
    n, t, r = len(scenes), len(caps), 4
    images = ImageFeatures(torch.arange(n), torch.randn(n, 6, generator=gen), torch.randn(n, r, 5, generator=gen),
                           torch.rand(n, r, 4, generator=gen), torch.ones(n, r, dtype=torch.bool),
                           [[f"{o['color']} {o['shape']}" for o in s["objects"]] for s in scenes], ["test"] * n, scenes)
    texts = TextFeatures(torch.randn(t, 7, generator=gen), torch.tensor([i for i, _ in caps]),
                         torch.tensor([GRANULARITY_CODES[c.granularity] for _, c in caps]), [c.text for _, c in caps],
                         [c.fact for _, c in caps])
    torch.manual_seed(0)
    heads = AlignmentHeads(AlignConfig(coarse_dim=6, region_dim=5, text_dim=7, dim=8, hidden=16))
    return prepare_view(heads, images, texts, StateConfig()), images, texts


def test_exact_relevance_is_holds_and_contains_the_pairs(split):
    view, images, texts = split
    assert view.exact is not None and view.exact.shape == view.positives.shape
    for t in range(len(texts)):
        for n in range(len(images)):
            assert bool(view.exact[t, n]) == (holds(texts.facts[t], images.scenes[n]) or bool(view.positives[t, n]))
    assert (view.exact | view.positives).equal(view.exact)
    assert view.exact.sum() > view.positives.sum()  # synthetic captions are true of many images


def test_both_protocols_match_a_brute_force_loop(split):
    view, _, _ = split
    g = fixed_g(view, 0.4)
    m = retrieval_metrics(view, g, (1, 5))
    from dsanchor.retrieval import anchored_scores

    scores = anchored_scores(view.terms, g.t2i.view(-1, 1))
    for protocol, row in (("paired", m["t2i"]), ("exact", m["exact"]["t2i"])):
        pos = view.positives if protocol == "paired" else view.exact
        for k in (1, 5):
            hits = 0
            for q in range(scores.shape[0]):
                order = sorted(range(scores.shape[1]), key=lambda j: (-float(scores[q, j]), bool(pos[q, j])))
                hits += any(bool(pos[q, j]) for j in order[:k])  # ties: negatives first, as documented
            assert row[f"R@{k}"] == pytest.approx(hits / scores.shape[0])
    assert m["exact"]["t2i"]["R@1"] >= m["t2i"]["R@1"]
    assert set(m["by_granularity"]["object"]) >= {"t2i_R@1", "exact_t2i_R@1", "exact_t2i_MRR", "mean_g"}


def test_fixed_best_and_oracle_use_exact_relevance(split):
    view, _, _ = split
    g_best, curve = select_fixed_g(view, EvalConfig(grid=5))
    assert g_best in [c["g"] for c in curve] and max(c["score"] for c in curve) == next(
        c["score"] for c in curve if c["g"] == g_best)
    oracle = query_ranks(view, oracle_g(view, 5))["t2i"]
    for g in (0.0, 0.25, 0.5, 0.75, 1.0):  # the oracle is at least as good as every grid g, query by query
        assert (oracle <= query_ranks(view, fixed_g(view, g))["t2i"]).all()


def test_hallucination_rates_report_coverage(split):
    view, images, texts = split
    hall = hallucination_matrices(texts, images, "synth")
    h = hallucination_rates(view, fixed_g(view, 0.5), hall)
    assert h["coverage_t2i"] == pytest.approx(float(hall.names_object.double().mean()))
    assert 0 < h["coverage_t2i"] < 1  # scene captions name no object
    assert 0 <= h["coverage_i2t"] <= 1 and -1 <= h["grounded_i2t"] <= 1
    assert not hall.gt[~hall.names_object].any()  # naming nothing never counts as hallucinating


def test_subset_keeps_scene_graphs_and_facts(split):
    _, images, texts = split
    keep, _ = split_halves(images, 0)
    img, txt = subset(images, texts, keep)
    assert len(img.scenes) == len(img) and len(txt.facts) == len(txt)
    rel = exact_relevance(txt, img)
    assert rel is not None and rel.shape == (len(txt), len(img))
