"""POPE (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models") for an MLLM.

The model is asked :data:`POPE_QUESTION` about an object, in its family's question prompt
(:func:`question_prompt`), and its answer is read by :func:`read_yes_no` (anything but yes counts as no).

Two question sets, one per use (both were called ``pope_questions`` before; their draws differ and both feed
numbers that must not change, so each keeps its own):

* :func:`pope_questions`: the benchmark. For each annotated test image up to ``positives`` of its objects
  ("yes") and as many absent ones ("no") drawn by each of the random, popular and adversarial samplings
  (:mod:`dsanchor.hallucination.negatives`, statistics over the whole dataset).
* :func:`training_questions`: yes/no instruction data for ``mllm build`` (LLaVA-1.5 mixes VQA data into its
  tuning): per image half "yes" about its objects, half "no" about absent vocabulary objects ("random" sampling).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsanchor.data.records import Sample
from dsanchor.hallucination.negatives import ObjectStats, build_pairs, object_rows
from dsanchor.integrations import get_family
from dsanchor.integrations.families import decode
from dsanchor.metrics.pope import pope_metrics
from dsanchor.mllm.generate import batches, generate_text, open_image, to_model

__all__ = ["POPE_QUESTION", "SAMPLINGS", "Question", "question_prompt", "read_yes_no", "pope_questions",
           "training_questions", "answer_questions", "pope_scores", "pope_counts", "f1_of_counts"]

POPE_QUESTION = "Is there a {object} in the image?"
SAMPLINGS = ("random", "popular", "adversarial")
Question = tuple[int, str, int]  # (test row, object name, label 1 = present)


def question_prompt(model_type: str, obj: str) -> str:
    """The POPE prompt asking ``model_type`` whether ``obj`` is in its image."""
    return get_family(model_type).QUESTION_PROMPT.format(question=POPE_QUESTION.format(object=obj))


def read_yes_no(answer: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None for anything else (POPE counts it as no)."""
    words = answer.strip().lower().replace(",", " ").replace(".", " ").split()
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def pope_questions(samples: Sequence[Sample], all_samples: Sequence[Sample], positives: int,
                   seed: int) -> dict[str, list[Question]]:
    """Per sampling, the (row of ``samples``, object name, label) questions; images without objects get none.

    Args:
        samples: the images asked about (the test split).
        all_samples: the whole dataset (object statistics for the popular and adversarial samplings).
        positives: at most this many present objects per image, and as many absent ones per sampling.
        seed: sampling k draws with ``seed + k``.
    """
    names = sorted({o.name for s in all_samples for o in s.objects})
    if not names:
        return {}
    index = {n: i for i, n in enumerate(names)}
    stats = ObjectStats.from_rows(object_rows([[o.name for o in s.objects] for s in all_samples], index), len(names))
    rows = object_rows([[o.name for o in s.objects] for s in samples], index)
    out = {}
    for k, sampling in enumerate(SAMPLINGS):
        gen = torch.Generator().manual_seed(seed + k)
        pairs = build_pairs(rows, stats, [sampling], max_positives=positives, generator=gen)
        out[sampling] = [(int(i), names[int(o)], int(lab)) for i, o, lab in zip(pairs.image, pairs.object,
                                                                              pairs.label, strict=True)]
    return out


def training_questions(objects: Sequence[tuple[Any, Sequence[str]]], per_image: int,
                       seed: int = 0) -> list[tuple[Any, str, str]]:
    """Yes/no questions for training: ``(image, prompt, answer)``, ``per_image`` per image, half "yes", half "no".

    The "yes" questions name objects in the image (each distinct name once before any repeats), the "no"
    questions objects of the vocabulary (every name in ``objects``) that are absent from it, drawn at random
    ("random" POPE sampling). Images whose objects cover the whole vocabulary, or with no objects, get none.
    Prompts are LLaVA's (:func:`question_prompt`).

    Args:
        objects: ``(image, object names in it)`` per image, e.g. the samples' ``ObjectAnnotation.name``.
        per_image: questions per image (even).
    """
    rng = random.Random(seed)
    vocabulary = sorted({n for _, names in objects for n in names})
    out: list[tuple[Any, str, str]] = []
    half = per_image // 2
    for image, names in objects:
        present = sorted(set(names))
        absent = [n for n in vocabulary if n not in set(names)]
        if not present or not absent or not half:
            continue
        yes = rng.sample(present, len(present))
        yes = (yes * (half // len(yes) + 1))[:half]
        no = rng.sample(absent, min(half, len(absent)))
        no = (no * (half // len(no) + 1))[:half]
        out += [(image, question_prompt("llava", n), "yes") for n in yes]
        out += [(image, question_prompt("llava", n), "no") for n in no]
    return out


def answer_questions(model: nn.Module, model_type: str, processor: Any, samples: Sequence[Sample],
                     root: str | Path, questions: dict[str, list[Question]], batch_size: int,
                     on_batch=None, progress: bool = False) -> dict[tuple[int, str], bool]:
    """The model's yes/no answer to every distinct (row, object) question (3 new tokens, greedy).

    Args:
        on_batch: called with the image ids of each batch before its ``generate`` (e.g. to set g per image).
    """
    family = get_family(model_type)
    todo = sorted({(i, o) for qs in questions.values() for i, o, _ in qs})
    answers: dict[tuple[int, str], bool] = {}
    images: dict[int, Any] = {}
    for batch in batches(todo, batch_size, "POPE", progress):
        for i, _ in batch:
            if i not in images:
                images[i] = open_image(root, samples[i])
        if on_batch is not None:
            on_batch([samples[i].image_id for i, _ in batch])
        inputs = family.prepare(processor, [images[i] for i, _ in batch],
                                [question_prompt(model_type, o) for _, o in batch])
        texts = generate_text(model, to_model(inputs, model), lambda ids: decode(processor, ids), 3)
        answers.update({q: read_yes_no(t) is True for q, t in zip(batch, texts, strict=True)})
    return answers


def pope_scores(questions: dict[str, list[Question]],
                answers: dict[tuple[int, str], bool]) -> dict[str, dict[str, float]]:
    """POPE metrics per sampling and over all three (``all``)."""
    out = {}
    pooled_p, pooled_l = [], []
    for sampling, qs in questions.items():
        if not qs:
            continue
        pred = [answers[(i, o)] for i, o, _ in qs]
        lab = [bool(label) for _, _, label in qs]
        out[sampling] = pope_metrics(pred, lab).as_dict()
        pooled_p += pred
        pooled_l += lab
    if pooled_p:
        out["all"] = pope_metrics(pooled_p, pooled_l).as_dict()
    return out


def pope_counts(questions: dict[str, list[Question]], answers: dict[tuple[int, str], bool],
                n_images: int) -> np.ndarray:
    """(n_images, 3) per-image (tp, fp, fn) over all samplings: what the F1 bootstrap resamples."""
    c = np.zeros((n_images, 3))
    for qs in questions.values():
        for i, o, label in qs:
            yes = answers[(i, o)]
            c[i] += (yes and label, yes and not label, (not yes) and label)
    return c


def f1_of_counts(x: np.ndarray) -> float:
    """F1 of summed (tp, fp, fn) rows."""
    tp, fp, fn = x.sum(0)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
