import torch
from torch.nn import functional as F

from dsanchor.align.heads import JointFeatures
from dsanchor.anchoring import anchor
from dsanchor.retrieval import anchored_scores, pair_terms, pool_pairs, topk_search, two_stage_scores


def _toy(t=6, n=5, r=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(t, d, generator=g), dim=-1)
    mask = torch.rand(n, r, generator=g) > 0.3
    mask[:, 0] = True
    regions = F.normalize(torch.randn(n, r, d, generator=g), dim=-1) * mask.unsqueeze(-1)
    coarse = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return text, JointFeatures(coarse, regions, mask)


def test_anchored_scores_equal_cosine_with_explicit_anchor():
    text, img = _toy()
    s = 7.0
    terms = pair_terms(text, img, s, chunk=4)
    for g in (0.0, 0.3, 0.8, 1.0):
        got = anchored_scores(terms, g)
        for q in range(text.shape[0]):
            p = pool_pairs(text[q].expand(5, -1), img.regions, img.mask, s)  # (N, D)
            v = anchor(p, img.coarse, g)
            want = F.cosine_similarity(text[q].expand(5, -1), v, dim=-1)
            assert torch.allclose(got[q], want, atol=1e-5)


def test_per_query_g_and_transpose():
    text, img = _toy()
    terms = pair_terms(text, img, 5.0)
    g = torch.linspace(0, 1, text.shape[0]).view(-1, 1)
    rows = anchored_scores(terms, g)
    for q in range(text.shape[0]):
        assert torch.allclose(rows[q], anchored_scores(terms, float(g[q]))[q])
    gi = torch.linspace(0, 1, 5).view(-1, 1)
    cols = anchored_scores(terms.t(), gi)  # (N, T)
    assert cols.shape == (5, 6)
    assert torch.allclose(cols[2], anchored_scores(terms, float(gi[2]))[:, 2])


def test_topk_torch_equals_faiss_and_brute_force():
    g = torch.Generator().manual_seed(1)
    q, x = torch.randn(20, 16, generator=g), torch.randn(300, 16, generator=g)
    s1, i1 = topk_search(q, x, 7, backend="torch", chunk=6)
    s2, i2 = topk_search(q, x, 7, backend="faiss")
    brute = (q @ x.T).argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(i1, brute) and torch.equal(i2, brute)
    assert torch.allclose(s1, s2, atol=1e-4)
    assert topk_search(q, x[:3], 10)[1].shape == (20, 3)


def test_two_stage_equals_exact_when_m_covers_gallery():
    text, img = _toy(t=5, n=6)
    terms = pair_terms(text, img, 5.0)
    g = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    exact = anchored_scores(terms, g.view(-1, 1))
    two = two_stage_scores(text, img, 5.0, g, m=6)
    assert torch.equal(exact.argsort(1), two.argsort(1))
    # with m=2 the top-2 by coarse come first
    two2 = two_stage_scores(text, img, 5.0, g, m=2)
    top2 = terms.coarse.topk(2, dim=1).indices
    assert torch.equal(two2.topk(2, dim=1).indices.sort(1).values, top2.sort(1).values)


def test_batched_rerank_equals_a_loop_over_queries_and_search_equals_dense():
    from dsanchor.retrieval import rerank_terms, two_stage_search

    text, img = _toy(t=7, n=9)
    g = torch.linspace(0, 1, 7)
    cand = (text @ img.coarse.T).topk(4, dim=1).indices  # (Q, M)
    batched = rerank_terms(text, img, 5.0, cand)
    for q in range(7):  # reference: pair_terms of one query on its own gathered candidates
        sub = type(img)(img.coarse[cand[q]], img.regions[cand[q]], img.mask[cand[q]], None, None)
        ref = pair_terms(text[q:q + 1], sub, 5.0)
        for a, b in zip(batched, ref, strict=True):
            torch.testing.assert_close(a[q], b[0], atol=1e-5, rtol=1e-5)
    dense = two_stage_scores(text, img, 5.0, g, m=4)
    for backend in ("torch", "faiss"):
        s, i = two_stage_search(text, img, 5.0, g, m=4, k=3, backend=backend)
        assert torch.equal(i, dense.topk(3, dim=1).indices)
        torch.testing.assert_close(s, dense.topk(3, dim=1).values, atol=1e-5, rtol=1e-5)


def test_precomputed_gallery_gives_same_terms():
    text, img = _toy()
    plain = pair_terms(text, img, 6.0)
    cached = pair_terms(text, JointFeatures(img.coarse, img.regions, img.mask).precompute(), 6.0)
    for a, b in zip(plain, cached, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
