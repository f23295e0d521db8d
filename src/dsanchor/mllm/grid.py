"""Captions of an attached MLLM at a grid of g, cached on disk (resumable, sharded over torchrun processes).

Generation is the expensive step of training a controller for an MLLM, so it is done once: every row
of a split is answered at each g of a grid (default 6 values, 0, 0.2, ..., 1) with DSA attached at that
fixed g, and its controller state (:mod:`dsanchor.integrations.state`, which does not depend on g) is
recorded on the way. A row (:class:`GridRow`) is an image with the caption prompt, or an item: a question or
a caption prompt about an image (:mod:`dsanchor.mllm.items`), whose state then holds its own prompt; for
an item with a known answer the model's answer loss (mean NLL per answer token, teacher-forced) is recorded at
every g as well, for the router baseline (:mod:`dsanchor.mllm.router`). PPO then learns on the cached
rewards, linearly interpolated between grid points (:class:`~dsanchor.mllm.rewards.GridRewardModel`).

**Cache layout** (``DIR``): ``grid.json`` (what the cache was made with: model, prompt, grid, generation
settings, the image ids and, for items, the item ids) and, per chunk of ``chunk_size`` rows in key order,
``chunk-00000.json`` (texts, generation seconds, item ids and losses for items) and ``chunk-00000.safetensors``
(states). A chunk is written to temporary
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from dsanchor.anchoring import g_grid
from dsanchor.data.records import Sample
from dsanchor.distributed import barrier, rank_world
from dsanchor.errors import ConfigError, DataError
from dsanchor.files import atomic_write_text, write_json
from dsanchor.integrations import SettableG, StateLayout, attach_dsa, get_dsa
from dsanchor.integrations.families import Decode
from dsanchor.mllm.config import GridConfig
from dsanchor.mllm.generate import generate_text, open_image, to_model

__all__ = ["GridRow", "GridCache", "PrepareRows", "AnswerLoss", "model_fingerprint", "build_grid_cache",
           "load_grid_cache"]

META = "grid.json"

PrepareRows = Callable[[list[Image.Image], list[str]], dict[str, torch.Tensor]]  # images, prompts -> inputs
# (images, prompts, targets) -> (B,) mean NLL of each target given its image and prompt, DSA attached
AnswerLoss = Callable[[list[Image.Image], list[str], list[str]], torch.Tensor]


@dataclass(frozen=True)
class GridRow:
    """One row of a grid cache: an image and what the model is asked about it."""

    key: int  # unique in the cache: the image id (one caption per image) or the item id (questions, prompts)
    sample: Sample  # the image
    prompt: str  # the prompt as the model reads it (the family's template already applied)
    target: str | None = None  # the answer whose NLL is recorded at every g (None: no loss)
    max_new_tokens: int | None = None  # tokens to generate (None: GridConfig.max_new_tokens)


@dataclass
class GridCache:
    """A merged grid cache: per row (in key order) its generated texts at each g, its state, and its answer loss."""

    image_ids: list[int]  # the image of each row
    grid: torch.Tensor  # (G,)
    captions: list[list[str]]  # (N, G) generated texts (captions, or answers for item caches)
    states: torch.Tensor  # (N, S) float32
    layout: dict
    seconds: float  # generation wall time summed over chunks
    keys: list[int] | None = None  # row keys when rows are items, not images (None: the image ids)
    losses: np.ndarray | None = None  # (N, G) mean NLL per target token (rows with a target; NaN elsewhere)

    @property
    def row_keys(self) -> list[int]:
        return self.image_ids if self.keys is None else self.keys

    def index(self) -> dict[int, int]:
        return {i: n for n, i in enumerate(self.row_keys)}


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


def _caption_chunk(model: nn.Module, prepare: PrepareRows, decode: Decode, chunk: list[GridRow], root: Path,
                   source: SettableG, grid: list[float], config: GridConfig, bar,
                   loss: AnswerLoss | None = None) -> tuple[list[list[str]], torch.Tensor, list[list[float]] | None]:
    """Texts ``(n, G)`` of one chunk at every grid g, its states ``(n, S)`` (from the first g's call) and, with
    ``loss``, the answer NLL ``(n, G)`` of the rows with a target (NaN for the others)."""
    texts = [[""] * len(grid) for _ in chunk]
    losses = [[float("nan")] * len(grid) for _ in chunk] if loss is not None else None
    states: list[torch.Tensor] = []
    for a in range(0, len(chunk), config.batch_size):
        batch = chunk[a:a + config.batch_size]
        images = [open_image(root, r.sample) for r in batch]
        inputs = to_model(prepare(images, [r.prompt for r in batch]), model)
        tokens = max(r.max_new_tokens or config.max_new_tokens for r in batch)
        scored = [b for b, r in enumerate(batch) if r.target is not None]
        for j, g in enumerate(grid):
            source.set(g)
            source.states = []
            for b, text in enumerate(generate_text(model, inputs, decode, tokens)):
                texts[a + b][j] = text
            if j == 0:
                states.append(source.states[0])  # the vision call of the first step
            if losses is not None and scored:
                nll = loss([images[b] for b in scored], [batch[b].prompt for b in scored],
                           [batch[b].target for b in scored])
                for b, v in zip(scored, nll.tolist(), strict=True):
                    losses[a + b][j] = v
            bar.update(len(batch))
    return texts, torch.cat(states), losses


def _write_chunk(out: Path, k: int, chunk: list[GridRow], captions: list[list[str]], states: torch.Tensor,
                 seconds: float, losses: list[list[float]] | None, items: bool) -> None:
    """States first, JSON last (both renamed into place): a chunk with its JSON is complete."""
    name = _chunk_name(k)
    save_file({"states": states.contiguous()}, str(out / f"{name}.safetensors.tmp"))
    (out / f"{name}.safetensors.tmp").replace(out / f"{name}.safetensors")
    doc: dict[str, Any] = {"image_ids": [r.sample.image_id for r in chunk], "captions": captions, "seconds": seconds}
    if items:
        doc["item_ids"] = [r.key for r in chunk]
    if losses is not None:
        doc["losses"] = [[None if v != v else v for v in row] for row in losses]  # NaN as null (valid JSON)
    atomic_write_text(out / f"{name}.json", json.dumps(doc))


def build_grid_cache(model: nn.Module, prepare: PrepareRows, decode: Decode, rows: Sequence[GridRow],
                     image_root: str | Path, out_dir: str | Path, config: GridConfig, layout: StateLayout,
                     meta: dict[str, Any], *, coarse_layer: int = 1, progress: bool = True,
                     adapter: nn.Module | None = None, loss: AnswerLoss | None = None, items: bool = False) -> Path:
    """Generate every row's text at every grid g and record its state (and its answer loss with ``loss``);
    resumable and sharded (module docstring).

    Args:
        model: the MLLM (DSA must not be attached).
        prepare: ``(images, prompts) -> inputs`` (the family's ``prepare`` on the processor); ``decode`` from
            :func:`~dsanchor.integrations.processor_fns`.
        rows: one per image (a caption cache: key = image id) or per item (questions and caption prompts), in any
            order (the cache is in key order).
        layout: the :class:`~dsanchor.integrations.state.StateLayout` of the states to record.
        meta: what identifies the run besides the grid and the rows (model fingerprint, prompt, ...).
        adapter: the seam adapter applied to V' (``--adapter``), or None.
        loss: the answer NLL of the rows with a ``target``, computed with DSA at each grid g (None: no losses).
        items: the rows are items (their keys are item ids, several per image), not images.

    Returns:
        ``out_dir``; every rank returns after all chunks are written.
    """
    if get_dsa(model) is not None:
        raise ConfigError("build_grid_cache attaches DSA itself; detach the model's DSA first")
    out = Path(out_dir)
    order = sorted(rows, key=lambda r: r.key)
    keys = [r.key for r in order]
    if len(set(keys)) != len(keys):
        raise DataError(out, "the split has repeated keys; a grid cache needs one row per image or item")
    grid = g_grid(config.grid)
    full = {**meta, "grid": [round(float(g), 6) for g in grid], "image_ids": [r.sample.image_id for r in order],
            "layout": layout.to_dict(), "chunk_size": config.chunk_size, "batch_size": config.batch_size,
            "max_new_tokens": config.max_new_tokens, "coarse_layer": coarse_layer}
    if items:
        full["item_ids"] = keys
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
            texts, states, losses = _caption_chunk(model, prepare, decode, chunks[k], Path(image_root), source,
                                                   grid.tolist(), config, bar, loss)
            _write_chunk(out, k, chunks[k], texts, states, time.perf_counter() - tic, losses, items)
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
    ids, keys, captions, states, losses, seconds = [], [], [], [], [], 0.0
    for k in range(n_chunks):
        name = _chunk_name(k)
        if not (out / f"{name}.json").is_file():
            raise DataError(out, f"grid cache unfinished: {name} is missing; rerun the same command to resume")
        d = json.loads((out / f"{name}.json").read_text())
        ids += d["image_ids"]
        keys += d.get("item_ids", d["image_ids"])
        captions += d["captions"]
        losses += d.get("losses") or []
        seconds += d["seconds"]
        states.append(load_file(str(out / f"{name}.safetensors"))["states"])
    if ids != meta["image_ids"] or keys != meta.get("item_ids", ids):
        raise DataError(out, "grid cache chunks do not match its image ids (files from another run?)")
    loss = np.array(losses, dtype=np.float64) if losses else None  # null (no target) -> NaN
    if loss is not None and loss.shape != (len(ids), len(meta["grid"])):
        raise DataError(out, "grid cache chunks disagree on answer losses (files from another run?)")
    return GridCache(ids, torch.tensor(meta["grid"]), captions, torch.cat(states), meta["layout"], seconds,
                     meta.get("item_ids"), loss)
