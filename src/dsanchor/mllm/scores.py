"""Scores of MLLM captions: BLEU-1..4 and CIDEr-D against the references, and CHAIR over the images with
annotated objects (:func:`dsanchor.metrics.chair.chair_ground_truth`), for a split and per image.

A CHAIR vocabulary that names none of the dataset's annotated objects (``--format coco`` on synth data: no colour
+ shape word maps to a COCO category) judges nothing: :func:`chair_truth` then judges no image, so CHAIR is left
out (an empty cell), never reported as 0 over images whose objects it cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dsanchor.captioning.evaluate import cider_per_image
from dsanchor.data.records import Sample
from dsanchor.metrics.captioning import caption_metrics
from dsanchor.metrics.chair import chair, chair_ground_truth, get_vocabulary

__all__ = ["vocabulary_matches", "chair_truth", "caption_mentions", "score_captions", "per_image_scores"]


def vocabulary_matches(samples: Sequence[Sample], vocabulary: str) -> bool:
    """Whether ``vocabulary`` names any annotated object of ``samples`` (True when none has objects)."""
    names = {o.name for s in samples for o in s.objects}
    return not names or bool(get_vocabulary(vocabulary).canonical_objects(names))


def chair_truth(samples: Sequence[Sample], vocabulary: str) -> dict[int, set[str] | None]:
    """Image id -> the objects CHAIR counts as present; ``None`` for an image without annotated objects, and for
    every image when the vocabulary names none of their objects (:func:`vocabulary_matches`)."""
    if not vocabulary_matches(samples, vocabulary):
        return {s.image_id: None for s in samples}
    truth = chair_ground_truth([[o.name for o in s.objects] for s in samples],
                               [[c.text for c in s.captions] for s in samples], vocabulary)
    return {s.image_id: None if t is None else set(t) for s, t in zip(samples, truth, strict=True)}


def caption_mentions(captions: dict[Any, str], truth: dict[Any, set[str] | None], vocabulary: str,
                     skip_negated: bool = False) -> dict[Any, tuple[int, int] | None]:
    """Per caption, (hallucinated mentions, mentions) by CHAIR (negated mentions left out with ``skip_negated``);
    ``None`` for an image CHAIR does not judge."""
    judged = {i: c for i, c in captions.items() if truth.get(i) is not None}
    out: dict[Any, tuple[int, int] | None] = {i: None for i in captions}
    if judged:
        for c in chair(judged, {i: sorted(truth[i]) for i in judged}, vocabulary, skip_negated).captions:
            out[c.image_id] = (sum(m.hallucinated for m in c.mentions), len(c.mentions))
    return out


def score_captions(captions: dict[int, str], samples: Sequence[Sample], vocabulary: str) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D (raw scale, not x100) and CHAIR_s / CHAIR_i (fractions) of ``captions``.

    BLEU and CIDEr are left out when no sample has reference captions (never filled with zeros); CHAIR is
    over the images with annotated objects (``CHAIR_images`` of them) and left out when there is none. On the synth
    vocabulary ``CHAIR_s_no_negated`` / ``CHAIR_i_no_negated`` leave negated mentions out ("there are no cubes";
    :func:`dsanchor.metrics.chair.negated`) beside the published count.
    """
    refs = {s.image_id: [c.text for c in s.captions] for s in samples if s.captions}
    cands = {i: c for i, c in captions.items() if i in refs}
    scores: dict[str, float] = {}
    if cands:
        scores.update(caption_metrics(cands, {i: refs[i] for i in cands}).as_dict())
    truth = chair_truth(samples, vocabulary)
    judged = {i: c for i, c in captions.items() if truth.get(i) is not None}
    if judged:
        gt = {i: sorted(truth[i]) for i in judged}
        result = chair(judged, gt, vocabulary=vocabulary)
        scores.update({"CHAIR_s": result.chair_s, "CHAIR_i": result.chair_i, "CHAIR_images": len(judged)})
        if vocabulary == "synth":
            kept = chair(judged, gt, vocabulary, skip_negated=True)
            scores.update({"CHAIR_s_no_negated": kept.chair_s, "CHAIR_i_no_negated": kept.chair_i})
    return scores


def per_image_scores(captions: dict[int, str], samples: Sequence[Sample], vocabulary: str) -> dict[str, np.ndarray]:
    """Per image of ``samples``: ``cider`` (CIDEr-D), ``hall`` (hallucinated mentions), ``mentions`` and
    ``judged`` (CHAIR judged it): what the bootstrap resamples."""
    ids = [s.image_id for s in samples]
    cider = np.nan_to_num(cider_per_image([captions[i] for i in ids], [[c.text for c in s.captions] for s in samples]))
    counts = caption_mentions({i: captions[i] for i in ids}, chair_truth(samples, vocabulary), vocabulary)
    c = np.array([counts[i] or (0, 0) for i in ids], dtype=float).reshape(len(ids), 2)
    return {"cider": cider, "hall": c[:, 0], "mentions": c[:, 1],
            "judged": np.array([counts[i] is not None for i in ids])}
