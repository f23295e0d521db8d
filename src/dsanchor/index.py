"""Opening a saved image index together with the pipeline it records (``dsanchor search``, ``dsanchor serve``).

The index itself (its folder layout, :class:`ImageIndex`, :func:`build_index`) is :mod:`dsanchor.image_index`,
which takes a pipeline as an argument; :meth:`DSAPipeline.index <dsanchor.pipeline.DSAPipeline.index>` builds
through it. :func:`load_index` reads the pipeline an index records, so it sits above both: data flows
``image_index -> pipeline -> index``. The index names are re-exported here, so ``dsanchor.index`` is the one
place a user imports them from.
"""

from __future__ import annotations

from pathlib import Path

from dsanchor.errors import DataError
from dsanchor.image_index import (
    INDEX_FILE,
    INDEX_FORMAT,
    ImageIndex,
    build_index,
    open_index,
    pipeline_digest,
    rank_index_captions,
    read_index_meta,
)
from dsanchor.pipeline import DSAPipeline, load

__all__ = ["INDEX_FORMAT", "ImageIndex", "build_index", "load_index", "open_index", "pipeline_digest",
           "rank_index_captions"]


def load_index(path: str | Path, pipe: DSAPipeline | None = None) -> tuple[ImageIndex, DSAPipeline]:
    """(index, pipeline) from an index folder; the pipeline is the one recorded there unless given."""
    folder = Path(path)
    meta = read_index_meta(folder)
    if pipe is None:
        if not meta.get("pipeline"):
            raise DataError(folder / INDEX_FILE, "the index does not record its pipeline; pass it (--pipeline)")
        pipe = load(meta["pipeline"])
    return open_index(folder, pipe), pipe
