"""Questions with exact answers from CLEVR scene graphs (synth or real CLEVR), after CLEVR's own generator
(Johnson et al., CVPR 2017; facebookresearch/clevr-dataset-gen).

Families (``question_family``):

* ``exist``: "Is there a red cube?" (yes / no);
* ``count``: "How many large spheres are there?" (a number);
* ``query_color``, ``query_size``, ``query_material``, ``query_shape``: "What color is the large metal cube?";
* ``compare_integer``: "Are there more cubes than spheres?", "... fewer ...", "... an equal number of ..." (yes / no);
* ``relate``: "Is the red cube left of the blue sphere?" (yes / no; left, right, in front of, behind);
* ``majority``: "Are most of the things cubes?" (yes / no; the captioner's majority facts);
* ``absent``: "Are there no yellow things?" (yes / no; the captioner's absence facts).

Caption prompts (``caption_scene``, ``caption_object``, ``caption_relation``: :data:`CAPTION_PROMPTS`), one per
granularity and image, ask for a description instead of an answer: the whole scene, one object, or two objects and
where they are. Their references are the image's captions of that granularity (``references``; no ``answer``), so
they are scored by CIDEr-D and CHAIR where questions are scored by exact match.

Answers come from the scene exactly, through :func:`dsanchor.data.holds` where a caption fact says the same
thing. As CLEVR requires, a question refers to one object only by words that pick it out uniquely
(:func:`dsanchor.data.hardneg.unique_description`), so "What color is the cube?" is asked only where there is one
cube. A relation is asked only where it is clear: "yes" needs the subject at least ``relation_margin`` scene units
in that direction of the object, and "no" needs it that far in the opposite direction, so no answer rests on a
near tie. Yes/no families are balanced: each image gets as many "yes" as "no" questions of each such family (an
image that cannot have both gets neither).

:func:`write_clevr_questions` writes CLEVR's questions format: ``{"info": ..., "questions": [{"image_index",
"image_filename", "question", "answer", "question_family", "split"}]}``; caption prompts come after every question,
with ``references`` in place of ``answer``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsanchor.data.facts import holds
from dsanchor.data.hardneg import unique_description
from dsanchor.data.records import Sample
from dsanchor.data.scene import RELATIONS, attribute_values, clevr_vocabulary, matches
from dsanchor.files import write_json

__all__ = ["questions_file", "QUESTION_FAMILIES", "CAPTION_PROMPTS", "CAPTION_FAMILIES", "Question", "caption_items",
           "QuestionConfig", "scene_questions", "generate_questions",
           "write_clevr_questions", "normalize_answer"]

QUESTION_FAMILIES: tuple[str, ...] = ("exist", "count", "query_color", "query_size", "query_material",
                                      "query_shape", "compare_integer", "relate", "majority", "absent")
YES_NO_FAMILIES: tuple[str, ...] = ("exist", "compare_integer", "relate", "majority", "absent")
# caption prompt family -> (the granularity of the references, the instruction)
CAPTION_PROMPTS: dict[str, tuple[str, str]] = {
    "caption_scene": ("scene", "Describe the whole scene in one sentence."),
    "caption_object": ("object", "Describe one object in the image."),
    "caption_relation": ("relation", "Describe two objects in the image and where they are."),
}
CAPTION_FAMILIES: tuple[str, ...] = tuple(CAPTION_PROMPTS)
_ORDER = ("size", "color", "material", "shape")
_REL_WORDS = {"left": "left of", "right": "right of", "front": "in front of", "behind": "behind"}
_OPPOSITE = {"left": "right", "right": "left", "front": "behind", "behind": "front"}
_NUMBERS = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


@dataclass
class Question:
    """One question about one image, with its exact answer."""

    image_id: int
    image_path: str
    question: str
    answer: str | None  # normalised: "yes", "no", a number ("3") or an attribute value ("red"); None: a caption prompt
    family: str  # one of QUESTION_FAMILIES or CAPTION_FAMILIES
    split: str | None = None
    references: tuple[str, ...] = ()  # a caption prompt's reference captions (of its granularity)


@dataclass
class QuestionConfig:
    """How many questions of each family per image, and the thresholds behind them."""

    per_family: int = field(default=2, metadata={
        "help": "questions of each family per image, at most (yes/no families: half yes, half no)"})
    families: tuple[str, ...] = field(default=QUESTION_FAMILIES, metadata={"help": "families to ask"})
    seed: int = field(default=0, metadata={"help": "seed of the choices (with the image id)"})
    relation_margin: float = field(default=0.6, metadata={
        "help": "separation (scene units) along a direction that a relation answer needs, either way"})
    captions: tuple[str, ...] = field(default=CAPTION_FAMILIES, metadata={
        "help": "caption prompts to add per image (caption_scene, caption_object, caption_relation; each needs "
                "reference captions of its granularity)"})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(QUESTION_FAMILIES))
        if unknown:
            raise ValueError(f"unknown question families {unknown}; valid families are {list(QUESTION_FAMILIES)}")
        unknown = sorted(set(self.captions) - set(CAPTION_FAMILIES))
        if unknown:
            raise ValueError(f"unknown caption prompts {unknown}; valid prompts are {list(CAPTION_FAMILIES)}")
        if self.per_family < 1:
            raise ValueError("per_family must be at least 1")


def normalize_answer(text: str) -> str:
    """A model's free answer as a short answer: lower case, first word, number words as digits, synonyms as
    CLEVR's canonical values ("Yes." -> "yes", "three" -> "3", "ball" -> "sphere", "shiny" -> "metal")."""
    words = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()
    if not words:
        return ""
    word = words[0]
    if word in _NUMBERS:
        return _NUMBERS[word]
    for canonical, variants in clevr_vocabulary().synonyms.items():
        if word in variants and canonical not in ("left", "right", "front", "behind", "thing"):
            return canonical
    return word


# ---- describing sets of objects -------------------------------------------------------------------------------

def _phrase(desc: dict[str, str], plural: bool = False) -> str:
    """"large red cube" / "large red cubes"; without a shape, "thing(s)"."""
    words = [desc[a] for a in _ORDER[:3] if a in desc]
    noun = desc.get("shape", "thing")
    return " ".join([*words, noun + ("s" if plural else "")])


def _random_desc(rng: np.random.Generator) -> dict[str, str]:
    """One or two random attributes (a shape, a colour, a colour + shape, a size + shape, ...)."""
    attrs = [str(a) for a in rng.choice(_ORDER, size=int(rng.integers(1, 3)), replace=False)]
    return {a: str(rng.choice(attribute_values(a))) for a in sorted(attrs, key=_ORDER.index)}


def _count(scene: dict[str, Any], desc: dict[str, str]) -> int:
    return sum(matches(o, desc) for o in scene["objects"])


# ---- the families ---------------------------------------------------------------------------------------------

def _exist(scene, rng, want_yes: bool):
    for _ in range(30):
        if want_yes:
            obj = scene["objects"][int(rng.integers(len(scene["objects"])))]
            keep = [str(a) for a in rng.choice(_ORDER, size=int(rng.integers(1, 3)), replace=False)]
            desc = {a: obj[a] for a in keep}
        else:
            desc = _random_desc(rng)
        if (_count(scene, desc) > 0) == want_yes:
            form = rng.choice(["Is there a {}?", "Are there any {}?"])
            return form.format(_phrase(desc, plural="any" in form)), "yes" if want_yes else "no"
    return None


def _count_question(scene, rng):
    desc = _random_desc(rng) if rng.random() < 0.7 else {}
    form = rng.choice(["How many {} are there?", "What number of {} are there?"])
    return form.format(_phrase(desc, plural=True)), str(_count(scene, desc))


def _query(scene, rng, attribute: str):
    objs = scene["objects"]
    for k in rng.permutation(len(objs)):
        desc = unique_description(scene, int(k))
        if desc is None:
            continue
        ref = {a: v for a, v in desc.items() if a != attribute}
        if _count(scene, ref) != 1:  # the words left must still pick out one object
            ref = {a: objs[int(k)][a] for a in _ORDER if a != attribute}
            if _count(scene, ref) != 1:
                continue
        noun = "the " + _phrase(ref)
        q = {"color": f"What color is {noun}?", "size": f"What size is {noun}?",
             "material": f"What is {noun} made of?", "shape": f"What shape is {noun}?"}[attribute]
        return q, objs[int(k)][attribute]
    return None


def _compare(scene, rng, want_yes: bool):
    for _ in range(40):
        a, b = _random_desc(rng), _random_desc(rng)
        if a == b:
            continue
        na, nb = _count(scene, a), _count(scene, b)
        kind = str(rng.choice(["more", "fewer", "equal"]))
        truth = {"more": na > nb, "fewer": na < nb, "equal": na == nb}[kind]
        if truth != want_yes:
            continue
        pa, pb = _phrase(a, plural=True), _phrase(b, plural=True)
        q = (f"Are there an equal number of {pa} and {pb}?" if kind == "equal"
             else f"Are there {kind} {pa} than {pb}?")
        return q, "yes" if want_yes else "no"
    return None


def _relate(scene, rng, want_yes: bool, margin: float):
    objs = scene["objects"]
    pairs = [(j, i) for j in range(len(objs)) for i in range(len(objs)) if i != j]
    for p in rng.permutation(len(pairs)) if pairs else []:
        j, i = pairs[int(p)]
        dj, di = unique_description(scene, j), unique_description(scene, i)
        if dj is None or di is None:
            continue
        for rel in rng.permutation(RELATIONS):
            rel = str(rel)
            asked = rel if want_yes else _OPPOSITE[rel]
            fact = {"type": "relation", "subject": dj, "relation": rel, "object": di, "margin": margin}
            if holds(fact, scene):  # j is clearly <rel> of i: "yes" to rel, "no" to its opposite
                return f"Is the {_phrase(dj)} {_REL_WORDS[asked]} the {_phrase(di)}?", "yes" if want_yes else "no"
    return None


def _majority(scene, rng, want_yes: bool):
    for _ in range(30):
        attribute = str(rng.choice(["color", "shape", "size", "material"]))
        value = str(rng.choice(attribute_values(attribute)))
        if holds({"type": "most", "attribute": attribute, "value": value}, scene) != want_yes:
            continue
        return f"Are most of the things {value + 's' if attribute == 'shape' else value}?", "yes" if want_yes else "no"
    return None


def _absent(scene, rng, want_yes: bool):
    for _ in range(30):
        attribute = str(rng.choice(["color", "shape"]))
        value = str(rng.choice(attribute_values(attribute)))
        if holds({"type": "absent", "attribute": attribute, "value": value}, scene) != want_yes:
            continue
        noun = f"{value}s" if attribute == "shape" else f"{value} things"
        return f"Are there no {noun}?", "yes" if want_yes else "no"
    return None


def _ask(family: str, scene, rng, want_yes: bool, cfg: QuestionConfig):
    if family == "exist":
        return _exist(scene, rng, want_yes)
    if family == "count":
        return _count_question(scene, rng)
    if family.startswith("query_"):
        return _query(scene, rng, family[len("query_"):])
    if family == "compare_integer":
        return _compare(scene, rng, want_yes)
    if family == "relate":
        return _relate(scene, rng, want_yes, cfg.relation_margin)
    if family == "majority":
        return _majority(scene, rng, want_yes)
    return _absent(scene, rng, want_yes)


def _family_questions(family: str, scene, rng, cfg: QuestionConfig) -> list[tuple[str, str]]:
    if family not in YES_NO_FAMILIES:
        out: dict[str, str] = {}
        for _ in range(cfg.per_family * 4):
            made = _ask(family, scene, rng, True, cfg)
            if made is not None:
                out.setdefault(made[0], made[1])
            if made is None or len(out) >= cfg.per_family:
                break
        return list(out.items())
    pairs = []
    for _ in range(max(cfg.per_family // 2, 1)):
        yes, no = _ask(family, scene, rng, True, cfg), _ask(family, scene, rng, False, cfg)
        if yes is None or no is None or yes[0] == no[0]:
            break
        pairs += [yes, no]
    return pairs


def scene_questions(scene: dict[str, Any], config: QuestionConfig | None = None, image_id: int = 0,
                    image_path: str = "", split: str | None = None) -> list[Question]:
    """The questions of one scene, family by family (each yes/no family balanced within the image)."""
    cfg = config or QuestionConfig()
    if not scene["objects"]:
        return []
    rng = np.random.default_rng([cfg.seed, image_id])
    out = []
    for family in cfg.families:
        for question, answer in _family_questions(family, scene, rng, cfg):
            out.append(Question(image_id, image_path, question, answer, family, split))
    return out


def caption_items(sample: Sample, families: Sequence[str] = CAPTION_FAMILIES) -> list[Question]:
    """The caption prompts of one sample: one per family whose granularity the sample has reference captions of."""
    out = []
    for family in families:
        granularity, prompt = CAPTION_PROMPTS[family]
        refs = tuple(c.text for c in sample.captions if c.granularity == granularity)
        if refs:
            out.append(Question(sample.image_id, sample.image_path, prompt, None, family, sample.split, refs))
    return out


def generate_questions(samples: Sequence[Sample], config: QuestionConfig | None = None) -> list[Question]:
    """Questions for every sample with a scene graph, in sample order, then its caption prompts (``captions``).

    Raises:
        ValueError: when no sample has a scene graph (COCO, VG and Flickr have none to answer from).
    """
    with_scene = [s for s in samples if s.scene is not None]
    if not with_scene:
        raise ValueError("questions need scene graphs (formats synth and clevr); these samples have none")
    cfg = config or QuestionConfig()
    questions = [q for s in with_scene for q in scene_questions(s.scene, cfg, s.image_id, s.image_path, s.split)]
    return questions + [q for s in with_scene for q in caption_items(s, cfg.captions)]


def write_clevr_questions(questions: Sequence[Question], out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """CLEVR's questions JSON (``image_index`` is the sample's image id)."""
    counts = Counter(q.family for q in questions)
    rows = [{"image_index": q.image_id, "image_filename": q.image_path, "question": q.question,
             **({"answer": q.answer} if q.answer is not None else {"references": list(q.references)}),
             "question_family": q.family, "split": q.split} for q in questions]
    meta = {"generator": "dsanchor", "families": dict(counts), **(info or {})}
    return write_json(out, {"info": meta, "questions": rows})


def questions_file(data: str | Path, fmt: str, out: str | Path, config: QuestionConfig | None = None,
                   split: str | None = None) -> list[Question]:
    """``dsanchor data questions``: the questions of a dataset on disk (one split, or all), written to ``out`` in
    CLEVR's format with where they came from; returns them. Raises ValueError as :func:`generate_questions`."""
    from dsanchor.data import load_dataset

    cfg = config or QuestionConfig()
    questions = generate_questions(load_dataset(fmt, data, split), cfg)
    write_clevr_questions(questions, out, {"data": str(data), "format": fmt, "split": split, "seed": cfg.seed})
    return questions
