"""DSA on transformers' LLaVA (``LlavaForConditionalGeneration`` or ``LlavaModel``): everything this family needs.

Seam: ``LlavaModel.get_image_features`` runs the vision tower, takes
``hidden_states[vision_feature_layer]`` (several layers concatenated on the feature axis when it is a
list), drops the CLS token when ``vision_feature_select_strategy == "default"``, and passes the result
to ``multi_modal_projector``. A forward pre-hook on ``multi_modal_projector`` sees exactly that input, so

* ``V_fine`` = the projector's input, ``(B, N', k * D)`` with N' patch tokens (plus CLS under "full")
  and k selected layers (k = 1 for an int ``vision_feature_layer``);
* ``V_coarse`` = vision ``hidden_states[coarse_layer]``, ``(B, N, D)``, recorded by a hook on that
  encoder layer, then shaped like ``V_fine``: the first ``N - N'`` tokens are dropped (the CLS token
  under "default", nothing under "full"; the same tokens the model drops), and the D features are
  repeated k times when several layers are concatenated. No layer norm is applied: LLaVA feeds the
  pre-``post_layernorm`` hidden states to the projector, and ``V_coarse`` is taken from the same stream.

The projector then maps ``V' = g V_fine + (1 - g) V_coarse`` to the language model, in ``forward`` and
in ``generate`` (which computes image features once, on the first step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dsanchor.integrations.taps import CoarseTap, SeamHandle, find_encoder_layers

__all__ = ["CLASS_NAMES", "MODEL_CLASS", "CAPTION_PROMPT", "QUESTION_PROMPT", "ANSWER_PROMPT", "INSTRUCTION_PROMPT",
           "EMBED_PROMPTS", "feature_dim", "shape_like_fine", "attach", "prepare"]

CLASS_NAMES = ("LlavaForConditionalGeneration", "LlavaModel")  # the transformers classes attach_dsa accepts
MODEL_CLASS = "LlavaForConditionalGeneration"  # the class load_mllm reads a checkpoint with
CAPTION_PROMPT = "USER: <image>\nDescribe the image in one sentence. ASSISTANT:"
QUESTION_PROMPT = "USER: <image>\n{question} Answer yes or no. ASSISTANT:"  # {question}: e.g. POPE's
# short-answer questions (dsanchor mllm answer): one word or a number
ANSWER_PROMPT = ("USER: <image>\n{question} Answer the question using a single word or number. "
                 "ASSISTANT:")
# an instruction whose answer is free text (caption prompts of dsanchor data questions)
INSTRUCTION_PROMPT = "USER: <image>\n{question} ASSISTANT:"
# E5-V prompts (Jiang et al. 2024): {x} is the sentence for captions
EMBED_PROMPTS = {"image": "USER: <image>\nSummary above image in one word: ASSISTANT:",
                 "text": "USER: {x}\nSummary above sentence in one word: ASSISTANT:"}


def _inner(model: nn.Module) -> nn.Module:
    """The ``LlavaModel`` (it holds vision_tower and multi_modal_projector)."""
    return model if hasattr(model, "multi_modal_projector") else model.model


def feature_dim(model: nn.Module) -> int:
    """D of V_fine at the seam: vision hidden size times the number of selected layers."""
    cfg = model.config
    layers = cfg.vision_feature_layer
    k = 1 if isinstance(layers, int) else len(layers)
    return cfg.vision_config.hidden_size * k


def shape_like_fine(v_coarse: torch.Tensor, v_fine: torch.Tensor) -> torch.Tensor:
    """Drop the leading tokens the select strategy dropped and tile features over the selected layers.

    Args:
        v_coarse: ``(B, N, D)`` hidden state of the coarse layer.
        v_fine: ``(B, N', k * D)`` projector input.

    Returns:
        ``(B, N', k * D)``.
    """
    drop = v_coarse.shape[1] - v_fine.shape[1]
    k, rest = divmod(v_fine.shape[-1], v_coarse.shape[-1])
    if drop < 0 or rest or v_coarse.shape[0] != v_fine.shape[0]:
        raise RuntimeError(f"DSA/LLaVA: cannot shape coarse features {tuple(v_coarse.shape)} like the projector "
                           f"input {tuple(v_fine.shape)}")
    v_coarse = v_coarse[:, drop:]  # (B, N', D)
    return v_coarse.repeat(1, 1, k) if k > 1 else v_coarse  # (B, N', k * D)


def attach(model: nn.Module, handle: SeamHandle) -> None:
    """Install the coarse tap and the projector pre-hook; they are registered on ``handle``."""
    inner = _inner(model)
    tap = CoarseTap(find_encoder_layers(inner.vision_tower), handle.coarse_layer)

    def mix_before_projector(module: nn.Module, args: tuple):
        v_fine = args[0]  # (B, N', k * D)
        v_coarse = shape_like_fine(tap.pop(), v_fine)  # (B, N', k * D)
        return (handle.mix(v_fine, v_coarse),) + tuple(args[1:])

    handle.add(tap, inner.multi_modal_projector.register_forward_pre_hook(mix_before_projector))


def prepare(processor: Any, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt per image (prompts may differ, so they are padded); the image token is put
    before a prompt that lacks it."""
    token = getattr(processor, "image_token", "<image>")
    texts = [p if token in p else f"{token}\n{p}" for p in prompts]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)
