"""Where DSA reads a vision encoder: the coarse tap and the helpers every family's seam hook uses.

:class:`CoarseTap` records ``V_coarse``, the vision encoder's hidden state number ``coarse_layer`` in
transformers' ``hidden_states`` numbering (0 is the input of the first encoder layer, k >= 1 the output of
layer k), with a forward hook on that encoder layer. It does not rely on ``output_hidden_states``, so it works
whether or not the model asks its vision tower for them. Each family's module (:mod:`.llava`, :mod:`.blip2`,
:mod:`.idefics`) hooks its seam, shapes ``V_coarse`` like ``V_fine`` and hands both to
:meth:`~dsanchor.integrations.handle.DSAHandle.mix`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from dsanchor.errors import ConfigError

__all__ = ["SeamHandle", "CoarseTap", "find_encoder_layers", "replace_last_hidden_state"]


class SeamHandle(Protocol):
    """What a family's ``attach`` needs from :class:`~dsanchor.integrations.handle.DSAHandle`."""

    coarse_layer: int

    def mix(self, v_fine: torch.Tensor, v_coarse: torch.Tensor) -> torch.Tensor: ...

    def add(self, *hooks) -> None: ...


def find_encoder_layers(vision: nn.Module) -> nn.ModuleList:
    """The list of transformer layers of a vision encoder (``...encoder.layers``)."""
    for path in ("vision_model.encoder.layers", "encoder.layers"):
        mod: nn.Module | None = vision
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return mod
    for name, mod in vision.named_modules():
        if name.endswith("layers") and isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return mod
    raise ConfigError(f"cannot find the encoder layers of vision module {type(vision).__name__}; "
                      "attach_dsa supports CLIP-, SigLIP-, BLIP-2- and IDEFICS-style vision encoders")


class CoarseTap:
    """Records hidden state number ``coarse_layer`` of a vision encoder on every forward.

    Args:
        layers: the encoder's layers (``L`` of them); hidden state k is the input of layer 0 for k = 0
            and the output of layer k - 1 otherwise, as in transformers' ``hidden_states``.
        coarse_layer: k in ``[-(L + 1), L]``; negative values count from the end like a Python index.
    """

    def __init__(self, layers: nn.ModuleList, coarse_layer: int):
        n = len(layers)
        if not -(n + 1) <= coarse_layer <= n:
            raise ConfigError(f"coarse_layer={coarse_layer} is out of range: the vision encoder has {n} layers, "
                              f"so hidden-state indices go from 0 (embeddings) to {n}")
        self.index = coarse_layer % (n + 1)
        self.value: torch.Tensor | None = None
        if self.index == 0:
            self.hook = layers[0].register_forward_pre_hook(self._record_input, with_kwargs=True)
        else:
            self.hook = layers[self.index - 1].register_forward_hook(self._record_output)

    def _record_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.value = args[0] if args else kwargs["hidden_states"]  # (B, N, D)

    def _record_output(self, module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output  # (B, N, D)

    def pop(self) -> torch.Tensor:
        """The last recorded hidden state, cleared so a stale one is never mixed in."""
        if self.value is None:
            raise RuntimeError("DSA: the vision encoder's coarse layer did not run before the visual features "
                               "were used; this model's call path is not supported by attach_dsa")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.hook.remove()
        self.value = None


def replace_last_hidden_state(output, new: torch.Tensor):
    """Put ``new`` in place of a vision output's ``last_hidden_state`` (ModelOutput or tuple)."""
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    output["last_hidden_state"] = new  # ModelOutput keeps the key and the attribute in sync
    return output
