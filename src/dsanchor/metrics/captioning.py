"""Caption metrics: BLEU-1..4 (Papineni et al. 2002) and CIDEr-D (Vedantam et al. 2015).

Both come from pycocoevalcap's own scorers (``Bleu(4)`` and ``Cider``; in pycocoevalcap the class named
``Cider`` computes CIDEr-D: clipped n-gram counts, a Gaussian length penalty with sigma 6, x10) on
PTB-tokenised, lower-cased, punctuation-free text, as the COCO caption evaluation does. CIDEr is
returned on its raw scale (papers often print it x100; say which).

CIDEr weighs n-grams by an IDF computed over the references of the images being scored, so it is a
corpus metric: with a single image every reference n-gram occurs in 1 of 1 images, every IDF weight
``log(N / df)`` is 0, and CIDEr is 0 whatever the caption. Score a set of images.

Tokenisation uses Stanford's PTBTokenizer (Java) when ``java`` exists, or the pure-Python equivalent
in :mod:`dsanchor.metrics.tokenize`; ``tokenizer="java"`` / ``"python"`` forces one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple

from dsanchor.errors import MetricInputError
from dsanchor.metrics.tokenize import TOKENIZERS, caption_tokens

__all__ = ["CaptionMetrics", "bleu", "cider", "caption_metrics"]


class CaptionMetrics(NamedTuple):
    """BLEU-1..4 and CIDEr-D of a set of captions (fractions; CIDEr on its raw scale, 0 to 10)."""

    bleu1: float
    bleu2: float
    bleu3: float
    bleu4: float
    cider: float

    def as_dict(self) -> dict[str, float]:
        return {"BLEU-1": self.bleu1, "BLEU-2": self.bleu2, "BLEU-3": self.bleu3, "BLEU-4": self.bleu4,
                "CIDEr": self.cider}


def _ids_text(ids: Sequence[Hashable], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _check_inputs(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                  tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise MetricInputError(f"unknown tokenizer {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
    if not candidates:
        raise MetricInputError("no captions to score: `candidates` is empty")
    only_cand = [i for i in candidates if i not in references]
    only_ref = [i for i in references if i not in candidates]
    if only_cand or only_ref:
        parts = []
        if only_cand:
            parts.append(f"{len(only_cand)} candidate ids have no references ({_ids_text(only_cand)})")
        if only_ref:
            parts.append(f"{len(only_ref)} reference ids have no candidate ({_ids_text(only_ref)})")
        raise MetricInputError("candidates and references must have the same image ids: " + "; ".join(parts))
    for i, c in candidates.items():
        if not isinstance(c, str):
            raise MetricInputError(f"candidate {i!r} must be one caption string, got {type(c).__name__}")
    for i, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise MetricInputError(f"references[{i!r}] must be a non-empty list of caption strings")


def _tokenized(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
               tokenizer: str) -> tuple[dict, dict]:
    """pycocoevalcap's ``(gts, res)``: ``{id: [ref tokens, ...]}`` and ``{id: [candidate tokens]}``."""
    _check_inputs(candidates, references, tokenizer)
    ids = list(candidates)
    texts = [candidates[i] for i in ids] + [r for i in ids for r in references[i]]
    toks = caption_tokens(texts, tokenizer)
    res = {i: [toks[n]] for n, i in enumerate(ids)}
    gts, pos = {}, len(ids)
    for i in ids:
        gts[i] = toks[pos:pos + len(references[i])]
        pos += len(references[i])
    return gts, res


def _bleu_scores(gts: dict, res: dict) -> list[float]:
    from pycocoevalcap.bleu.bleu import Bleu

    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score]


def _cider_score(gts: dict, res: dict) -> float:
    from pycocoevalcap.cider.cider import Cider  # CIDEr-D (see the module docstring)

    score, _ = Cider().compute_score(gts, res)
    return float(score)


def bleu(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
         tokenizer: str = "auto") -> dict[str, float]:
    """Corpus BLEU-1..4 of ``candidates`` against ``references``.

    Args:
        candidates: ``{image_id: caption}``.
        references: ``{image_id: [reference caption, ...]}`` with the same ids.
        tokenizer: ``"auto"``, ``"java"`` or ``"python"`` (see the module docstring).

    Returns:
        ``{"BLEU-1": ..., "BLEU-2": ..., "BLEU-3": ..., "BLEU-4": ...}``, fractions in [0, 1].
    """
    scores = _bleu_scores(*_tokenized(candidates, references, tokenizer))
    return {f"BLEU-{n}": s for n, s in enumerate(scores, start=1)}


def cider(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
          tokenizer: str = "auto") -> float:
    """CIDEr-D of ``candidates`` against ``references``, on its raw scale (not x100).

    Args:
        candidates: ``{image_id: caption}``.
        references: ``{image_id: [reference caption, ...]}`` with the same ids.
        tokenizer: ``"auto"``, ``"java"`` or ``"python"`` (see the module docstring).

    Returns:
        The mean CIDEr-D over the images; 0.0 for a single image (IDF needs several, see the module docstring).
    """
    return _cider_score(*_tokenized(candidates, references, tokenizer))


def caption_metrics(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                    tokenizer: str = "auto") -> CaptionMetrics:
    """BLEU-1..4 and CIDEr-D together, tokenising once (same arguments as :func:`bleu`)."""
    gts, res = _tokenized(candidates, references, tokenizer)
    return CaptionMetrics(*_bleu_scores(gts, res), _cider_score(gts, res))
