"""Hallucination of every (caption, image) pair of a split, by ground truth and by the detector.

A caption *names* the objects CHAIR finds in it (:func:`dsanchor.hallucination.mentions.caption_objects`);
a named object is hallucinated for an image that lacks it, grounded as CHAIR grounds it (synth: a bare
"cube" by any "<colour> cube"). A caption that names no object cannot hallucinate, but it says nothing about
objects either: the retrieval reward and the reported rates treat it as such (see
:func:`grounded_score` and :func:`dsanchor.eval.methods.hallucination_rates`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dsanchor.features.types import ImageFeatures, ObjectVocabulary, TextFeatures

__all__ = ["HallMatrices", "guess_vocabulary", "hallucination_matrices", "grounded_score"]

_SYNTH_NAME = re.compile(r"^(gray|red|blue|green|brown|purple|cyan|yellow) (cube|sphere|cylinder)$")


@dataclass
class HallMatrices:
    """Per (caption, image) hallucination facts of a split."""

    gt: torch.Tensor  # (T, N) bool: caption names an object the image lacks (ground truth)
    gt_share: torch.Tensor  # (T, N) share of the caption's named objects that the image lacks (0 if none named)
    est: torch.Tensor | None  # (T, N) the detector's estimate of that share, or None without a detector
    names_object: torch.Tensor  # (T,) bool: the caption names at least one object of the vocabulary


def guess_vocabulary(images: ImageFeatures) -> str:
    """"synth" when every object name is a CLEVR colour + shape, else "coco"."""
    names = {n for objs in images.objects for n in objs}
    return "synth" if names and all(_SYNTH_NAME.match(n) for n in names) else "coco"


def grounded_score(share: torch.Tensor, names_object: torch.Tensor) -> torch.Tensor:
    """R_hall of a result: (grounded - hallucinated) / named = 1 - 2 * share in [-1, 1], and 0 for a result
    that names no object.

    So a correct result that names an object (+1) scores above one that names nothing (0), which scores
    above a wrong one (-1): ranking object-free captions first cannot lower the penalty. ``share`` and
    ``names_object`` broadcast against each other.
    """
    return torch.where(names_object, 1.0 - 2.0 * share, torch.zeros_like(share))


def hallucination_matrices(texts: TextFeatures, images: ImageFeatures, vocabulary: str, detector=None,
                           object_vocab: ObjectVocabulary | None = None) -> HallMatrices:
    """Ground-truth and (with a detector) estimated hallucination of every (caption, image) pair."""
    from dsanchor.hallucination.mentions import caption_objects, hallucination_shares
    from dsanchor.metrics.chair import get_vocabulary

    vocab = get_vocabulary(vocabulary)
    named = [caption_objects(c, vocabulary) for c in texts.captions]
    t, n = len(texts), len(images)
    share = torch.zeros(t, n)
    present = [vocab.canonical_objects(objs) for objs in images.objects]
    for m, objs in enumerate(named):
        if objs:
            share[m] = torch.tensor([sum(not vocab.grounded(o, present[j]) for o in objs) / len(objs)
                                     for j in range(n)])
    est = None
    if detector is not None:
        index = object_vocab.index()
        prob = detector.presence_matrix(images, object_vocab.embeddings.float())  # (N, V)
        est = torch.zeros(t, n)
        for m, objs in enumerate(named):
            shares = hallucination_shares(prob, objs, index, vocabulary) if objs else None
            if shares is not None:
                est[m] = shares
    return HallMatrices(share > 0, share, est, torch.tensor([bool(o) for o in named], dtype=torch.bool))
