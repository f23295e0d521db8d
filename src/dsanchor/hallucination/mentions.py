"""Objects a caption names, and the detector's hallucination penalty for them (DESIGN.md "RL").

:func:`caption_objects` is a thin wrapper over CHAIR's mention extraction (:mod:`dsanchor.metrics.chair`,
Rohrbach et al. 2018), so the RL penalty and the CHAIR metric agree on what a caption names:

* ``"coco"``: the COCO synonym table (``"puppy"`` -> ``"dog"``);
* ``"synth"``: colour + shape names with CLEVR's synonyms (``"red block"`` -> ``"red cube"``).

:func:`hallucination_share` turns a row of :meth:`HallucinationDetector.presence_matrix` into R_hall's
magnitude: the detector's estimate of the share of named objects that the image lacks
(:func:`hallucination_shares` does one caption against every image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["caption_objects", "hallucination_share", "hallucination_shares"]


def caption_objects(caption: str, vocabulary: str) -> list[str]:
    """Canonical names of the objects ``caption`` mentions, in order of first mention, without repeats.

    Args:
        caption: free text.
        vocabulary: ``"coco"`` or ``"synth"`` (see module docstring).
    """
    from dsanchor.metrics.chair import caption_objects as _chair_objects

    return list(dict.fromkeys(_chair_objects(caption, vocabulary)))


def _named_rows(objects: Sequence[str], vocab_index: dict[str, int], vocabulary: str | None) -> list[list[int]]:
    """Per distinct named object, the vocabulary rows whose presence would ground it (empty lists dropped)."""
    chair_vocab = None
    if vocabulary is not None:
        from dsanchor.metrics.chair import get_vocabulary

        chair_vocab = get_vocabulary(vocabulary)
    out = []
    for name in dict.fromkeys(objects):
        if name in vocab_index:
            out.append([vocab_index[name]])
        elif chair_vocab is not None:
            rows = [r for n, r in vocab_index.items() if chair_vocab.grounded(name, frozenset({n}))]
            if rows:
                out.append(rows)
    return out


def hallucination_shares(presence: torch.Tensor, objects: Sequence[str], vocab_index: dict[str, int],
                         vocabulary: str | None = None) -> torch.Tensor | None:
    """:func:`hallucination_share` of one caption against every image at once.

    Args:
        presence: (N, V) P(present), e.g. from :meth:`HallucinationDetector.presence_matrix`.
        objects, vocab_index, vocabulary: as in :func:`hallucination_share`.

    Returns:
        (N,) shares in [0, 1], or ``None`` when the caption names no object the vocabulary can score.
    """
    named = _named_rows(objects, vocab_index, vocabulary)
    if not named:
        return None
    p = presence.float()
    present = torch.stack([p[:, rows].amax(dim=1) for rows in named], dim=1)  # (N, K)
    return (1.0 - present).mean(dim=1)


def hallucination_share(presence_row: torch.Tensor, objects: Sequence[str], vocab_index: dict[str, int],
                        vocabulary: str | None = None) -> float | None:
    """The detector's estimate of the share of named objects that an image lacks.

    The mean of 1 - P(present) over the distinct named objects. A name outside ``vocab_index`` is
    skipped, unless ``vocabulary`` names the CHAIR vocabulary it came from and that vocabulary grounds
    it by other objects (synth: a bare "cube" by any "<colour> cube"); it then gets the highest P(present)
    among those.

    Args:
        presence_row: (V,) P(present) of each vocabulary object in one image.
        objects: canonical names a caption mentions (e.g. from :func:`caption_objects`).
        vocab_index: name -> row of ``presence_row``.
        vocabulary: ``"coco"`` or ``"synth"``, or ``None`` to score only the names in ``vocab_index``.

    Returns:
        The share in [0, 1], or ``None`` when the caption names no object the vocabulary can score.
    """
    shares = hallucination_shares(presence_row.view(1, -1), objects, vocab_index, vocabulary)
    return None if shares is None else float(shares[0])
