"""Caption metrics per method, per-image CIDEr-D, and captions decoded on a grid of g.

Every image is captioned once per granularity of the decoder (scene, object, relation;
:func:`~dsanchor.captioning.decode.generate_caption_sets`), so its generated captions are a
``{granularity: caption}`` set.

* :func:`cider_per_image` is CIDEr-D (Vedantam et al. 2015) by pycocoevalcap's ``CiderScorer`` on
  PTB-style tokens, one score per candidate. The document frequencies (IDF) come from the references of
  all the candidates passed in one call, as in pycocoevalcap's corpus score, so the mean of the
  per-candidate scores equals the corpus CIDEr-D. Raw scale (not x100). :func:`cider_of_sets` scores
  each caption of a set against all the references of its image and averages over the set (repeating
  an image's references once per caption leaves every IDF weight log(N / df) unchanged).
* :func:`score_grid` decodes every image of a split at each g of a grid (e.g. 11 values) and scores
  each caption set: mean CIDEr-D (one call per g over the whole split) and, given an estimator, the
  mean estimated hallucination share. The RL reward, ``fixed_best`` and the ``oracle`` all read it.
* :func:`evaluate_captioning` gives, per method (a g for each test image), BLEU-4 and CIDEr-D from
  :mod:`dsanchor.metrics.captioning` with every generated caption a candidate against all the
  references of its image, CHAIR_i and CHAIR_s (Rohrbach et al. 2018) from :mod:`dsanchor.metrics.chair`
  over all the generated captions (CHAIR_s: the share of captions with a hallucinated object; ground truth
  from :func:`chair_ground_truth`, ``CHAIR_images`` the number of images judged), the
  mean g, ``caption_mix`` (the shares of scene / object / relation captions among the references, by
  their labels, and among the generated captions, by what their text reads as:
  :func:`~dsanchor.captioning.granularity.text_granularity`) and ``caption_by_granularity`` (per
  granularity asked for: the number of captions, their CHAIR_i, CHAIR_s and CIDEr-D, and
  ``on_target``, the share whose text reads as that granularity).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pycocoevalcap.cider.cider_scorer import CiderScorer

from dsanchor.anchoring import g_grid
from dsanchor.captioning.decode import DecodeConfig, generate_caption_sets
from dsanchor.captioning.decoder import CaptionDecoder
from dsanchor.captioning.granularity import GRANULARITIES, OTHER, granularity_mix, text_granularity
from dsanchor.captioning.tokenizer import Vocabulary, ptb_tokenize
from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.errors import DataError
from dsanchor.files import write_json
from dsanchor.metrics.captioning import caption_metrics as caption_scores
from dsanchor.metrics.chair import CaptionChair, chair, chair_ground_truth

__all__ = ["HallucinationEstimator", "GridOutcomes", "CaptionSet", "cider_per_image", "cider_of_sets", "score_grid",
           "captions_for", "caption_metrics", "evaluate_captioning", "g_grid"]

CaptionSet = dict[str, str]  # one image's generated captions: granularity -> caption


class HallucinationEstimator(Protocol):
    """Estimated hallucination of one caption per image of a split (e.g. from the detector)."""

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """Returns (N,) the share of objects named in each caption that the image lacks, in [0, 1]
        (0 for a caption that names no object)."""


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


def cider_of_sets(sets: Sequence[Mapping[str, str]], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Mean CIDEr-D of each image's caption set, every caption against all the image's references.

    Returns:
        (N,) raw-scale scores; NaN for an image without references or without captions.
    """
    owner = [n for n, caps in enumerate(sets) for _ in caps]
    per = cider_per_image([c for caps in sets for c in caps.values()], [references[n] for n in owner])
    out = np.full(len(sets), np.nan)
    ends = np.cumsum([len(caps) for caps in sets])
    for n, vals in enumerate(np.split(per, ends[:-1])):
        if len(vals) and not np.isnan(vals).all():
            out[n] = np.nanmean(vals)
    return out


@dataclass
class GridOutcomes:
    """Caption sets and their scores for every image of a split at every g of a grid."""

    grid: torch.Tensor  # (G,) g values, increasing
    captions: list[list[CaptionSet]]  # (G, N) caption set of image n at grid g
    cider: torch.Tensor  # (N, G) per-image mean CIDEr-D of the set, raw scale
    hallucination: torch.Tensor  # (N, G) mean estimated hallucination share (zeros without an estimator)

    def nearest(self, g: float | torch.Tensor) -> torch.Tensor:
        """Index of the grid point nearest to each g (ties to the lower g)."""
        g = torch.as_tensor(g, dtype=torch.float32)
        return (g.unsqueeze(-1) - self.grid).abs().argmin(-1)

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"grid": self.grid.tolist(), "captions": self.captions, "cider": self.cider.tolist(),
                                 "hallucination": self.hallucination.tolist()}, indent=None)

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
        sets = generate_caption_sets(decoder, vocab, pair, g, decode)
        caps.append(sets)
        cider.append(torch.as_tensor(np.nan_to_num(cider_of_sets(sets, split.references)), dtype=torch.float32))
        h = np.zeros(len(sets))
        if hallucination is not None and sets:  # one call per granularity: the estimator reads one caption per image
            h = np.mean([np.asarray(hallucination([s[k] for s in sets]), dtype=np.float64) for k in sets[0]], axis=0)
        hall.append(torch.as_tensor(h, dtype=torch.float32))
    return GridOutcomes(grid.float().clone(), caps, torch.stack(cider, 1), torch.stack(hall, 1))


@torch.no_grad()
def captions_for(decoder: CaptionDecoder, vocab: Vocabulary, split: CaptionSplit, g: torch.Tensor,
                 decode: DecodeConfig, grid: GridOutcomes | None = None) -> list[CaptionSet]:
    """Caption sets at one g per image (N,); images whose g is a grid point reuse the grid's set."""
    g = g.float().view(-1)
    out: list[CaptionSet | None] = [None] * len(split)
    if grid is not None:
        j = grid.nearest(g)
        on_grid = (grid.grid[j] - g).abs() < 1e-6
        for i in torch.nonzero(on_grid).view(-1).tolist():
            out[i] = grid.captions[int(j[i])][i]
    todo = torch.tensor([i for i, c in enumerate(out) if c is None], dtype=torch.long)
    if len(todo):
        pair = decoder.token_pair(split, todo)
        for i, c in zip(todo.tolist(), generate_caption_sets(decoder, vocab, pair, g[todo], decode), strict=True):
            out[i] = c
    return out  # type: ignore[return-value]


def _reference_labels(split: CaptionSplit, vocabulary: str) -> list[str]:
    """Granularity of every reference: its label, or what its text reads as when unknown (-1)."""
    return [GRANULARITIES[code] if 0 <= code < len(GRANULARITIES) else text_granularity(ref, vocabulary)
            for refs, codes in zip(split.references, split.granularity, strict=True)
            for ref, code in zip(refs, codes, strict=True)]


def _by_granularity(kinds: list[str], reads_as: list[str], judged: list[CaptionChair | None],
                    cider: np.ndarray) -> dict[str, dict]:
    """Per granularity asked for: n, CHAIR_i, CHAIR_s (over the judged captions; NaN with none), CIDEr-D and
    on_target (module docstring)."""
    out: dict[str, dict] = {}
    for kind in dict.fromkeys(kinds):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        chairs = [judged[i] for i in rows if judged[i] is not None]
        mentions = [m for c in chairs for m in c.mentions]
        n_hall = sum(m.hallucinated for m in mentions)
        row = {"n": len(rows), "CHAIR_i": n_hall / len(mentions) if mentions else (0.0 if chairs else float("nan")),
               "CHAIR_s": sum(c.has_hallucination for c in chairs) / len(chairs) if chairs else float("nan"),
               "CIDEr": float(np.nanmean(cider[rows])) if not np.isnan(cider[rows]).all() else float("nan")}
        if kind in GRANULARITIES:
            row["on_target"] = sum(reads_as[i] == kind for i in rows) / len(rows)
        out[kind] = row
    return out


def caption_metrics(captions: Sequence[Mapping[str, str]], split: CaptionSplit, vocabulary: str = "synth",
                    tokenizer: str = "auto") -> dict:
    """BLEU-4, CIDEr-D (raw), CHAIR_i, CHAIR_s, caption_mix and caption_by_granularity (module docstring)
    of one caption set per image of ``split``.

    Args:
        captions: per image, ``{granularity: caption}``.
        vocabulary: CHAIR's object vocabulary, ``"synth"`` or ``"coco"``.
        tokenizer: PTB tokeniser of BLEU and CIDEr (:mod:`dsanchor.metrics.captioning`): auto, java or python.
    """
    ids = [int(i) for i in split.image_ids.tolist()]
    flat = [(n, kind, cap) for n, caps in enumerate(captions) for kind, cap in caps.items()]
    keys = [f"{ids[n]}/{kind}" for n, kind, _ in flat]
    scored = [k for k, (n, _, _) in enumerate(flat) if split.references[n]]
    m = caption_scores({keys[k]: flat[k][2] for k in scored},
                       {keys[k]: list(split.references[flat[k][0]]) for k in scored}, tokenizer)
    gt = chair_ground_truth(split.objects, split.references, vocabulary)
    judged_rows = [k for k, (n, _, _) in enumerate(flat) if gt[n] is not None]
    judged: list[CaptionChair | None] = [None] * len(flat)
    rates: dict[str, float] = {}  # no image judged (no object labels): no CHAIR, rather than a number
    if judged_rows:
        ch = chair({keys[k]: flat[k][2] for k in judged_rows}, {keys[k]: gt[flat[k][0]] for k in judged_rows},
                   vocabulary=vocabulary)
        for k, c in zip(judged_rows, ch.captions, strict=True):
            judged[k] = c
        rates = {"CHAIR_i": float(ch.chair_i), "CHAIR_s": float(ch.chair_s)}
    reads_as = [text_granularity(cap, vocabulary) for _, _, cap in flat]
    cider = cider_per_image([cap for _, _, cap in flat], [split.references[n] for n, _, _ in flat])
    mix_keys = (*GRANULARITIES, OTHER)
    return {"BLEU-4": float(m.bleu4), "CIDEr": float(m.cider),
            **rates, "CHAIR_images": sum(g is not None for g in gt),
            "caption_mix": {"references": granularity_mix(_reference_labels(split, vocabulary), mix_keys),
                            "generated": granularity_mix(reads_as, mix_keys)},
            "caption_by_granularity": _by_granularity([kind for _, kind, _ in flat], reads_as, judged, cider)}


def evaluate_captioning(decoder: CaptionDecoder, vocab: Vocabulary, test: CaptionSplit,
                        methods: dict[str, torch.Tensor], decode: DecodeConfig, grid: GridOutcomes | None = None,
                        vocabulary: str = "synth", captions_out: dict[str, list[CaptionSet]] | None = None,
                        tokenizer: str = "auto") -> dict:
    """Caption metrics of each method on ``test``.

    Args:
        methods: method name -> (N,) g for each test image (e.g. from
            :func:`dsanchor.captioning.controller.fit_caption_methods`). ``oracle`` is an upper bound
            chosen on the test references themselves, not a method.
        grid: the test split's grid captions, reused where a method's g is a grid point.
        captions_out: if given, filled with each method's caption sets.
        vocabulary, tokenizer: as in :func:`caption_metrics`.

    Returns:
        ``{method: {"BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s", "caption_mix", "caption_by_granularity",
        "mean_g"}}`` (:func:`caption_metrics`), CIDEr on its raw scale.
    """
    results = {}
    for name, g in methods.items():
        caps = captions_for(decoder, vocab, test, g, decode, grid)
        results[name] = {**caption_metrics(caps, test, vocabulary, tokenizer), "mean_g": float(g.float().mean())}
        if captions_out is not None:
            captions_out[name] = caps
    return results
