"""A searchable index of images, built with a :class:`~dsanchor.pipeline.DSAPipeline` (``dsanchor index``).

An index folder holds::

    index.json          format, the pipeline it was built with (path and a digest of its heads), the image root
    features/           a feature store of the images (dsanchor.features.store), written shard by shard
    coarse.faiss        a faiss IndexFlatIP over the images' projected scene vectors (the first stage)

The store is written by :func:`dsanchor.features.extract.extract_features`, the extraction every training
run uses, with the pipeline's encoder and region source, so a killed ``index`` run resumes at the first
unfinished shard and ends with the same index. Images come from a plain folder (format ``images``: every
JPEG/PNG under it, any size) or from a dataset on disk, whose captions are then stored too and can be ranked
for an image (``dsanchor search --image``).

This module takes the pipeline as an argument and never imports :mod:`dsanchor.pipeline`, so that
``DSAPipeline.index`` can build an index through it; :func:`dsanchor.index.load_index`, which loads the
pipeline an index records, sits above both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsanchor.align.train import embed_images
from dsanchor.config import config_to_dict
from dsanchor.data.base import image_root
from dsanchor.data.folder import image_samples
from dsanchor.data.formats import load_dataset
from dsanchor.errors import ConfigError, DataError
from dsanchor.features.store import FeatureStore
from dsanchor.files import write_json
from dsanchor.retrieval import faiss_index

__all__ = ["INDEX_FORMAT", "INDEX_FILE", "FAISS_FILE", "ImageIndex", "build_index", "read_index_meta", "open_index",
           "pipeline_digest", "rank_index_captions"]

INDEX_FORMAT = 1
INDEX_FILE = "index.json"
FAISS_FILE = "coarse.faiss"


def pipeline_digest(pipe) -> str:
    """What ties an index to its pipeline: a digest of the heads' weights and the encoder and region configs
    (an index built with other heads or features would be searched with the wrong vectors)."""
    h = hashlib.sha256()
    for k, v in sorted(pipe.heads.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    h.update(json.dumps({"encoder": pipe.encoder_spec, "regions": config_to_dict(pipe.regions)},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass
class ImageIndex:
    """Images ready for DSA search: their paths, their projected features and the faiss first stage."""

    paths: list[str]  # per image, the file as indexed (absolute)
    joint: Any  # JointFeatures, precomputed for re-ranking
    faiss: Any  # faiss IndexFlatIP over joint.coarse
    store: Any = None  # the FeatureStore (captions, raw features), None for an in-memory index
    folder: Path | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_captions(self) -> bool:
        return self.store is not None and len(self.store.texts()) > 0


def _samples(images, data: str | Path | None, fmt: str | None):
    """(samples, root, source) from a folder or list of images, or from a dataset."""
    if data is not None:
        if fmt is None:
            raise ConfigError("indexing a dataset needs its format (--format)")
        samples = load_dataset(fmt, data)
        return samples, image_root(data), {"format": fmt, "split": None}
    if isinstance(images, (str, Path)):
        return load_dataset("images", images), image_root(images), {"format": "images", "split": None}
    files = [Path(p) for p in images]
    if not files:
        raise ConfigError("no images to index")
    return image_samples(files), Path("/"), {"format": "images", "split": None}


def _finish(pipe, store, folder: Path | None) -> ImageIndex:
    import faiss  # optional and heavy: only when an index is opened

    images = store.images()
    with torch.no_grad():
        joint = embed_images(pipe.heads, images).precompute()
    root = Path(store.manifest["source"]["root"])
    paths = [str(p if Path(p).is_absolute() else root / p) for p in store.image_paths()]
    index = None
    if folder is not None and (folder / FAISS_FILE).is_file():
        index = faiss.read_index(str(folder / FAISS_FILE))
        if (index.ntotal, index.d) != tuple(joint.coarse.shape):
            index = None  # stale (an earlier, interrupted build): rebuild
    if index is None:
        index = faiss_index(joint.coarse)
        if folder is not None:
            faiss.write_index(index, str(folder / FAISS_FILE))
    return ImageIndex(paths, joint, index, store, folder)


def build_index(pipe, images: str | Path | Sequence[str | Path] | None = None, out: str | Path | None = None,
                data: str | Path | None = None, format: str | None = None, batch_size: int = 32,
                workers: int = 2, shard_size: int = 256, progress: bool = True) -> ImageIndex:
    """Index images for ``pipe.search``: a folder or list of image files, or a dataset (``data`` + ``format``).

    With ``out`` the index is written there and a rerun after a kill resumes it; without, the features go to
    a temporary folder and the index lives in memory.
    """
    # the extraction (encoders, scipy) loads here, so that searching a built index never imports it
    from dsanchor.features.extract import ExtractConfig, extract_features

    samples, root, source = _samples(images, data, format)
    note = pipe.region_note()
    if note and not any(s.objects for s in samples):
        logging.getLogger(__name__).warning("index: %s", note)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="dsanchor-index-")
        folder = Path(tmp.name)
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        meta_file = folder / INDEX_FILE
        digest = pipeline_digest(pipe)
        if meta_file.is_file():
            old = json.loads(meta_file.read_text())
            if old.get("pipeline_digest") != digest:
                raise ConfigError(f"{folder} holds an index of another pipeline; pass a new --out or delete it")
        meta = {"format": INDEX_FORMAT, "pipeline": str(pipe.path.resolve()) if pipe.path else None,
                "pipeline_digest": digest, "root": str(root.resolve()),
                "source": source, "n_images": len(samples)}
        write_json(meta_file, meta)
    extract_features(samples, root, folder / "features", pipe.encoder,
                     ExtractConfig(batch_size=batch_size, workers=workers, shard_size=shard_size, progress=progress),
                     pipe.regions, source=source)
    index = _finish(pipe, FeatureStore(folder / "features"), None if out is None else folder)
    if tmp is not None:
        index._tmp = tmp  # keep the temporary store alive as long as the index
    return index


def read_index_meta(path: str | Path) -> dict[str, Any]:
    """The ``index.json`` of a finished index folder; an unfinished or foreign folder is a one-line error."""
    folder = Path(path)
    meta_file = folder / INDEX_FILE
    if not meta_file.is_file():
        raise DataError(folder, f"not a dsanchor index (no {INDEX_FILE}); build one with `dsanchor index`")
    meta = json.loads(meta_file.read_text())
    if not (folder / "features" / "manifest.json").is_file():
        raise DataError(folder, "the index is unfinished (no finished feature store); rerun `dsanchor index` with "
                                "the same arguments to resume it")
    return meta


def open_index(path: str | Path, pipe) -> ImageIndex:
    """A finished index folder, searched with ``pipe``, which must be the pipeline it was built with."""
    folder = Path(path)
    meta = read_index_meta(folder)
    if pipeline_digest(pipe) != meta.get("pipeline_digest"):
        raise ConfigError(f"{folder} was built with another pipeline (its heads or encoder differ); rebuild it with "
                          "`dsanchor index`")
    return _finish(pipe, FeatureStore(folder / "features"), folder)


@torch.no_grad()
def rank_index_captions(pipe, index: ImageIndex, image, k: int = 10, g: float | None = None,
                        collapse: bool = True):
    """The index's stored captions ranked for an image (image→text), top ``k``, and the g used.

    With ``collapse`` (the default) each statement is shown once: a caption is dropped when a higher-ranked one
    states the same fact (captions with facts: synth, CLEVR), has the same normalised text, or has a
    text-encoder cosine >= 0.97 with it (:mod:`dsanchor.duplicates`).
    """
    if not index.has_captions:
        raise ConfigError("this index holds no captions (index a dataset with --data/--format to rank captions)")
    texts = index.store.texts()
    return pipe.rank_captions_embedded(image, texts.embeddings, texts.captions, g, k, collapse, texts.facts)
