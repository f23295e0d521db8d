"""Adapters to external model libraries. Only this package imports transformers' multimodal classes.

:func:`attach_dsa` plugs DSA into transformers' LLaVA, BLIP-2 and IDEFICS (see :mod:`.hf`);
:mod:`.captioning` captions a dataset with such a model, with and without DSA.
"""

from dsanchor.integrations.common import DSAHandle, default_state
from dsanchor.integrations.hf import MODEL_TYPES, attach_dsa, detect_model_type, dsa_state_dim, get_dsa

__all__ = ["MODEL_TYPES", "DSAHandle", "attach_dsa", "default_state", "detect_model_type", "dsa_state_dim", "get_dsa"]
