"""``dsanchor mllm answer``: answer a CLEVR-format questions file with a local MLLM, with or without DSA.

Each question goes to the model with its family's short-answer prompt (``ANSWER_PROMPT`` of
:mod:`dsanchor.integrations.llava` and the others); the generated text is cut to a normalised short answer
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
from dsanchor.data.questions import normalize_answer
from dsanchor.encoders.transforms import load_rgb
from dsanchor.errors import DataError
from dsanchor.files import read_json, write_json
from dsanchor.integrations import get_dsa, load_adapter, load_mllm, resolve_device
from dsanchor.integrations.attach import attach_dsa
from dsanchor.integrations.families import decode, get_family
from dsanchor.mllm.config import AnswerConfig
from dsanchor.mllm.generate import batches, generate_text, to_model

__all__ = ["read_questions", "answer_questions_file", "family_accuracy", "run_mllm_answer"]

_KEYS = ("image_filename", "question")


def read_questions(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The ``questions`` list of a CLEVR-format file, each checked for ``image_filename`` and ``question``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "questions file not found")
    try:
        doc = read_json(path)
    except ValueError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    rows = doc.get("questions") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise DataError(path, "expected CLEVR's format: an object with a list 'questions'")
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(key), str) for key in _KEYS):
            raise DataError(path, "each question needs the strings 'image_filename' and 'question'", f"questions[{k}]")
    return rows[:limit] if limit else rows


def answer_questions_file(model, model_type: str, processor, rows: list[dict[str, Any]], images: str | Path,
                          batch_size: int = 8, max_new_tokens: int = 5, progress: bool = False) -> list[dict]:
    """One answer per question: ``{"question_index", "image_filename", "question", "answer", "raw", "g"}``
    (``g`` None without DSA)."""
    family, root = get_family(model_type), Path(images)
    handle = get_dsa(model)
    out: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}  # image file -> RGB image, so that questions about one image open it once
    for batch in batches(list(enumerate(rows)), batch_size, "answers", progress):
        for _, r in batch:
            if r["image_filename"] not in cache:
                cache[r["image_filename"]] = load_rgb(root / r["image_filename"])
        pics = [cache[r["image_filename"]] for _, r in batch]
        prompts = [family.ANSWER_PROMPT.format(question=r["question"]) for _, r in batch]
        inputs = to_model(family.prepare(processor, pics, prompts), model)
        texts = generate_text(model, inputs, lambda ids: decode(processor, ids), max_new_tokens)
        gs = handle.last_g.tolist() if handle is not None and handle.last_g is not None else [None] * len(batch)
        for (k, r), text, g in zip(batch, texts, gs, strict=True):
            out.append({"question_index": r.get("question_index", k), "image_filename": r["image_filename"],
                        "question": r["question"], "answer": normalize_answer(text), "raw": text.strip(),
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
                                        cfg.max_new_tokens, progress)
    finally:
        if handle is not None:
            handle.detach()
    result = {"answers": answers, "accuracy": family_accuracy(rows, answers),
              "dsa": cfg.controller or (None if cfg.g is None else cfg.g)}
    if cfg.out:
        write_json(cfg.out, result)
    return result
