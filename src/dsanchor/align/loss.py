"""Multi-positive InfoNCE: contrastive loss when a query has several true matches in the batch.

A synthetic caption is true of many images ("A large green metal sphere." holds for every image with one), so
a row of the (captions x images) logits can have several positives. Two generalisations of InfoNCE
(Oord et al. 2018) to a positive set P_i are in use; both reduce to InfoNCE when |P_i| = 1:

* ``mean``: ``-1/|P_i| sum_{p in P_i} log softmax(z_i)_p``, the supervised-contrastive L_out (Khosla et al.,
  "Supervised Contrastive Learning", NeurIPS 2020, eq. 2) that UniCL uses for image-text-label pairs (Yang et
  al., "Unified Contrastive Learning in Image-Text-Label Space", CVPR 2022, eq. 3). Its target is uniform
  over the positives: every true match is pulled above every false one.
* ``lse``: ``-log sum_{p in P_i} softmax(z_i)_p``, SupCon's L_in and MIL-NCE (Miech et al., CVPR 2020): the
  positives share one target, so the loss is met once any one of them wins; meant for noisy positive sets.
"""

from __future__ import annotations

import torch

__all__ = ["POSITIVE_LOSSES", "multi_positive_infonce", "symmetric_multi_positive_infonce"]

POSITIVE_LOSSES: tuple[str, ...] = ("mean", "lse")


def multi_positive_infonce(logits: torch.Tensor, positives: torch.Tensor, form: str = "mean") -> torch.Tensor:
    """Mean over the rows that have a positive of the multi-positive InfoNCE of that row.

    Args:
        logits: (A, B) scaled similarities; row i is a query, column j a candidate.
        positives: (A, B) bool, True where candidate j is a true match of query i.
        form: ``mean`` (SupCon L_out / UniCL) or ``lse`` (SupCon L_in / MIL-NCE); see the module docstring.

    Returns:
        A scalar; zero when no row has a positive.
    """
    if form not in POSITIVE_LOSSES:
        raise ValueError(f"unknown multi-positive loss {form!r}; valid: {list(POSITIVE_LOSSES)}")
    has = positives.any(dim=1)  # (A,)
    if not has.any():
        return logits.sum() * 0.0
    z, pos = logits[has], positives[has]  # (A', B)
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)  # (A', B) log softmax
    if form == "mean":
        per_row = -(log_p * pos).sum(dim=1) / pos.sum(dim=1)  # (A',)
    else:
        per_row = -torch.logsumexp(log_p.masked_fill(~pos, float("-inf")), dim=1)  # (A',)
    return per_row.mean()


def symmetric_multi_positive_infonce(logits: torch.Tensor, positives: torch.Tensor, form: str = "mean") -> torch.Tensor:
    """Half the loss with captions as queries plus half with images as queries (CLIP's symmetric InfoNCE).

    Args:
        logits: (T, N) caption-image scaled similarities. positives: (T, N) bool.
    """
    return 0.5 * (multi_positive_infonce(logits, positives, form) + multi_positive_infonce(logits.T, positives.T, form))
