"""Adapters to transformers' multimodal models: the only package that hooks LLaVA, BLIP-2 and IDEFICS.

:func:`attach_dsa` plugs DSA into a model (:mod:`.attach`; the handle in :mod:`.handle`, the coarse tap in
:mod:`.taps`); :mod:`.families` maps a model type to its family module (:mod:`.llava`, :mod:`.blip2`,
:mod:`.idefics`: seam hook, classes, prompts, ``prepare``); :mod:`.state` is the MLLM controller's state,
:mod:`.g_sources` the g sources that are not controllers, :mod:`.adapter` the seam adapter, :mod:`.loading`
loads a local model and :mod:`.small_models` builds small and tiny ones offline. The DSA-in-an-MLLM experiment
that uses them is :mod:`dsanchor.mllm`; nothing here imports it.
"""

from dsanchor.integrations.adapter import SeamAdapter, load_adapter, save_adapter
from dsanchor.integrations.attach import attach_dsa, dsa_state_dim, get_dsa
from dsanchor.integrations.families import MODEL_TYPES, decode, detect_model_type, get_family, processor_fns
from dsanchor.integrations.g_sources import SettableG, UniformG
from dsanchor.integrations.handle import DSAHandle, default_state
from dsanchor.integrations.loading import load_mllm, resolve_device
from dsanchor.integrations.state import StateLayout, state_layout

__all__ = ["MODEL_TYPES", "DSAHandle", "SeamAdapter", "SettableG", "StateLayout", "UniformG", "attach_dsa",
           "decode", "default_state", "detect_model_type", "dsa_state_dim", "get_dsa", "get_family", "load_adapter",
           "load_mllm", "processor_fns", "resolve_device", "save_adapter", "state_layout"]
