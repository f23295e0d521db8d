"""Feature distillation into ``mllm build``'s small vision tower: the pretrained EfficientNet-Lite0 teaches the
CLIP tower's patch tokens what is where (:func:`distill_vision`).

The teacher (ImageNet weights, offline; :mod:`dsanchor.encoders.effnet_minilm`) reads the same images at the
tower's input size. Its stage-5 map has stride 16, so at 128 px it is an 8 x 8 grid, one cell per 16-px patch of
the tower; a linear probe reads object colour, shape, size and material from that stage almost perfectly (see
``EffnetMiniLMConfig.region_stage``), which a tower trained from scratch on a few thousand captions never learns.
Each patch token of the tower's last layer, through a linear head, regresses the teacher's cell (channels
standardised over the training images; mean squared error). With ``distill_coarse_weight`` > 0 the tokens of the
coarse layer (what DSA's V_coarse is) regress an earlier, coarser-grained stage (``distill_coarse_stage``) the same
way. The heads are thrown away afterwards; only the tower keeps what it learnt (as in FitNets, Romero et al. 2015,
"FitNets: Hints for Thin Deep Nets", a hint layer regressed through a learnt projection).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.encoders.transforms import CLIP_MEAN, CLIP_STD, EFFNET_LITE_MEAN, EFFNET_LITE_STD
from dsanchor.mllm.config import BuildConfig

__all__ = ["TeacherMaps", "SCENE_ATTRIBUTES", "scene_labels", "label_counts", "clip_to_effnet", "teacher_maps",
           "standardise", "patch_tokens", "distill_vision"]


SCENE_ATTRIBUTES = ("size", "color", "material", "shape")


def scene_labels(scene: dict[str, Any]) -> Counter:
    """How many objects of a scene carry each attribute value and each pair of values, in the questions' word
    order ("large", "red", "large red", "red cube", ...): what the summary token learns."""
    out: Counter = Counter()
    for o in scene["objects"]:
        values = [str(o[a]) for a in SCENE_ATTRIBUTES]
        out.update(values)
        out.update(f"{a} {b}" for a, b in combinations(values, 2))
    return out


def label_counts(unique: Sequence[Any], summaries: Sequence[tuple[Any, Counter]], names: Sequence[str]) -> torch.Tensor:
    """(I, K) counts of the label ``names`` per image of ``unique`` (by identity; 0 for an image without one)."""
    held = {id(im): c for im, c in summaries}
    return torch.tensor([[float(held.get(id(im), Counter())[n]) for n in names] for im in unique])


@dataclass
class TeacherMaps:
    """Standardised teacher targets on the tower's patch grid: fine (I, N, C_f) and coarse (I, N, C_c) or None."""

    fine: torch.Tensor
    coarse: torch.Tensor | None
    seconds: float  # time spent in the teacher
    summary: torch.Tensor | None = None  # (I, K) how many objects carry each label: the CLS token's target


def clip_to_effnet(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP-normalised pixels (B, 3, S, S) -> the same image normalised for EfficientNet-Lite (B, 3, S, S)."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    raw = pixels.float() * std + mean  # (B, 3, S, S) in [0, 1]
    return (raw - EFFNET_LITE_MEAN[0]) / EFFNET_LITE_STD[0]


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Each channel of (I, N, C) maps to zero mean and unit variance over the train images' cells (the same
    shift and scale applied to ``others``): [train, *others]."""
    flat = train.flatten(0, 1)  # (I * N, C)
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-4)
    return [(m - mean) / std for m in (train, *others)]


@torch.inference_mode()
def teacher_maps(pixels: torch.Tensor, grid: int, stages: tuple[str, ...], batch_size: int = 64,
                 backbone: Any = None) -> list[torch.Tensor]:
    """EfficientNet-Lite0's maps of ``stages`` for CLIP-normalised ``pixels`` (I, 3, S, S), each average-pooled to
    ``grid`` x ``grid`` cells: one (I, grid * grid, C) per stage, cells row-major like the tower's patches
    (standardise them with :func:`standardise`).

    Args:
        backbone: an EfficientNet-Lite0 (``efficientnet_lite_pytorch``) to use; None loads the pretrained one
            offline at the pixels' size (:func:`dsanchor.encoders.effnet_minilm.load_efficientnet`).
    """
    from dsanchor.encoders.effnet_minilm import load_efficientnet, stage_outputs

    size = pixels.shape[-1]
    net = backbone if backbone is not None else load_efficientnet(size)
    where = stage_outputs(net)
    captured: dict[str, torch.Tensor] = {}
    hooks = [net._blocks[where[s]].register_forward_hook(lambda _m, _i, out, s=s: captured.__setitem__(s, out))
             for s in stages if s != "head"]
    out: dict[str, list[torch.Tensor]] = {s: [] for s in stages}
    try:
        for a in range(0, len(pixels), batch_size):
            final = net.extract_features(clip_to_effnet(pixels[a:a + batch_size]).contiguous(
                memory_format=torch.channels_last))  # (b, 1280, S / 32, S / 32)
            captured["head"] = final
            for s in stages:
                cells = nn.functional.adaptive_avg_pool2d(captured[s].float(), grid)  # (b, C, grid, grid)
                out[s].append(cells.flatten(2).transpose(1, 2).contiguous())  # (b, grid * grid, C)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(out[s]) for s in stages]


def patch_tokens(tower: nn.Module, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """The patch tokens (CLS dropped, as the projector sees them) of hidden state ``layer``: (B, N, D)."""
    return tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 1:]


def distill_vision(tower: nn.Module, pixels: torch.Tensor, teacher: TeacherMaps, cfg: BuildConfig,
                   val: tuple[torch.Tensor, TeacherMaps] | None = None, progress: bool = True) -> dict[str, Any]:
    """Regress the teacher's cells from the tower's patch tokens (FitNets hints), in place.

    Args:
        tower: the LLaVA's ``CLIPVisionModel``.
        pixels: (I, 3, S, S) CLIP-normalised training images.
        teacher: their :class:`TeacherMaps` on the tower's patch grid.
        val: (pixels, maps) of the val images, for the val loss and its share of the teacher's variance explained.

    Returns:
        ``distill_loss`` (last training loss) and, with ``val``, ``val_fine_r2`` (and ``val_coarse_r2``): 1 minus
        the val mean squared error of the fine (coarse) head, i.e. the share of the standardised teacher's
        variance the tower's tokens explain.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    width = tower.config.hidden_size
    layers = [(-1, 1.0, teacher.fine)]
    if teacher.coarse is not None and cfg.distill_coarse_weight > 0:
        layers.append((cfg.coarse_layer, cfg.distill_coarse_weight, teacher.coarse))
    heads = nn.ModuleList([nn.Linear(width, t.shape[-1]) for _, _, t in layers])
    summary = None if teacher.summary is None else torch.log1p(teacher.summary)  # (I, K)
    summary_heads = nn.ModuleList([nn.Linear(width, summary.shape[1]) for _ in layers]) if summary is not None \
        else nn.ModuleList()
    params = [*tower.parameters(), *heads.parameters(), *summary_heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.distill_lr, weight_decay=0.05)
    warm = max(1, cfg.distill_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.distill_steps) / cfg.distill_steps)))
    tower.train()
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(cfg.distill_steps), desc="mllm build: distillation", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.randint(len(pixels), (min(cfg.distill_batch_size, len(pixels)),), generator=gen)
        hidden = tower(pixel_values=pixels[idx].float(), output_hidden_states=True).hidden_states
        loss = sum(w * nn.functional.mse_loss(head(hidden[layer][:, 1:]), t[idx])  # (B, N, C) each
                   for (layer, w, t), head in zip(layers, heads, strict=True))
        for (layer, w, _), head in zip(layers if summary_heads else [], summary_heads, strict=True):  # CLS token
            loss = loss + w * cfg.distill_summary_weight * nn.functional.mse_loss(head(hidden[layer][:, 0]),
                                                                                 summary[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    info: dict[str, Any] = {"distill_loss": float(loss.detach())}
    if val is not None:
        info.update(_val_r2(tower, heads, layers, *val))
        if summary is not None and val[1].summary is not None:
            info.update(_val_summary(tower, summary_heads[0], *val))
    return info


@torch.no_grad()
def _val_summary(tower: nn.Module, head: nn.Module, pixels: torch.Tensor, maps: TeacherMaps) -> dict[str, float]:
    """Share of (val image, label) pairs whose presence the CLS token gets right (count read as > 0.5), and the
    share a summary that says "absent" everywhere gets."""
    tower.eval()
    cls = torch.cat([tower(pixel_values=pixels[a:a + 128].float()).last_hidden_state[:, 0]
                     for a in range(0, len(pixels), 128)])  # (I, D)
    tower.train()
    said, truth = head(cls) > math.log1p(0.5), maps.summary > 0  # (I, K)
    return {"val_summary_presence_acc": float((said == truth).float().mean()),
            "val_summary_all_absent": float((~truth).float().mean())}


@torch.no_grad()
def _val_r2(tower: nn.Module, heads: nn.ModuleList, layers: list, pixels: torch.Tensor,
            maps: TeacherMaps) -> dict[str, float]:
    """1 - val MSE per head (the teacher maps are standardised, so this is the variance explained)."""
    tower.eval()
    targets = [maps.fine, maps.coarse]
    out = {}
    for k, ((layer, _, _), head) in enumerate(zip(layers, heads, strict=True)):
        err = torch.cat([(head(patch_tokens(tower, pixels[a:a + 128].float(), layer))
                          - targets[k][a:a + 128]).pow(2).mean((1, 2)) for a in range(0, len(pixels), 128)])
        out["val_fine_r2" if k == 0 else "val_coarse_r2"] = float(1 - err.mean())
    tower.train()
    return out
