"""The controller's state: what the granularity controller sees about a query (DESIGN.md "Controller").

Two kinds (``StateConfig.state_kind``):

* ``"query"`` (the default): the query's own encoder features, ``[raw text | raw scene vector | direction]``
  of size ``D_text + D_coarse + 1``: a text query fills the text part (the image part is zero), an image
  query the image part. With ``codebook = k > 0`` the controller replaces this by the one-hot of the
  nearest of k text centroids or k image centroids, fit by spherical k-means on the training queries
  (:meth:`dsanchor.controller.GranularityController.fit_codebook`): a query *type*, such as "a count
  caption" or "a single-object caption". Why: the controller is trained on the val split's ~1,200
  queries, and with the summary state below PPO fits each query's own noise (on the demo, val R@10 0.29
  against test 0.23, g varying by ±0.3 within one caption granularity). A k = 8 codebook leaves it only
  the query type to condition on, which is what transfers (README, "Design choices we measured"). The
  encoder features do not depend on the alignment heads.
* ``"summary"``: the query vector in the joint space and summaries of the first-stage candidates,
  described below.

For a summary state, for each query, the candidates are the first-stage top-M of the gallery by coarse
score. The state is

    [ q | mean_c | mean_p | stats ]   of size 3 * D + N_STATS

* text-to-image (``direction=0``): q is the text vector t; mean_c the mean scene vector of the top-M
  images; mean_p the mean of their text-pooled region vectors p_hat(t). Together they say what the
  query asks for and whether the candidates differ at the scene level or only in their objects.
* image-to-text (``direction=1``): q is the image's scene vector c; mean_c the mean of the top-M
  caption vectors; mean_p the mean of the image's regions pooled by each of those captions.
* stats (why: how confident and how different the two scorings are, which is what g trades off):
  top-1 coarse score, top-1 fine score, coarse margin (1st - 2nd), fine margin, mean and std of the
  coarse and of the fine scores over the top-M, the overlap of the coarse and fine top-M sets, the mean
  attention entropy over the top-M (a peaked attention marks an object-level query), and the direction.

Everything is computed from the joint-space features and the pair terms of :mod:`dsanchor.retrieval`,
so the state costs one top-M gather on top of scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.retrieval import PairTerms, pool_pairs

__all__ = ["StateConfig", "STATE_KINDS", "N_STATS", "state_dim", "text_to_image_states", "image_to_text_states",
           "query_states"]

STATE_KINDS = ("query", "summary")

N_STATS = 11


@dataclass
class StateConfig:
    state_kind: str = field(default="query", metadata={"help": "controller state: query (the query's encoder features) "
                                                        "or summary (joint-space query + candidate summaries)"})
    codebook: int = field(default=8, metadata={"help": "query-type codebook size k for the query state (0: off)"})
    top_m: int = field(default=10, metadata={"help": "first-stage candidates summarised in a summary state"})

    def __post_init__(self):
        from dsanchor.errors import ConfigError

        if self.state_kind not in STATE_KINDS:
            raise ConfigError(f"unknown state kind {self.state_kind!r}; use one of {', '.join(STATE_KINDS)}")
        if self.codebook < 0:
            raise ConfigError(f"state codebook must be >= 0, got {self.codebook}")
        if self.state_kind == "summary" and self.codebook:
            raise ConfigError("the codebook quantises the query state; use --codebook 0 with --state-kind summary")


def query_states(text_raw: torch.Tensor, coarse_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Query states of a split: text queries (T, Dt + Dc + 1) and image queries (N, Dt + Dc + 1).

    Never differentiable (the inputs are detached: cheaper per query than a ``no_grad`` context).

    Args:
        text_raw: (T, Dt) the captions' encoder vectors. coarse_raw: (N, Dc) the images' scene vectors.
    """
    t, dt = text_raw.shape
    n, dc = coarse_raw.shape
    s_t = torch.zeros(t, dt + dc + 1)
    s_i = torch.zeros(n, dt + dc + 1)
    if t:  # a single query leaves the other side empty: skip its kernels (this runs once per query)
        s_t[:, :dt] = _unit_rows(text_raw)
    if n:
        s_i[:, dt:dt + dc] = _unit_rows(coarse_raw)
        s_i[:, -1] = 1.0
    return s_t, s_i


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x.detach().float(), dim=-1)``: the same kernels and values, without its Python wrappers."""
    x = (x.detach() if x.requires_grad else x).float()
    return x / torch.linalg.vector_norm(x, 2.0, -1, keepdim=True).clamp_min(1e-12)  # (B, D)


def state_dim(dim: int) -> int:
    """Summary-state size for joint dimension D."""
    return 3 * dim + N_STATS


def _stats(terms: PairTerms, top: torch.Tensor, direction: int) -> torch.Tensor:
    """(Q, N_STATS) statistics of the rows of ``terms`` over the coarse top-M ``top`` (Q, M)."""
    m = top.shape[1]
    c2 = terms.coarse.topk(min(2, terms.coarse.shape[1]), dim=1).values  # (Q, 2)
    f2 = terms.fine.topk(min(2, terms.fine.shape[1]), dim=1).values
    c_m = terms.coarse.gather(1, top)  # (Q, M)
    f_m = terms.fine.gather(1, top)
    f_top = terms.fine.topk(m, dim=1).indices
    overlap = (top.unsqueeze(2) == f_top.unsqueeze(1)).any(2).float().mean(1)  # (Q,)
    ent = terms.entropy.gather(1, top).mean(1)
    margin = lambda v: v[:, 0] - v[:, -1]  # noqa: E731
    return torch.stack([
        c2[:, 0], f2[:, 0], margin(c2), margin(f2), c_m.mean(1), c_m.std(1, unbiased=False),
        f_m.mean(1), f_m.std(1, unbiased=False), overlap, ent, torch.full_like(ent, float(direction)),
    ], dim=1)


@torch.no_grad()
def text_to_image_states(text: torch.Tensor, images: JointFeatures, terms: PairTerms, pool_s: float,
                         config: StateConfig) -> torch.Tensor:
    """States for text queries. text (Q, D); terms rows = texts, columns = images. Returns (Q, 3D + N_STATS)."""
    m = min(config.top_m, images.coarse.shape[0])
    top = terms.coarse.topk(m, dim=1).indices  # (Q, M)
    q, d = text.shape
    mean_c = images.coarse[top].mean(1)  # (Q, D)
    pairs_t = text.unsqueeze(1).expand(q, m, d).reshape(q * m, d)
    p = pool_pairs(pairs_t, images.regions[top].reshape(q * m, -1, d), images.mask[top].reshape(q * m, -1), pool_s)
    mean_p = p.view(q, m, d).mean(1)  # (Q, D)
    return torch.cat([text, mean_c, mean_p, _stats(terms, top, 0)], dim=1)


@torch.no_grad()
def image_to_text_states(text: torch.Tensor, images: JointFeatures, terms_it: PairTerms, pool_s: float,
                         config: StateConfig) -> torch.Tensor:
    """States for image queries. text (T, D) gallery; terms_it rows = images, columns = texts."""
    m = min(config.top_m, text.shape[0])
    top = terms_it.coarse.topk(m, dim=1).indices  # (N, M)
    n, d = images.coarse.shape
    mean_t = text[top].mean(1)  # (N, D)
    regions = images.regions.unsqueeze(1).expand(n, m, *images.regions.shape[1:]).reshape(n * m, -1, d)
    mask = images.mask.unsqueeze(1).expand(n, m, -1).reshape(n * m, -1)
    p = pool_pairs(text[top].reshape(n * m, d), regions, mask, pool_s)
    mean_p = p.view(n, m, d).mean(1)
    return torch.cat([images.coarse, mean_t, mean_p, _stats(terms_it, top, 1)], dim=1)
