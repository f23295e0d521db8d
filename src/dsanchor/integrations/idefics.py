"""DSA on transformers' IDEFICS (``IdeficsForVisionText2Text`` or ``IdeficsModel``), the open Flamingo: everything
this family needs.

Seam: ``IdeficsModel.forward`` flattens ``pixel_values`` ``(B, I, C, H, W)`` to ``B * I`` images, runs
``self.vision_model`` and feeds its ``last_hidden_state`` (the encoder's last layer, all tokens, *without*
``post_layernorm``, which IDEFICS applies to the pooled CLS only) to the perceiver resampler or, without
one, straight to the gated cross-attention layers. A forward hook on ``vision_model`` replaces it:

* ``V_fine`` = ``last_hidden_state``, ``(B * I, N, D)``;
* ``V_coarse`` = ``hidden_states[coarse_layer]``, ``(B * I, N, D)``: the same tokens (CLS + patches),
  and no layer norm, like ``V_fine``.

g is therefore one value per image (``B * I`` values). In ``generate`` the first step runs the vision
model (hooked) and later steps reuse ``outputs.image_outputs.last_hidden_state``, i.e. the mixed
features, through ``image_encoder_embeddings``; the vision model is not run again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dsanchor.integrations.taps import CoarseTap, SeamHandle, find_encoder_layers, replace_last_hidden_state

__all__ = ["CLASS_NAMES", "MODEL_CLASS", "CAPTION_PROMPT", "QUESTION_PROMPT", "ANSWER_PROMPT", "INSTRUCTION_PROMPT",
           "EMBED_PROMPTS", "feature_dim", "attach", "prepare"]

CLASS_NAMES = ("IdeficsForVisionText2Text", "IdeficsModel")
MODEL_CLASS = "IdeficsForVisionText2Text"
CAPTION_PROMPT = "Describe the image in one sentence."
QUESTION_PROMPT = "{question} Answer yes or no."
# short-answer questions (dsanchor mllm answer): one word or a number
ANSWER_PROMPT = "{question} Answer with a single word or number."
# an instruction whose answer is free text (caption prompts of dsanchor data questions)
INSTRUCTION_PROMPT = "{question}"
EMBED_PROMPTS = {"image": "Summary above image in one word:", "text": "{x}\nSummary above sentence in one word:"}


def _inner(model: nn.Module) -> nn.Module:
    """The ``IdeficsModel`` (it holds vision_model)."""
    return model if hasattr(model, "vision_model") else model.model


def feature_dim(model: nn.Module) -> int:
    """D of V_fine: the vision encoder's embedding size."""
    return model.config.vision_config.embed_dim


def attach(model: nn.Module, handle: SeamHandle) -> None:
    """Install the coarse tap and the vision-output hook; they are registered on ``handle``."""
    vision = _inner(model).vision_model
    tap = CoarseTap(find_encoder_layers(vision), handle.coarse_layer)

    def mix_vision_output(module: nn.Module, args: tuple, output):
        v_fine = output[0]  # (B * I, N, D), no post_layernorm
        v_coarse = tap.pop()  # (B * I, N, D)
        return replace_last_hidden_state(output, handle.mix(v_fine, v_coarse))

    handle.add(tap, vision.register_forward_hook(mix_vision_output))


def prepare(processor: Any, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt per image, as one user turn each (the answer follows "Assistant:")."""
    turns = [["User:", image, f"{prompt}\nAssistant:"] for image, prompt in zip(images, prompts, strict=True)]
    return processor(text=turns, return_tensors="pt", padding="longest")
