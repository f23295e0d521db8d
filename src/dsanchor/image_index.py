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
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsanchor.align.train import embed_images
from dsanchor.config import config_to_dict
from dsanchor.data.base import image_root
from dsanchor.data.folder import image_samples
from dsanchor.data.formats import create_loader, load_dataset
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
    skipped: list[str] = field(default_factory=list)  # "path: why" of unreadable images left out (skip_bad)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_captions(self) -> bool:
        return self.store is not None and len(self.store.texts()) > 0


def _samples(images, data: str | Path | None, fmt: str | None, skipped: list[str] | None):
    """(samples, root, source) from a folder or list of images, or from a dataset; with a ``skipped`` list,
    image files whose header cannot be read are left out and named there."""
    if data is not None:
        if fmt is None:
            raise ConfigError("indexing a dataset needs its format (--format)")
        samples = load_dataset(fmt, data)
        return samples, image_root(data), {"format": fmt, "split": None}
    if isinstance(images, (str, Path)):
        loader = create_loader("images", images, skip_bad=skipped is not None)
        samples = loader.load()
        if skipped is not None:
            skipped += loader.skipped
        return samples, image_root(images), {"format": "images", "split": None}
    files = [Path(p) for p in images]
    if not files:
        raise ConfigError("no images to index")
    return image_samples(files, skipped=skipped), Path("/"), {"format": "images", "split": None}


_INDEX_FILES = (INDEX_FILE, FAISS_FILE, "features")  # what an index folder holds


def _accept_folder(folder: Path, digest: str, writer, overwrite: bool) -> None:
    """Check an index folder before anything is written: refuse (one line, nothing changed) a folder that is
    not an index, or, without ``overwrite``, an index of another pipeline or of other images; with
    ``overwrite`` remove such an index. An index of the same pipeline and images is resumed or reused."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; pass a folder as --out")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    meta_file = folder / INDEX_FILE
    if not meta_file.is_file():
        raise ConfigError(f"{folder} is not empty and is not a dsanchor index; pass a new --out")
    why = None
    try:
        old = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        old, why = {}, f"a broken {INDEX_FILE}"
    if why is None and old.get("pipeline_digest") != digest:
        why = "an index of another pipeline"
    store_why = None if why else writer.conflict()
    if store_why:  # e.g. "holds features of another extraction (different samples_sha256, n_shards)"
        why = "an index of other images or settings" + (f" ({store_why.split('(', 1)[1]}" if "(" in store_why else "")
    if why is None:
        return
    if not overwrite:
        raise ConfigError(f"{folder} holds {why}; pass a new --out, or --overwrite to replace it")
    for name in _INDEX_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


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
                workers: int = 2, shard_size: int = 256, progress: bool = True, overwrite: bool = False,
                skip_bad: bool = False) -> ImageIndex:
    """Index images for ``pipe.search``: a folder or list of image files, or a dataset (``data`` + ``format``).

    With ``out`` the index is written there and a rerun after a kill resumes it; without, the features go to
    a temporary folder and the index lives in memory. A folder holding an index of another pipeline or of
    other images is refused before anything is written, unless ``overwrite`` (which replaces it). With
    ``skip_bad``, unreadable images are left out and named in the index's ``skipped``; without, the first one
    is an error.
    """
    # the extraction (encoders, scipy) loads here, so that searching a built index never imports it
    from dsanchor.features.extract import ExtractConfig, build_plan, extract_features
    from dsanchor.features.store import StoreWriter

    skipped: list[str] | None = [] if skip_bad else None
    samples, root, source = _samples(images, data, format, skipped)
    if not samples:
        raise ConfigError("no readable images to index")
    config = ExtractConfig(batch_size=batch_size, workers=workers, shard_size=shard_size, progress=progress,
                           overwrite=overwrite, skip_bad=skip_bad)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="dsanchor-index-")
        folder = Path(tmp.name)
    else:
        folder, digest = Path(out), pipeline_digest(pipe)
        plan = build_plan(samples, root, pipe.encoder, config, pipe.regions, source)
        _accept_folder(folder, digest, StoreWriter(folder / "features", plan), overwrite)  # nothing written yet
        meta = {"format": INDEX_FORMAT, "pipeline": str(pipe.path.resolve()) if pipe.path else None,
                "pipeline_digest": digest, "root": str(root.resolve()),
                "source": source, "n_images": len(samples)}
        write_json(folder / INDEX_FILE, meta)
    note = pipe.region_note()
    if note and not any(s.objects for s in samples):
        logging.getLogger(__name__).warning("index: %s", note)
    result = extract_features(samples, root, folder / "features", pipe.encoder, config, pipe.regions, source=source)
    index = _finish(pipe, FeatureStore(folder / "features"), None if out is None else folder)
    index.skipped = (skipped or []) + result.skipped
    if out is not None and len(index) != meta["n_images"]:  # unreadable images were left out (skip_bad)
        write_json(folder / INDEX_FILE, {**meta, "n_images": len(index)})
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
