"""Instruction data of ``mllm build``: what the small LLaVA is tuned on, and how it is packed into sequences.

Rows are ``(image, prompt, answer)``: captions in LLaVA's caption prompt, POPE-style yes/no questions
(:func:`~dsanchor.mllm.pope.training_questions`), and, where the data has scene graphs (synth, CLEVR), the
questions of :mod:`dsanchor.data.questions` (exact answers; prompt: the family's short-answer prompt) and its
caption prompts (one row per reference caption; prompt: the instruction prompt), as ``mllm eval --questions``
asks them (:func:`~dsanchor.mllm.items.item_prompt`), and optionally an object list (:data:`OBJECT_LIST_PROMPT`:
every object's colour and shape, left to right, e.g. "red cube , blue sphere"), a dense grounding target no
language prior can guess: each of its words has to come from the image.

Packing (:func:`pack_turns`), as LLaVA-1.5 trains on multi-turn conversations about one image: the rows of an
image are shuffled and cut into conversations of up to ``turns`` turns; the first turn is the row's prompt with
its ``<image>``, later turns drop the image token, and only the answers (and their ``</s>``) are in the loss. The
image tokens, most of a sequence, are then paid once for several answers. Every row opens some conversation with
probability 1 / turns, so single-turn prompts (what evaluation asks) are trained too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from dsanchor.data.questions import QuestionConfig, caption_items, scene_questions
from dsanchor.data.records import Sample
from dsanchor.data.scene import object_name
from dsanchor.integrations.small_models import words
from dsanchor.mllm.items import item_prompt

__all__ = ["OBJECT_LIST_PROMPT", "Row", "Conversation", "object_list", "scene_rows", "pack_turns",
           "conversation_batches"]

OBJECT_LIST_PROMPT = "List the objects from left to right."

Row = tuple[Any, str, str]  # (image, prompt with <image>, answer)
Conversation = tuple[Any, list[tuple[str, str]]]  # (image, [(prompt, answer) per turn])


def object_list(scene: dict[str, Any]) -> str:
    """The scene's objects by colour and shape, left to right in the image: "red cube , blue sphere"."""
    ordered = sorted(scene["objects"], key=lambda o: o["pixel_coords"][0])
    return " , ".join(object_name(o) for o in ordered)


def scene_rows(samples: Sequence[tuple[Any, Sample]], families: Sequence[str], per_family: int,
               captions: bool, seed: int, object_lists: bool = False) -> list[Row]:
    """Questions (exact answers from each scene graph) and caption prompts about ``(image, sample)`` pairs.

    Args:
        families: question families of :data:`dsanchor.data.questions.QUESTION_FAMILIES` to ask.
        per_family: questions per family and image, at most (yes/no families balanced within the image).
        captions: add the caption prompts (one row per reference caption of the prompt's granularity).
        object_lists: add one :func:`object_list` row per image.
    """
    cfg = QuestionConfig(per_family=per_family, families=tuple(families), seed=seed)
    rows: list[Row] = []
    for image, s in samples:
        if s.scene is None:
            continue
        rows += [(image, item_prompt("llava", q.question, caption=False), q.answer)
                 for q in scene_questions(s.scene, cfg, s.image_id, s.image_path, s.split)]
        if captions:
            rows += [(image, item_prompt("llava", q.question, caption=True), ref)
                     for q in caption_items(s) for ref in q.references]
        if object_lists:
            rows.append((image, item_prompt("llava", OBJECT_LIST_PROMPT, caption=True), object_list(s.scene)))
    return rows


def pack_turns(rows: Sequence[Row], turns: int, seed: int, alone: Sequence[str] = ()) -> list[Conversation]:
    """The rows of each image (by identity), shuffled and cut into conversations of up to ``turns`` turns; a row
    whose prompt is in ``alone`` gets a conversation of its own (an object list would give later turns their
    answers as text)."""
    rng = random.Random(seed)
    by_image: dict[int, tuple[Any, list[tuple[str, str]]]] = {}
    out: list[Conversation] = []
    for image, prompt, answer in rows:
        if prompt in alone:
            out.append((image, [(prompt, answer)]))
        else:
            by_image.setdefault(id(image), (image, []))[1].append((prompt, answer))
    for image, qa in by_image.values():
        rng.shuffle(qa)
        out += [(image, qa[a:a + turns]) for a in range(0, len(qa), turns)]
    return out


def _later_turn(prompt: str) -> str:
    """A prompt as a later turn: its image token dropped ("USER: <image>\\nQ ASSISTANT:" -> "USER: Q ASSISTANT:")."""
    return prompt.replace("<image>\n", "").replace("<image>", "")


def conversation_batches(tok, convs: Sequence[list[tuple[str, str]]], n_image_tokens: int,
                         max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of each conversation (first prompt's ``<image>`` expanded to the image's tokens; each turn
    prompt + answer + </s>) and labels (C, L), -100 outside the answers, right padded."""
    cache: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tok(text, add_special_tokens=False).input_ids
        return cache[text]

    seqs = []
    for conv in convs:
        ids: list[int] = []
        labels: list[int] = []
        for k, (prompt, answer) in enumerate(conv):
            head = encode(prompt.replace("<image>", "<image>" * n_image_tokens) if k == 0 else _later_turn(prompt))
            body = tok(" ".join(words(answer)[:max_words]), add_special_tokens=False).input_ids + [tok.eos_token_id]
            ids += head + body
            labels += [-100] * len(head) + body
        seqs.append((ids, labels))
    width = max(len(r[0]) for r in seqs)
    out_ids = torch.full((len(seqs), width), tok.pad_token_id)
    out_labels = torch.full((len(seqs), width), -100)
    for i, (a, b) in enumerate(seqs):
        out_ids[i, :len(a)] = torch.tensor(a)
        out_labels[i, :len(b)] = torch.tensor(b)
    return out_ids, out_labels
