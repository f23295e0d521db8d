"""``dsanchor mllm caption``: caption a split with a local MLLM (LLaVA, BLIP-2, IDEFICS), with and without DSA.

The split is the one every mllm command uses (:mod:`dsanchor.mllm.config`); the model is captioned once as is
and once with DSA attached (a fixed g or a saved controller, with the ``--adapter`` if given), the captions are
written and scored with BLEU, CIDEr (raw scale) and CHAIR.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsanchor.controller import GranularityController
from dsanchor.data.records import Sample
from dsanchor.errors import DataError
from dsanchor.files import write_json
from dsanchor.integrations import processor_fns
from dsanchor.mllm.config import CaptionConfig, GridConfig, MLLMConfig
from dsanchor.mllm.data import MLLMData, load_mllm_data
from dsanchor.mllm.generate import CaptionRun, caption_samples, write_captions
from dsanchor.mllm.scores import score_captions

__all__ = ["run_mllm_caption"]

log = logging.getLogger(__name__)


def _summary(run: CaptionRun, samples: Sequence[Sample], vocabulary: str) -> dict[str, Any]:
    out: dict[str, Any] = score_captions(run.captions, samples, vocabulary)
    out["s_per_image"] = run.seconds / max(len(run.captions), 1)
    if run.g:
        g = torch.tensor(list(run.g.values()))
        out["g_mean"], out["g_std"] = float(g.mean()), float(g.std(unbiased=False))
    return out


def _g_source(cap: CaptionConfig, data: MLLMData, coarse_layer: int) -> nn.Module | float | None:
    """The controller (``--dsa``) or fixed g (``--g``), checked against the model before any captioning."""
    if cap.dsa is None and cap.g is None:
        return None
    source: nn.Module | float = cap.g
    if cap.dsa is not None:
        source = GranularityController.from_pretrained(cap.dsa).to(data.device)
    data.attach(source, coarse_layer).detach()  # state_dim, coarse_layer, g range
    return source


def run_mllm_caption(cfg: MLLMConfig, grid: GridConfig, cap: CaptionConfig,
                     data: MLLMData | None = None) -> dict[str, Any] | None:
    """Caption ``cap.split`` without and (with ``--dsa`` or ``--g``) with DSA; write captions and metrics.

    Writes ``captions_base.jsonl``, ``captions_dsa.jsonl`` and ``metrics.json`` under ``cfg.out`` and returns
    the metrics dict (``None`` on a torchrun rank other than 0).
    """
    data = data or load_mllm_data(cfg)
    if data.rank != 0:
        return None
    samples = data.split(cap.split, cfg.limit)
    if not samples:
        raise DataError(cfg.data, f"no images in split {cap.split!r} ({data.split_note}; --split all: every image)")
    prepare, decode = processor_fns(cfg.model_type, data.processor, cfg.caption_prompt)
    out = Path(cfg.out)
    source = _g_source(cap, data, cfg.coarse_layer)
    metrics: dict[str, Any] = {"model_type": cfg.model_type, "model_path": str(cfg.model_path),
                               "dataset": cfg.format, "split": cap.split, "split_note": data.split_note,
                               "n_images": len(samples), "cider_scale": "raw", "chair_scale": "fraction", "runs": {}}
    log.info("captioning %d images with %s from %s", len(samples), cfg.model_type, cfg.model_path)

    def caption() -> CaptionRun:
        return caption_samples(data.model, prepare, decode, samples, data.root, grid.batch_size, grid.max_new_tokens)

    base = caption()
    write_captions(out / "captions_base.jsonl", base)
    metrics["runs"]["base"] = _summary(base, samples, data.vocabulary)
    if source is not None:
        log.info("captioning again with DSA (%s)", cap.dsa or f"g = {cap.g}")
        with data.attach(source, cfg.coarse_layer):
            dsa = caption()
        write_captions(out / "captions_dsa.jsonl", dsa)
        metrics["runs"]["dsa"] = {"g_source": cap.dsa if cap.dsa is not None else f"fixed {cap.g}",
                                  "coarse_layer": cfg.coarse_layer, **_summary(dsa, samples, data.vocabulary)}
    write_json(out / "metrics.json", metrics)
    return metrics
