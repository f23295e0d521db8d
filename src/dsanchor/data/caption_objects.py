"""Object labels for caption-only datasets (Flickr8k, Flickr30k, COCO without instances): an image's objects are
the COCO categories its reference captions name.

The words are mapped to categories with CHAIR's COCO synonym table (:mod:`dsanchor.metrics.chair`, Rohrbach et al.
2018), exactly as CHAIR builds its ground truth from COCO's captions (:func:`~dsanchor.metrics.chair.
gt_objects_from_coco`). Such labels have no boxes (``ObjectAnnotation.box`` is None), so they never become regions;
they are the positives of the hallucination detector and the ground truth of CHAIR and the hallucination rates.
They are weaker than annotations: an object that no reference caption names counts as absent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dsanchor.data.records import ObjectAnnotation, Sample

__all__ = ["CAPTION_LABELS", "OBJECT_LABELS", "label_objects_from_captions", "object_labels_of"]

OBJECT_LABELS = ("auto", "annotations", "captions")  # RunConfig.object_labels
CAPTION_LABELS = "captions (COCO synonym table over the reference captions)"  # how the manifest records them


def object_labels_of(samples: Sequence[Sample], choice: str = "auto") -> str:
    """Which labels a set of samples gets: "annotations" (kept as they are) or "captions" (derived).

    ``choice``: "auto" derives them only when no sample has an annotated object; "annotations" never derives;
    "captions" always does (annotations are replaced).
    """
    if choice not in OBJECT_LABELS:
        raise ValueError(f"object_labels must be one of {', '.join(OBJECT_LABELS)}, got {choice!r}")
    if choice == "auto":
        has_captions = any(s.captions for s in samples)
        return "captions" if has_captions and not any(s.objects for s in samples) else "annotations"
    return choice


def label_objects_from_captions(samples: Sequence[Sample], vocabulary: str = "coco") -> list[Sample]:
    """Copies of ``samples`` whose objects are the distinct categories their captions name, in first-mention
    order, each an :class:`ObjectAnnotation` without a box and with the attribute ``"from-captions"``."""
    from dsanchor.metrics.chair import caption_objects, get_vocabulary

    vocab = get_vocabulary(vocabulary)
    out = []
    for s in samples:
        names = dict.fromkeys(o for c in s.captions for o in caption_objects(c.text, vocab))
        out.append(dataclasses.replace(s, objects=[ObjectAnnotation(n, None, ("from-captions",)) for n in names]))
    return out
