"""The one generate loop of every mllm command: open images -> prepare -> generate -> cut the prompt -> decode.

:func:`generate_text` is one greedy ``generate`` call on prepared inputs, its prompt cut off and decoded;
:func:`caption_samples` runs it over a split in batches, recording g per image when DSA is attached. The grid
cache (several g per batch), POPE (a question per image) and the build's evaluation call the same pieces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from dsanchor.data.records import Sample
from dsanchor.errors import DataError
from dsanchor.files import write_jsonl
from dsanchor.integrations import get_dsa
from dsanchor.integrations.families import Decode, Prepare

__all__ = ["CaptionRun", "open_image", "to_model", "batches", "generate_text", "caption_samples", "write_captions"]


@dataclass
class CaptionRun:
    """The captions of one pass over the samples."""

    captions: dict[int, str]  # image id -> caption
    g: dict[int, float] = field(default_factory=dict)  # image id -> g (DSA runs only)
    seconds: float = 0.0  # wall time of the generate calls


def open_image(root: str | Path, sample: Sample) -> Image.Image:
    """The sample's image as RGB; an unreadable file is a DataError naming it."""
    path = Path(root) / sample.image_path
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, OSError) as exc:
        raise DataError(path, f"cannot read image of image id {sample.image_id} ({exc.__class__.__name__})",
                        field="image_path") from None


def to_model(inputs: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Inputs moved to the model's device (floating-point ones, i.e. pixel values, to its dtype too)."""
    param = next(model.parameters())

    def move(value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        return value.to(param.device, param.dtype) if value.is_floating_point() else value.to(param.device)

    return {k: move(v) for k, v in inputs.items()}


def batches(items: Sequence, size: int, desc: str, progress: bool = False) -> Iterator[list]:
    """``items`` in consecutive batches of ``size`` (a progress bar over the batches when ``progress``)."""
    for start in tqdm(range(0, len(items), size), desc=desc, unit="batch", disable=not progress):
        yield list(items[start:start + size])


@torch.no_grad()
def generate_text(model: nn.Module, inputs: dict[str, Any], decode: Decode, max_new_tokens: int) -> list[str]:
    """Greedy ``generate`` on prepared inputs (on the model's device); the prompt is cut off and the rest decoded.

    Args:
        inputs: must include ``input_ids``: everything up to its length is the prompt.
    """
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # (B, T + new)
    return decode(out[:, inputs["input_ids"].shape[1]:])


def caption_samples(model: nn.Module, prepare: Prepare, decode: Decode, samples: Sequence[Sample],
                    image_root: str | Path, batch_size: int = 8, max_new_tokens: int = 30,
                    on_batch: Callable[[list[Sample]], None] | None = None, progress: bool = False) -> CaptionRun:
    """Greedy-caption every sample; records g per image when DSA is attached to ``model``.

    Args:
        model: a transformers model with ``generate``; DSA may be attached (see
            :func:`~dsanchor.integrations.attach_dsa`).
        prepare: PIL images -> model inputs (e.g. :func:`~dsanchor.integrations.processor_fns`).
        decode: ``(B, T)`` generated ids after the prompt -> B strings.
        samples: the images to caption; ``image_path`` is relative to ``image_root``.
        on_batch: called with each batch's samples before its ``generate`` (e.g. to set a g per image).
        progress: a progress bar over the batches.
    """
    handle = get_dsa(model)
    run = CaptionRun(captions={})
    for batch in batches(samples, batch_size, "captions", progress):
        if on_batch is not None:
            on_batch(batch)
        inputs = to_model(prepare([open_image(image_root, s) for s in batch]), model)
        if handle is not None:
            handle.last_g = None
        tic = time.perf_counter()
        texts = generate_text(model, inputs, decode, max_new_tokens)
        run.seconds += time.perf_counter() - tic
        run.captions.update({s.image_id: t for s, t in zip(batch, texts, strict=True)})
        if handle is not None and handle.last_g is not None and handle.last_g.numel() == len(batch):
            run.g.update({s.image_id: float(g) for s, g in zip(batch, handle.last_g, strict=True)})
    return run


def write_captions(path: str | Path, run: CaptionRun, image_ids: Sequence[int] | None = None) -> Path:
    """One JSON object per line (atomically): image_id, caption, and g for DSA runs; in ``image_ids`` order
    (default: the run's)."""
    ids = list(run.captions) if image_ids is None else image_ids
    return write_jsonl(path, ({"image_id": i, "caption": run.captions[i], **({"g": run.g[i]} if i in run.g else {})}
                              for i in ids))
