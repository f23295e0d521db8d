"""Near-duplicate captions in a ranked list: the same statement in other words is shown once.

A caption is a near-duplicate of a higher-ranked one when any of these holds:

1. both state the same fact, where the captions come with facts (synth and CLEVR captions are generated from
   scene-graph facts, so "Balls are the most common shape in the image." and "Spheres are the most common
   shape in the image." state one fact); this is exact;
2. their normalised texts are identical (lower case, every run of non-alphanumerics one space);
3. the cosine of their text-encoder vectors is at least :data:`DUPLICATE_COSINE` (0.97).

Going down the ranking, a caption is kept unless it is a near-duplicate of one already kept, so each kept
caption has the rank and score of the best caption of its group. The text-encoder rule is strict on purpose:
on the demo's captions (all-MiniLM-L6-v2) captions of the same fact often have a cosine as low as 0.5, and
two captions of opposite facts ("the left half holds more objects than the right half" and the reverse) as
high as 0.999, so a cosine cannot tell them apart below near-identical wording; facts can, where they exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence

import torch

__all__ = ["DUPLICATE_COSINE", "fact_key", "near_duplicate_keep", "normalise_caption"]

DUPLICATE_COSINE = 0.97  # text-encoder cosine at or above which two captions count as one sentence

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise_caption(text: str) -> str:
    """Lower case, every run of characters other than letters and digits one space, stripped."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def fact_key(fact) -> Hashable | None:
    """A hashable key of a caption's fact (None when it has none)."""
    return None if fact is None else json.dumps(fact, sort_keys=True)


def near_duplicate_keep(order: Sequence[int], texts: Sequence[str], vectors: torch.Tensor | None = None,
                        k: int | None = None, keys: Sequence[Hashable | None] | None = None,
                        threshold: float = DUPLICATE_COSINE) -> list[int]:
    """The entries of ``order`` (caption indices, best first) that are not near-duplicates of a higher-ranked
    kept caption (module docstring), at most ``k`` of them.

    Args:
        texts: (T,) every caption's text, indexed by the entries of ``order``.
        vectors: (T, D) the captions' text-encoder vectors; None skips the cosine rule.
        keys: (T,) a fact key per caption (:func:`fact_key`), None where a caption has none.
        threshold: the cosine rule's threshold.
    """
    unit = None if vectors is None else torch.nn.functional.normalize(vectors.float(), dim=-1)  # (T, D)
    kept: list[int] = []
    seen_text: set[str] = set()
    seen_keys: set[Hashable] = set()
    for i in order:
        if k is not None and len(kept) >= k:
            break
        norm = normalise_caption(texts[i])
        key = keys[i] if keys is not None else None
        if norm in seen_text or (key is not None and key in seen_keys):
            continue
        if unit is not None and kept and float((unit[kept] @ unit[i]).max()) >= threshold:
            continue
        kept.append(i)
        seen_text.add(norm)
        if key is not None:
            seen_keys.add(key)
    return kept
