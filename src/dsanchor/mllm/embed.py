"""Retrieval with the MLLM's own embeddings (E5-V, Jiang et al. 2024).

An embedding is the last layer's hidden state at the last position after a one-word-summary prompt (each
family's ``EMBED_PROMPTS``): images with the row's g (DSA attached by the caller), captions text-only.
Relevance is exact where the data has scene graphs (every image a caption is true of), else paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsanchor.data.facts import holds_matrix
from dsanchor.data.records import Sample
from dsanchor.integrations import get_family
from dsanchor.metrics.retrieval import recall_at_k
from dsanchor.mllm.generate import batches, open_image, to_model

__all__ = ["last_hidden", "text_embeddings", "image_embeddings", "relevance", "recalls"]


@torch.no_grad()
def last_hidden(model: nn.Module, model_type: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, H) last layer's hidden state at the last position (prompts are left padded)."""
    if model_type == "blip2" and "pixel_values" not in inputs:
        out = model.language_model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                   output_hidden_states=True)
        hidden = out.hidden_states[-1]
    else:
        out = model(**inputs, output_hidden_states=True)
        hs = getattr(out, "hidden_states", None)
        if hs is None:  # BLIP-2 keeps the language model's outputs apart
            hs = out.language_model_outputs.hidden_states
        hidden = hs[-1]
    return hidden[:, -1].float().cpu()


def text_embeddings(model: nn.Module, model_type: str, processor: Any, texts: list[str], batch_size: int,
                    progress: bool = False) -> torch.Tensor:
    """(T, H) unit-norm embeddings of ``texts`` (no image; IDEFICS gets a blank one no token may attend to)."""
    tok = getattr(processor, "tokenizer", processor)
    template = get_family(model_type).EMBED_PROMPTS["text"]
    out = []
    for batch in batches(texts, batch_size, "text embeddings", progress):
        enc = dict(tok([template.format(x=t) for t in batch], return_tensors="pt", padding=True))
        if model_type == "idefics":  # IDEFICS always takes an image: a blank one no text token may attend to
            size = processor.image_processor.image_size
            b, t = enc["input_ids"].shape
            enc["pixel_values"] = torch.zeros(b, 1, 3, size, size)
            enc["image_attention_mask"] = torch.zeros(b, t, 1, dtype=torch.long)
        out.append(last_hidden(model, model_type, to_model(enc, model)))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def image_embeddings(model: nn.Module, model_type: str, processor: Any, samples: Sequence[Sample],
                     root: str | Path, batch_size: int, on_batch: Callable[[list[int]], None] | None = None,
                     progress: bool = False) -> torch.Tensor:
    """(N, H) unit-norm embeddings of the samples' images.

    Args:
        on_batch: called with the image ids of each batch before its forward (e.g. to set g per image).
    """
    family = get_family(model_type)
    out = []
    for batch in batches(samples, batch_size, "image embeddings", progress):
        if on_batch is not None:
            on_batch([s.image_id for s in batch])
        inputs = family.prepare(processor, [open_image(root, s) for s in batch],
                                [family.EMBED_PROMPTS["image"]] * len(batch))
        out.append(last_hidden(model, model_type, to_model(inputs, model)))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def relevance(samples: Sequence[Sample]) -> tuple[list[str], torch.Tensor, str]:
    """Captions of the split, (T, N) relevance and its protocol (exact with scene graphs, else paired)."""
    texts, owner, facts = [], [], []
    for n, s in enumerate(samples):
        for c in s.captions:
            texts.append(c.text)
            owner.append(n)
            facts.append(c.fact)
    own = torch.tensor(owner)[:, None] == torch.arange(len(samples))[None, :]
    if all(f is not None for f in facts) and all(s.scene is not None for s in samples) and facts:
        return texts, own | torch.from_numpy(holds_matrix(facts, [s.scene for s in samples])), "exact"
    return texts, own, "paired"


def recalls(img: torch.Tensor, txt: torch.Tensor, rel: torch.Tensor) -> dict[str, dict[str, float]]:
    """R@1 and R@10 text-to-image and image-to-text of unit-norm embeddings under relevance ``rel`` (T, N)."""
    scores = txt @ img.T  # (T, N)
    return {"t2i": recall_at_k(scores, rel, (1, 10)),
            "i2t": recall_at_k(scores.T.contiguous(), rel.T.contiguous(), (1, 10))}
