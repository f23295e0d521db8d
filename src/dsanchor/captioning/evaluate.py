"""Caption metrics per method, per-image CIDEr-D, and captions decoded on a grid of g.

* :func:`cider_per_image` is CIDEr-D (Vedantam et al. 2015) by pycocoevalcap's ``CiderScorer`` on
  PTB-style tokens, one score per image. The document frequencies (IDF) come from the references of
  all the images passed in one call, as in pycocoevalcap's corpus score, so the mean of the per-image
  scores equals the corpus CIDEr-D. Raw scale (not x100).
* :func:`score_grid` decodes every image of a split at each g of a grid (e.g. 11 values) and scores
  each caption: CIDEr-D per image (one call per g over the whole split) and, given an estimator, the
  estimated hallucination share. The RL reward, ``fixed_best`` and the ``oracle`` all read it.
* :func:`evaluate_captioning` gives, per method (a g for each test image), BLEU-4 and CIDEr-D from
  :mod:`dsanchor.metrics.captioning`, CHAIR_i and CHAIR_s (Rohrbach et al. 2018) from
  :mod:`dsanchor.metrics.chair` over the ground-truth objects of each image, and the mean g.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from dsanchor.captioning.decode import DecodeConfig, generate_captions
from dsanchor.captioning.decoder import CaptionDecoder
from dsanchor.captioning.tokenizer import Vocabulary, ptb_tokenize
from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.errors import DataError
from dsanchor.metrics.captioning import caption_metrics as caption_scores
from dsanchor.metrics.chair import chair

__all__ = ["HallucinationEstimator", "GridOutcomes", "cider_per_image", "score_grid", "captions_for",
           "caption_metrics", "evaluate_captioning", "g_grid"]


class HallucinationEstimator(Protocol):
    """Estimated hallucination of one caption per image of a split (e.g. from the detector)."""

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """Returns (N,) the share of objects named in each caption that the image lacks, in [0, 1]
        (0 for a caption that names no object)."""


def g_grid(n: int) -> torch.Tensor:
    """``n`` evenly spaced g values from 0 to 1."""
    return torch.linspace(0.0, 1.0, n)


def cider_per_image(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """CIDEr-D of each candidate against its image's references, IDF from all the references given.

    Returns:
        (N,) raw-scale scores; NaN for an image without references (left out of the IDF too).
    """
    scorer = CiderScorer(n=4, sigma=6.0)
    keep = [i for i, refs in enumerate(references) if refs]
    out = np.full(len(candidates), np.nan)
    if not keep:
        return out
    for i in keep:
        scorer += (" ".join(ptb_tokenize(candidates[i])), [" ".join(ptb_tokenize(r)) for r in references[i]])
    _, scores = scorer.compute_score()
    out[keep] = scores
    return out


@dataclass
class GridOutcomes:
    """Captions and their scores for every image of a split at every g of a grid."""

    grid: torch.Tensor  # (G,) g values, increasing
    captions: list[list[str]]  # (G, N) caption of image n at grid g
    cider: torch.Tensor  # (N, G) per-image CIDEr-D, raw scale
    hallucination: torch.Tensor  # (N, G) estimated hallucination share (zeros without an estimator)

    def nearest(self, g: float | torch.Tensor) -> torch.Tensor:
        """Index of the grid point nearest to each g (ties to the lower g)."""
        g = torch.as_tensor(g, dtype=torch.float32)
        return (g.unsqueeze(-1) - self.grid).abs().argmin(-1)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"grid": self.grid.tolist(), "captions": self.captions,
                                 "cider": self.cider.tolist(), "hallucination": self.hallucination.tolist()}))
        return p

    @classmethod
    def load(cls, path: str | Path) -> GridOutcomes:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            return cls(torch.tensor(d["grid"]), d["captions"], torch.tensor(d["cider"]),
                       torch.tensor(d["hallucination"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(p, f"not a caption grid file ({exc.__class__.__name__})") from None


@torch.no_grad()
def score_grid(decoder: CaptionDecoder, vocab: Vocabulary, split: CaptionSplit, grid: torch.Tensor,
               decode: DecodeConfig, hallucination: HallucinationEstimator | None = None) -> GridOutcomes:
    """Decode and score every image of ``split`` at every g of ``grid`` (module docstring)."""
    pair = decoder.token_pair(split)
    caps, cider, hall = [], [], []
    for g in grid.tolist():
        c = generate_captions(decoder, vocab, pair, g, decode)
        caps.append(c)
        cider.append(torch.as_tensor(np.nan_to_num(cider_per_image(c, split.references)), dtype=torch.float32))
        h = np.zeros(len(c)) if hallucination is None else np.asarray(hallucination(c), dtype=np.float64)
        hall.append(torch.as_tensor(h, dtype=torch.float32))
    return GridOutcomes(grid.float().clone(), caps, torch.stack(cider, 1), torch.stack(hall, 1))


@torch.no_grad()
def captions_for(decoder: CaptionDecoder, vocab: Vocabulary, split: CaptionSplit, g: torch.Tensor,
                 decode: DecodeConfig, grid: GridOutcomes | None = None) -> list[str]:
    """Captions at one g per image (N,); images whose g is a grid point reuse the grid's caption."""
    g = g.float().view(-1)
    out: list[str | None] = [None] * len(split)
    if grid is not None:
        j = grid.nearest(g)
        on_grid = (grid.grid[j] - g).abs() < 1e-6
        for i in torch.nonzero(on_grid).view(-1).tolist():
            out[i] = grid.captions[int(j[i])][i]
    todo = torch.tensor([i for i, c in enumerate(out) if c is None], dtype=torch.long)
    if len(todo):
        pair = decoder.token_pair(split, todo)
        for i, c in zip(todo.tolist(), generate_captions(decoder, vocab, pair, g[todo], decode), strict=True):
            out[i] = c
    return out  # type: ignore[return-value]


def caption_metrics(captions: Sequence[str], split: CaptionSplit, vocabulary: str = "synth",
                    tokenizer: str = "auto") -> dict[str, float]:
    """BLEU-4, CIDEr-D (raw), CHAIR_i and CHAIR_s of one caption per image of ``split``.

    Args:
        vocabulary: CHAIR's object vocabulary, ``"synth"`` or ``"coco"``.
        tokenizer: PTB tokeniser of BLEU and CIDEr (:mod:`dsanchor.metrics.captioning`): auto, java or python.
    """
    ids = [int(i) for i in split.image_ids.tolist()]
    with_refs = [k for k, refs in enumerate(split.references) if refs]
    cands = {ids[k]: captions[k] for k in with_refs}
    refs = {ids[k]: list(split.references[k]) for k in with_refs}
    ch = chair({i: c for i, c in zip(ids, captions, strict=True)},
               {i: list(o) for i, o in zip(ids, split.objects, strict=True)}, vocabulary=vocabulary)
    m = caption_scores(cands, refs, tokenizer)
    return {"BLEU-4": float(m.bleu4), "CIDEr": float(m.cider),
            "CHAIR_i": float(ch.chair_i), "CHAIR_s": float(ch.chair_s)}


def evaluate_captioning(decoder: CaptionDecoder, vocab: Vocabulary, test: CaptionSplit,
                        methods: dict[str, torch.Tensor], decode: DecodeConfig, grid: GridOutcomes | None = None,
                        vocabulary: str = "synth", captions_out: dict[str, list[str]] | None = None,
                        tokenizer: str = "auto") -> dict:
    """Caption metrics of each method on ``test``.

    Args:
        methods: method name -> (N,) g for each test image (e.g. from
            :func:`dsanchor.captioning.controller.fit_caption_methods`). ``oracle`` is an upper bound
            chosen on the test references themselves, not a method.
        grid: the test split's grid captions, reused where a method's g is a grid point.
        captions_out: if given, filled with each method's captions.
        vocabulary, tokenizer: as in :func:`caption_metrics`.

    Returns:
        ``{method: {"BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s", "mean_g"}}``, CIDEr on its raw scale.
    """
    results = {}
    for name, g in methods.items():
        caps = captions_for(decoder, vocab, test, g, decode, grid)
        results[name] = {**caption_metrics(caps, test, vocabulary, tokenizer), "mean_g": float(g.float().mean())}
        if captions_out is not None:
            captions_out[name] = caps
    return results
