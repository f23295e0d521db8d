"""The controller's state: what the granularity controller sees about a query (DESIGN.md "Controller").

For each query, the candidates are the first-stage top-M of the gallery by coarse score. The state is

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

__all__ = ["StateConfig", "N_STATS", "state_dim", "text_to_image_states", "image_to_text_states"]

N_STATS = 11


@dataclass
class StateConfig:
    top_m: int = field(default=10, metadata={"help": "first-stage candidates summarised in the state"})


def state_dim(dim: int) -> int:
    """State size for joint dimension D."""
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
