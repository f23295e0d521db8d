"""The dataset format registry: format name -> loader, and the calls that pick a loader by name.

``load_dataset(format, path, split=None, **options)`` returns ``list[Sample]``; ``list_formats()`` names the
formats; ``create_loader`` gives the loader itself (e.g. to read its ``clipped_boxes``). An unknown format raises
``ValueError`` listing the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsanchor.data.base import DatasetLoader
from dsanchor.data.clevr import ClevrLoader
from dsanchor.data.coco import CocoLoader, SynthLoader
from dsanchor.data.flickr import Flickr30kLoader, FlickrLoader
from dsanchor.data.folder import FolderLoader
from dsanchor.data.records import Sample
from dsanchor.data.vg import VisualGenomeLoader

__all__ = ["LOADERS", "list_formats", "create_loader", "load_dataset"]

# format name -> loader class
LOADERS: dict[str, type[DatasetLoader]] = {
    c.format: c for c in (ClevrLoader, CocoLoader, Flickr30kLoader, FlickrLoader, FolderLoader, SynthLoader,
                          VisualGenomeLoader)
}


def list_formats() -> list[str]:
    """Names of the dataset formats ``load_dataset`` reads."""
    return sorted(LOADERS)


def create_loader(format: str, path: str | Path, **options: Any) -> DatasetLoader:
    """The loader for ``format`` at ``path``; an unknown format raises ``ValueError`` listing the valid ones."""
    if format not in LOADERS:
        raise ValueError(f"unknown dataset format {format!r}; valid formats are {sorted(LOADERS)}")
    return LOADERS[format](path, **options)


def load_dataset(format: str, path: str | Path, split: str | None = None, **options: Any) -> list[Sample]:
    """Load a dataset as :class:`Sample` records.

    Args:
        format: one of :func:`list_formats` ("coco", "vg", "clevr", or "synth" for the generator's output).
        path: the dataset folder (or, for COCO and CLEVR, one annotation file).
        split: keep only "train", "val" or "test" samples; ``None`` keeps all.
        **options: loader options, e.g. ``captions=``, ``instances=``, ``image_dir=`` (see each loader's
            ``Options``).
    """
    return create_loader(format, path, **options).load(split)
