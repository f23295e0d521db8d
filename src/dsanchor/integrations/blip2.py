"""DSA on transformers' BLIP-2 (``Blip2ForConditionalGeneration`` or ``Blip2Model``): everything this family needs.

Seam: the Q-Former cross-attends to ``vision_model(...).last_hidden_state``, the vision encoder's last
layer after ``post_layernorm``, all tokens (CLS + patches). Both ``forward`` (through
``get_image_features``) and BLIP-2's own ``generate`` call ``self.vision_model``, so a forward hook on
``vision_model`` replaces ``last_hidden_state`` before the Q-Former sees it:

* ``V_fine`` = ``last_hidden_state``, ``(B, N, D)``;
* ``V_coarse`` = ``post_layernorm(hidden_states[coarse_layer])``, ``(B, N, D)``: the same tokens (BLIP-2
  keeps them all) and the same final layer norm the model applies to ``V_fine``.

``pooler_output`` is left as the model computed it (the conditional-generation path does not use it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dsanchor.integrations.taps import CoarseTap, SeamHandle, find_encoder_layers, replace_last_hidden_state

__all__ = ["CLASS_NAMES", "MODEL_CLASS", "CAPTION_PROMPT", "QUESTION_PROMPT", "ANSWER_PROMPT", "INSTRUCTION_PROMPT",
           "EMBED_PROMPTS", "feature_dim", "attach", "prepare"]

CLASS_NAMES = ("Blip2ForConditionalGeneration", "Blip2Model")
MODEL_CLASS = "Blip2ForConditionalGeneration"
CAPTION_PROMPT = "a photo of"
QUESTION_PROMPT = "Question: {question} Answer:"
# short-answer questions (dsanchor mllm answer): one word or a number
ANSWER_PROMPT = "Question: {question} Short answer:"
# an instruction whose answer is free text (caption prompts of dsanchor data questions)
INSTRUCTION_PROMPT = "{question}"
EMBED_PROMPTS = {"image": "Summary above image in one word:", "text": "{x} Summary above sentence in one word:"}


def feature_dim(model: nn.Module) -> int:
    """D of V_fine: the vision encoder's hidden size."""
    return model.config.vision_config.hidden_size


def attach(model: nn.Module, handle: SeamHandle) -> None:
    """Install the coarse tap and the vision-output hook; they are registered on ``handle``."""
    vision = model.vision_model
    tap = CoarseTap(find_encoder_layers(vision), handle.coarse_layer)

    def mix_vision_output(module: nn.Module, args: tuple, output):
        v_fine = output[0]  # (B, N, D), after post_layernorm
        v_coarse = vision.post_layernorm(tap.pop())  # (B, N, D)
        return replace_last_hidden_state(output, handle.mix(v_fine, v_coarse))

    handle.add(tap, vision.register_forward_hook(mix_vision_output))


def prepare(processor: Any, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt per image; the processor puts the query-token placeholders before each."""
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)
