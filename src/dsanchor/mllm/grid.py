"""Captions of an attached MLLM at a grid of g, cached on disk (resumable, sharded over torchrun processes).

Generation is the expensive step of training a controller for an MLLM, so it is done once: every image
of a split is captioned at each g of a grid (default 6 values, 0, 0.2, ..., 1) with DSA attached at that
fixed g, and its controller state (:mod:`dsanchor.integrations.state`, which does not depend on g) is
recorded on the way. PPO then learns on the cached rewards, linearly interpolated between grid points
(:class:`~dsanchor.mllm.rewards.GridRewardModel`).

**Cache layout** (``DIR``): ``grid.json`` (what the cache was made with: model, prompt, grid, generation
settings, the image ids) and, per chunk of ``chunk_size`` images in id order, ``chunk-00000.json``
(captions, generation seconds) and ``chunk-00000.safetensors`` (states). A chunk is written to temporary
names and renamed, JSON last, so a killed run leaves only finished chunks; a rerun skips them (resume).
Under ``torchrun`` chunk k goes to rank ``k % world``; chunks, and the batches inside a chunk, do not
depend on the number of processes, so any number of processes writes the same files as one. Rank 0 merges
after a barrier. A cache made with other settings is refused in one line (use another directory).

The rewards PPO learns from the cache are :mod:`dsanchor.mllm.rewards`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dsanchor.anchoring import g_grid
from dsanchor.data.records import Sample
from dsanchor.distributed import barrier, rank_world
from dsanchor.errors import ConfigError, DataError
from dsanchor.files import atomic_write_text, write_json
from dsanchor.integrations import SettableG, StateLayout, attach_dsa, get_dsa
from dsanchor.integrations.families import Decode, Prepare
from dsanchor.mllm.config import GridConfig
from dsanchor.mllm.generate import generate_text, open_image, to_model

__all__ = ["GridCache", "model_fingerprint", "build_grid_cache", "load_grid_cache"]

META = "grid.json"


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
        write_json(path, meta, indent=1)


def _chunk_name(k: int) -> str:
    return f"chunk-{k:05d}"


def _caption_chunk(model: nn.Module, prepare: Prepare, decode: Decode, chunk: list[Sample], root: Path,
                   source: SettableG, grid: list[float], config: GridConfig,
                   bar) -> tuple[list[list[str]], torch.Tensor]:
    """Captions ``(n, G)`` of one chunk at every grid g, and its states ``(n, S)`` (from the first g's call)."""
    captions = [[""] * len(grid) for _ in chunk]
    states: list[torch.Tensor] = []
    for a in range(0, len(chunk), config.batch_size):
        batch = chunk[a:a + config.batch_size]
        inputs = to_model(prepare([open_image(root, s) for s in batch]), model)
        for j, g in enumerate(grid):
            source.set(g)
            source.states = []
            for b, text in enumerate(generate_text(model, inputs, decode, config.max_new_tokens)):
                captions[a + b][j] = text
            if j == 0:
                states.append(source.states[0])  # the vision call of the first step
            bar.update(len(batch))
    return captions, torch.cat(states)


def _write_chunk(out: Path, k: int, chunk: list[Sample], captions: list[list[str]], states: torch.Tensor,
                 seconds: float) -> None:
    """States first, JSON last (both renamed into place): a chunk with its JSON is complete."""
    name = _chunk_name(k)
    save_file({"states": states.contiguous()}, str(out / f"{name}.safetensors.tmp"))
    (out / f"{name}.safetensors.tmp").replace(out / f"{name}.safetensors")
    atomic_write_text(out / f"{name}.json", json.dumps({"image_ids": [s.image_id for s in chunk],
                                                        "captions": captions, "seconds": seconds}))


def build_grid_cache(model: nn.Module, prepare: Prepare, decode: Decode, samples: Sequence[Sample],
                     image_root: str | Path, out_dir: str | Path, config: GridConfig, layout: StateLayout,
                     meta: dict[str, Any], *, coarse_layer: int = 1, progress: bool = True,
                     adapter: nn.Module | None = None) -> Path:
    """Caption every sample at every grid g and record its state; resumable and sharded (module docstring).

    Args:
        model: the MLLM (DSA must not be attached).
        prepare, decode: from :func:`~dsanchor.integrations.processor_fns` (the prompt is in them).
        samples: the split, in any order (the cache is in image-id order).
        layout: the :class:`~dsanchor.integrations.state.StateLayout` of the states to record.
        meta: what identifies the run besides the grid and the images (model fingerprint, prompt, ...).
        adapter: the seam adapter applied to V' (``--adapter``), or None.

    Returns:
        ``out_dir``; every rank returns after all chunks are written.
    """
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
    source = SettableG(layout=layout, record=True)
    total = sum(len(chunks[k]) for k in mine) * len(grid)
    bar = tqdm(total=total, desc=f"grid captions (rank {rank})" if world > 1 else "grid captions", unit="caption",
               disable=not progress or total == 0)
    with attach_dsa(model, source, coarse_layer=coarse_layer, adapter=adapter):
        for k in mine:
            tic = time.perf_counter()
            captions, states = _caption_chunk(model, prepare, decode, chunks[k], Path(image_root), source,
                                              grid.tolist(), config, bar)
            _write_chunk(out, k, chunks[k], captions, states, time.perf_counter() - tic)
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
