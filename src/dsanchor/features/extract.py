"""Feature extraction: dataset samples -> encoder -> feature store.

Images stream through a torch DataLoader whose workers open, resize and box each image, so memory
holds at most one shard of outputs plus a few batches of pixels. Work is cut into shards of
``shard_size`` images; each shard is written atomically as soon as it is complete, so a rerun of an
interrupted extraction skips the finished shards.

Under torchrun (``torch.distributed`` initialised, gloo on CPU) shard ``i`` goes to rank
``i % world_size``. Batches never cross a shard boundary, so every shard is computed from the same
batches whatever the number of processes, and the store equals the one-process store: bit for bit
when each process uses the same number of torch threads (torchrun sets ``OMP_NUM_THREADS=1``),
otherwise to float32 rounding of the convolutions (about 4e-6 of the largest value). Rank 0 writes
the manifest after a barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dsanchor.data.records import Sample
from dsanchor.distributed import barrier, init_distributed, rank_world
from dsanchor.encoders.base import EncoderBackend
from dsanchor.encoders.detectors import RegionDetector, check_detector
from dsanchor.encoders.regions import RegionConfig, annotated_boxes, pad_boxes, region_record, sample_boxes
from dsanchor.encoders.transforms import ImageTransform, load_rgb
from dsanchor.errors import ConfigError, DataError
from dsanchor.features.store import (
    FORMAT_VERSION,
    OBJECTS_NAMES,
    OBJECTS_TENSORS,
    TIMING,
    ShardData,
    StoreWriter,
)
from dsanchor.features.types import GRANULARITY_CODES
from dsanchor.files import atomic_write_bytes, write_json

__all__ = ["ExtractConfig", "ExtractResult", "ImageBoxDataset", "TextCache", "build_plan", "extract_features",
           "image_boxes", "init_distributed"]

log = logging.getLogger(__name__)

# encoder config fields that do not change the features (left out of the store fingerprint)
_RUNTIME_FIELDS = ("device", "text_batch_size")


@dataclass
class ExtractConfig:
    """How extraction runs (not what it computes, apart from the shard size)."""

    batch_size: int = field(default=32, metadata={"help": "images per backbone forward pass"})
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes that open images"})
    shard_size: int = field(default=1000, metadata={"help": "images per store shard (the unit of resume)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a store made with other settings"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (images/s)"})
    skip_bad: bool = field(default=False, metadata={
        "help": "leave out images that cannot be read (each is listed) instead of stopping at the first"})
    text_cache_size: int = field(default=50_000, metadata={
        "help": "distinct captions whose embeddings are kept, so repeated captions are encoded once"})

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")


@dataclass
class ExtractResult:
    """What this process did in :func:`extract_features` (all zeros when the store was already finished)."""

    out: Path  # the store directory
    images: int = 0  # images encoded by this process
    shards: int = 0  # shards written by this process
    texts: int = 0  # captions of those images
    texts_encoded: int = 0  # distinct captions that went through the text encoder (the rest were cached)
    seconds: float = 0.0  # wall time of the encoding loop
    image_seconds: float = 0.0  # backbone + coarse pooling + RoI-align
    text_seconds: float = 0.0  # text encoder
    wait_seconds: float = 0.0  # waiting for DataLoader workers to open images
    write_seconds: float = 0.0  # writing shards
    skipped: list[str] = field(default_factory=list)  # "path: why" of each unreadable image left out (skip_bad)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: throughput and where the time went."""
        return (f"{self.images} images in {self.seconds:.1f} s ({self.images_per_s:.2f} img/s): images "
                f"{self.image_seconds:.1f} s, texts {self.text_seconds:.1f} s ({self.texts_encoded} of {self.texts} "
                f"encoded, the rest cached), waiting for data {self.wait_seconds:.1f} s, writing "
                f"{self.write_seconds:.1f} s")


class ImageBoxDataset(Dataset):
    """Opens images, picks their boxes and preprocesses them (runs inside DataLoader workers).

    Items are ``(index, pixels (3, S, S), boxes (R, 4), mask (R,), error)``; a file that cannot be read
    gives zeros and the error message, which the main process raises as a :class:`DataError`.

    With ``regions.detector`` set, each process (every DataLoader worker, or the main process with no
    workers) loads the detector once, on its first batch, and runs it once per batch over the images
    of the batch that have no annotated boxes (``detector_batch_size`` at a time).
    """

    def __init__(self, samples: Sequence[Sample], root: str | Path, transform: ImageTransform,
                 regions: RegionConfig):
        self.samples = samples
        self.root = Path(root)
        self.transform = transform
        self.regions = regions
        if regions.detector:
            check_detector(regions.detector)  # a bad path fails here in one line, not inside a worker
        self._detector: RegionDetector | None = None  # loaded on first use, once per process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}  # a worker loads its own detector

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, str]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, str]]:
        """One batch (the DataLoader calls this with a batch's indices)."""
        R, S = self.regions.max_regions, self.transform.size
        images: dict[int, Image.Image] = {}
        errors: dict[int, str] = {}
        for i in indices:
            try:
                images[i] = load_rgb(self.root / self.samples[i].image_path)
            except DataError as exc:
                errors[i] = exc.message
        boxes = image_boxes([self.samples[i] for i in images], list(images.values()), self.regions, self._get_detector)
        by_index = dict(zip(images, boxes, strict=True))
        out = []
        for i in indices:
            if i in errors:
                out.append((i, torch.zeros(3, S, S), torch.zeros(R, 4), torch.zeros(R, dtype=torch.bool), errors[i]))
                continue
            padded, mask = pad_boxes(by_index[i], R)
            out.append((i, self.transform(images[i]), padded, mask, ""))
        return out

    def _get_detector(self) -> RegionDetector:
        if self._detector is None:
            self._detector = RegionDetector(self.regions)
        return self._detector


def image_boxes(samples: Sequence[Sample], images: Sequence[Image.Image], regions: RegionConfig,
                get_detector: Callable[[], RegionDetector]) -> list[torch.Tensor]:
    """The normalised boxes of opened images (:func:`~dsanchor.encoders.regions.sample_boxes`): their annotations,
    else (with ``regions.detector``) the detector's boxes, found in one batched call over the images without
    annotations, else proposals. ``get_detector`` is called only when some image needs the detector."""
    detected: dict[int, torch.Tensor] = {}
    if regions.detector:
        todo = [k for k, (s, im) in enumerate(zip(samples, images, strict=True))
                if annotated_boxes(s.objects, (s.width, s.height), im, regions).shape[0] == 0]
        if todo:
            detected = dict(zip(todo, get_detector().detect([images[k] for k in todo]), strict=True))
    return [sample_boxes(s.objects, (s.width, s.height), im, regions, detected.get(k))
            for k, (s, im) in enumerate(zip(samples, images, strict=True))]


class TextCache:
    """Encodes texts once: repeated captions (common in generated ones) reuse their embedding.

    Args:
        encode: texts -> (M, Dt) embeddings.
        dim: Dt, for an empty batch.
        max_items: distinct texts kept; the oldest are dropped beyond it.
    """

    def __init__(self, encode: Callable[[Sequence[str]], torch.Tensor], dim: int, max_items: int):
        self.encode = encode
        self.dim = dim
        self.max_items = max_items
        self.encoded = 0  # texts sent to the encoder so far
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """(M, Dt) embeddings of ``texts``."""
        if not texts:
            return torch.zeros(0, self.dim)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            emb = self.encode(missing)  # (m, Dt)
            self.encoded += len(missing)
            fresh = {t: emb[i].clone() for i, t in enumerate(missing)}
        out = torch.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])  # (M, Dt)
        self._cache.update(fresh)
        while len(self._cache) > self.max_items:
            self._cache.pop(next(iter(self._cache)))
        return out


def _share_prepare(finished: bool, error: str | None) -> bool:
    """Send rank 0's outcome of preparing the store to every rank; raise its error everywhere."""
    if dist.is_available() and dist.is_initialized():
        box = [(finished, error)]
        dist.broadcast_object_list(box, src=0)
        finished, error = box[0]
    if error is not None:
        raise ConfigError(error)
    return finished


def build_plan(samples: Sequence[Sample], root: str | Path, encoder: EncoderBackend, config: ExtractConfig,
               regions: RegionConfig, source: dict[str, Any] | None) -> dict[str, Any]:
    """What the store holds, with a fingerprint of everything that changes its content."""
    counts = Counter(s.image_id for s in samples)
    if len(counts) != len(samples):
        dup = next(i for i, c in counts.items() if c > 1)
        raise DataError(root, f"image id {dup} appears more than once; image ids must be unique")
    # the content of the records: a changed caption, fact or scene graph makes another store
    records = [[s.image_id, s.image_path, s.split, [[c.text, c.granularity, c.fact] for c in s.captions], s.scene]
               for s in samples]
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    enc = encoder.describe()
    plan = {
        "format_version": FORMAT_VERSION,
        "encoder": enc,
        "regions": region_record(regions),
        "source": {"root": str(Path(root).resolve()), **(source or {})},
        "shard_size": config.shard_size,
        "n_shards": -(-len(samples) // config.shard_size),
        "samples_sha256": digest,
    }
    stable = dict(plan, encoder={**enc, "config": {k: v for k, v in enc["config"].items()
                                                   if k not in _RUNTIME_FIELDS}})
    plan["fingerprint"] = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
    return plan


def extract_features(samples: Sequence[Sample], root: str | Path, out: str | Path, encoder: EncoderBackend,
                     config: ExtractConfig | None = None, regions: RegionConfig | None = None,
                     source: dict[str, Any] | None = None,
                     on_shard_written: Callable[[int], None] | None = None) -> ExtractResult:
    """Encode ``samples`` into a feature store at ``out``, resuming a previous interrupted run.

    Args:
        samples: the images to encode (``image_path`` relative to ``root``).
        root: the dataset root.
        out: the store directory.
        encoder: the backend.
        config: batching, workers, shard size, overwrite.
        regions: which boxes each image gets.
        source: recorded in the manifest, e.g. ``{"format": "coco", "split": "test"}``.
        on_shard_written: called with a shard's index after it is written (tests use it to interrupt).

    Returns:
        The store directory and what this process did (counts, time per stage).
    """
    config, regions = config or ExtractConfig(), regions or RegionConfig()
    if regions.detector:
        check_detector(regions.detector)  # before the store is started
    rank, world = rank_world()
    plan = build_plan(samples, root, encoder, config, regions, source)
    writer = StoreWriter(out, plan, overwrite=config.overwrite)
    finished, error = False, None
    if rank == 0:
        try:
            finished = writer.prepare()
        except (ConfigError, DataError) as exc:
            error = str(exc)
    finished = _share_prepare(finished, error)
    if rank != 0:
        writer.check()
    n_shards = plan["n_shards"]
    result = ExtractResult(Path(out))
    if finished:
        log.info("extract: %s is already a finished store of this extraction; nothing to do", out)
    else:
        todo = [i for i in range(n_shards) if i % world == rank and not writer.is_done(i)]
        log.info("extract: rank %d/%d, %d of %d shards to do", rank, world, len(todo), n_shards)
        _run_shards(samples, root, encoder, writer, todo, config, regions, on_shard_written, result, rank)
        log.info("extract: rank %d: %s", rank, result.summary())
        barrier()
        if rank == 0:
            write_object_vocabulary(out, samples, encoder)
            writer.finish(n_shards)
            write_timing(out, result)
        barrier()
    return result


def write_object_vocabulary(out: str | Path, samples: Sequence[Sample], encoder: EncoderBackend) -> None:
    """Encode every distinct object name once (the hallucination detector's phrases), atomically."""
    names = sorted({o.name for s in samples for o in s.objects})
    emb = encoder.encode_texts(names) if names else torch.zeros(0, encoder.dims.text)  # (V, Dt)
    atomic_write_bytes(Path(out) / OBJECTS_TENSORS, save({"embeddings": emb.float().contiguous()}))
    write_json(Path(out) / OBJECTS_NAMES, names, indent=None)


def write_timing(out: str | Path, result: ExtractResult) -> None:
    """Per-item encoder cost of this run (used for the controller-overhead ratio; not part of the content)."""
    if result.images == 0:
        return
    timing = {"image_ms_per_item": 1000 * result.image_seconds / result.images,
              "text_ms_per_item": 1000 * result.text_seconds / max(result.texts_encoded, 1),
              "images_per_s": result.images_per_s, "summary": result.summary()}
    write_json(Path(out) / TIMING, timing, indent=1)


def _shard_batches(todo: Sequence[int], n: int, shard_size: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """(shard, sample indices) per batch; batches never cross a shard boundary."""
    out = []
    for shard in todo:
        lo, hi = shard * shard_size, min((shard + 1) * shard_size, n)
        out += [(shard, list(range(b, min(b + batch_size, hi)))) for b in range(lo, hi, batch_size)]
    return out


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _run_shards(samples: Sequence[Sample], root: str | Path, encoder: EncoderBackend, writer: StoreWriter,
                todo: Sequence[int], config: ExtractConfig, regions: RegionConfig,
                on_shard_written: Callable[[int], None] | None, result: ExtractResult, rank: int) -> None:
    batches = _shard_batches(todo, len(samples), config.shard_size, config.batch_size)
    if not batches:
        return
    dataset = ImageBoxDataset(samples, root, encoder.transform, regions)
    loader = DataLoader(dataset, batch_sampler=[idx for _, idx in batches], num_workers=config.workers,
                        worker_init_fn=_worker_init if config.workers else None,
                        prefetch_factor=2 if config.workers else None)
    texts = TextCache(encoder.encode_texts, encoder.dims.text, config.text_cache_size)
    bar = tqdm(total=sum(len(idx) for _, idx in batches), unit="img", desc="extract",
               disable=not config.progress or rank != 0, dynamic_ncols=True)
    parts: list[dict[str, Any]] = []
    start = tick = time.perf_counter()
    with bar:
        for (shard, idx), (_, pixels, boxes, mask, errors) in zip(batches, loader, strict=True):
            result.wait_seconds += time.perf_counter() - tick
            keep = _readable(samples, root, idx, errors, config.skip_bad, result)  # positions in the batch
            if keep:
                sel = torch.tensor(keep, dtype=torch.long)
                parts.append(_encode_batch(samples, [idx[k] for k in keep], encoder, pixels[sel], boxes[sel],
                                           mask[sel], texts, result))
            bar.update(len(idx))
            if idx[-1] + 1 == min((shard + 1) * config.shard_size, len(samples)):  # last batch of the shard
                t = time.perf_counter()
                writer.write_shard(shard, _shard_data(samples, parts or [_empty_part(encoder, regions)]))
                result.write_seconds += time.perf_counter() - t
                result.shards += 1
                parts = []
                if on_shard_written is not None:
                    on_shard_written(shard)
            tick = time.perf_counter()
    result.seconds = time.perf_counter() - start
    result.texts_encoded = texts.encoded


def _readable(samples: Sequence[Sample], root: str | Path, idx: list[int], errors: Sequence[str], skip_bad: bool,
              result: ExtractResult) -> list[int]:
    """Positions in the batch of the images that could be read; an unreadable one is an error naming it, or
    with ``skip_bad`` is left out and added to ``result.skipped``."""
    keep = []
    for k, (i, err) in enumerate(zip(idx, errors, strict=True)):
        if not err:
            keep.append(k)
            continue
        path = Path(root) / samples[i].image_path
        if not skip_bad:
            raise DataError(path, f"{err}; fix or remove the file, or pass --skip-bad (skip_bad=True) to leave "
                                  "unreadable images out")
        result.skipped.append(f"{path}: {err}")
    return keep


def _empty_part(encoder: EncoderBackend, regions: RegionConfig) -> dict[str, Any]:
    """A batch part with no images (a shard whose images were all unreadable, with ``skip_bad``)."""
    d, R = encoder.dims, regions.max_regions
    return {"idx": [], "coarse": torch.zeros(0, d.coarse), "regions": torch.zeros(0, R, d.region),
            "boxes": torch.zeros(0, R, 4), "mask": torch.zeros(0, R, dtype=torch.bool),
            "text_embeddings": torch.zeros(0, d.text), "text_image_ids": torch.zeros(0, dtype=torch.int64),
            "text_granularity": torch.zeros(0, dtype=torch.int64), "captions": [], "facts": []}


def _encode_batch(samples: Sequence[Sample], idx: list[int], encoder: EncoderBackend, pixels: torch.Tensor,
                  boxes: torch.Tensor, mask: torch.Tensor, texts: TextCache, result: ExtractResult) -> dict[str, Any]:
    """Encode one batch of images and their captions; adds the time spent to ``result``."""
    t0 = time.perf_counter()
    coarse, regions = encoder.encode_pixels(pixels, boxes, mask)  # (B, Dc), (B, R, Dr)
    t1 = time.perf_counter()
    caps = [(samples[i].image_id, c) for i in idx for c in samples[i].captions]
    emb = texts([c.text for _, c in caps])  # (M, Dt)
    result.image_seconds += t1 - t0
    result.text_seconds += time.perf_counter() - t1
    result.images += len(idx)
    result.texts += len(caps)
    return {
        "idx": idx, "coarse": coarse, "regions": regions, "boxes": boxes, "mask": mask, "text_embeddings": emb,
        "text_image_ids": torch.tensor([i for i, _ in caps], dtype=torch.int64),
        "text_granularity": torch.tensor([GRANULARITY_CODES.get(c.granularity or "", -1) for _, c in caps],
                                         dtype=torch.int64),
        "captions": [c.text for _, c in caps],
        "facts": [c.fact for _, c in caps],
    }


def _shard_data(samples: Sequence[Sample], parts: list[dict[str, Any]]) -> ShardData:
    idx = [i for p in parts for i in p["idx"]]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("coarse", "regions", "boxes", "mask", "text_embeddings",
                                                         "text_image_ids", "text_granularity")}
    return ShardData(
        image_ids=torch.tensor([samples[i].image_id for i in idx], dtype=torch.int64),
        coarse=cat["coarse"], regions=cat["regions"], boxes=cat["boxes"], mask=cat["mask"].bool(),
        text_embeddings=cat["text_embeddings"], text_image_ids=cat["text_image_ids"],
        text_granularity=cat["text_granularity"],
        image_paths=[samples[i].image_path for i in idx],
        splits=[samples[i].split for i in idx],
        objects=[[o.name for o in samples[i].objects] for i in idx],
        captions=[c for p in parts for c in p["captions"]],
        scenes=[samples[i].scene for i in idx],
        facts=[f for p in parts for f in p["facts"]],
    )
