"""Patch-word grounding of ``mllm build``'s image tokens (``ground_weight``): an auxiliary loss that puts each
image token the language model reads near the input embeddings of the words that name what lies under it.

For every image token after the multimodal projector (the exact tokens the language model reads, at the g drawn
for that image), logits over the attribute words of the training objects (for synth: sizes, colours, materials,
shapes, spelt as the word tokenizer spells them) are ``exp(s) * cos(token, E[w]) + b_w`` with E the language
model's input embeddings (shared, so they get the gradient too) and a learnt scale ``s`` and bias per word. The
target of a patch token is every word of every object whose box covers the patch (:func:`patch_targets`);
background patches have none. The summary (CLS) token, when kept, targets every word present in the image.
Multi-label binary cross-entropy, averaged over tokens and words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dsanchor.data.records import ObjectAnnotation
from dsanchor.integrations.small_models import words

__all__ = ["object_words", "ground_vocabulary", "patch_targets", "GroundHead", "ProjectorTap", "word_auc"]

Boxes = Sequence[tuple[Any, Sequence[ObjectAnnotation]]]  # (image, its annotated objects)


def object_words(o: ObjectAnnotation) -> list[str]:
    """The words naming an object: its name's and its attributes' ("red cube", ("large", "metal") -> 4 words)."""
    return [w for text in (o.name, *o.attributes) for w in words(text)]


def ground_vocabulary(boxes: Boxes, tokenizer) -> tuple[list[str], torch.Tensor]:
    """The sorted words of the located objects in ``boxes`` that the tokenizer knows, and their token ids (K,)."""
    unk = tokenizer.unk_token_id
    found = sorted({w for _, objs in boxes for o in objs if o.box is not None for w in object_words(o)})
    ids = [tokenizer.convert_tokens_to_ids(w) for w in found]
    kept = [(w, i) for w, i in zip(found, ids, strict=True) if i is not None and i != unk]
    return [w for w, _ in kept], torch.tensor([i for _, i in kept], dtype=torch.long)


def patch_targets(objects: Sequence[ObjectAnnotation], image_size: tuple[int, int], side: int, patch: int,
                  vocab: Sequence[str], summary: bool) -> torch.Tensor:
    """Multi-hot targets (T, K) of one image's tokens: with ``summary`` first the CLS token (every word of a
    located object in the image), then the ``(side / patch)^2`` patches row-major, each with the words of every
    object whose box (x, y, w, h in the image's ``image_size`` = (width, height) pixels, scaled to the model's
    ``side``) covers at least a quarter of the patch or a quarter of the box."""
    index = {w: k for k, w in enumerate(vocab)}
    grid = side // patch
    out = torch.zeros(grid * grid + int(summary), len(vocab))
    sx, sy = side / image_size[0], side / image_size[1]
    for o in objects:
        if o.box is None:
            continue
        ks = [index[w] for w in object_words(o) if w in index]
        if not ks:
            continue
        x0, y0, x1, y1 = o.box[0] * sx, o.box[1] * sy, (o.box[0] + o.box[2]) * sx, (o.box[1] + o.box[3]) * sy
        need = 0.25 * min(patch * patch, max((x1 - x0) * (y1 - y0), 1e-6))
        for r in range(max(0, int(y0 // patch)), min(grid, int(math.ceil(y1 / patch)))):
            for c in range(max(0, int(x0 // patch)), min(grid, int(math.ceil(x1 / patch)))):
                w = min(x1, (c + 1) * patch) - max(x0, c * patch)
                h = min(y1, (r + 1) * patch) - max(y0, r * patch)
                if w > 0 and h > 0 and w * h >= need:
                    out[int(summary) + r * grid + c, ks] = 1.0
        if summary:
            out[0, ks] = 1.0
    return out


class GroundHead(nn.Module):
    """The grounding logits ``exp(s) * cos(token, E[w]) + b_w`` and their loss (dropped after the build)."""

    def __init__(self, n_words: int, scale: float = 10.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.bias = nn.Parameter(torch.full((n_words,), -2.0))  # most (token, word) pairs are negative

    def logits(self, tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, D) image tokens, (K, D) word embeddings -> (B, T, K)."""
        cos = nn.functional.normalize(tokens.float(), dim=-1) @ nn.functional.normalize(embeddings.float(), dim=-1).T
        return self.log_scale.exp() * cos + self.bias

    def loss(self, tokens: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy against (B, T, K) multi-hot ``targets``."""
        return nn.functional.binary_cross_entropy_with_logits(self.logits(tokens, embeddings), targets)


class ProjectorTap:
    """Keeps the multimodal projector's last output (the image tokens the language model reads, after DSA's
    mix): ``.tokens`` (B, T, D); ``.remove()`` unhooks it."""

    def __init__(self, projector: nn.Module):
        self.tokens: torch.Tensor | None = None
        self._hook = projector.register_forward_hook(lambda _m, _i, out: setattr(self, "tokens", out))

    def remove(self) -> None:
        self._hook.remove()


def word_auc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over words (with both classes present) of the ROC AUC of (N, K) logits against (N, K) targets."""
    aucs = []
    for k in range(logits.shape[1]):
        y, s = targets[:, k] > 0.5, logits[:, k]
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos and n_neg:
            ranks = torch.empty(len(s))
            ranks[s.argsort()] = torch.arange(1, len(s) + 1, dtype=torch.float)
            aucs.append((float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(sum(aucs) / len(aucs)) if aucs else float("nan")
