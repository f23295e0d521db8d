"""Model type -> family: the one registry of the transformers multimodal models DSA supports.

A family is one module (:mod:`.llava`, :mod:`.blip2`, :mod:`.idefics`) that holds everything that model type
needs: the classes it accepts and loads, its seam hook (``attach``), the width of its seam
(``feature_dim``), its caption, question and embedding prompts, and ``prepare`` (images + prompts -> inputs).
Adding a family means adding one module and one line here. Decoding is the same for every family (the
processor's ``batch_decode``), so it is here once (:func:`decode`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import nn

from dsanchor.errors import ConfigError
from dsanchor.integrations import blip2, idefics, llava

__all__ = ["FAMILIES", "MODEL_TYPES", "Prepare", "Decode", "get_family", "detect_model_type", "family_of",
           "decode", "processor_fns"]

FAMILIES: dict[str, ModuleType] = {"llava": llava, "blip2": blip2, "idefics": idefics}
MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)

Prepare = Callable[[list], dict[str, torch.Tensor]]  # PIL images -> model inputs
Decode = Callable[[torch.Tensor], list[str]]  # (B, T) new token ids -> B strings


def get_family(model_type: str | None) -> ModuleType:
    """The family module of ``model_type``; an unknown type is a ConfigError naming the valid ones."""
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown --model-type {model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    return FAMILIES[model_type]


def detect_model_type(model: nn.Module) -> str:
    """"llava", "blip2" or "idefics" for a supported transformers model (subclasses included)."""
    names = {cls.__name__ for cls in type(model).__mro__}
    for model_type, family in FAMILIES.items():
        if names.intersection(family.CLASS_NAMES):
            return model_type
    supported = ", ".join(n for family in FAMILIES.values() for n in family.CLASS_NAMES)
    raise ConfigError(f"attach_dsa does not support {type(model).__name__}; supported models: {supported}")


def family_of(model: nn.Module) -> ModuleType:
    """The family module of a supported transformers model."""
    return FAMILIES[detect_model_type(model)]


def decode(processor: Any, new_ids: torch.Tensor) -> list[str]:
    """``(B, T)`` generated token ids after the prompt -> B stripped strings, special tokens dropped."""
    return [t.strip() for t in processor.batch_decode(new_ids, skip_special_tokens=True)]


def processor_fns(model_type: str, processor: Any, prompt: str | None = None) -> tuple[Prepare, Decode]:
    """``prepare(images) -> inputs`` with one fixed prompt (default: the family's caption prompt) and
    ``decode(new_token_ids) -> strings`` for a transformers processor."""
    family = get_family(model_type)
    prompt = family.CAPTION_PROMPT if prompt is None else prompt

    def prepare(images: list) -> dict[str, torch.Tensor]:
        return family.prepare(processor, images, [prompt] * len(images))

    def decode_new(new_ids: torch.Tensor) -> list[str]:
        return decode(processor, new_ids)

    return prepare, decode_new
