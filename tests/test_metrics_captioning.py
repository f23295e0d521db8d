"""BLEU / CIDEr-D through pycocoevalcap, and the PTB tokenisers they read.

Real MLLM captions come from tests/fixtures/chair (12 files of 500, see its README): the fast tests read the
first 200 of each file, the slow one all 6,000.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsanchor.errors import DsanchorError, MissingDependencyError
from dsanchor.metrics import MetricInputError
from dsanchor.metrics import tokenize as tok
from dsanchor.metrics.captioning import bleu, caption_metrics, cider

CHAIR_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "chair"
needs_java = pytest.mark.skipif(not tok.java_available(), reason="`java` is not installed (Java PTBTokenizer)")

ORDINARY = [
    "A man (in a red shirt) holds a \"Frisbee\" and the dog's ball.",
    "He doesn't know; it's the man's dog... Don't worry -- it's fine! Is it? Yes: 3.5 kg, 1,000 people, $5, 50%.",
    "The cats' toys, e.g. balls, a U.S. flag, Mr. Smith at 10:30 p.m. on a snow-covered cup/mug.",
    "I'm gonna say you've we'll he'd can't cannot wanna.",
    "A woman’s hat, ‘quoted’ and “double” — dash – endash … ellipsis café.",
    "There are dogs, cats, etc. The end etc.",
    "Two giraffes standing next to each other in a grassy field.\n\nA zebra is nearby.",
]


def _load(name: str, limit: int | None = 200) -> dict[int, str]:
    lines = (CHAIR_FIXTURE / "captions" / name).read_text().splitlines()[:limit]
    return {json.loads(line)["image_id"]: json.loads(line)["caption"] for line in lines}


def _cands_refs(n: int) -> tuple[dict, dict]:
    """LLaVA greedy captions as candidates; six other captions of the same images as references."""
    cand = dict(list(_load("llava-1.5_greedy.jsonl").items())[:n])
    refs: dict[int, list[str]] = {i: [] for i in cand}
    for model in ("llava-1.5", "minigpt4", "shikra"):
        for decoding in ("beam5", "ours"):
            other = _load(f"{model}_{decoding}.jsonl")
            for i in cand:
                refs[i].append(other[i])
    return cand, refs


def test_punctuation_list_is_pycocoevalcaps():
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    assert tok.PTB_PUNCTUATION == set(PUNCTUATIONS)


def test_python_tokenizer_conventions():
    assert tok.ptb_tokenize("He doesn't see the man's dog (a puppy).") == [
        "he", "does", "n't", "see", "the", "man", "'s", "dog", "-lrb-", "a", "puppy", "-rrb-", "."]
    assert tok.ptb_tokenize('"Hi," e.g. 3.5 snow-covered o\'clock') == [
        "``", "hi", ",", "''", "e.g.", "3.5", "snow-covered", "o'clock"]
    assert tok.caption_tokens(["A Dog, a CAT... and (a) bird!"], "python") == ["a dog a cat and -lrb- a -rrb- bird"]


@needs_java
def test_python_tokenizer_matches_java_on_ordinary_text():
    assert tok.caption_tokens(ORDINARY, "python") == tok.caption_tokens(ORDINARY, "java")


@needs_java
def test_python_tokenizer_matches_java_on_real_captions():
    caps = [c for f in ("llava-1.5_greedy.jsonl", "instructblip_beam5.jsonl") for c in _load(f).values()]
    java = tok.caption_tokens(caps, "java")
    python = tok.caption_tokens(caps, "python")
    assert [(j, p) for j, p in zip(java, python, strict=True) if j != p] == []


@pytest.mark.slow
@needs_java
def test_python_tokenizer_matches_java_on_all_real_captions():
    caps = [c for f in sorted((CHAIR_FIXTURE / "captions").glob("*.jsonl")) for c in _load(f.name, None).values()]
    java = tok.caption_tokens(caps, "java")
    python = tok.caption_tokens(caps, "python")
    differ = [(j, p) for j, p in zip(java, python, strict=True) if j != p]
    # 4 of the 6000 differ, all on garbled model output ("woman'shand", "daemon'82", "process.;", "1200 R. The")
    assert len(differ) <= 4, differ[:5]


@needs_java
def test_java_tokens_match_pycocoevalcap_ptbtokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(ORDINARY)})
    assert tok.caption_tokens(ORDINARY, "java") == [theirs[i][0] for i in range(len(ORDINARY))]


@needs_java
def test_bleu_cider_equal_pycocoevalcap_pipeline():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    cand, refs = _cands_refs(20)
    # pycocoevalcap's COCOEvalCap pipeline: PTBTokenizer on both sides (one JVM run here), then the scorers
    both = PTBTokenizer().tokenize({**{("ref", i): [{"caption": r} for r in refs[i]] for i in cand},
                                    **{("cand", i): [{"caption": cand[i]}] for i in cand}})
    gts = {i: both[("ref", i)] for i in cand}
    res = {i: both[("cand", i)] for i in cand}
    ref_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    ref_cider, _ = Cider().compute_score(gts, res)

    ours = bleu(cand, refs, tokenizer="java")
    assert list(ours) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"]
    for n in range(4):
        assert ours[f"BLEU-{n + 1}"] == pytest.approx(ref_bleu[n], abs=1e-9)
    assert cider(cand, refs, tokenizer="java") == pytest.approx(ref_cider, abs=1e-9)
    assert 0.0 < ref_cider < 10.0  # raw scale, not x100
    # the pure-Python tokeniser gives the same scores on these captions
    py = caption_metrics(cand, refs, tokenizer="python")
    assert py.bleu4 == pytest.approx(ref_bleu[3], abs=1e-6)
    assert py.cider == pytest.approx(ref_cider, abs=1e-4)


def test_identical_caption_gives_bleu_one():
    refs = {1: ["a man riding a wave on top of a surfboard"], 2: ["two dogs play with a red ball in the park"]}
    cands = {i: r[0] for i, r in refs.items()}
    for value in bleu(cands, refs, tokenizer="python").values():
        assert value == pytest.approx(1.0, abs=1e-6)


def test_single_image_cider_is_zero():
    # IDF is log(#images / df); with one image every reference n-gram has df = 1 = #images, so all weights are 0
    refs = {7: ["a man riding a wave on top of a surfboard", "a surfer on a big wave"]}
    assert cider({7: "a man riding a wave on top of a surfboard"}, refs, tokenizer="python") == 0.0


def test_cider_rewards_the_right_caption():
    refs = {1: ["a dog runs on the grass", "a brown dog running in a field"],
            2: ["a plate of pasta with tomato sauce", "pasta on a white plate"],
            3: ["a red car parked on the street", "a car parked by the curb"]}
    good = cider({1: "a dog running on grass", 2: "a plate of pasta", 3: "a red car on the street"}, refs,
                 tokenizer="python")
    bad = cider({1: "a plate of pasta", 2: "a red car on the street", 3: "a dog running on grass"}, refs,
                tokenizer="python")
    assert good > bad >= 0.0


def test_caption_metrics_bundles_both():
    cand, refs = {1: "a dog on grass", 2: "a red car"}, {1: ["a dog on the grass"], 2: ["a red car parked"]}
    m = caption_metrics(cand, refs, tokenizer="python")
    assert m.as_dict()["BLEU-2"] == bleu(cand, refs, tokenizer="python")["BLEU-2"]
    assert m.as_dict()["CIDEr"] == cider(cand, refs, tokenizer="python")


@pytest.mark.parametrize("cands, refs, match", [
    ({}, {}, "empty"),
    ({1: "a dog"}, {2: ["a dog"]}, "same image ids"),
    ({1: "a dog", 2: "a cat"}, {1: ["a dog"]}, "no references"),
    ({1: "a dog"}, {1: "a dog"}, "list of caption strings"),
    ({1: "a dog"}, {1: []}, "non-empty list"),
    ({1: ["a dog"]}, {1: ["a dog"]}, "one caption string"),
])
def test_bad_inputs_raise_clear_errors(cands, refs, match):
    with pytest.raises(MetricInputError, match=match) as err:
        bleu(cands, refs, tokenizer="python")
    assert isinstance(err.value, DsanchorError) and isinstance(err.value, ValueError)
    with pytest.raises(MetricInputError):
        cider(cands, refs, tokenizer="python")


def test_unknown_tokenizer_lists_the_valid_ones():
    with pytest.raises(MetricInputError, match="auto, java, python"):
        bleu({1: "a dog"}, {1: ["a dog"]}, tokenizer="spacy")


def test_forcing_java_without_java_says_what_to_do(monkeypatch):
    monkeypatch.setattr(tok.shutil, "which", lambda name: None)
    assert not tok.java_available()
    with pytest.raises(MissingDependencyError, match="tokenizer='python'"):
        bleu({1: "a dog"}, {1: ["a dog"]}, tokenizer="java")
    # auto falls back to the Python tokeniser
    assert bleu({1: "a dog sits on the mat"}, {1: ["a dog sits on the mat"]})["BLEU-1"] == pytest.approx(1.0)


def test_singularize_coco_words():
    cases = {"dogs": "dog", "buses": "bus", "bus": "bus", "glasses": "glass", "glass": "glass", "people": "person",
             "women": "woman", "children": "child", "knives": "knife", "mice": "mouse", "sheep": "sheep",
             "benches": "bench", "ponies": "pony", "ties": "tie", "canoes": "canoe", "skis": "ski", "taxis": "taxi",
             "scissors": "scissors", "calves": "calf", "stoves": "stove", "doggies": "doggie",
             "tomatoes": "tomato", "giraffes": "giraffe", "oranges": "orange", "tennis": "tennis", "cattle": "cattle"}
    assert {w: tok.singularize(w) for w in cases} == cases
