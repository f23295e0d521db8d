"""Caption granularities: the names, a caption's granularity read from its text, and shares of them.

The synthetic captions come in three granularities (:mod:`dsanchor.data.captioner`): **scene**
("There are eight objects in the scene."), **object** ("A large green metal sphere.") and **relation**
("The small red rubber cylinder is left of the large green metal sphere."). The feature store keeps
each caption's granularity as a code (:data:`~dsanchor.features.types.GRANULARITY_CODES`, -1 unknown).

:func:`text_granularity` reads the granularity off a caption's words, so generated captions (which have
no label) can be counted by what they say: a caption that talks about the scene or the image is a
scene caption, else a caption with one of CLEVR's relation phrases ("left of", "in front of", "behind",
...) or two or more object mentions (CHAIR's mention extraction) is a relation caption, one with one
mention an object caption, and the rest ``"other"``. On the synthetic captioner's templates this rule
reproduces the stored labels (every scene template says "scene" or "image", object and relation
templates never do); on free text (COCO) it is only a rough guide.

``"any"`` labels a caption decoded from the plain ``<bos>`` start token, i.e. without asking for a
granularity (:mod:`dsanchor.captioning.decoder`).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

from dsanchor.data.scene import RELATIONS, clevr_vocabulary
from dsanchor.errors import ConfigError
from dsanchor.features.types import GRANULARITY_CODES
from dsanchor.metrics.chair import caption_objects
from dsanchor.metrics.tokenize import ptb_tokenize

__all__ = ["GRANULARITIES", "ANY", "OTHER", "granularity_code", "text_granularity", "granularity_mix"]

GRANULARITIES: tuple[str, ...] = tuple(sorted(GRANULARITY_CODES, key=GRANULARITY_CODES.get))  # scene, object, ...
ANY = "any"  # a caption started from <bos>: no granularity asked for
OTHER = "other"  # a generated caption that reads as none of the granularities
SCENE_WORDS = frozenset({"scene", "image"})


def granularity_code(name: str) -> int:
    """Store code of a granularity name; raises a ConfigError naming the valid ones."""
    if name not in GRANULARITY_CODES:
        raise ConfigError(f"unknown caption granularity {name!r}; valid: {', '.join(GRANULARITIES)}")
    return GRANULARITY_CODES[name]


@functools.cache
def _relation_phrases() -> tuple[str, ...]:
    v = clevr_vocabulary()
    return tuple(f" {p} " for rel in RELATIONS for p in v.words(rel))


def text_granularity(caption: str, vocabulary: str = "synth") -> str:
    """The granularity a caption reads as (module docstring): scene, object, relation or other."""
    words = ptb_tokenize(caption)
    if SCENE_WORDS.intersection(words):
        return "scene"
    n = len(caption_objects(caption, vocabulary))
    text = f" {' '.join(words)} "
    if n >= 2 or any(p in text for p in _relation_phrases()):
        return "relation"
    return "object" if n == 1 else OTHER


def granularity_mix(labels: Iterable[str], keys: Iterable[str] = (*GRANULARITIES, OTHER)) -> dict[str, float]:
    """Share of each of ``keys`` among ``labels`` (0.0 for an absent key; all 0.0 without labels)."""
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: counts[k] / total if total else 0.0 for k in keys}
