"""Captioning baselines without a decoder: the nearest-neighbour caption and the human leave-one-out references.

* :func:`nearest_neighbour_captions` after Devlin et al. 2015 ("Exploring Nearest Neighbor Approaches for Image
  Captioning", arXiv:1505.04467): a test image takes a caption of the training images closest to it, here in the
  coarse view (cosine of the store's scene vectors, the encoder's own features, no trained head). Among the
  captions of its ``k`` nearest training images it takes the consensus caption, the one closest on average to the
  others. Devlin et al. measure that consensus with BLEU / CIDEr; here it is the cosine of the captions' sentence
  embeddings (the store's text vectors), which needs no n-gram scoring of k·5 × k·5 pairs per image.
* :func:`human_leave_one_out`: each reference scored against the image's other references, averaged over the
  held-out reference: what a person scores. CHAIR's ground truth is then what the *other* references name, so
  the floor is the share of objects one person names that no other person does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.features.types import ImageFeatures, TextFeatures

__all__ = ["nearest_neighbour_captions", "human_leave_one_out"]


@torch.no_grad()
def nearest_neighbour_captions(train_images: ImageFeatures, train_texts: TextFeatures, test_images: ImageFeatures,
                               k: int = 5) -> list[str]:
    """One caption per test image: the consensus caption of its ``k`` nearest training images (module docstring).

    Returns:
        (N_test,) captions, in the order of ``test_images``.
    """
    if len(train_texts) == 0:
        raise ValueError("the nearest-neighbour baseline needs training captions")
    sims = F.normalize(test_images.coarse.float(), dim=-1) @ F.normalize(train_images.coarse.float(), dim=-1).T
    near = sims.topk(min(k, len(train_images)), dim=1).indices  # (N, k) train rows
    by_image: dict[int, list[int]] = {}
    for j, iid in enumerate(train_texts.image_ids.tolist()):
        by_image.setdefault(int(iid), []).append(j)
    ids = train_images.image_ids.tolist()
    emb = F.normalize(train_texts.embeddings.float(), dim=-1)  # (T, Dt)
    out = []
    for rows in near.tolist():
        cand = [j for r in rows for j in by_image.get(int(ids[r]), [])]
        if not cand:
            raise ValueError("the nearest training images have no captions")
        e = emb[cand]  # (C, Dt)
        sim = e @ e.T  # (C, C)
        consensus = (sim.sum(1) - sim.diagonal()) / max(len(cand) - 1, 1)  # (C,) mean cosine to the others
        out.append(train_texts.captions[cand[int(consensus.argmax())]])
    return out


def human_leave_one_out(split: CaptionSplit, vocabulary: str = "coco") -> dict:
    """BLEU-4, CIDEr-D and CHAIR of each reference against the image's other references, averaged over which
    reference is held out (images with fewer than two references are left out)."""
    from dsanchor.captioning.evaluate import caption_metrics
    from dsanchor.metrics.chair import caption_objects

    keep = torch.tensor([i for i, refs in enumerate(split.references) if len(refs) >= 2], dtype=torch.long)
    sub = split.subset(keep)
    n_refs = min(len(r) for r in sub.references)
    rows = []
    for i in range(n_refs):
        others = [[r for j, r in enumerate(refs) if j != i] for refs in sub.references]
        objects = [[o for r in refs for o in caption_objects(r, vocabulary)] if objs else []
                   for refs, objs in zip(others, sub.objects, strict=True)]
        held = dataclasses.replace(sub, references=others, objects=objects,
                                   granularity=[[-1] * len(r) for r in others])
        rows.append(caption_metrics([{"human": refs[i]} for refs in sub.references], held, vocabulary))
    keys = [k for k in ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s") if all(k in r for r in rows)]
    return {k: float(sum(r[k] for r in rows) / len(rows)) for k in keys} | {
        "held_out_references": n_refs, "n_images": len(sub), "CHAIR_images": rows[0]["CHAIR_images"]}
