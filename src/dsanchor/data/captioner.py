"""Captions from a CLEVR scene graph, in three visibly different kinds.

* **scene** captions need the whole image: the object count, the dominant colour, material, size or
  shape, a shape or colour that is absent, how crowded or spread out the objects are, which half of
  the image holds more objects. They talk about "the objects" and "the scene/image", never one object.
* **object** captions are a noun phrase for one object with all four attributes ("A large red metal
  cube."), preferring objects whose full description is unique in the scene.
* **relation** captions place two fully described objects ("The small gray ball is to the left of the
  large cyan rubber cylinder.").

Every statement is true of the scene and only robust facts are stated: counts are exact, "most" means
a strict majority, "most common" a strict plurality of at least two, crowded/spread use thresholds on
the mean pairwise ground distance with a gap between them, "more objects in the left half" needs a
clear margin, and relations need a clear separation along the direction. Word variants come from
CLEVR's synonyms. The same scene and seed always give the same captions. Each caption carries the
structured fact it states (:mod:`dsanchor.data.facts`), so that :func:`dsanchor.data.holds` can decide
for any other scene whether the caption is true of it too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsanchor.data.facts import CLEVR_IMAGE_WIDTH, mean_pairwise_distance, object_fact, side_counts
from dsanchor.data.records import Caption
from dsanchor.data.scene import RELATIONS, clevr_vocabulary, object_key, scene_directions

__all__ = ["CaptionerConfig", "caption_counts", "caption_scene", "describe_object", "NUMBER_WORDS",
           "CLEVR_IMAGE_WIDTH"]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")


@dataclass
class CaptionerConfig:
    """How many captions of each kind to write per image, and the thresholds behind scene captions."""

    captions_per_image: int = field(default=5, metadata={"help": "captions per image, all kinds together"})
    caption_mix: tuple[float, float, float] = field(
        default=(0.4, 0.4, 0.2), metadata={"help": "shares of scene, object and relation captions (5 -> 2, 2, 1)"})
    crowded_below: float = field(
        default=2.3, metadata={"help": "mean pairwise ground distance (scene units) below which objects are crowded"})
    spread_above: float = field(
        default=3.4, metadata={"help": "mean pairwise ground distance above which objects are spread out"})
    side_margin: int = field(
        default=2, metadata={"help": "how many more objects one half of the image needs than the other, "
                                     "counting objects near the centre line against it"})
    center_band: float = field(
        default=0.06, metadata={"help": "half-width of the centre band, as a fraction of the image width"})
    relation_margin: float = field(
        default=0.6, metadata={"help": "minimum separation (scene units) along a direction for a relation caption"})

    def __post_init__(self) -> None:
        if len(self.caption_mix) != 3 or min(self.caption_mix) < 0 or sum(self.caption_mix) <= 0:
            raise ValueError("caption_mix needs three non-negative shares (scene, object, relation)")
        if self.captions_per_image < 1:
            raise ValueError("captions_per_image must be at least 1")
        if self.crowded_below >= self.spread_above:
            raise ValueError("crowded_below must be smaller than spread_above")


def caption_counts(config: CaptionerConfig) -> dict[str, int]:
    """Split ``captions_per_image`` over the kinds by the mix (largest remainder, ties to the first kind)."""
    shares = np.asarray(config.caption_mix, dtype=np.float64)
    exact = shares / shares.sum() * config.captions_per_image
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: config.captions_per_image - counts.sum()]:
        counts[k] += 1
    return dict(zip(("scene", "object", "relation"), counts.tolist(), strict=True))


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def describe_object(obj: dict[str, Any], rng: np.random.Generator) -> str:
    """All four attributes in CLEVR's order (size, colour, material, shape), with word variants."""
    v = clevr_vocabulary()
    return " ".join([_pick(rng, v.words(obj["size"])), obj["color"], _pick(rng, v.words(obj["material"])),
                     _pick(rng, v.words(obj["shape"]))])


# ---- scene facts: each returns zero or more (fact, caption maker) pairs, one per true statement -------------

Maker = Callable[[np.random.Generator], str]
Stated = tuple[dict[str, Any], Maker]  # the fact (see dsanchor.data.facts) and a maker of its wordings


def _things(rng: np.random.Generator) -> str:
    return _plural(_pick(rng, clevr_vocabulary().words("thing")))


def _count_facts(scene: dict[str, Any], cfg: CaptionerConfig, width: float) -> list[Stated]:
    fact = {"type": "count", "n": len(scene["objects"])}
    if len(scene["objects"]) == 1:
        return [(fact, lambda r: f"There is only one {_pick(r, clevr_vocabulary().words('thing'))} in the scene.")]
    n = _number(len(scene["objects"]))
    return [(fact, lambda r: _pick(r, (f"There are {n} {_things(r)} in the scene.",
                                       f"The image shows {n} {_things(r)}.",
                                       f"A scene with exactly {n} {_things(r)}.")))]


_ALL = {"shape": ("All of the {t} in the scene are {w}.", "The scene contains only {w}."),
        "other": ("All of the {t} in the scene are {w}.", "Every one of the {t} in the image is {w}.")}
_MOST = ("Most of the {t} in the scene are {w}.", "The majority of the {t} in the image are {w}.")
_COMMON = {"color": "{W} is the most common color in the scene.",
           "shape": "{W} are the most common shape in the image."}


def _majority_facts(scene: dict[str, Any], attribute: str) -> list[Stated]:
    """All (every object), most (a strict majority) or the most common (a strict plurality of two or more)."""
    counts = Counter(o[attribute] for o in scene["objects"]).most_common()
    n = len(scene["objects"])
    top, c1 = counts[0]
    c2 = counts[1][1] if len(counts) > 1 else 0
    if n < 2 or c1 == c2:
        return []
    if c1 == n:
        kind, templates = "all", _ALL["shape" if attribute == "shape" else "other"]
    elif 2 * c1 > n:
        kind, templates = "most", _MOST
    elif c1 >= 2 and attribute in _COMMON:
        kind, templates = "most_common", (_COMMON[attribute],)
    else:
        return []

    def make(r: np.random.Generator) -> str:
        word = _pick(r, clevr_vocabulary().words(top))
        word = _plural(word) if attribute == "shape" else word
        return _pick(r, templates).format(t=_things(r), w=word, W=word.capitalize())

    return [({"type": kind, "attribute": attribute, "value": top}, make)]


def _absent_facts(scene: dict[str, Any], cfg: CaptionerConfig, width: float) -> list[Stated]:
    v = clevr_vocabulary()
    shapes = {o["shape"] for o in scene["objects"]}
    colors = {o["color"] for o in scene["objects"]}
    out: list[Stated] = []
    for s in v.shapes:
        if s not in shapes:
            out.append(({"type": "absent", "attribute": "shape", "value": s}, lambda r, s=s: _pick(r, (
                f"There are no {_plural(_pick(r, v.words(s)))} in the scene.",
                f"The image contains no {_plural(_pick(r, v.words(s)))}."))))
    for c in v.colors:
        if c not in colors:
            out.append(({"type": "absent", "attribute": "color", "value": c},
                        lambda r, c=c: f"None of the {_things(r)} in the image are {c}."))
    return out


def _spread_facts(scene: dict[str, Any], cfg: CaptionerConfig, width: float) -> list[Stated]:
    if len(scene["objects"]) < 3:
        return []
    d = mean_pairwise_distance(scene)
    if d < cfg.crowded_below:
        return [({"type": "crowded", "below": cfg.crowded_below}, lambda r: _pick(r, (
            f"The {_things(r)} are crowded together in one part of the scene.",
            f"The {_things(r)} in the image are clustered close together.")))]
    if d > cfg.spread_above:
        return [({"type": "spread", "above": cfg.spread_above}, lambda r: _pick(r, (
            f"The {_things(r)} are spread out across the scene.",
            f"The {_things(r)} are scattered far apart over the image.")))]
    return []


def _side_facts(scene: dict[str, Any], cfg: CaptionerConfig, width: float) -> list[Stated]:
    left, right, mid = side_counts(scene, width, cfg.center_band)
    for side, other, a, b in (("left", "right", left, right), ("right", "left", right, left)):
        if a - (b + mid) >= cfg.side_margin:
            fact = {"type": "side", "side": side, "margin": cfg.side_margin, "center_band": cfg.center_band}
            return [(fact, lambda r, s=side, o=other: _pick(r, (
                f"The {s} half of the image contains more {_things(r)} than the {o} half.",
                f"More {_things(r)} are in the {s} half of the scene than in the {o} half.")))]
    return []


def _scene_facts(scene: dict[str, Any], cfg: CaptionerConfig, width: float) -> list[list[Stated]]:
    """True scene-level statements, grouped by kind of fact (count, colour, ...)."""
    groups = [_count_facts(scene, cfg, width), _absent_facts(scene, cfg, width), _spread_facts(scene, cfg, width),
              _side_facts(scene, cfg, width), _majority_facts(scene, "color") + _majority_facts(scene, "shape"),
              _majority_facts(scene, "material") + _majority_facts(scene, "size")]
    return [g for g in groups if g]


def _scene_captions(scene: dict[str, Any], cfg: CaptionerConfig, width: float, n: int,
                    rng: np.random.Generator) -> list[tuple[str, dict[str, Any]]]:
    """One fact from each of ``n`` different kinds where possible (the count fact always exists), then
    further facts of the same kinds; a fact repeats only when its kind has no unused one left."""
    groups = _scene_facts(scene, cfg, width)
    order = [groups[k] for k in rng.permutation(len(groups))]
    out: list[tuple[str, dict[str, Any]]] = []
    used: set[tuple[int, int]] = set()
    while len(out) < n:
        for g, group in enumerate(order):
            if len(out) == n:
                break
            fresh = [k for k in range(len(group)) if (g, k) not in used] or list(range(len(group)))
            k = fresh[int(rng.integers(len(fresh)))]
            used.add((g, k))
            fact, make = group[k]
            out.append((make(rng), fact))
    return out


# ---- object and relation captions ---------------------------------------------------------------------------

def _preferred_objects(scene: dict[str, Any], rng: np.random.Generator) -> list[int]:
    """Object indices in a random order, those with a description unique in the scene first."""
    keys = Counter(object_key(o) for o in scene["objects"])
    order = rng.permutation(len(scene["objects"])).tolist()
    return sorted(order, key=lambda i: keys[object_key(scene["objects"][i])] > 1)


def _object_captions(scene: dict[str, Any], n: int, rng: np.random.Generator) -> list[tuple[str, dict[str, Any]]]:
    objs = scene["objects"]
    order = _preferred_objects(scene, rng)
    out = []
    for k in range(n):
        obj = objs[order[k % len(order)]]
        desc = describe_object(obj, rng)
        text = _pick(rng, (f"A {desc}.", f"A {desc} on the ground.", f"A {desc} sitting on the floor."))
        out.append((text, {"type": "object", "object": object_fact(obj)}))
    return out


def _relation_candidates(scene: dict[str, Any], margin: float) -> list[tuple[int, str, int]]:
    """(j, rel, i): object j is <rel> of object i by at least ``margin`` and by CLEVR's own table."""
    coords = np.array([o["3d_coords"] for o in scene["objects"]], dtype=np.float64).reshape(-1, 3)
    dirs = scene_directions(scene)
    table = scene.get("relationships") or {}
    out = []
    for rel in RELATIONS:
        if rel not in dirs:
            continue
        dot = (coords[None, :, :] - coords[:, None, :]) @ dirs[rel]  # (N, N): [i, j] = (c_j - c_i) . dir
        for i, j in zip(*np.nonzero(dot >= margin), strict=True):
            if i != j and (rel not in table or j in table[rel][i]):
                out.append((int(j), rel, int(i)))
    return out


def _relation_captions(scene: dict[str, Any], cfg: CaptionerConfig, n: int,
                       rng: np.random.Generator) -> list[tuple[str, dict[str, Any]]]:
    """Relations between two objects, both with unique descriptions where possible, each pair once if possible."""
    objs = scene["objects"]
    keys = Counter(object_key(o) for o in objs)
    cands = _relation_candidates(scene, cfg.relation_margin)
    if not cands or n == 0:
        return []
    cands = [cands[k] for k in rng.permutation(len(cands))]
    cands.sort(key=lambda t: keys[object_key(objs[t[0]])] > 1 or keys[object_key(objs[t[2]])] > 1)
    picked, pairs = [], set()
    for j, rel, i in cands:
        if frozenset((i, j)) not in pairs:
            picked.append((j, rel, i))
            pairs.add(frozenset((i, j)))
    while len(picked) < n:  # more captions asked for than there are pairs
        picked += cands
    out = []
    for j, rel, i in picked[:n]:
        a, b = describe_object(objs[j], rng), describe_object(objs[i], rng)
        phrase = _pick(rng, clevr_vocabulary().words(rel))
        fact = {"type": "relation", "subject": object_fact(objs[j]), "relation": rel, "object": object_fact(objs[i]),
                "margin": cfg.relation_margin}
        out.append((_pick(rng, (f"The {a} is {phrase} the {b}.", f"A {a} {phrase} a {b}.")), fact))
    return out


def caption_scene(scene: dict[str, Any], config: CaptionerConfig | None = None, seed: int = 0,
                  width: float | None = None) -> list[Caption]:
    """Captions of one CLEVR scene, deterministic for (seed, scene["image_index"]).

    Args:
        scene: a scene in the CLEVR scenes schema.
        config: how many captions of each kind; defaults to :class:`CaptionerConfig`.
        seed: base seed; each image's generator is seeded by (seed, image_index).
        width: image width in pixels for the left/right-half facts; defaults to ``scene["width"]``, else
            CLEVR's 480.

    Returns:
        Scene captions first, then object, then relation captions. When no pair of objects is clearly
        separated, the relation slots are filled with object captions.
    """
    cfg = config or CaptionerConfig()
    counts = caption_counts(cfg)
    rng = np.random.default_rng([int(seed), int(scene.get("image_index", 0))])
    w = float(width or scene.get("width") or CLEVR_IMAGE_WIDTH)
    if not scene["objects"]:
        return [Caption("The scene is empty; there are no objects in the image.", "scene", {"type": "count", "n": 0})]
    scene_txt = _scene_captions(scene, cfg, w, counts["scene"], rng)
    rel_txt = _relation_captions(scene, cfg, counts["relation"], rng) if len(scene["objects"]) > 1 else []
    obj_txt = _object_captions(scene, counts["object"] + counts["relation"] - len(rel_txt), rng)
    return ([Caption(t, "scene", f) for t, f in scene_txt] + [Caption(t, "object", f) for t, f in obj_txt]
            + [Caption(t, "relation", f) for t, f in rel_txt])
