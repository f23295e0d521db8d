"""Datasets: the record type, the loaders, the synth generator, its captioner and the checker.

Every loader returns the same :class:`Sample` records (DESIGN.md "Records"), chosen by name through
:func:`load_dataset`; :func:`list_formats` names the formats.
"""

from dsanchor.data.base import DatasetLoader
from dsanchor.data.captioner import CaptionerConfig, caption_counts, caption_scene
from dsanchor.data.check import DatasetSummary, check_dataset, format_summary
from dsanchor.data.facts import FACT_TYPES, holds, holds_matrix
from dsanchor.data.formats import create_loader, list_formats, load_dataset
from dsanchor.data.records import GRANULARITIES, Caption, ObjectAnnotation, Sample
from dsanchor.data.synth import SynthConfig, SynthResult, generate_synth

__all__ = [
    "GRANULARITIES", "Caption", "ObjectAnnotation", "Sample",
    "DatasetLoader", "load_dataset", "list_formats", "create_loader",
    "CaptionerConfig", "caption_scene", "caption_counts", "FACT_TYPES", "holds", "holds_matrix",
    "SynthConfig", "SynthResult", "generate_synth",
    "DatasetSummary", "check_dataset", "format_summary",
]
