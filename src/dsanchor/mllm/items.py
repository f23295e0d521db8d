"""Items: the questions and caption prompts about a split's images that ``mllm train | tune | eval --questions``
learn and measure on, in place of one caption per image.

An item is one row of a CLEVR-format questions file (``dsanchor data questions``): a question with its exact
answer, or a caption prompt (``caption_scene``, ``caption_object``, ``caption_relation``) with reference captions.
It belongs to the split of its image (the one split rule of :mod:`dsanchor.mllm.config`), whatever the file says.
Each item goes to the model in its family's prompt (:func:`item_prompt`: the short-answer prompt for a question,
the instruction prompt for a caption prompt), so the controller state of an item holds its own prompt
(:mod:`dsanchor.integrations.state`) and g can follow the question.

Grid cache (:func:`item_split`): every item is answered at every grid g (:mod:`dsanchor.mllm.grid`), and the model's
answer loss is recorded on the way: the mean NLL per token of the true answer (a question) or of the first
reference (a caption prompt) after the item's prompt, teacher-forced with DSA at that g (:func:`answer_nll`).

Reward terms per (item, g) (:func:`item_rewards`):

* accuracy: exact match of the normalised answer (:func:`~dsanchor.data.questions.normalize_answer`) for a
  question; CIDEr-D (raw scale, IDF over the split's caption prompts) against its references for a caption prompt;
* hallucination: 1 for a "yes" about an absent object (``exist`` answered yes where the truth is no, ``absent``
  answered no where the truth is yes), else 0, for a question; for a caption prompt the CHAIR share of its named
  objects that the image lacks (negated mentions left out on synth: "there are no cubes" claims no cube).

PPO's reward is ``clip(alpha * accuracy - beta * hallucination)``, as for captions.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsanchor.captioning.evaluate import cider_per_image
from dsanchor.data.questions import Question, normalize_answer
from dsanchor.data.records import Sample
from dsanchor.errors import ConfigError, DataError
from dsanchor.files import read_json
from dsanchor.integrations import get_family
from dsanchor.mllm.adapt import training_batch
from dsanchor.mllm.config import GridConfig, MLLMConfig
from dsanchor.mllm.data import MLLMData
from dsanchor.mllm.generate import to_model
from dsanchor.mllm.grid import GridCache, GridRow, model_fingerprint
from dsanchor.mllm.rewards import GridRewards, split_cache, split_rewards
from dsanchor.mllm.scores import caption_mentions, chair_truth

__all__ = ["Item", "ItemRewards", "read_questions", "item_prompt", "split_items", "answer_nll", "false_yes",
           "item_scores", "item_rewards", "item_split", "split_grid"]

_KEYS = ("image_filename", "question")


@dataclass(frozen=True)
class Item:
    """One question or caption prompt about one image of a split."""

    key: int  # its row in the questions file (``question_index`` when the file has one): unique
    sample: Sample  # the image
    question: Question  # text, normalised answer (None for a caption prompt), family, references

    @property
    def family(self) -> str:
        return self.question.family

    @property
    def is_caption(self) -> bool:
        return self.question.answer is None

    @property
    def target(self) -> str:
        """What the answer loss is measured on: the answer, or the first reference of a caption prompt."""
        return self.question.references[0] if self.is_caption else str(self.question.answer)


@dataclass
class ItemRewards:
    """The reward terms of every cached (item, g) of a split (rows in the cache's key order; module docstring)."""

    accuracy: np.ndarray  # (N, G) exact match (questions) or CIDEr-D (caption prompts)
    hallucination: np.ndarray  # (N, G) false "yes" (questions) or CHAIR share (caption prompts), in [0, 1]
    judged: np.ndarray  # (N,) bool: the hallucination term is known (questions; caption prompts CHAIR judges)
    n_unjudged: int  # caption prompts about images CHAIR cannot judge
    n_detector: int = 0  # the hallucination detector is not used for items
    accuracy_name: str = "accuracy"


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


def item_prompt(model_type: str, text: str, caption: bool) -> str:
    """The prompt of an item for ``model_type``: its instruction prompt (caption prompts) or short-answer prompt."""
    family = get_family(model_type)
    return (family.INSTRUCTION_PROMPT if caption else family.ANSWER_PROMPT).format(question=text)


def split_items(path: str | Path, samples: Sequence[Sample]) -> list[Item]:
    """The items of ``path`` about the images of ``samples`` (matched by image path), in file order.

    A row needs an ``answer`` (a question) or ``references`` (a caption prompt) to be learned from; one with
    neither is a one-line error naming it.
    """
    by_path = {s.image_path: s for s in samples}
    items = []
    for k, row in enumerate(read_questions(path)):
        sample = by_path.get(row["image_filename"])
        if sample is None:
            continue
        refs = row.get("references")
        if "answer" not in row and not (isinstance(refs, list) and refs):
            raise DataError(path, "an item needs 'answer' (a question) or 'references' (a caption prompt)",
                            f"questions[{k}]")
        answer = None if "answer" not in row else normalize_answer(str(row["answer"]))
        q = Question(sample.image_id, sample.image_path, row["question"], answer, row.get("question_family", "all"),
                     sample.split, tuple(str(r) for r in refs or ()))
        items.append(Item(int(row.get("question_index", k)), sample, q))
    return items


@torch.no_grad()
def answer_nll(model: nn.Module, model_type: str, processor: Any, images: list, prompts: list[str],
               targets: list[str]) -> torch.Tensor:
    """``(B,)`` mean NLL per token of each target after its image and prompt (teacher forcing, float32, CPU)."""
    batch = to_model(training_batch(model_type, processor, images, prompts, targets), model)
    labels = batch.pop("labels")  # (B, T), -100 on the prompt and padding
    logits = model(**batch).logits[:, -labels.shape[1]:].float()  # (B, T, V)
    logp = logits[:, :-1].log_softmax(-1)  # (B, T - 1, V): position t predicts token t + 1
    lab = labels[:, 1:]
    keep = lab != -100
    nll = -logp.gather(-1, lab.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep  # (B, T - 1)
    return (nll.sum(1) / keep.sum(1).clamp_min(1)).cpu()


def false_yes(question: Question, answer: str) -> float:
    """1 for an answer that claims an absent object (module docstring), else 0."""
    if question.family == "exist":
        return float(question.answer == "no" and answer == "yes")
    if question.family == "absent":
        return float(question.answer == "yes" and answer == "no")
    return 0.0


def item_scores(items: Sequence[Item], texts: Sequence[str], vocabulary: str) -> dict[str, np.ndarray]:
    """Per item, what one set of answers scores (the reward terms and the per-family table read these).

    Args:
        texts: one generated text per item.

    Returns:
        ``accuracy`` (N,), ``hallucination`` (N,), ``judged`` (N,) bool, and for caption prompts CHAIR's counts
        ``hall_mentions`` / ``mentions`` (N,) as published (0 for questions) and, on the synth vocabulary,
        ``hall_mentions_no_negated`` / ``mentions_no_negated`` with negated mentions left out (what the
        hallucination term of a caption prompt is on synth).
    """
    n = len(items)
    acc, hall, judged = np.zeros(n), np.zeros(n), np.ones(n, dtype=bool)
    counts_of = {"": (False, np.zeros(n), np.zeros(n))}
    if vocabulary == "synth":
        counts_of["_no_negated"] = (True, np.zeros(n), np.zeros(n))
    caps = [k for k, it in enumerate(items) if it.is_caption]
    for k, it in enumerate(items):
        if not it.is_caption:
            answer = normalize_answer(texts[k])
            acc[k], hall[k] = float(answer == it.question.answer), false_yes(it.question, answer)
    if caps:
        acc[caps] = np.nan_to_num(cider_per_image([texts[k] for k in caps],
                                                  [list(items[k].question.references) for k in caps]))
        truth_by_image = chair_truth(list({items[k].sample.image_id: items[k].sample for k in caps}.values()),
                                     vocabulary)
        truth = {k: truth_by_image[items[k].sample.image_id] for k in caps}
        for skip, h_m, m in counts_of.values():  # the last one is the hallucination term (no_negated on synth)
            counts = caption_mentions({k: texts[k] for k in caps}, truth, vocabulary, skip)
            for k in caps:
                c = counts[k]
                judged[k] = c is not None
                h_m[k], m[k] = c or (0, 0)
                hall[k] = c[0] / c[1] if c and c[1] else 0.0
    out = {"accuracy": acc, "hallucination": hall, "judged": judged}
    for suffix, (_, h_m, m) in counts_of.items():
        out[f"hall_mentions{suffix}"], out[f"mentions{suffix}"] = h_m, m
    return out


def item_rewards(cache: GridCache, items: Sequence[Item], vocabulary: str) -> ItemRewards:
    """Accuracy and hallucination of every cached (item, g) (module docstring)."""
    by_key = {it.key: it for it in items}
    missing = [k for k in cache.row_keys if k not in by_key]
    if missing:
        raise DataError("grid cache", f"{len(missing)} cached items are not in the questions file (e.g. {missing[0]})")
    rows = [by_key[k] for k in cache.row_keys]
    per_g = [item_scores(rows, [c[j] for c in cache.captions], vocabulary) for j in range(len(cache.grid))]
    acc = np.stack([s["accuracy"] for s in per_g], 1)  # (N, G)
    hall = np.stack([s["hallucination"] for s in per_g], 1)  # (N, G)
    judged = per_g[0]["judged"]
    is_caption = np.array([it.is_caption for it in rows], dtype=bool)
    return ItemRewards(acc, hall, judged, int((is_caption & ~judged).sum()))


def _items_fingerprint(rows: Sequence[GridRow]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(f"{r.key}\x00{r.sample.image_id}\x00{r.prompt}\x00{r.target}\x00{r.max_new_tokens}\x01".encode())
    return h.hexdigest()[:16]


def item_split(cfg: MLLMConfig, data: MLLMData, split: str, grid: GridConfig,
               progress: bool = True) -> tuple[GridCache, list[Item], ItemRewards]:
    """The items of ``split`` (``cfg.questions``), their grid cache (built or resumed: answers, states and answer
    losses; every rank sharing the work) and their reward terms."""
    samples = data.split(split, cfg.limit)
    items = split_items(cfg.questions, samples)
    if not items:
        raise ConfigError(f"no item of {cfg.questions} is about an image of the {split} split ({data.split_note}); "
                          f"write the questions from the same dataset (`dsanchor data questions`)")
    rows = [GridRow(it.key, it.sample, item_prompt(cfg.model_type, it.question.question, it.is_caption), it.target,
                    None if it.is_caption else grid.answer_tokens) for it in items]
    meta = {"model": model_fingerprint(cfg.model_path), "model_type": cfg.model_type, "prompt": "per item",
            "items": _items_fingerprint(rows), "adapter": str(cfg.adapter), "split": split,
            "answer_tokens": grid.answer_tokens}
    loss = functools.partial(answer_nll, data.model, cfg.model_type, data.processor)
    cache = split_cache(cfg, data, split, grid, rows, meta, progress, loss, items=True)
    order = {it.key: it for it in items}
    items = [order[k] for k in cache.row_keys]  # the cache's order
    return cache, items, item_rewards(cache, items, data.vocabulary)


def split_grid(cfg: MLLMConfig, data: MLLMData, split: str, grid: GridConfig,
               progress: bool = True) -> tuple[GridCache, GridRewards | ItemRewards]:
    """The grid cache of ``split`` and its reward terms: per item with ``--questions``, else per image."""
    if cfg.questions:
        cache, _, rewards = item_split(cfg, data, split, grid, progress)
        return cache, rewards
    return split_rewards(cfg, data, split, grid, progress)
