"""CHAIR object hallucination (Rohrbach et al. 2018, "Object Hallucination in Image Captioning", EMNLP).

CHAIR_i is the share of object mentions whose object is not in the image; CHAIR_s is the share of
captions with at least one such mention. An image's ground truth is the set of canonical object names
that its annotations support (for COCO: its instance categories plus the objects its reference captions
name, see :func:`gt_objects_from_coco`).

Finding mentions follows the paper's evaluator (LisaAnne/Hallucination ``utils/chair.py``, as packaged by
Maxlinn/CHAIR-metric-standalone ``chair.py``, the version used by OPERA and most MLLM papers):

1. tokenise the lower-cased caption and singularise every token;
2. merge two-word names ("hot dog", "traffic light", "teddy bear", "train track", ...) and apply the
   special cases: "baby/adult <animal>" is the animal (not a person), "passenger jet/train" is the
   vehicle, "bow tie" is a tie, "toilet seat" is the toilet, and when a caption names a toilet every
   "seat" in it is dropped (the seat of a toilet is no chair);
3. every remaining word in the synonym table is a mention of its canonical name. Repeats count: CHAIR_i
   is (hallucinated mentions) / (all mentions).

Deliberate differences from that code, each a fix of a quirk (numbers on real MLLM captions stay within
0.01 of the reference code's, see ``tests/test_chair.py``):

* Tokens come from :func:`~dsanchor.metrics.tokenize.ptb_tokenize` (no nltk data needed) and
  :func:`~dsanchor.metrics.tokenize.singularize`. The reference's ``pattern.en`` singulariser turns "bus"
  into "bu" (so a singular bus, minibus or airbus never counted), "canoes" into "cano", "ties" into "ty",
  and leaves "doggies"/"collies" plural; here these are all recognised.
* The synonym table is read with each entry stripped and lower-cased, so "motor bike", "cheesecake" and
  "iphone" match (the reference kept " motor bike", " cheesecake" and "iPhone", which never matched).

The ``"synth"`` vocabulary (CLEVR-style scenes) names objects by colour and shape: "red cube", with
CLEVR's synonyms ("block" -> cube, "ball" -> sphere) and its size/material words allowed in between
("small red metal block" -> "red cube"). A shape without a colour ("a cube") is a mention of the bare
shape, hallucinated only when the image has no object of that shape. Colour words alone ("a red
object") are not mentions.

Negation: the published CHAIR counts every mention, so "there are no cubes" claims a cube. Synth captions negate
often, so :func:`chair` can leave negated mentions out (``skip_negated=True``): a mention with a negation word
("no", "not", "n't", "without", "nor", "none", "never") among the :data:`NEGATION_WINDOW` words before it, in the
same clause (a comma, full stop, semicolon, "and" or "but" ends the look-back). Reports give both counts.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from dsanchor.errors import DataError, MetricInputError
from dsanchor.metrics.tokenize import ptb_tokenize, singularize

__all__ = ["Mention", "CaptionChair", "ChairResult", "Vocabulary", "CocoVocabulary", "SynthVocabulary",
           "chair", "chair_ground_truth", "caption_objects", "caption_words", "gt_objects_from_coco",
           "get_vocabulary", "list_vocabularies", "negated", "NEGATIONS"]

_RESOURCES = "dsanchor.data.resources"

# The reference's two-word names (singularised), each kept as one word ...
_COCO_DOUBLE_WORDS = ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                      "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                      "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                      "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
                      "home plate", "train track")
# ... and its qualifiers that would otherwise fire "person": "baby bird" -> "bird", "passenger jet" -> "jet"
_ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal",
                 "cub")
_VEHICLE_WORDS = ("jet", "train")
NEGATIONS = frozenset(("no", "not", "n't", "without", "nor", "none", "never"))
NEGATION_WINDOW = 4  # words looked back from a mention for a negation
_CLAUSE_ENDS = frozenset((",", ".", ";", "and", "but"))


class Mention(NamedTuple):
    """One object mention in a caption."""

    word: str  # the caption's words, singularised: "puppy", "teddy bear", "small red block"
    name: str  # canonical object name: "dog", "teddy bear", "red cube" (synth: or a bare shape, "cube")
    index: int  # position of its first token in :func:`caption_words` of the caption
    hallucinated: bool  # the image's ground truth does not support ``name``


@dataclass(frozen=True)
class CaptionChair:
    """CHAIR details of one caption."""

    image_id: Hashable
    caption: str
    mentions: tuple[Mention, ...]  # in caption order, repeats included

    @property
    def words(self) -> list[str]:
        """The words matched as objects."""
        return [m.word for m in self.mentions]

    @property
    def names(self) -> list[str]:
        """Their canonical names."""
        return [m.name for m in self.mentions]

    @property
    def hallucinated(self) -> list[str]:
        """Canonical names of the hallucinated mentions."""
        return [m.name for m in self.mentions if m.hallucinated]

    @property
    def has_hallucination(self) -> bool:
        return any(m.hallucinated for m in self.mentions)


@dataclass(frozen=True)
class ChairResult:
    """CHAIR over a set of captions; both rates are fractions in [0, 1] (papers print them x100)."""

    chair_s: float  # share of captions with >= 1 hallucinated mention
    chair_i: float  # hallucinated mentions / all mentions (0.0 when no caption mentions an object)
    num_captions: int
    num_hallucinated_captions: int
    num_mentions: int
    num_hallucinated_mentions: int
    captions: tuple[CaptionChair, ...]  # per caption, in input order

    def as_dict(self) -> dict[str, float | int]:
        """The summary numbers (no per-caption details)."""
        return {"CHAIR_s": self.chair_s, "CHAIR_i": self.chair_i, "num_captions": self.num_captions,
                "num_hallucinated_captions": self.num_hallucinated_captions, "num_mentions": self.num_mentions,
                "num_hallucinated_mentions": self.num_hallucinated_mentions}


def caption_words(caption: str) -> list[str]:
    """The caption's tokens, lower-cased and singularised (step 1 of the module docstring)."""
    return [singularize(w) for w in ptb_tokenize(caption)]


class Vocabulary(ABC):
    """Which words name which objects: one CHAIR vocabulary."""

    name: str

    @abstractmethod
    def find(self, words: Sequence[str]) -> list[tuple[int, str, str]]:
        """``(index, word, canonical name)`` of each object mention in singularised ``words``."""

    def grounded(self, name: str, gt: frozenset[str]) -> bool:
        """Whether a mention of ``name`` is supported by the ground-truth names ``gt``."""
        return name in gt

    def canonical_objects(self, names: Iterable[str]) -> frozenset[str]:
        """Canonical names of ground-truth objects given by name or synonym; names it doesn't know are dropped."""
        out = set()
        for n in names:
            found = self.find(caption_words(str(n)))
            out.update(f[2] for f in found)
        return frozenset(out)


class CocoVocabulary(Vocabulary):
    """The 80 COCO categories and the words CHAIR maps to them (``coco_synonyms.txt``)."""

    name = "coco"

    def __init__(self, synonym_lines: Iterable[str]):
        self.synonyms: dict[str, str] = {}  # surface word or phrase -> canonical name
        for line in synonym_lines:
            entries = [e.strip().lower() for e in line.split(",") if e.strip()]
            for e in entries:
                self.synonyms[e] = entries[0]
        self.categories = frozenset(self.synonyms.values())
        self.phrases: dict[str, str] = {w: w for w in _COCO_DOUBLE_WORDS}  # two words -> the word they are
        self.phrases.update({s: s for s in self.synonyms if len(s.split()) == 2})
        for animal in _ANIMAL_WORDS:
            self.phrases[f"baby {animal}"] = self.phrases[f"adult {animal}"] = animal
        for vehicle in _VEHICLE_WORDS:
            self.phrases[f"passenger {vehicle}"] = vehicle
        self.phrases["bow tie"] = "tie"
        self.phrases["toilet seat"] = "toilet"
        self._phrase_starts = frozenset(p.split()[0] for p in self.phrases)

    def find(self, words: Sequence[str]) -> list[tuple[int, str, str]]:
        merged: list[tuple[int, str]] = []
        i = 0
        while i < len(words):
            pair = f"{words[i]} {words[i + 1]}" if words[i] in self._phrase_starts and i + 1 < len(words) else ""
            if pair in self.phrases:
                merged.append((i, self.phrases[pair]))
                i += 2
            else:
                merged.append((i, words[i]))
                i += 1
        present = {w for _, w in merged}
        if "toilet" in present and "seat" in present:
            merged = [(i, w) for i, w in merged if w != "seat"]
        return [(i, w, self.synonyms[w]) for i, w in merged if w in self.synonyms]

    def canonical_objects(self, names: Iterable[str]) -> frozenset[str]:
        out = set()
        for n in names:
            key = str(n).strip().lower()
            if key in self.synonyms:
                out.add(self.synonyms[key])
            else:
                out.update(f[2] for f in self.find(caption_words(key)))
        return frozenset(out)


class SynthVocabulary(Vocabulary):
    """CLEVR colour + shape names: canonical ``"<color> <shape>"``, or a bare ``"<shape>"``."""

    name = "synth"
    max_gap = 3  # size/material words allowed between the colour and the shape

    def __init__(self, properties: Mapping[str, Any], synonyms: Mapping[str, Sequence[str]]):
        self.shapes = {singularize(s): s for s in properties["shapes"]}
        for shape in properties["shapes"]:
            self.shapes.update({singularize(w): shape for w in synonyms.get(shape, ())})
        self.colors = {c: c for c in properties["colors"]}
        if "gray" in self.colors:
            self.colors["grey"] = "gray"
        modifiers = list(properties.get("sizes", ())) + list(properties.get("materials", ()))
        self.modifiers = frozenset(w for m in modifiers for w in (m, *synonyms.get(m, ())))

    def find(self, words: Sequence[str]) -> list[tuple[int, str, str]]:
        out = []
        for i, w in enumerate(words):
            shape = self.shapes.get(w)
            if shape is None:
                continue
            j = i - 1
            while j >= 0 and i - j <= self.max_gap and words[j] in self.modifiers:
                j -= 1
            if j >= 0 and words[j] in self.colors:
                out.append((j, " ".join(words[j:i + 1]), f"{self.colors[words[j]]} {shape}"))
            else:
                out.append((i, w, shape))
        return out

    def grounded(self, name: str, gt: frozenset[str]) -> bool:
        if name in gt:
            return True
        return " " not in name and any(g.endswith(" " + name) or g == name for g in gt)


@functools.cache
def get_vocabulary(name: str) -> Vocabulary:
    """The CHAIR vocabulary called ``name`` (see :func:`list_vocabularies`)."""
    if name == "coco":
        text = resources.files(_RESOURCES).joinpath("coco_synonyms.txt").read_text(encoding="utf-8")
        return CocoVocabulary(text.splitlines())
    if name == "synth":
        res = resources.files(_RESOURCES)
        props = json.loads(res.joinpath("clevr_properties.json").read_text(encoding="utf-8"))
        syn = json.loads(res.joinpath("clevr_synonyms.json").read_text(encoding="utf-8"))
        return SynthVocabulary(props, syn)
    raise MetricInputError(f"unknown CHAIR vocabulary {name!r}; choose one of {', '.join(list_vocabularies())}")


def list_vocabularies() -> list[str]:
    return ["coco", "synth"]


def _vocab(vocabulary: str | Vocabulary) -> Vocabulary:
    return get_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary


def caption_objects(caption: str, vocabulary: str | Vocabulary = "coco") -> list[str]:
    """Canonical names of the objects ``caption`` mentions, in order, repeats included."""
    return [f[2] for f in _vocab(vocabulary).find(caption_words(caption))]


def negated(words: Sequence[str], index: int) -> bool:
    """Whether the mention starting at ``words[index]`` is negated (module docstring: same clause, a few words)."""
    for w in reversed(words[max(0, index - NEGATION_WINDOW):index]):
        if w in _CLAUSE_ENDS:
            return False
        if w in NEGATIONS:
            return True
    return False


def _score_caption(image_id: Hashable, caption: str, gt: frozenset[str], vocab: Vocabulary,
                   skip_negated: bool = False) -> CaptionChair:
    words = caption_words(caption)
    mentions = tuple(Mention(word, name, i, not vocab.grounded(name, gt)) for i, word, name in vocab.find(words)
                     if not (skip_negated and negated(words, i)))
    return CaptionChair(image_id, caption, mentions)


def chair(captions: Mapping[Hashable, str], gt_objects: Mapping[Hashable, Iterable[str]],
          vocabulary: str | Vocabulary = "coco", skip_negated: bool = False) -> ChairResult:
    """CHAIR_s and CHAIR_i of ``captions`` against the objects in their images.

    Args:
        captions: ``{image_id: caption}``.
        gt_objects: ``{image_id: names of the objects in the image}``; names are canonical names or
            synonyms (``"bike"``), others are ignored. Ids match by their string form, so ``42`` and
            ``"42"`` are the same image (JSON keys are strings).
        vocabulary: ``"coco"`` or ``"synth"`` (see the module docstring), or a :class:`Vocabulary`.
        skip_negated: leave negated mentions out ("there are no cubes"; module docstring); the published
            CHAIR counts them.

    Returns:
        The two rates, the counts behind them and every caption's mentions.
    """
    vocab = _vocab(vocabulary)
    if not captions:
        raise MetricInputError("CHAIR got no captions; pass at least one {image_id: caption}")
    gt = {str(k): v for k, v in gt_objects.items()}
    missing = [i for i in captions if str(i) not in gt]
    if missing:
        raise MetricInputError(f"{len(missing)} of {len(captions)} captions have no ground-truth objects "
                               f"(image ids {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})")
    bad_gt = [i for i in captions if isinstance(gt[str(i)], str)]
    if bad_gt:
        raise MetricInputError(f"ground truth of image {bad_gt[0]} must be a list of object names, not a string")
    bad = [i for i, c in captions.items() if not isinstance(c, str)]
    if bad:
        raise MetricInputError(f"captions must be strings; image {bad[0]} has a {type(captions[bad[0]]).__name__}")
    per = tuple(_score_caption(i, c, vocab.canonical_objects(gt[str(i)]), vocab, skip_negated)
                for i, c in captions.items())
    n_mentions = sum(len(c.mentions) for c in per)
    n_hall = sum(m.hallucinated for c in per for m in c.mentions)
    n_hall_caps = sum(c.has_hallucination for c in per)
    return ChairResult(chair_s=n_hall_caps / len(per), chair_i=n_hall / n_mentions if n_mentions else 0.0,
                       num_captions=len(per), num_hallucinated_captions=n_hall_caps, num_mentions=n_mentions,
                       num_hallucinated_mentions=n_hall, captions=per)


def chair_ground_truth(objects: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                       vocabulary: str) -> list[list[str] | None]:
    """Per image, the object names CHAIR judges its captions against; ``None`` for an image it does not judge.

    Only images with annotated objects are judged, as the paper does (Rohrbach et al. 2018 evaluate the COCO
    images that have instance annotations): with captions alone every object a caption names would count as
    hallucinated, and an image with no annotated objects says nothing about which objects are absent. For the
    ``"coco"`` vocabulary the ground truth is the annotated objects plus every object the reference captions
    name (as :func:`gt_objects_from_coco`); for ``"synth"`` the annotated objects only (generated captions may
    name absent objects, e.g. "there is no red cube").

    Args:
        objects: per image, the names of its annotated objects.
        references: per image, its reference captions.
        vocabulary: ``"coco"`` or ``"synth"``.
    """
    if vocabulary != "coco":
        return [list(objs) if objs else None for objs in objects]
    return [None if not objs else [*objs, *(o for ref in refs for o in caption_objects(ref, "coco"))]
            for objs, refs in zip(objects, references, strict=True)]


def _load_json(source: str | Path | Mapping, what: str) -> Mapping:
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise DataError(path, f"{what} file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def gt_objects_from_coco(instances: str | Path | Mapping | Sequence, captions: str | Path | Mapping | Sequence,
                         vocabulary: str | Vocabulary = "coco") -> dict[int, set[str]]:
    """CHAIR ground truth from COCO annotations, as the paper builds it.

    An image's objects are its instance categories (mapped to canonical names) plus the objects that its
    reference captions mention (found as in :func:`chair`).

    Args:
        instances: ``instances_*.json`` (a path or the loaded dict), or a list of them (train + val).
        captions: ``captions_*.json`` likewise.
        vocabulary: the CHAIR vocabulary that names the objects.

    Returns:
        ``{image_id: canonical object names}`` for every image in either file.
    """
    vocab = _vocab(vocabulary)
    out: dict[int, set[str]] = {}
    for src in _as_list(instances):
        data = _load_json(src, "COCO instances")
        canonical = {c["id"]: vocab.canonical_objects([c["name"]]) for c in data.get("categories", [])}
        for ann in data.get("annotations", []):
            if ann["category_id"] not in canonical:
                raise MetricInputError(f"instance annotation {ann.get('id')} has unknown category "
                                       f"{ann['category_id']}")
            out.setdefault(ann["image_id"], set()).update(canonical[ann["category_id"]])
    for src in _as_list(captions):
        data = _load_json(src, "COCO captions")
        for ann in data.get("annotations", []):
            out.setdefault(ann["image_id"], set()).update(caption_objects(ann["caption"], vocab))
    return out
