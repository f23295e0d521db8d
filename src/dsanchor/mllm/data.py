"""What every mllm command starts from: the model (with its seam adapter) and the samples, split by the one rule.

The split rule is :func:`dsanchor.data.splits.assign_splits` (the dataset's split when complete, else
``--splits``, else a seeded 60/20/20 split), for every command (:mod:`dsanchor.mllm.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dsanchor.data import load_dataset
from dsanchor.data.records import Sample
from dsanchor.data.splits import assign_splits
from dsanchor.distributed import init_distributed
from dsanchor.integrations import attach_dsa, load_adapter, load_mllm, resolve_device
from dsanchor.integrations.handle import DSAHandle
from dsanchor.mllm.config import MLLMConfig

__all__ = ["MLLMData", "split_samples", "load_mllm_data"]


@dataclass
class MLLMData:
    """A loaded model and dataset."""

    model: Any
    processor: Any
    samples: list[Sample]  # every sample, with its split set
    root: Path  # the folder the image paths are relative to
    split_note: str  # where the split came from
    vocabulary: str  # CHAIR's
    device: str
    adapter: nn.Module | None = None  # the seam adapter (``--adapter``), applied whenever DSA is attached
    rank: int = 0
    world: int = 1

    def split(self, name: str, limit: int | None = None) -> list[Sample]:
        """The samples of split ``name`` (``"all"``: every sample) in image-id order, at most ``limit``."""
        rows = sorted((s for s in self.samples if name == "all" or s.split == name), key=lambda s: s.image_id)
        return rows[:limit] if limit else rows

    def attach(self, source: nn.Module | float, coarse_layer: int) -> DSAHandle:
        """:func:`~dsanchor.integrations.attach_dsa` on the model with this data's seam adapter."""
        return attach_dsa(self.model, source, coarse_layer=coarse_layer, adapter=self.adapter)


def split_samples(cfg: MLLMConfig) -> tuple[list[Sample], str]:
    """The dataset's samples with their split set by the one split rule, and where the split came from."""
    return assign_splits(load_dataset(cfg.format, cfg.data), cfg.splits, seed=cfg.split_seed)


def load_mllm_data(cfg: MLLMConfig) -> MLLMData:
    """Check ``cfg``, join torchrun's process group if any, load the model (with its adapter) and the samples."""
    cfg.check()
    rank, world = init_distributed()
    device = resolve_device(cfg.device)
    samples, note = split_samples(cfg)
    model, processor = load_mllm(cfg.model_type, cfg.model_path, device, cfg.dtype)
    adapter = load_adapter(model, cfg.adapter) if cfg.adapter else None
    return MLLMData(model, processor, samples, cfg.image_root, note, cfg.vocabulary, device, adapter, rank, world)
