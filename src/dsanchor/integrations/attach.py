"""Attach Dynamic Semantic Anchoring to a transformers multimodal model (DESIGN.md "Integrations").

``attach_dsa(model, controller_or_g)`` makes the model see ``V' = g * V_fine + (1 - g) * V_coarse``
instead of its usual visual features, in ``forward`` and in ``generate``:

* ``V_fine`` is what the model already feeds onwards from its vision encoder;
* ``V_coarse`` is the vision encoder's ``hidden_states[coarse_layer]`` (0 = embeddings, 1 = after the
  first layer, ...), made the same shape as ``V_fine`` (same tokens, same final layer norm where the
  model applies one).

Where each model is hooked and how ``V_coarse`` is shaped (details in each family's module):

* LLaVA (:mod:`.llava`): V_fine is the input of ``multi_modal_projector``, i.e. the
  ``vision_feature_layer`` hidden state after ``vision_feature_select_strategy``. V_coarse is
  ``hidden_states[coarse_layer]`` with the same leading tokens dropped (CLS under "default"), tiled on
  the feature axis when several feature layers are concatenated; no layer norm on either.
* BLIP-2 (:mod:`.blip2`): V_fine is ``vision_model``'s ``last_hidden_state`` (after ``post_layernorm``),
  the Q-Former's input. V_coarse is ``post_layernorm(hidden_states[coarse_layer])``, all tokens.
* IDEFICS (:mod:`.idefics`): V_fine is ``vision_model``'s ``last_hidden_state`` (no ``post_layernorm``),
  the perceiver's (or cross-attention's) input. V_coarse is ``hidden_states[coarse_layer]``, all tokens.

g comes from a fixed float, or from a controller (``GranularityController`` or any ``nn.Module`` mapping
``(B, state_dim)`` to ``(B,)`` in [0, 1]) applied to ``state_fn(V_fine, V_coarse)``. The default state is
``concat(mean over tokens of V_coarse, mean over tokens of V_fine)``, ``2 * D`` values per image, where D
is the feature size at the seam (:func:`dsa_state_dim`). Everything is done with PyTorch hooks on the
model instance; no transformers class is subclassed or copied, and :meth:`DSAHandle.detach` removes them.
Features passed in precomputed (LLaVA's ``mm_encoder_outputs``, IDEFICS's ``image_encoder_embeddings`` or
``perceiver_embeddings``) do not go through the vision encoder and are used as given.
"""

from __future__ import annotations

from torch import nn

from dsanchor.errors import ConfigError
from dsanchor.integrations.families import detect_model_type, family_of
from dsanchor.integrations.handle import ATTR, DSAHandle, StateFn, install_prompt_capture

__all__ = ["attach_dsa", "detect_model_type", "dsa_state_dim", "get_dsa"]


def dsa_state_dim(model: nn.Module) -> int:
    """The size of the default DSA state for ``model`` (``2 * D``): use it as the controller's state_dim."""
    return 2 * family_of(model).feature_dim(model)


def get_dsa(model: nn.Module) -> DSAHandle | None:
    """The handle of the DSA attached to ``model``, or ``None``."""
    return getattr(model, ATTR, None)


def attach_dsa(model: nn.Module, controller_or_g: nn.Module | float, coarse_layer: int = 1,
               state_fn: StateFn | None = None, adapter: nn.Module | None = None) -> DSAHandle:
    """Make ``model`` use anchored visual features ``V' = g V_fine + (1 - g) V_coarse``.

    Args:
        model: a transformers ``LlavaForConditionalGeneration``, ``Blip2ForConditionalGeneration`` or
            ``IdeficsForVisionText2Text`` (or their base models).
        controller_or_g: a fixed g in [0, 1], or a controller mapping states ``(B, state_dim)`` to g ``(B,)``.
        coarse_layer: the vision hidden-state index for V_coarse (0 = embeddings, 1 = after layer 1, ...).
        state_fn: ``state_fn(v_fine, v_coarse) -> (B, state_dim)`` with both inputs ``(B, N, D)``; default
            :func:`~dsanchor.integrations.handle.default_state`.
        adapter: applied to V' before the model reads it (a
            :class:`~dsanchor.integrations.adapter.SeamAdapter`); None: V' as is.

    Returns:
        A :class:`DSAHandle`: ``.last_g`` holds g per image of the last call, ``.detach()`` restores the model.

    Raises:
        ConfigError: unsupported model, g outside [0, 1], ``coarse_layer`` out of range, a controller whose
            ``config.state_dim`` is not the default state's size, or DSA already attached.
    """
    model_type = detect_model_type(model)
    if get_dsa(model) is not None:
        raise ConfigError("DSA is already attached to this model; call .detach() on its handle first")
    family = family_of(model)
    handle = DSAHandle(model, model_type, controller_or_g, coarse_layer, family.feature_dim(model), state_fn,
                       adapter)
    try:
        family.attach(model, handle)
        if handle.layout is not None:
            install_prompt_capture(model, handle)
    except Exception:
        handle.detach()
        raise
    setattr(model, ATTR, handle)
    return handle
