"""Retrieval with anchored embeddings, exact and two-stage.

For a text t (unit norm), an image with unit scene vector c and region vectors r_j, DSA scores

    cos(t, V')  with  V' = g * p_hat + (1 - g) * c,   p_hat = p / |p|,  p = sum_j w_j r_j,

where ``w = softmax(s * t . r_j)`` over the image's valid regions (the text-pooled fine vector).
Expanding the cosine, every (query, image) pair needs only three scalars:

    fine = t . p_hat,   coarse = t . c,   cross = p_hat . c
    cos(t, V') = (g * fine + (1 - g) * coarse) / sqrt(g^2 + (1 - g)^2 + 2 g (1 - g) cross)

so :func:`pair_terms` computes them once in ``(Q, G, R)`` chunks (never a ``(Q, G, D)`` tensor) and
:func:`anchored_scores` evaluates any g, per query or per pair, in O(Q * G). The test suite checks this
identity against :func:`dsanchor.anchoring.anchor` on explicit vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from dsanchor.align.heads import JointFeatures

__all__ = ["PairTerms", "pair_terms", "anchored_scores", "pool_pairs", "positives_matrix", "faiss_index",
           "topk_search", "two_stage_scores", "two_stage_search", "rerank_terms", "rerank_all", "Compose"]


class PairTerms(NamedTuple):
    """Per (text, image) pair scalars; rows are texts, columns images."""

    coarse: torch.Tensor  # (T, N) cos(t, c)
    fine: torch.Tensor  # (T, N) cos(t, p_hat)
    cross: torch.Tensor  # (T, N) cos(p_hat, c)
    entropy: torch.Tensor  # (T, N) entropy of the attention weights over regions, normalised to [0, 1]

    def t(self) -> PairTerms:
        """Transpose: rows become images, columns texts."""
        return PairTerms(*(x.T for x in self))

    def index(self, rows: torch.Tensor) -> PairTerms:
        return PairTerms(*(x[rows] for x in self))


def _attention(text: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor, pool_s: float) -> tuple:
    """Attention of each text over each image's regions.

    Args:
        text: (T, D) unit vectors. regions: (N, R, D). mask: (N, R) bool.
    Returns:
        w (T, N, R) weights (zero on masked regions), s_r (T, N, R) = t . r_j.
    """
    s_r = torch.einsum("td,nrd->tnr", text, regions)  # (T, N, R)
    logits = (pool_s * s_r).masked_fill(~mask.unsqueeze(0), float("-inf"))
    w = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # rows with no region give all zeros
    return w, s_r


def pair_terms(text: torch.Tensor, images: JointFeatures, pool_s: float, chunk: int = 128) -> PairTerms:
    """Compute :class:`PairTerms` for every text against every image, ``chunk`` texts at a time.

    Differentiable; wrap it in ``torch.no_grad()`` for evaluation.
    """
    gram = images.gram if images.gram is not None else \
        torch.einsum("nrd,nkd->nrk", images.regions, images.regions)  # (N, R, R)
    rc = images.rc if images.rc is not None else torch.einsum("nrd,nd->nr", images.regions, images.coarse)  # (N, R)
    n_valid = images.mask.sum(-1).clamp_min(2).float()  # (N,)
    out = []
    for start in range(0, text.shape[0], chunk):
        t = text[start:start + chunk]
        w, s_r = _attention(t, images.regions, images.mask, pool_s)
        tp = (w * s_r).sum(-1)  # (t, N)
        norm_p = torch.einsum("tnr,nrk,tnk->tn", w, gram, w).clamp_min(1e-12).sqrt()  # (t, N)
        pc = (w * rc.unsqueeze(0)).sum(-1)  # (t, N)
        ent = -(w * w.clamp_min(1e-12).log()).sum(-1) / n_valid.log()  # (t, N)
        out.append((t @ images.coarse.T, tp / norm_p, pc / norm_p, ent))
    return PairTerms(*(torch.cat(parts) for parts in zip(*out, strict=False)))


def anchored_scores(terms: PairTerms, g: torch.Tensor | float) -> torch.Tensor:
    """cos(t, g * p_hat + (1 - g) * c) for every pair.

    Args:
        terms: pair scalars of shape (Q, G) (either orientation).
        g: granularity broadcastable to (Q, G): a float, (Q, 1) per row or (1, G) per column.
    Returns:
        (Q, G) scores.
    """
    g = torch.as_tensor(g, dtype=terms.coarse.dtype)
    num = g * terms.fine + (1 - g) * terms.coarse
    den = (g * g + (1 - g) ** 2 + 2 * g * (1 - g) * terms.cross).clamp_min(1e-12).sqrt()
    return num / den


def pool_pairs(text: torch.Tensor, regions: torch.Tensor, mask: torch.Tensor, pool_s: float) -> torch.Tensor:
    """The text-pooled fine vector p_hat for paired rows.

    Args:
        text: (P, D) unit vectors. regions: (P, R, D) the paired image's regions. mask: (P, R).
    Returns:
        (P, D) unit vectors (zero for an image with no region).
    """
    s_r = torch.einsum("pd,prd->pr", text, regions)  # (P, R)
    w = torch.softmax((pool_s * s_r).masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.nn.functional.normalize(torch.einsum("pr,prd->pd", w, regions), dim=-1)  # (P, D)


def faiss_index(gallery: torch.Tensor):
    """A faiss ``IndexFlatIP`` over ``gallery`` (G, D), built once for :func:`topk_search` to reuse.

    Building copies the whole gallery (a 10k x 256 index costs several times a single query's search), so
    a fixed gallery searched query by query should pass its index to every call.
    """
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.float().contiguous().numpy())
    return index


@torch.no_grad()
def topk_search(queries: torch.Tensor, gallery: torch.Tensor, k: int, backend: str = "torch",
                chunk: int = 1024, index=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k with bounded memory.

    Args:
        queries: (Q, D). gallery: (G, D). k: neighbours per query (clipped to G).
        backend: "torch" (chunked matmul) or "faiss" (``IndexFlatIP``).
        index: with backend "faiss", a :func:`faiss_index` of ``gallery`` to search instead of building one.
    Returns:
        scores (Q, k) and indices (Q, k), best first.
    """
    k = min(k, gallery.shape[0])
    if backend == "faiss":
        if index is None:
            index = faiss_index(gallery)
        elif (index.ntotal, index.d) != tuple(gallery.shape):
            raise ValueError(f"the faiss index holds {index.ntotal} vectors of size {index.d} but the gallery is "
                             f"{tuple(gallery.shape)}; build it with faiss_index(gallery)")
        s, i = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(s), torch.from_numpy(i).long()
    if backend != "torch":
        raise ValueError(f"unknown search backend {backend!r}; valid: ['faiss', 'torch']")
    if index is not None:
        raise ValueError("a prebuilt index is searched by backend='faiss'; got backend='torch'")
    scores, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        s, i = (queries[start:start + chunk] @ gallery.T).topk(k, dim=1)
        scores.append(s)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


_RERANK_ELEMENTS = 1 << 24  # region values gathered per chunk of queries (q x M x R x D), ~64 MB of float32


def rerank_terms(text: torch.Tensor, images: JointFeatures, pool_s: float, cand: torch.Tensor) -> PairTerms:
    """:class:`PairTerms` of each query against its own candidates, in one batched pass (no loop per query).

    Args:
        text: (Q, D) unit vectors. images: the gallery. cand: (Q, M) gallery indices per query.
    Returns:
        terms of shape (Q, M), equal to :func:`pair_terms` on the gathered pairs.
    """
    reg, mask, coarse = images.regions[cand], images.mask[cand], images.coarse[cand]  # (Q,M,R,D) (Q,M,R) (Q,M,D)
    s_r = torch.einsum("qd,qmrd->qmr", text, reg)  # (Q, M, R)
    w = torch.softmax((pool_s * s_r).masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    gram = images.gram[cand] if images.gram is not None else torch.einsum("qmrd,qmkd->qmrk", reg, reg)
    rc = images.rc[cand] if images.rc is not None else torch.einsum("qmrd,qmd->qmr", reg, coarse)
    norm_p = torch.einsum("qmr,qmrk,qmk->qm", w, gram, w).clamp_min(1e-12).sqrt()  # (Q, M)
    n_valid = mask.sum(-1).clamp_min(2).float()  # (Q, M)
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1) / n_valid.log()
    return PairTerms(torch.einsum("qd,qmd->qm", text, coarse), (w * s_r).sum(-1) / norm_p,
                     (w * rc).sum(-1) / norm_p, ent)


Compose = Callable[[PairTerms, torch.Tensor], PairTerms]  # (terms (Q, M), cand (Q, M)) -> terms


def rerank_all(text: torch.Tensor, images: JointFeatures, pool_s: float, cand: torch.Tensor,
               compose: Compose | None = None) -> PairTerms:
    """(Q, M) :class:`PairTerms` of each query's candidates, a bounded chunk of queries at a time; ``compose``
    rescores the multi-phrase queries (:func:`dsanchor.relations.compose_fine` through a view or a pipeline)."""
    r, d = images.regions.shape[1], images.regions.shape[2]
    chunk = max(1, _RERANK_ELEMENTS // max(cand.shape[1] * r * max(d, r), 1))
    parts = [rerank_terms(text[a:a + chunk], images, pool_s, cand[a:a + chunk]) for a in range(0, text.shape[0], chunk)]
    if not parts:
        empty = torch.zeros(0, cand.shape[1])
        return PairTerms(empty, empty, empty, empty)
    terms = PairTerms(*(torch.cat(x) for x in zip(*parts, strict=True)))
    return compose(terms, cand) if compose is not None else terms


def _per_query_g(g: torch.Tensor | float, q: int, dtype) -> torch.Tensor:
    from dsanchor.anchoring import check_g

    g = check_g(g, q).to(dtype)
    return g.expand(q) if g.dim() == 0 else g


@torch.no_grad()
def two_stage_search(text: torch.Tensor, images: JointFeatures, pool_s: float, g: torch.Tensor | float,
                     m: int = 100, k: int = 10, backend: str = "torch",
                     index=None, compose: Compose | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-to-image top-k: the coarse top-M from :func:`topk_search` (torch or faiss), re-ranked with DSA.

    Args:
        text: (Q, D). images: the gallery. g: per query (Q,) or a float. m: first-stage depth. k: results.
        backend: first-stage search, "torch" or "faiss". index: with "faiss", a :func:`faiss_index` of
            ``images.coarse`` reused across calls (else one is built per call).
        compose: rescores the multi-phrase queries in the re-ranking (:data:`Compose`).
    Returns:
        scores (Q, k) and gallery indices (Q, k), best first.
    """
    m = min(m, images.coarse.shape[0])
    _, cand = topk_search(text, images.coarse, m, backend, index=index)  # (Q, M)
    g = _per_query_g(g, text.shape[0], text.dtype).view(-1, 1)
    scores = anchored_scores(rerank_all(text, images, pool_s, cand, compose), g)  # (Q, M)
    top, pos = scores.topk(min(k, m), dim=1)
    return top, cand.gather(1, pos)


@torch.no_grad()
def two_stage_scores(text: torch.Tensor, images: JointFeatures, pool_s: float, g: torch.Tensor | float,
                     m: int = 100, compose: Compose | None = None) -> torch.Tensor:
    """Text-to-image scores: the coarse top-M re-ranked with DSA, the rest ranked after them by coarse.

    Args:
        text: (Q, D). images: the gallery. g: per query (Q,) or a float. m: first-stage depth.
        compose: rescores the multi-phrase queries in the re-ranking (:data:`Compose`).
    Returns:
        (Q, N) scores whose ranking equals the two-stage ranking (dense: for recall against exact scoring).
    """
    coarse = text @ images.coarse.T  # (Q, N)
    m = min(m, coarse.shape[1])
    cand = coarse.topk(m, dim=1).indices  # (Q, M)
    g = _per_query_g(g, text.shape[0], text.dtype).view(-1, 1)
    dsa = anchored_scores(rerank_all(text, images, pool_s, cand, compose), g)
    return (coarse - 4.0).scatter_(1, cand, dsa)  # non-candidates: below every cosine, in coarse order


def positives_matrix(text_image_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """(T, N) bool: caption t describes image n."""
    return text_image_ids.view(-1, 1) == image_ids.view(1, -1)
