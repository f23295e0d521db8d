"""Compositional hard negatives from scene graphs: a true caption and a false one that keeps its words and
changes how they bind, for every CLEVR-style scene (synth or real CLEVR).

After SugarCrepe (Hsieh et al., NeurIPS 2023) and ARO (Yuksekgonul et al., ICLR 2023), four types:

* ``replace-att``: one attribute of a uniquely described object replaced so that no object matches
  ("A red cube." against "A green cube.");
* ``swap-att``: the attributes of two named objects exchanged ("A red cube and a blue sphere." against "A blue
  cube and a red sphere.");
* ``swap-rel``: the relation between two uniquely described objects reversed ("The red cube is left of the blue
  sphere." against "The blue sphere is left of the red cube.");
* ``replace-count``: a wrong number of objects ("There are five objects." against "There are seven objects.").

Every item carries the facts of both texts (:mod:`dsanchor.data.facts`): the caption is true when all its facts
hold, and the negative is false when at least one of its facts does not; :func:`generate_hard_negatives` checks
both with :func:`dsanchor.data.holds` and keeps only items that pass. An object is named only by words that pick
it out uniquely in its scene (colour + shape, adding size and then material when needed), as CLEVR's question
generator requires. Wordings vary with CLEVR's synonyms and several sentence forms, so a model cannot pass by
matching one template.

:func:`write_sugarcrepe` writes the items in SugarCrepe's JSON layout (one file per type, ``{"0": {"filename",
"caption", "negative_caption"}, ...}``, here with the image id and facts as extra keys), so that other models can
be scored on the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsanchor.data.captioner import NUMBER_WORDS
from dsanchor.data.facts import holds
from dsanchor.data.records import Sample
from dsanchor.data.scene import RELATIONS, attribute_values, clevr_vocabulary, matches
from dsanchor.files import read_json, write_json

__all__ = ["HARD_NEGATIVE_TYPES", "HardNegative", "HardNegConfig", "generate_hard_negatives", "scene_hard_negatives",
           "unique_description", "write_sugarcrepe", "read_sugarcrepe"]

HARD_NEGATIVE_TYPES: tuple[str, ...] = ("replace-att", "swap-att", "swap-rel", "replace-count")
_DESCRIPTIONS = (("color", "shape"), ("size", "color", "shape"), ("color", "material", "shape"),
                 ("size", "color", "material", "shape"))
_ORDER = ("size", "color", "material", "shape")

Fact = dict[str, Any]


@dataclass
class HardNegative:
    """One image with a true caption and a false one that uses the same words bound differently."""

    type: str  # one of HARD_NEGATIVE_TYPES
    image_id: int
    image_path: str  # relative to the dataset root
    caption: str  # true of the image: every fact in ``facts`` holds
    negative: str  # false of the image: some fact in ``negative_facts`` does not hold
    facts: list[Fact] = field(default_factory=list)
    negative_facts: list[Fact] = field(default_factory=list)


@dataclass
class HardNegConfig:
    """Which items to make."""

    types: tuple[str, ...] = field(default=HARD_NEGATIVE_TYPES, metadata={"help": "hard-negative types to make"})
    per_image: int = field(default=1, metadata={"help": "items of each type per image, at most"})
    seed: int = field(default=0, metadata={"help": "seed of the choices and wordings (with the image id)"})
    relation_margin: float = field(default=0.6, metadata={
        "help": "minimum separation (scene units) of two objects along the relation's direction"})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.types) - set(HARD_NEGATIVE_TYPES))
        if unknown:
            raise ValueError(f"unknown hard-negative types {unknown}; valid types are {list(HARD_NEGATIVE_TYPES)}")
        if self.per_image < 1:
            raise ValueError("per_image must be at least 1")


# ---- describing objects ---------------------------------------------------------------------------------------

def unique_description(scene: dict[str, Any], index: int) -> dict[str, str] | None:
    """The shortest of colour+shape, size+colour+shape, colour+material+shape and all four attributes that
    matches object ``index`` and no other object of the scene; None when even all four are shared."""
    objs = scene["objects"]
    for attrs in _DESCRIPTIONS:
        desc = {a: objs[index][a] for a in attrs}
        if sum(matches(o, desc) for o in objs) == 1:
            return desc
    return None


def _words(desc: dict[str, str], choice: dict[str, str], rng: np.random.Generator) -> str:
    """A noun phrase for a description, attributes in CLEVR's order. Each value's synonym is drawn once and kept
    in ``choice``, so a caption and its negative use the same word for the same value."""
    v = clevr_vocabulary()
    for a in _ORDER:
        if a in desc and desc[a] not in choice:
            choice[desc[a]] = _pick(rng, v.words(desc[a]))
    return " ".join(choice[desc[a]] for a in _ORDER if a in desc)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("An " if phrase[0] in "aeiou" else "A ") + phrase


def _object_fact(desc: dict[str, str]) -> Fact:
    return {"type": "object", "object": dict(desc)}


# ---- the four types -----------------------------------------------------------------------------------------

def _replace_att(scene: dict[str, Any], rng: np.random.Generator) -> tuple[str, str, list[Fact], list[Fact]] | None:
    order = rng.permutation(len(scene["objects"]))
    for k in order:
        desc = unique_description(scene, int(k))
        if desc is None:
            continue
        for attribute in rng.permutation(sorted(desc)):
            options = [v for v in attribute_values(str(attribute)) if v != desc[attribute]]
            for value in rng.permutation(options):
                neg = {**desc, str(attribute): str(value)}
                if not any(matches(o, neg) for o in scene["objects"]):
                    form = _pick(rng, ("{}.", "There is {} in the image.", "The image shows {}."))
                    choice: dict[str, str] = {}
                    pos_np, neg_np = _words(desc, choice, rng), _words(neg, choice, rng)
                    return (_fill(form, pos_np), _fill(form, neg_np), [_object_fact(desc)],
                            [_object_fact(neg)])
    return None


def _fill(form: str, *noun_phrases: str) -> str:
    """``form`` with each ``{}`` filled by "a/an <phrase>", the sentence capitalised."""
    text = form.format(*(_article(p).lower() for p in noun_phrases))
    return text[0].upper() + text[1:]


def _swap_att(scene: dict[str, Any], rng: np.random.Generator) -> tuple[str, str, list[Fact], list[Fact]] | None:
    objs = scene["objects"]
    pairs = [(i, j) for i in range(len(objs)) for j in range(len(objs)) if i < j]
    for p in rng.permutation(len(pairs)) if pairs else []:
        i, j = pairs[int(p)]
        for attribute in rng.permutation(["color", "size", "material"]):
            attribute = str(attribute)
            a = {attribute: objs[i][attribute], "shape": objs[i]["shape"]}
            b = {attribute: objs[j][attribute], "shape": objs[j]["shape"]}
            if a[attribute] == b[attribute] or a["shape"] == b["shape"]:
                continue
            na, nb = {**a, attribute: b[attribute]}, {**b, attribute: a[attribute]}
            pos, neg = [_object_fact(a), _object_fact(b)], [_object_fact(na), _object_fact(nb)]
            if all(holds(f, scene) for f in neg):
                continue  # both swapped objects exist too: the swap is not false
            form = _pick(rng, ("{} and {}.", "There is {} and {}.", "The image shows {} and {}."))
            choice: dict[str, str] = {}
            wa, wb, wna, wnb = (_words(d, choice, rng) for d in (a, b, na, nb))
            return _fill(form, wa, wb), _fill(form, wna, wnb), pos, neg
    return None


def _relation_pairs(scene: dict[str, Any], margin: float) -> list[tuple[int, str, int]]:
    """(j, rel, i): object j is <rel> of object i (by ``holds``), both uniquely described."""
    objs = scene["objects"]
    out = []
    for i in range(len(objs)):
        for j in range(len(objs)):
            if i == j:
                continue
            dj, di = unique_description(scene, j), unique_description(scene, i)
            if dj is None or di is None:
                continue
            for rel in RELATIONS:
                fact = {"type": "relation", "subject": dj, "relation": rel, "object": di, "margin": margin}
                if holds(fact, scene):
                    out.append((j, rel, i))
    return out


def _swap_rel(scene: dict[str, Any], rng: np.random.Generator,
              margin: float) -> tuple[str, str, list[Fact], list[Fact]] | None:
    cands = _relation_pairs(scene, margin)
    for k in rng.permutation(len(cands)) if cands else []:
        j, rel, i = cands[int(k)]
        dj, di = unique_description(scene, j), unique_description(scene, i)
        pos = {"type": "relation", "subject": dj, "relation": rel, "object": di, "margin": margin}
        neg = {"type": "relation", "subject": di, "relation": rel, "object": dj, "margin": margin}
        if holds(neg, scene):
            continue
        phrase = _pick(rng, clevr_vocabulary().words(rel))
        choice: dict[str, str] = {}
        wj, wi = _words(dj, choice, rng), _words(di, choice, rng)
        form = _pick(rng, ("The {a} is {p} the {b}.", "A {a} {p} a {b}.", "There is a {a} {p} a {b}."))
        pos_text, neg_text = form.format(a=wj, p=phrase, b=wi), form.format(a=wi, p=phrase, b=wj)
        return _fix_articles(pos_text), _fix_articles(neg_text), [pos], [neg]
    return None


def _fix_articles(text: str) -> str:
    """'a' before a vowel sound written 'an' (CLEVR's words: only 'a' + vowel-initial adjectives)."""
    words = text.split(" ")
    for k in range(len(words) - 1):
        if words[k].lower() == "a" and words[k + 1][:1] in "aeiou":
            words[k] = words[k] + "n"
    return " ".join(words)


def _replace_count(scene: dict[str, Any], rng: np.random.Generator) -> tuple[str, str, list[Fact], list[Fact]]:
    n = len(scene["objects"])
    wrong = [m for m in (n - 2, n - 1, n + 1, n + 2) if m >= 1]
    m = int(_pick(rng, wrong))
    thing = _pick(rng, ("objects", "things"))
    form = _pick(rng, ("There are {} {}.", "The image shows {} {}.", "A scene with exactly {} {}."))

    def text(k: int) -> str:
        word = NUMBER_WORDS[k] if k < len(NUMBER_WORDS) else str(k)
        return form.format(word, thing if k != 1 else thing[:-1]).replace("There are one", "There is one")

    return text(n), text(m), [{"type": "count", "n": n}], [{"type": "count", "n": m}]


def scene_hard_negatives(scene: dict[str, Any], config: HardNegConfig, image_id: int = 0,
                         image_path: str = "") -> list[HardNegative]:
    """The hard negatives of one scene: up to ``per_image`` items of each type, each checked against the scene."""
    rng = np.random.default_rng([config.seed, image_id])
    makers = {"replace-att": lambda: _replace_att(scene, rng), "swap-att": lambda: _swap_att(scene, rng),
              "swap-rel": lambda: _swap_rel(scene, rng, config.relation_margin),
              "replace-count": lambda: _replace_count(scene, rng)}
    out: list[HardNegative] = []
    for kind in config.types:
        seen: set[str] = set()
        for _ in range(config.per_image * 3):
            made = makers[kind]() if scene["objects"] else None
            if made is None or len(seen) >= config.per_image:
                break
            caption, negative, facts, neg_facts = made
            if caption in seen or not all(holds(f, scene) for f in facts) or all(holds(f, scene) for f in neg_facts):
                continue
            seen.add(caption)
            out.append(HardNegative(kind, image_id, image_path, caption, negative, facts, neg_facts))
    return out


def generate_hard_negatives(samples: Sequence[Sample], config: HardNegConfig | None = None) -> list[HardNegative]:
    """Hard negatives for every sample with a scene graph (synth, CLEVR), in sample order then type order.

    Raises:
        ValueError: when no sample has a scene graph (COCO, VG and Flickr have none to check negatives with).
    """
    config = config or HardNegConfig()
    with_scene = [s for s in samples if s.scene is not None]
    if not with_scene:
        raise ValueError("hard negatives need scene graphs (formats synth and clevr); these samples have none")
    return [item for s in with_scene for item in scene_hard_negatives(s.scene, config, s.image_id, s.image_path)]


def write_sugarcrepe(items: Sequence[HardNegative], out: str | Path) -> dict[str, Path]:
    """One SugarCrepe-layout JSON per type (``replace_att.json``, ...) in ``out``; returns type -> file."""
    out = Path(out)
    files = {}
    for kind in sorted({i.type for i in items}, key=HARD_NEGATIVE_TYPES.index):
        rows = {str(k): {"filename": i.image_path, "caption": i.caption, "negative_caption": i.negative,
                         "image_id": i.image_id, "facts": i.facts, "negative_facts": i.negative_facts}
                for k, i in enumerate(x for x in items if x.type == kind)}
        files[kind] = write_json(out / f"{kind.replace('-', '_')}.json", rows)
    return files


def read_sugarcrepe(folder: str | Path) -> list[HardNegative]:
    """Items from :func:`write_sugarcrepe`'s files (SugarCrepe's own files too: image ids then count from 0)."""
    from dsanchor.errors import DataError

    folder = Path(folder)
    items: list[HardNegative] = []
    ids: dict[str, int] = {}  # files without image ids: one id per image file, across the types
    for kind in HARD_NEGATIVE_TYPES:
        path = folder / f"{kind.replace('-', '_')}.json"
        if not path.is_file():
            continue
        rows = read_json(path)
        if not isinstance(rows, dict):
            raise DataError(path, "expected SugarCrepe's layout: an object of items keyed by number")
        for k, row in rows.items():
            missing = [f for f in ("filename", "caption", "negative_caption") if not isinstance(row, dict)
                       or not isinstance(row.get(f), str)]
            if missing:
                raise DataError(path, f"item {k!r} has no {missing[0]!r} (SugarCrepe's items have filename, "
                                      "caption and negative_caption)")
            image_id = row["image_id"] if "image_id" in row else ids.setdefault(row["filename"], len(ids))
            items.append(HardNegative(kind, int(image_id), row["filename"], row["caption"], row["negative_caption"],
                                      row.get("facts", []), row.get("negative_facts", [])))
    return items

