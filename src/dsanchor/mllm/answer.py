"""``dsanchor mllm answer``: answer a CLEVR-format questions file with a local MLLM, with or without DSA.

Each question goes to the model with its family's short-answer prompt (``ANSWER_PROMPT`` of
:mod:`dsanchor.integrations.llava` and the others; a caption prompt, a row with ``references``, goes in its
``INSTRUCTION_PROMPT`` and its text is kept whole); the generated text is cut to a normalised short answer
(:func:`dsanchor.data.questions.normalize_answer`: lower case, one word, numbers as digits, CLEVR synonyms as their
canonical value). With DSA attached, the controller reads the image at the seam and the question's own tokens, so
g can change with the question; the g used is written with each answer. When the file holds answers, accuracy per
question family is computed against them (exact match of the normalised answers).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from dsanchor.controller import GranularityController
from dsanchor.data.questions import CAPTION_FAMILIES, normalize_answer
from dsanchor.encoders.transforms import load_rgb
from dsanchor.files import write_json
from dsanchor.integrations import get_dsa, load_adapter, load_mllm, resolve_device
from dsanchor.integrations.attach import attach_dsa
from dsanchor.integrations.families import decode, get_family
from dsanchor.mllm.config import AnswerConfig
from dsanchor.mllm.generate import batches, generate_text, to_model
from dsanchor.mllm.items import item_prompt, read_questions

__all__ = ["read_questions", "is_caption_row", "answer_questions_file", "family_accuracy", "run_mllm_answer"]


def is_caption_row(row: dict[str, Any]) -> bool:
    """A caption prompt (``references``, or a caption family), not a question."""
    return "references" in row or row.get("question_family") in CAPTION_FAMILIES


def answer_questions_file(model, model_type: str, processor, rows: list[dict[str, Any]], images: str | Path,
                          batch_size: int = 8, max_new_tokens: int = 5, progress: bool = False,
                          caption_tokens: int = 30) -> list[dict]:
    """One answer per question: ``{"question_index", "image_filename", "question", "answer", "raw", "g"}``
    (``g`` None without DSA; a caption prompt's ``answer`` is its whole text, up to ``caption_tokens`` tokens)."""
    root = Path(images)
    handle = get_dsa(model)
    out: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}  # image file -> RGB image, so that questions about one image open it once
    for batch in batches(list(enumerate(rows)), batch_size, "answers", progress):
        for _, r in batch:
            if r["image_filename"] not in cache:
                cache[r["image_filename"]] = load_rgb(root / r["image_filename"])
        pics = [cache[r["image_filename"]] for _, r in batch]
        caption = [is_caption_row(r) for _, r in batch]
        prompts = [item_prompt(model_type, r["question"], c) for (_, r), c in zip(batch, caption, strict=True)]
        inputs = to_model(get_family(model_type).prepare(processor, pics, prompts), model)
        tokens = caption_tokens if any(caption) else max_new_tokens
        texts = generate_text(model, inputs, lambda ids: decode(processor, ids), tokens)
        gs = handle.last_g.tolist() if handle is not None and handle.last_g is not None else [None] * len(batch)
        for (k, r), text, g, c in zip(batch, texts, gs, caption, strict=True):
            out.append({"question_index": r.get("question_index", k), "image_filename": r["image_filename"],
                        "question": r["question"], "answer": text.strip() if c else normalize_answer(text),
                        "raw": text.strip(),
                        "g": None if g is None else round(float(g), 6)})
        if len(cache) > 256:
            cache.clear()
    return out


def family_accuracy(rows: list[dict[str, Any]], answers: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Exact-match accuracy of the normalised answers per ``question_family`` (and ``all``), over the questions
    that carry an ``answer``; empty when none does."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, ans in zip(rows, answers, strict=True):
        if "answer" in row:
            ok = normalize_answer(str(row["answer"])) == ans["answer"]
            hits[row.get("question_family", "all")].append(ok)
            if row.get("question_family"):
                hits["all"].append(ok)
    return {f: {"accuracy": sum(v) / len(v), "n": len(v)} for f, v in sorted(hits.items())}


def run_mllm_answer(cfg: AnswerConfig, progress: bool = True) -> dict[str, Any]:
    """Load the model (DSA attached with ``--g`` or ``--controller``), answer the file, write ``cfg.out``."""
    cfg.check()
    rows = read_questions(cfg.questions, cfg.limit)
    model, processor = load_mllm(cfg.model_type, cfg.model_path, resolve_device(cfg.device), cfg.dtype)
    adapter = load_adapter(model, cfg.adapter) if cfg.adapter else None
    source = GranularityController.from_pretrained(cfg.controller) if cfg.controller else cfg.g
    handle = attach_dsa(model, source, cfg.coarse_layer, adapter=adapter) if source is not None else None
    try:
        answers = answer_questions_file(model, cfg.model_type, processor, rows, cfg.images, cfg.batch_size,
                                        cfg.max_new_tokens, progress, cfg.caption_tokens)
    finally:
        if handle is not None:
            handle.detach()
    result = {"answers": answers, "accuracy": family_accuracy(rows, answers),
              "dsa": cfg.controller or (None if cfg.g is None else cfg.g)}
    if cfg.out:
        write_json(cfg.out, result)
    return result
