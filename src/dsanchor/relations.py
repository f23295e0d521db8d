"""Compositional fine scoring: one region pool per object phrase, and the stated relation scored from box geometry.

One text-pooled region vector cannot score "a small red cube to the left of a large green sphere": the pool
rewards the best single region, and nothing in it says which object is where. For a caption that names several
object phrases, this module pools the image's regions once per phrase (the same attention as the fine score,
``w_k = softmax(s * a_k . r_j)`` for the phrase vector a_k) and scores

    comp(t, n) = mean_k cos(a_k, p_hat_k(n))  -  weight * (1 - rel(n))

where ``rel(n) = sum_ij w_A(i) w_B(j) K(box_i, box_j)`` is the attention-weighted truth of the relation between
the two phrases' regions, with a soft geometric kernel K (a sigmoid of the difference of box centres, scale
``tau``, in the image's normalised coordinates). The fine score of such a caption becomes

    fine'(t, n) = fine(t, n) + mix * (comp(t, n) - fine(t, n)),

and the anchoring is unchanged: ``cos(t, V')`` with ``V' = g * V_fine + (1 - g) * V_coarse``, the relational
term inside V_fine's score. A caption that names one object phrase keeps today's single pool (``fine``).
``mix`` and ``weight`` are fit on the validation split (:func:`fit_relation_config`), so where composition does
not help, they are 0 and scoring is exactly the single pool.

Parsing works on free text, not only on the generator's templates: a relation is found by a lexicon of phrasings
("to the left of", "is left of", "on the left side of", "in front of", "behind", "above", "on top of",
"below", "under", "next to", "beside", ...), and the words before and after it are the two phrases; without a
relation, phrases are split at "and", "with" and commas. "on" alone is not read as a relation: between an
object and a surface ("a cube sitting on the floor") box geometry cannot score it.

Directions follow the CLEVR camera (:mod:`dsanchor.data.scene`): "left" is smaller x in the image, "in front of"
is nearer the camera, which is lower in the image (the bottom of the box, where the object meets the ground).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from dsanchor.align.heads import JointFeatures

__all__ = ["RELATION_KINDS", "RelationConfig", "CaptionParse", "parse_caption", "Compositions", "compositions",
           "relation_kernels", "compose_fine", "fit_relation_config"]

# canonical relation -> phrasings (a regex alternation, longest first); "A <phrasing> B" means A <relation> B
_PHRASINGS: dict[str, tuple[str, ...]] = {
    "left": (r"(?:to|on|at) the left(?:-hand)? side of", r"(?:to|on|at) the left of", r"left of"),
    "right": (r"(?:to|on|at) the right(?:-hand)? side of", r"(?:to|on|at) the right of", r"right of"),
    "front": (r"in front of", r"before"),
    "behind": (r"behind", r"in back of", r"at the back of", r"farther (?:away )?than"),
    "above": (r"on top of", r"above", r"over"),
    "below": (r"underneath", r"beneath", r"below", r"under"),
    "near": (r"next to", r"beside", r"close to", r"near"),
}
RELATION_KINDS: tuple[str, ...] = tuple(_PHRASINGS)
_RELATION = re.compile(r"\b(?:is |are |sits |stands |lies |sitting |standing |lying |placed |located )?(?P<rel>"
                       + "|".join(f"(?P<{k}>{'|'.join(v)})" for k, v in _PHRASINGS.items()) + r")\b")
_SPLIT = re.compile(r"\s*,\s*(?:and\s+)?|\s+(?:and|with)\s+")
_LEAD = re.compile(r"^(?:there (?:is|are)|this is|we see|you can see|i see|the image shows|a photo of)\s+")
_TRAIL = re.compile(r"\s+(?:is|are|sits|stands|lies|that is|which is)$")
_WORD = re.compile(r"[a-z]")


@dataclass
class RelationConfig:
    mix: float = field(default=0.0, metadata={
        "help": "share of the compositional score in a multi-phrase caption's fine score (0: the single pool)"})
    weight: float = field(default=0.0, metadata={"help": "weight of the relation's geometric truth in it"})
    tau: float = field(default=0.05, metadata={"help": "scale of the geometric kernel, in image widths"})


class CaptionParse(NamedTuple):
    """The object phrases a caption names, and the relation it states between the first two (or None)."""

    phrases: tuple[str, ...]
    relation: str | None


def _clean(phrase: str) -> str:
    phrase = _LEAD.sub("", phrase.strip(" .,;:!?\"'"))
    return _TRAIL.sub("", phrase).strip(" .,;:!?\"'")


def parse_caption(text: str) -> CaptionParse:
    """The phrases and relation of ``text`` (lower-cased, trimmed); one phrase when it names one thing."""
    t = " ".join(text.lower().split()).strip(" .!?")
    m = _RELATION.search(t)
    if m is not None:
        a, b = _clean(t[:m.start()]), _clean(t[m.end():])
        if _WORD.search(a) and _WORD.search(b):
            rel = next(k for k in RELATION_KINDS if m.group(k) is not None)
            return CaptionParse((a, b), rel)
    parts = tuple(p for p in (_clean(x) for x in _SPLIT.split(t)) if _WORD.search(p))
    return CaptionParse(parts, None) if len(parts) > 1 else CaptionParse((t,), None)


@dataclass
class Compositions:
    """The multi-phrase captions of a list of texts, ready to score."""

    rows: torch.Tensor  # (C,) rows of the compositional captions in the text list
    phrase_of: torch.Tensor  # (P,) the composition (0..C-1) each phrase belongs to
    phrase_row: torch.Tensor  # (P,) row of each phrase in ``phrases``' unique list
    first: torch.Tensor  # (C,) phrase index (0..P-1) of each composition's first phrase
    relation: torch.Tensor  # (C,) index into RELATION_KINDS, -1 when no relation is stated
    phrases: list[str]  # unique phrase texts
    vectors: torch.Tensor | None = None  # (U, D) the unique phrases in the joint space, set by :meth:`embed`

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def embed(self, encode: Callable[[list[str]], torch.Tensor]) -> Compositions:
        """Set :attr:`vectors` with ``encode`` (texts -> (U, D) unit vectors in the joint space)."""
        self.vectors = encode(self.phrases) if self.phrases else torch.zeros(0, 0)
        return self


def compositions(texts: Sequence[str]) -> Compositions:
    """Parse every text; keep those that name at least two object phrases."""
    rows, phrase_of, phrase_row, first, relation = [], [], [], [], []
    unique: dict[str, int] = {}
    for row, text in enumerate(texts):
        parse = parse_caption(text)
        if len(parse.phrases) < 2:
            continue
        c = len(rows)
        rows.append(row)
        first.append(len(phrase_of))
        relation.append(RELATION_KINDS.index(parse.relation) if parse.relation else -1)
        for p in parse.phrases:
            phrase_of.append(c)
            phrase_row.append(unique.setdefault(p, len(unique)))
    long = torch.long
    return Compositions(torch.tensor(rows, dtype=long), torch.tensor(phrase_of, dtype=long),
                        torch.tensor(phrase_row, dtype=long), torch.tensor(first, dtype=long),
                        torch.tensor(relation, dtype=long), list(unique))


def relation_kernels(boxes: torch.Tensor, tau: float) -> torch.Tensor:
    """(N, K, R, R) soft truth of "region i <kind> region j" for every kind of :data:`RELATION_KINDS`.

    Args:
        boxes: (N, R, 4) x, y, w, h normalised to [0, 1].
    """
    cx, cy = boxes[..., 0] + boxes[..., 2] / 2, boxes[..., 1] + boxes[..., 3] / 2  # (N, R)
    bottom = boxes[..., 1] + boxes[..., 3]

    def diff(v: torch.Tensor) -> torch.Tensor:  # (N, R, R): v_j - v_i
        return v.unsqueeze(1) - v.unsqueeze(2)

    dx, dy, db = diff(cx), diff(cy), diff(bottom)
    dist = (dx * dx + dy * dy).sqrt()
    sig = lambda v: torch.sigmoid(v / tau)  # noqa: E731
    kinds = {"left": sig(dx), "right": sig(-dx), "front": sig(-db), "behind": sig(db), "above": sig(dy),
             "below": sig(-dy), "near": torch.exp(-dist / (5 * tau))}
    return torch.stack([kinds[k] for k in RELATION_KINDS], dim=1)


def _phrase_pools(vectors: torch.Tensor, images: JointFeatures, pool_s: float,
                  cand: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention weights (U, N, R) and match cos(a, p_hat) (U, N) of each phrase over the images (or, with
    ``cand`` (U, M), over its own candidates only)."""
    reg, mask = images.regions, images.mask
    if cand is None:
        s_r = torch.einsum("ud,nrd->unr", vectors, reg)
        logits = (pool_s * s_r).masked_fill(~mask.unsqueeze(0), float("-inf"))
        gram = images.gram if images.gram is not None else torch.einsum("nrd,nkd->nrk", reg, reg)
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        norm = torch.einsum("unr,nrk,unk->un", w, gram, w)
    else:  # a bounded chunk of phrases at a time: (u, M, R, D) gathered regions
        step = max(1, _GATHER_ELEMENTS // max(cand.shape[1] * reg.shape[1] * reg.shape[2], 1))
        parts = [_candidate_pools(vectors[a:a + step], images, pool_s, cand[a:a + step])
                 for a in range(0, vectors.shape[0], step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return w, (w * s_r).sum(-1) / norm.clamp_min(1e-12).sqrt()


_GATHER_ELEMENTS = 1 << 24  # region values gathered per chunk of phrases in re-ranking, ~64 MB of float32


def _candidate_pools(vectors: torch.Tensor, images: JointFeatures, pool_s: float,
                     cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reg_c, mask_c = images.regions[cand], images.mask[cand]  # (U, M, R, D), (U, M, R)
    s_r = torch.einsum("ud,umrd->umr", vectors, reg_c)
    w = torch.softmax((pool_s * s_r).masked_fill(~mask_c, float("-inf")), dim=-1).nan_to_num(0.0)
    gram = images.gram[cand] if images.gram is not None else torch.einsum("umrd,umkd->umrk", reg_c, reg_c)
    norm = torch.einsum("umr,umrk,umk->um", w, gram, w)
    return w, (w * s_r).sum(-1) / norm.clamp_min(1e-12).sqrt()


def compose_fine(fine: torch.Tensor, comp: Compositions, images: JointFeatures, boxes: torch.Tensor,
                 pool_s: float, config: RelationConfig, cand: torch.Tensor | None = None) -> torch.Tensor:
    """The fine scores with the compositional term mixed in for the multi-phrase captions.

    Args:
        fine: (T, N) today's fine scores (rows: the texts ``comp`` was parsed from), or (T, M) with ``cand``.
        comp: :func:`compositions` of the texts, embedded. images: the gallery. boxes: (N, R, 4) its boxes.
        cand: (T, M) gallery indices per text (re-ranking); None scores every image.
    Returns:
        a new (T, N) (or (T, M)) tensor; rows of single-phrase captions are unchanged.
    """
    if len(comp) == 0 or config.mix == 0.0:
        return fine
    if comp.vectors is None:
        raise ValueError("embed the compositions first (Compositions.embed)")
    phrase_cand = None if cand is None else cand[comp.rows][comp.phrase_of]  # (P, M)
    w, match = _phrase_pools(comp.vectors[comp.phrase_row], images, pool_s, phrase_cand)  # (P, N|M, R), (P, N|M)
    c = len(comp)
    total = torch.zeros(c, match.shape[1], dtype=match.dtype).index_add_(0, comp.phrase_of, match)
    score = total / torch.bincount(comp.phrase_of, minlength=c).clamp_min(1).unsqueeze(1).to(match.dtype)
    has_rel = comp.relation >= 0
    if config.weight and has_rel.any():
        sel = has_rel.nonzero().flatten()
        a, b = comp.first[sel], comp.first[sel] + 1
        kern = relation_kernels(boxes.float(), config.tau)  # (N, K, R, R)
        if cand is None:
            k = kern[:, comp.relation[sel]].transpose(0, 1)  # (S, N, R, R)
        else:
            cs = cand[comp.rows[sel]]  # (S, M)
            k = kern[cs, comp.relation[sel].unsqueeze(1)]  # (S, M, R, R)
        rel = torch.einsum("snr,snrk,snk->sn", w[a], k, w[b])
        score[sel] = score[sel] - config.weight * (1 - rel)
    out = fine.clone()
    out[comp.rows] = fine[comp.rows] + config.mix * (score - fine[comp.rows])
    return out


def fit_relation_config(evaluate: Callable[[RelationConfig], float], tau: float = 0.05,
                        mixes: Sequence[float] = (0.0, 0.5, 1.0),
                        weights: Sequence[float] = (0.0, 0.1, 0.2, 0.4)) -> tuple[RelationConfig, list[dict]]:
    """The (mix, weight) of the grid that maximises ``evaluate`` (a validation score; higher is better), and the
    whole grid. Ties go to the smaller mix and weight (the simpler scorer)."""
    grid = []
    for mix in mixes:
        for weight in (weights if mix else (0.0,)):
            cfg = RelationConfig(mix=float(mix), weight=float(weight), tau=tau)
            grid.append({"mix": cfg.mix, "weight": cfg.weight, "score": float(evaluate(cfg))})
    best = max(grid, key=lambda r: (round(r["score"], 9), -r["mix"], -r["weight"]))
    return RelationConfig(best["mix"], best["weight"], tau), grid
