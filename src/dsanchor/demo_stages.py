"""Moved: every stage is in :mod:`dsanchor.stages`. This alias remains only for ``dsanchor.demo_mllm``, which
another change moves into :mod:`dsanchor.demo`; delete it then."""

from dsanchor.stages import SPLITS, caption_stage, extract_samples, synth_stage

__all__ = ["SPLITS", "synth_stage", "extract_samples", "caption_stage"]
