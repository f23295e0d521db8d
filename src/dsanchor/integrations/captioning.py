"""Caption a dataset with a local transformers MLLM (LLaVA, BLIP-2, IDEFICS), with and without DSA.

The loop is model-agnostic: :func:`caption_samples` takes a ``prepare`` function (PIL images -> model
inputs) and a ``decode`` function (new token ids -> strings). :func:`processor_fns` builds both from a
transformers processor for each model type. :func:`run_mllm_caption` is what ``dsanchor mllm caption``
runs: it captions the split once as is and once with DSA attached (a fixed g or a saved controller),
writes the captions and scores them with BLEU, CIDEr (raw scale) and CHAIR.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from dsanchor.data.records import Sample
from dsanchor.errors import ConfigError, DataError, MissingDependencyError
from dsanchor.integrations.hf import MODEL_TYPES, attach_dsa, get_dsa

__all__ = ["MLLMCaptionConfig", "CaptionRun", "MODEL_CLASSES", "DEFAULT_PROMPTS", "load_mllm", "processor_fns",
           "caption_samples", "chair_ground_truth", "POPE_QUESTION", "QUESTION_PROMPTS",
           "question_prompt", "read_yes_no", "score_captions", "write_captions", "run_mllm_caption"]

log = logging.getLogger(__name__)

# model type -> transformers class that loads it
MODEL_CLASSES: dict[str, str] = {
    "llava": "LlavaForConditionalGeneration",
    "blip2": "Blip2ForConditionalGeneration",
    "idefics": "IdeficsForVisionText2Text",
}
DEFAULT_PROMPTS: dict[str, str] = {
    "llava": "USER: <image>\nDescribe the image in one sentence. ASSISTANT:",
    "blip2": "a photo of",
    "idefics": "Describe the image in one sentence.",
}
# POPE (Li et al. 2023): the question asked per (image, object); the answer is read as yes / no
POPE_QUESTION = "Is there a {object} in the image?"
# how each model type is asked a question about its image ({question} is filled in)
QUESTION_PROMPTS: dict[str, str] = {
    "llava": "USER: <image>\n{question} Answer yes or no. ASSISTANT:",
    "blip2": "Question: {question} Answer:",
    "idefics": "{question} Answer yes or no.",
}
# dataset format -> CHAIR vocabulary (COCO synonyms, or the synth colour + shape names)
CHAIR_VOCABULARY: dict[str, str] = {"coco": "coco", "vg": "coco", "clevr": "synth", "synth": "synth"}

Prepare = Callable[[list[Image.Image]], dict[str, torch.Tensor]]
Decode = Callable[[torch.Tensor], list[str]]


@dataclass
class MLLMCaptionConfig:
    model_type: str | None = field(default=None, metadata={"help": "llava, blip2 or idefics"})
    model_path: str | None = field(default=None, metadata={"help": "local directory saved with save_pretrained"})
    data: str | None = field(default=None, metadata={"help": "dataset root (the loader's path)"})
    format: str | None = field(default=None, metadata={"help": "dataset format: coco, vg, clevr or synth"})
    split: str | None = field(default="test", metadata={"help": "split to caption (all: every image)"})
    limit: int | None = field(default=None, metadata={"help": "caption at most this many images"})
    dsa: str | None = field(default=None, metadata={"help": "saved GranularityController directory"})
    g: float | None = field(default=None, metadata={"help": "fixed granularity g in [0, 1] instead of --dsa"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden-state index that gives V_coarse"})
    prompt: str | None = field(default=None, metadata={"help": "prompt; unset: a default per model type"})
    max_new_tokens: int = field(default=30, metadata={"help": "tokens to generate per caption"})
    batch_size: int = field(default=4, metadata={"help": "images per generate call"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, float16 or bfloat16"})
    out: str | None = field(default=None, metadata={"help": "output directory"})


@dataclass
class CaptionRun:
    """The captions of one pass over the samples."""

    captions: dict[int, str]  # image id -> caption
    g: dict[int, float] = field(default_factory=dict)  # image id -> g (DSA runs only)
    seconds: float = 0.0  # wall time of the generate calls


def load_mllm(model_type: str, model_path: str | Path, device: str = "cpu",
              dtype: str = "auto") -> tuple[nn.Module, Any]:
    """Load a local model and its processor (``AutoProcessor``); nothing is downloaded.

    Raises:
        MissingDependencyError: the directory does not exist or holds no model.
    """
    if model_type not in MODEL_CLASSES:
        raise ConfigError(f"unknown --model-type {model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise MissingDependencyError(f"{path}: no local model there (expected config.json); pass --model-path a "
                                     "directory written by save_pretrained (hub downloads are not used)")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(f"unknown --dtype {dtype!r}; valid: auto, float32, float16, bfloat16")
    import transformers

    model = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(
        path, local_files_only=True, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # decoder-only generation continues every row from its last token
    return model.to(device).eval(), processor


def _llava_prompt(processor: Any, prompt: str) -> str:
    token = getattr(processor, "image_token", "<image>")
    return prompt if token in prompt else f"{token}\n{prompt}"


def processor_fns(model_type: str, processor: Any, prompt: str | None = None) -> tuple[Prepare, Decode]:
    """``prepare(images) -> inputs`` and ``decode(new_token_ids) -> captions`` for a transformers processor."""
    prompt = DEFAULT_PROMPTS[model_type] if prompt is None else prompt

    def prepare(images: list[Image.Image]) -> dict[str, torch.Tensor]:
        if model_type == "llava":
            text = [_llava_prompt(processor, prompt)] * len(images)
            return processor(images=images, text=text, return_tensors="pt", padding=True)
        if model_type == "blip2":  # the processor puts the query-token placeholders before the prompt
            return processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
        turns = [["User:", image, f"{prompt}\nAssistant:"] for image in images]
        return processor(text=turns, return_tensors="pt", padding="longest")

    def decode(new_ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in processor.batch_decode(new_ids, skip_special_tokens=True)]

    return prepare, decode


def question_prompt(model_type: str, obj: str) -> str:
    """The POPE prompt asking ``model_type`` whether ``obj`` is in its image."""
    return QUESTION_PROMPTS[model_type].format(question=POPE_QUESTION.format(object=obj))


def read_yes_no(answer: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None for anything else (POPE counts it as no)."""
    words = answer.strip().lower().replace(",", " ").replace(".", " ").split()
    if not words:
        return None
    return True if words[0] == "yes" else False if words[0] == "no" else None


def _open_image(root: Path, sample: Sample) -> Image.Image:
    path = root / sample.image_path
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (FileNotFoundError, OSError) as exc:
        raise DataError(path, f"cannot read image of image id {sample.image_id} ({exc.__class__.__name__})",
                        field="image_path") from None


def _to(value: Any, param: torch.Tensor) -> Any:
    """Move a tensor to the model's device (and pixel values to its dtype)."""
    if not torch.is_tensor(value):
        return value
    return value.to(param.device, param.dtype) if value.is_floating_point() else value.to(param.device)


def caption_samples(model: nn.Module, prepare: Prepare, decode: Decode, samples: Sequence[Sample],
                    image_root: str | Path, batch_size: int = 4, max_new_tokens: int = 30,
                    on_batch: Callable[[list[Sample]], None] | None = None, progress: bool = False) -> CaptionRun:
    """Greedy-caption every sample; records g per image when DSA is attached to ``model``.

    Args:
        model: a transformers model with ``generate``; DSA may be attached (see :func:`attach_dsa`).
        prepare: PIL images -> model inputs (must include ``input_ids``: the prompt is cut from the output).
        decode: ``(B, T)`` generated ids after the prompt -> B strings.
        samples: the images to caption; ``image_path`` is relative to ``image_root``.
        on_batch: called with each batch's samples before its ``generate`` (e.g. to set a g per image).
        progress: a progress bar over the batches.
    """
    from tqdm.auto import tqdm

    param = next(model.parameters())
    handle = get_dsa(model)
    run = CaptionRun(captions={})
    for start in tqdm(range(0, len(samples), batch_size), desc="captions", unit="batch", disable=not progress):
        batch = list(samples[start:start + batch_size])
        if on_batch is not None:
            on_batch(batch)
        inputs = prepare([_open_image(Path(image_root), s) for s in batch])
        inputs = {k: _to(v, param) for k, v in inputs.items()}
        if handle is not None:
            handle.last_g = None
        tic = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # (B, T + new)
        run.seconds += time.perf_counter() - tic
        new = out[:, inputs["input_ids"].shape[1]:]  # (B, new)
        for sample, caption in zip(batch, decode(new), strict=True):
            run.captions[sample.image_id] = caption
        if handle is not None and handle.last_g is not None and handle.last_g.numel() == len(batch):
            run.g.update({s.image_id: float(g) for s, g in zip(batch, handle.last_g, strict=True)})
    return run


def chair_ground_truth(samples: Sequence[Sample], vocabulary: str) -> dict[int, set[str] | None]:
    """The objects CHAIR counts as present in each image; ``None`` for an image CHAIR cannot judge.

    Only images with annotated objects are judged (as :func:`dsanchor.captioning.evaluate.chair_ground_truth`):
    an image without instance annotations (40 of the 120 real COCO photos in the reference sample) would make
    every object its caption names a hallucination. For the COCO vocabulary the ground truth is the paper's
    (as :func:`dsanchor.metrics.gt_objects_from_coco`): the annotated objects plus every object the reference
    captions name. For the synth vocabulary it is the annotated objects only (generated captions may name
    absent objects, e.g. "there is no red cube").
    """
    from dsanchor.metrics.chair import caption_objects

    gt: dict[int, set[str] | None] = {}
    for s in samples:
        if not s.objects:
            gt[s.image_id] = None
            continue
        names = {o.name for o in s.objects}
        if vocabulary == "coco":
            names.update(n for c in s.captions for n in caption_objects(c.text, vocabulary))
        gt[s.image_id] = names
    return gt


def score_captions(captions: dict[int, str], samples: Sequence[Sample], vocabulary: str) -> dict[str, float]:
    """BLEU-1..4, CIDEr-D (raw scale, not x100) and CHAIR_s / CHAIR_i (fractions) of ``captions``.

    BLEU and CIDEr are left out when no sample has reference captions (never filled with zeros); CHAIR is
    over the images with annotated objects (``CHAIR_images`` of them) and left out when there is none.
    """
    from dsanchor.metrics.captioning import caption_metrics
    from dsanchor.metrics.chair import chair

    refs = {s.image_id: [c.text for c in s.captions] for s in samples if s.captions}
    cands = {i: c for i, c in captions.items() if i in refs}
    scores: dict[str, float] = {}
    if cands:
        scores.update(caption_metrics(cands, {i: refs[i] for i in cands}).as_dict())
    truth = chair_ground_truth(samples, vocabulary)
    judged = {i: c for i, c in captions.items() if truth.get(i) is not None}
    if judged:
        result = chair(judged, {i: sorted(truth[i]) for i in judged}, vocabulary=vocabulary)
        scores.update({"CHAIR_s": result.chair_s, "CHAIR_i": result.chair_i, "CHAIR_images": len(judged)})
    return scores


def write_captions(path: str | Path, run: CaptionRun) -> Path:
    """One JSON object per line: image_id, caption (and g for DSA runs)."""
    p = Path(path)
    with p.open("w") as f:
        for image_id, caption in run.captions.items():
            row: dict[str, Any] = {"image_id": image_id, "caption": caption}
            if image_id in run.g:
                row["g"] = run.g[image_id]
            f.write(json.dumps(row) + "\n")
    return p


def _check(cfg: MLLMCaptionConfig) -> None:
    for name in ("model_type", "model_path", "data", "format", "out"):
        if getattr(cfg, name) is None:
            raise ConfigError(f"--{name.replace('_', '-')} is required")
    if cfg.model_type not in MODEL_CLASSES:
        raise ConfigError(f"unknown --model-type {cfg.model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    from dsanchor.data import list_formats

    if cfg.format not in list_formats():
        raise ConfigError(f"unknown --format {cfg.format!r}; valid: {', '.join(list_formats())}")
    if cfg.dsa is not None and cfg.g is not None:
        raise ConfigError("pass either --dsa CTRL or --g FLOAT, not both")
    if cfg.g is not None and not 0.0 <= cfg.g <= 1.0:
        raise ConfigError(f"--g must lie in [0, 1]; got {cfg.g}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"--limit must be positive; got {cfg.limit}")


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load_samples(cfg: MLLMCaptionConfig) -> tuple[list[Sample], Path]:
    """The samples of the split (at most ``limit``) and the root their image paths are relative to."""
    from dsanchor.data import create_loader

    loader = create_loader(cfg.format, cfg.data)
    samples = loader.load(None if cfg.split == "all" else cfg.split)
    if cfg.limit is not None:
        samples = samples[:cfg.limit]
    if not samples:
        raise DataError(cfg.data, f"no images in split {cfg.split!r} (use --split all for every image)")
    return list(samples), loader.root


def _summary(run: CaptionRun, samples: Sequence[Sample], vocabulary: str) -> dict[str, Any]:
    out: dict[str, Any] = score_captions(run.captions, samples, vocabulary)
    out["s_per_image"] = run.seconds / max(len(run.captions), 1)
    if run.g:
        g = torch.tensor(list(run.g.values()))
        out["g_mean"], out["g_std"] = float(g.mean()), float(g.std(unbiased=False))
    return out


def _g_source(cfg: MLLMCaptionConfig, model: nn.Module) -> nn.Module | float | None:
    """The controller (``--dsa``) or fixed g (``--g``), checked against the model before any captioning."""
    if cfg.dsa is None and cfg.g is None:
        return None
    source: nn.Module | float = cfg.g
    if cfg.dsa is not None:
        from dsanchor.controller import GranularityController

        source = GranularityController.from_pretrained(cfg.dsa).to(next(model.parameters()).device)
    attach_dsa(model, source, coarse_layer=cfg.coarse_layer).detach()  # state_dim, coarse_layer, g range
    return source


def run_mllm_caption(cfg: MLLMCaptionConfig) -> dict[str, Any]:
    """Caption ``cfg.split`` without and (if ``--dsa`` or ``--g``) with DSA; write captions and metrics.

    Writes ``captions_base.jsonl``, ``captions_dsa.jsonl`` and ``metrics.json`` under ``cfg.out`` and
    returns the metrics dict.
    """
    _check(cfg)
    samples, root = _load_samples(cfg)
    model, processor = load_mllm(cfg.model_type, cfg.model_path, _device(cfg.device), cfg.dtype)
    prepare, decode = processor_fns(cfg.model_type, processor, cfg.prompt)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = CHAIR_VOCABULARY.get(cfg.format, "coco")
    source = _g_source(cfg, model)
    metrics: dict[str, Any] = {"model_type": cfg.model_type, "model_path": str(cfg.model_path),
                               "dataset": cfg.format, "split": cfg.split, "n_images": len(samples),
                               "cider_scale": "raw", "chair_scale": "fraction", "runs": {}}
    log.info("captioning %d images with %s from %s", len(samples), cfg.model_type, cfg.model_path)
    base = caption_samples(model, prepare, decode, samples, root, cfg.batch_size, cfg.max_new_tokens)
    write_captions(out / "captions_base.jsonl", base)
    metrics["runs"]["base"] = _summary(base, samples, vocabulary)
    if source is not None:
        log.info("captioning again with DSA (%s)", cfg.dsa or f"g = {cfg.g}")
        with attach_dsa(model, source, coarse_layer=cfg.coarse_layer):
            dsa = caption_samples(model, prepare, decode, samples, root, cfg.batch_size, cfg.max_new_tokens)
        write_captions(out / "captions_dsa.jsonl", dsa)
        metrics["runs"]["dsa"] = {"g_source": cfg.dsa if cfg.dsa is not None else f"fixed {cfg.g}",
                                  "coarse_layer": cfg.coarse_layer, **_summary(dsa, samples, vocabulary)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
