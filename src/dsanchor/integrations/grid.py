"""Captions of an attached MLLM at a grid of g, cached on disk, and the rewards PPO learns from.

Generation is the expensive step of training a controller for an MLLM, so it is done once: every image
of a split is captioned at each g of a grid (default 6 values, 0, 0.2, ..., 1) with DSA attached at that
fixed g, and its controller state (:mod:`dsanchor.integrations.state`, which does not depend on g) is
recorded on the way. PPO then learns on the cached rewards, linearly interpolated between grid points
(:class:`GridRewardModel`).

**Cache layout** (``DIR``): ``grid.json`` (what the cache was made with: model, prompt, grid, generation
settings, the image ids) and, per chunk of ``chunk_size`` images in id order, ``chunk-00000.json``
(captions, generation seconds) and ``chunk-00000.safetensors`` (states). A chunk is written to temporary
names and renamed, JSON last, so a killed run leaves only finished chunks; a rerun skips them (resume).
Under ``torchrun`` chunk k goes to rank ``k % world``; chunks, and the batches inside a chunk, do not
depend on the number of processes, so any number of processes writes the same files as one. Rank 0 merges
after a barrier. A cache made with other settings is refused in one line (use another directory).

**Rewards** (:func:`grid_rewards`): R_acc is the CIDEr-D (raw scale) of the caption against the image's
references, IDF over the split's references; R_hall is minus the share of the caption's named objects that
the image lacks (CHAIR's mention extraction and ground truth; 0 for a caption that names no object).
Images without annotated objects cannot be judged by ground truth: their R_hall comes from the hallucination
detector when one is given with its feature store (:class:`DetectorShares`), else it is 0; both numbers are
reported (``n_unjudged``, ``n_detector``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dsanchor.anchoring import g_grid
from dsanchor.data.records import Sample
from dsanchor.errors import ConfigError, DataError
from dsanchor.distributed import barrier, rank_world

__all__ = ["GridConfig", "GridCache", "GridRewardModel", "model_fingerprint", "build_grid_cache", "load_grid_cache",
           "grid_rewards", "RecordingG", "DetectorShares"]

log = logging.getLogger(__name__)
META = "grid.json"


@dataclass
class GridConfig:
    grid: int = field(default=6, metadata={"help": "number of g values on the grid (0 to 1, evenly spaced)"})
    chunk_size: int = field(default=16, metadata={"help": "images per cache file (the unit of resume and sharding)"})
    batch_size: int = field(default=8, metadata={"help": "images per generate call"})
    max_new_tokens: int = field(default=30, metadata={"help": "tokens generated per caption"})

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ConfigError(f"--grid must be >= 2 (g = 0 and g = 1 at least); got {self.grid}")
        if min(self.chunk_size, self.batch_size, self.max_new_tokens) < 1:
            raise ConfigError("--chunk-size, --batch-size and --max-new-tokens must be >= 1")


class RecordingG(nn.Module):
    """A g source for :func:`~dsanchor.integrations.attach_dsa` that returns a fixed g and keeps the states.

    It carries a controller-like ``config`` (``state_dim``, ``state_layout``), so the handle builds the
    MLLM state for it exactly as for a trained controller.
    """

    def __init__(self, layout):
        super().__init__()
        self.config = SimpleNamespace(state_dim=layout.size, state_layout=layout.to_dict())
        self.g = 1.0
        self.states: list[torch.Tensor] = []

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        self.states.append(state.detach().float().cpu())
        return torch.full((state.shape[0],), float(self.g), device=state.device)


@dataclass
class GridCache:
    """A merged grid cache: per image (in id order) its captions at each g and its state."""

    image_ids: list[int]
    grid: torch.Tensor  # (G,)
    captions: list[list[str]]  # (N, G)
    states: torch.Tensor  # (N, S) float32
    layout: dict
    seconds: float  # generation wall time summed over chunks

    def index(self) -> dict[int, int]:
        return {i: n for n, i in enumerate(self.image_ids)}


def model_fingerprint(model_path: str | Path) -> str:
    """Identifies a saved model cheaply: its config and the names, sizes and times of its weight files."""
    p = Path(model_path)
    h = hashlib.sha256((p / "config.json").read_bytes() if (p / "config.json").is_file() else str(p).encode())
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _check_meta(out: Path, meta: dict[str, Any], rank: int) -> None:
    path = out / META
    if path.is_file():
        old = json.loads(path.read_text())
        for key in meta:
            if old.get(key) != meta[key]:
                raise ConfigError(f"{out}: this grid cache was made with another {key} ({str(old.get(key))[:60]!r} "
                                  f"vs {str(meta[key])[:60]!r}); pass another cache directory or delete it")
        return
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)


def _chunk_name(k: int) -> str:
    return f"chunk-{k:05d}"


def build_grid_cache(model: nn.Module, prepare, decode, samples: Sequence[Sample], image_root: str | Path,
                     out_dir: str | Path, config: GridConfig, layout, meta: dict[str, Any],
                     coarse_layer: int = 1, progress: bool = True) -> Path:
    """Caption every sample at every grid g and record its state; resumable and sharded (module docstring).

    Args:
        model: the MLLM (DSA must not be attached).
        prepare, decode: from :func:`~dsanchor.integrations.captioning.processor_fns` (the prompt is in them).
        samples: the split, in any order (the cache is in image-id order).
        layout: the :class:`~dsanchor.integrations.state.StateLayout` of the states to record.
        meta: what identifies the run besides the grid and the images (model fingerprint, prompt, ...).

    Returns:
        ``out_dir``; every rank returns after all chunks are written.
    """
    from dsanchor.integrations.captioning import _open_image, _to
    from dsanchor.integrations.hf import attach_dsa, get_dsa

    if get_dsa(model) is not None:
        raise ConfigError("build_grid_cache attaches DSA itself; detach the model's DSA first")
    out = Path(out_dir)
    order = sorted(samples, key=lambda s: s.image_id)
    ids = [s.image_id for s in order]
    if len(set(ids)) != len(ids):
        raise DataError(out, "the split has repeated image ids; a grid cache needs one row per image")
    grid = g_grid(config.grid)
    full = {**meta, "grid": [round(float(g), 6) for g in grid], "image_ids": ids, "layout": layout.to_dict(),
            "chunk_size": config.chunk_size, "batch_size": config.batch_size,
            "max_new_tokens": config.max_new_tokens, "coarse_layer": coarse_layer}
    rank, world = rank_world()
    _check_meta(out, full, rank)
    barrier()
    chunks = [order[a:a + config.chunk_size] for a in range(0, len(order), config.chunk_size)]
    mine = [k for k in range(len(chunks)) if k % world == rank and not (out / f"{_chunk_name(k)}.json").is_file()]
    param = next(model.parameters())
    source = RecordingG(layout)
    total = sum(len(chunks[k]) for k in mine) * len(grid)
    bar = tqdm(total=total, desc=f"grid captions (rank {rank})" if world > 1 else "grid captions", unit="caption",
               disable=not progress or total == 0)
    root = Path(image_root)
    with attach_dsa(model, source, coarse_layer=coarse_layer):
        for k in mine:
            chunk = chunks[k]
            captions = [[""] * len(grid) for _ in chunk]
            states: list[torch.Tensor] = []
            tic = time.perf_counter()
            for a in range(0, len(chunk), config.batch_size):
                batch = chunk[a:a + config.batch_size]
                inputs = {key: _to(v, param) for key, v in prepare([_open_image(root, s) for s in batch]).items()}
                for j, g in enumerate(grid.tolist()):
                    source.g, source.states = g, []
                    with torch.no_grad():
                        gen = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False)
                    for b, text in enumerate(decode(gen[:, inputs["input_ids"].shape[1]:])):
                        captions[a + b][j] = text
                    if j == 0:
                        states.append(source.states[0])  # the vision call of the first step
                    bar.update(len(batch))
            seconds = time.perf_counter() - tic
            name = _chunk_name(k)
            save_file({"states": torch.cat(states).contiguous()}, str(out / f"{name}.safetensors.tmp"))
            os.replace(out / f"{name}.safetensors.tmp", out / f"{name}.safetensors")
            tmp = out / f"{name}.json.tmp"
            tmp.write_text(json.dumps({"image_ids": [s.image_id for s in chunk], "captions": captions,
                                       "seconds": seconds}))
            os.replace(tmp, out / f"{name}.json")
    bar.close()
    barrier()
    return out


def load_grid_cache(out_dir: str | Path) -> GridCache:
    """Merge a finished cache; a missing chunk is a one-line error (rerun the command to finish it)."""
    out = Path(out_dir)
    if not (out / META).is_file():
        raise DataError(out, f"not a grid cache (no {META}); make one with `dsanchor mllm train` or `mllm eval`")
    meta = json.loads((out / META).read_text())
    n_chunks = -(-len(meta["image_ids"]) // meta["chunk_size"])
    ids, captions, states, seconds = [], [], [], 0.0
    for k in range(n_chunks):
        name = _chunk_name(k)
        if not (out / f"{name}.json").is_file():
            raise DataError(out, f"grid cache unfinished: {name} is missing; rerun the same command to resume")
        d = json.loads((out / f"{name}.json").read_text())
        ids += d["image_ids"]
        captions += d["captions"]
        seconds += d["seconds"]
        states.append(load_file(str(out / f"{name}.safetensors"))["states"])
    if ids != meta["image_ids"]:
        raise DataError(out, "grid cache chunks do not match its image ids (files from another run?)")
    return GridCache(ids, torch.tensor(meta["grid"]), captions, torch.cat(states), meta["layout"], seconds)


def caption_mentions(captions: dict[Any, str], truth: dict[Any, set[str] | None],
                     vocabulary: str) -> dict[Any, tuple[int, int] | None]:
    """Per caption, (hallucinated mentions, mentions) by CHAIR; ``None`` for an image CHAIR does not judge."""
    from dsanchor.metrics.chair import chair

    judged = {i: c for i, c in captions.items() if truth.get(i) is not None}
    out: dict[Any, tuple[int, int] | None] = {i: None for i in captions}
    if judged:
        for c in chair(judged, {i: sorted(truth[i]) for i in judged}, vocabulary=vocabulary).captions:
            out[c.image_id] = (sum(m.hallucinated for m in c.mentions), len(c.mentions))
    return out


class DetectorShares:
    """The hallucination detector's estimate of the share of a caption's named objects an image lacks.

    For images CHAIR cannot judge (no annotated objects): the detector (``dsanchor hallucination train``) reads
    the image's features from the feature store it was trained on, P(present) of every vocabulary object is
    computed once per image, and a caption's share is the mean of 1 - P(present) over the objects it names
    (:func:`~dsanchor.hallucination.mentions.hallucination_share`; 0 when it names none the detector knows).

    Args:
        detector: folder of a saved :class:`~dsanchor.hallucination.HallucinationDetector`.
        features: the feature store of the same dataset (``dsanchor extract``).
        vocabulary: the CHAIR vocabulary of the captions (``"synth"`` or ``"coco"``).
    """

    def __init__(self, detector: str | Path, features: str | Path, vocabulary: str):
        from dsanchor.features.store import FeatureStore
        from dsanchor.hallucination import HallucinationDetector

        self.detector = HallucinationDetector.from_pretrained(detector)
        self.store = FeatureStore(features)
        self.objects = self.store.object_vocabulary()
        self.index = self.objects.index()
        self.vocabulary = vocabulary
        self.images = self.store.images()
        self.row = {int(i): r for r, i in enumerate(self.images.image_ids.tolist())}
        self._presence: dict[int, torch.Tensor] = {}

    def presence(self, image_ids: Sequence[int]) -> None:
        """Compute P(present) for the images not seen yet (one detector call)."""
        from dsanchor.features.types import ImageFeatures

        todo = [i for i in dict.fromkeys(image_ids) if i not in self._presence]
        missing = [i for i in todo if i not in self.row]
        if missing:
            raise DataError(self.store.path, f"{len(missing)} images are not in the feature store (e.g. id "
                                             f"{missing[0]}); extract features of the same dataset")
        if not todo:
            return
        rows = torch.tensor([self.row[i] for i in todo])
        im = self.images
        sub = ImageFeatures(im.image_ids[rows], im.coarse[rows], im.regions[rows], im.boxes[rows], im.mask[rows],
                            [im.objects[r] for r in rows.tolist()], [im.splits[r] for r in rows.tolist()], None)
        with torch.no_grad():
            p = self.detector.presence_matrix(sub, self.objects.embeddings.float())  # (n, V)
        self._presence.update({i: p[k] for k, i in enumerate(todo)})

    def __call__(self, image_ids: Sequence[int], captions: Sequence[str]) -> np.ndarray:
        from dsanchor.hallucination.mentions import caption_objects, hallucination_share

        self.presence(image_ids)
        out = np.zeros(len(captions))
        for n, (i, c) in enumerate(zip(image_ids, captions, strict=True)):
            share = hallucination_share(self._presence[i], caption_objects(c, self.vocabulary), self.index,
                                        self.vocabulary)
            out[n] = 0.0 if share is None else share
        return out


def grid_rewards(cache: GridCache, samples: Sequence[Sample], vocabulary: str,
                 detector: DetectorShares | None = None) -> dict[str, Any]:
    """R_acc (CIDEr-D) and the hallucination share of every cached caption (module docstring).

    Images CHAIR cannot judge (no annotated objects) get the detector's estimate when ``detector`` is given,
    else a share of 0; both counts are returned.

    Returns:
        ``{"cider": (N, G), "hallucination": (N, G), "judged": (N,) bool, "n_unjudged": int,
        "n_detector": int}`` (numpy).
    """
    from dsanchor.captioning.evaluate import cider_per_image
    from dsanchor.integrations.captioning import chair_ground_truth

    by_id = {s.image_id: s for s in samples}
    missing = [i for i in cache.image_ids if i not in by_id]
    if missing:
        raise DataError("grid cache", f"{len(missing)} cached images are not in the split (e.g. id {missing[0]})")
    n, g = len(cache.image_ids), len(cache.grid)
    refs = [[c.text for c in by_id[i].captions] for i in cache.image_ids]
    flat = cider_per_image([c for row in cache.captions for c in row], [r for r in refs for _ in range(g)])
    cider = np.nan_to_num(flat.reshape(n, g), nan=0.0)
    truth = chair_ground_truth([by_id[i] for i in cache.image_ids], vocabulary)
    hall = np.zeros((n, g))
    judged = np.array([truth.get(i) is not None for i in cache.image_ids])
    for j in range(g):
        counts = caption_mentions({i: cache.captions[r][j] for r, i in enumerate(cache.image_ids)}, truth,
                                  vocabulary)
        hall[:, j] = [c[0] / c[1] if c and c[1] else 0.0 for c in (counts[i] for i in cache.image_ids)]
    rows = np.flatnonzero(~judged)
    if detector is not None and len(rows):
        ids = [cache.image_ids[r] for r in rows]
        for j in range(g):
            hall[rows, j] = detector(ids, [cache.captions[r][j] for r in rows])
    return {"cider": cider, "hallucination": hall, "judged": judged, "n_unjudged": int((~judged).sum()),
            "n_detector": int(len(rows)) if detector is not None else 0}


class GridRewardModel:
    """(R_acc, R_hall) of training image q at g: the cached values linearly interpolated between grid points."""

    def __init__(self, grid: torch.Tensor, cider: np.ndarray, hallucination: np.ndarray):
        self.grid = np.asarray(grid, dtype=np.float64)
        self.cider = np.asarray(cider, dtype=np.float64)
        self.hall = np.asarray(hallucination, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.cider.shape[0])

    def values(self, q: int, g: float) -> tuple[float, float]:
        """Interpolated (CIDEr-D, hallucination share) of image q at g."""
        return float(np.interp(g, self.grid, self.cider[q])), float(np.interp(g, self.grid, self.hall[q]))

    def __call__(self, q: int, g: float) -> tuple[float, float]:
        c, h = self.values(q, g)
        return c, -h

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a in (self.grid, self.cider, self.hall):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def subset(self, rows: Sequence[int]) -> GridRewardModel:
        rows = list(rows)
        return GridRewardModel(torch.as_tensor(self.grid), self.cider[rows], self.hall[rows])
