"""Vision pre-training of ``mllm build``'s small LLaVA (like CLIP before LLaVA): its CLIP vision tower is trained
contrastively against frozen caption embeddings, with an auxiliary object-name loss (:func:`pretrain_vision`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.mllm.config import BuildConfig

__all__ = ["random_shift", "pooled_patches", "object_labels", "multi_hot", "embed_texts", "pretrain_vision"]


def random_shift(pixels: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image of ``(B, 3, S, S)`` moved by up to ``shift`` pixels each way, edges replicated (same shape)."""
    if shift <= 0:
        return pixels
    size = pixels.shape[-1]
    padded = nn.functional.pad(pixels, (shift,) * 4, mode="replicate")  # (B, 3, S + 2 shift, S + 2 shift)
    dx, dy = torch.randint(2 * shift + 1, (2, len(pixels)), generator=gen).tolist()
    return torch.stack([padded[i, :, y:y + size, x:x + size] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])


def pooled_patches(hidden: torch.Tensor) -> torch.Tensor:
    """Mean of the patch tokens (CLS dropped, as the projector sees them): (B, 1 + N, D) -> (B, D)."""
    return hidden[:, 1:].mean(1)


def object_labels(object_names: Sequence[str]) -> set[str]:
    """An image's object labels for the auxiliary loss: its object names and their words ("red cube", "red")."""
    return set(object_names) | {w for n in object_names for w in n.split()}


def multi_hot(unique: Sequence[Any], objects: Sequence[tuple[Any, Sequence[str]]],
              names: Sequence[str]) -> torch.Tensor | None:
    """(I, K) which of the label ``names`` each image of ``unique`` holds (None without labels)."""
    if not names:
        return None
    held = {id(im): object_labels(n) for im, n in objects}
    return torch.tensor([[float(n in held.get(id(im), ())) for n in names] for im in unique])


def embed_texts(text_encoder: Any, texts: list[str]) -> torch.Tensor:
    """(C, E) unit-norm embeddings of ``texts`` (each distinct text encoded once)."""
    unique = sorted(set(texts))
    where = {t: i for i, t in enumerate(unique)}
    with torch.inference_mode():
        emb = text_encoder.encode(unique, batch_size=128, normalize_embeddings=True, convert_to_tensor=True,
                                  show_progress_bar=False)
    return emb.float().cpu().clone()[torch.tensor([where[t] for t in texts])]


@dataclass
class _Heads:
    """What pre-training adds on top of the tower and throws away afterwards."""

    proj: nn.ModuleList  # one projection to the text space per pooled layer (last, coarse)
    log_scale: nn.Parameter  # learnable inverse temperature
    objects: nn.ModuleList | None  # one object-name head per pooled layer (auxiliary loss)
    layers: list[tuple[int, float]]  # (hidden-state index, loss weight)


def _loss(tower: nn.Module, heads: _Heads, pixels: torch.Tensor, t: torch.Tensor, objects: torch.Tensor | None,
          cfg: BuildConfig, gen: torch.Generator) -> torch.Tensor:
    """InfoNCE both ways (plus the object loss) of one batch of images ``(B, 3, S, S)`` and texts ``(B, E)``."""
    hidden = tower(pixel_values=random_shift(pixels, cfg.pretrain_shift, gen), output_hidden_states=True).hidden_states
    target = torch.arange(len(pixels))
    loss = torch.zeros(())
    for k, ((layer, weight), head) in enumerate(zip(heads.layers, heads.proj, strict=True)):
        if weight == 0:
            continue
        pooled = pooled_patches(hidden[layer])  # (B, D)
        v = nn.functional.normalize(head(pooled), dim=-1)  # (B, E)
        logits = heads.log_scale.exp().clamp(max=100) * v @ t.T  # (B, B)
        loss = loss + weight * 0.5 * (nn.functional.cross_entropy(logits, target)
                                      + nn.functional.cross_entropy(logits.T, target))
        if heads.objects is not None:
            loss = loss + weight * cfg.pretrain_object_weight * nn.functional.binary_cross_entropy_with_logits(
                heads.objects[k](pooled), objects)
    return loss


@torch.no_grad()
def _val_scores(tower: nn.Module, heads: _Heads, val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                val_objects: torch.Tensor | None) -> dict[str, float]:
    """Val caption->image retrieval accuracy (and object-label accuracy) with the fine pooled features."""
    tower.eval()
    pixels, texts, text_image = val
    pooled = torch.cat([pooled_patches(tower(pixel_values=pixels[a:a + 128]).last_hidden_state)
                        for a in range(0, len(pixels), 128)])  # (I_val, D)
    v = nn.functional.normalize(heads.proj[0](pooled), dim=-1)  # (I_val, E)
    nearest = (texts @ v.T).argmax(1)  # (C_val,)
    info = {"val_retrieval_acc": float((nearest == text_image).float().mean()), "val_retrieval_chance": 1 / len(pixels)}
    if heads.objects is not None and val_objects is not None:
        said = heads.objects[0](pooled) > 0  # (I_val, K)
        info["val_object_acc"] = float((said == val_objects.bool()).float().mean())
    return info


def pretrain_vision(tower: nn.Module, pixels: torch.Tensor, texts: torch.Tensor, text_image: torch.Tensor,
                    cfg: BuildConfig, val: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                    objects: torch.Tensor | None = None, val_objects: torch.Tensor | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Contrastive pre-training of a CLIP vision tower against frozen text embeddings (CLIP's loss).

    Each step takes ``pretrain_batch_size`` distinct images and one of each image's captions at random; the
    pooled patch tokens of the tower's last layer, through a linear projection, are matched to the captions'
    unit-norm embeddings with InfoNCE in both directions and a learnable temperature (CLIP's init, 1 / 0.07).
    With ``pretrain_coarse_weight`` > 0 the pooled tokens of layer ``coarse_layer`` get the same loss through
    their own projection. With ``pretrain_object_weight`` > 0 and ``objects`` given, a linear head on each pooled
    output also predicts which object names are in the image (binary cross-entropy per name). The projections,
    heads and temperature are thrown away; only the tower keeps what it learnt.

    Args:
        tower: the LLaVA's ``CLIPVisionModel`` (trained in place).
        pixels: ``(I, 3, S, S)`` the training images.
        texts: ``(C, E)`` unit-norm caption embeddings; ``text_image``: ``(C,)`` the image index of each.
        val: ``(pixels, texts, text_image)`` of the val split, for the val retrieval accuracy.
        objects, val_objects: ``(I, K)`` multi-hot object names per train / val image (the auxiliary loss).

    Returns:
        ``{"pretrain_loss", "val_retrieval_acc", "val_retrieval_chance"}``: the last training loss and the share
        of val captions whose image is the nearest (fine pooled features) among all val images, with its chance;
        with the auxiliary loss also ``val_object_acc`` (per image and name, fine features; chance about the
        share of absent names).
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    dim, width = texts.shape[1], tower.config.hidden_size
    proj = nn.ModuleList([nn.Linear(width, dim), nn.Linear(width, dim)])
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    use_objects = objects is not None and cfg.pretrain_object_weight > 0
    heads = _Heads(proj, log_scale, nn.ModuleList([nn.Linear(width, objects.shape[1]) for _ in range(2)])
                   if use_objects else None, [(-1, 1.0), (cfg.coarse_layer, cfg.pretrain_coarse_weight)])
    params = [*tower.parameters(), *proj.parameters(), log_scale,
              *(heads.objects.parameters() if use_objects else [])]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=0.05)
    warm = max(1, cfg.pretrain_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.pretrain_steps) / cfg.pretrain_steps)))
    by_image: list[list[int]] = [[] for _ in range(len(pixels))]
    for c, i in enumerate(text_image.tolist()):
        by_image[i].append(c)
    with_text = torch.tensor([i for i, cs in enumerate(by_image) if cs])
    batch = min(cfg.pretrain_batch_size, len(with_text))
    tower.train()
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(cfg.pretrain_steps), desc="mllm build: vision pre-training", unit="step", disable=not progress)
    for _ in bar:
        imgs = with_text[torch.randperm(len(with_text), generator=gen)[:batch]]
        caps = torch.tensor([by_image[i][int(torch.randint(len(by_image[i]), (1,), generator=gen))]
                             for i in imgs.tolist()])
        loss = _loss(tower, heads, pixels[imgs], texts[caps], objects[imgs] if use_objects else None, cfg, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", T=f"{1 / float(log_scale.detach().exp()):.3f}")
    info: dict[str, Any] = {"pretrain_loss": float(loss.detach())}
    if val is not None and len(val[0]) > 1:
        info.update(_val_scores(tower, heads, val, val_objects if use_objects else None))
    tower.train()
    return info
