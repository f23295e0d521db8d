"""Contrastive training of the alignment heads (symmetric InfoNCE on coarse and fine scores).

Captions that occur verbatim for several images (common for scene-level captions such as "there are
five objects") are positives for all of those images within a batch, so the loss does not push apart
images that the caption describes equally well.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dsanchor.align.heads import AlignConfig, AlignmentHeads, JointFeatures
from dsanchor.features.types import ImageFeatures, TextFeatures
from dsanchor.retrieval import pair_terms

__all__ = ["AlignTrainConfig", "train_heads", "embed_images", "evaluate_heads", "evaluate_by_granularity"]

log = logging.getLogger(__name__)


@dataclass
class AlignTrainConfig:
    epochs: int = field(default=40, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=128, metadata={"help": "captions per batch"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=4, metadata={"help": "epochs without val improvement before stopping"})
    fine_weight: float = field(default=1.0, metadata={"help": "weight of the fine-score loss vs the coarse one"})
    seed: int = field(default=0, metadata={"help": "random seed (training is deterministic for a seed on CPU)"})


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log(sum_pos exp / sum_all exp). logits, pos: (A, B)."""
    lse_all = torch.logsumexp(logits, dim=1)
    lse_pos = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (lse_all - lse_pos).mean()


def _batch_positives(texts: list[str], text_img: torch.Tensor, img_ids: torch.Tensor,
                     captions_of: dict[int, set[str]]) -> torch.Tensor:
    """(B, U) positives: own image, or an image that has the identical caption."""
    pos = text_img.view(-1, 1) == img_ids.view(1, -1)
    for i, t in enumerate(texts):
        for j, iid in enumerate(img_ids.tolist()):
            if t in captions_of.get(iid, ()):
                pos[i, j] = True
    return pos


def embed_images(heads: AlignmentHeads, images: ImageFeatures, idx: torch.Tensor | None = None) -> JointFeatures:
    """Project (a subset of) the store's images into the joint space."""
    sel = slice(None) if idx is None else idx
    return heads.encode_images(images.coarse[sel].float(), images.regions[sel].float(), images.boxes[sel].float(),
                               images.mask[sel])


def evaluate_heads(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures, k: int = 10) -> dict:
    """Text-to-image R@k of coarse-only and fine-only scoring (the early-stopping signal)."""
    return evaluate_by_granularity(heads, images, texts, k)["all"]


def _epoch(heads, opt, images, texts, order, cfg, captions_of, id_to_row) -> float:
    heads.train()
    total = 0.0
    n = 0
    for start in range(0, len(order), cfg.batch_size):
        b = order[start:start + cfg.batch_size]
        text_img = texts.image_ids[b]
        uniq = torch.unique(text_img)
        rows = torch.tensor([id_to_row[i] for i in uniq.tolist()])
        pos = _batch_positives([texts.captions[i] for i in b.tolist()], text_img, uniq, captions_of)
        t = heads.encode_text(texts.embeddings[b].float())
        terms = pair_terms(t, embed_images(heads, images, rows), heads.pool_s)
        scale = heads.logit_scale.exp().clamp(max=100.0)
        loss = 0.0
        for w, s in ((1.0, terms.coarse), (cfg.fine_weight, terms.fine)):
            logits = scale * s  # (B, U)
            loss = loss + w * 0.5 * (_multi_positive_nce(logits, pos) + _multi_positive_nce(logits.T, pos.T))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(b)
        n += len(b)
    return total / max(n, 1)


def train_heads(images: ImageFeatures, texts: TextFeatures, val_images: ImageFeatures, val_texts: TextFeatures,
                config: AlignConfig, train: AlignTrainConfig) -> tuple[AlignmentHeads, dict]:
    """Train heads on the train split with early stopping on the val split's mean R@10.

    Returns:
        The best heads (by val) and a history dict with per-epoch loss and val recalls.
    """
    torch.manual_seed(train.seed)
    heads = AlignmentHeads(config)
    opt = torch.optim.AdamW(heads.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    gen = torch.Generator().manual_seed(train.seed)
    captions_of: dict[int, set[str]] = {}
    for c, iid in zip(texts.captions, texts.image_ids.tolist(), strict=False):
        captions_of.setdefault(iid, set()).add(c)
    id_to_row = {iid: r for r, iid in enumerate(images.image_ids.tolist())}
    best, best_state, bad, history = -1.0, None, 0, []
    t0 = time.perf_counter()
    bar = tqdm(range(train.epochs), desc="align", unit="epoch")
    for epoch in bar:
        order = torch.randperm(len(texts), generator=gen)
        loss = _epoch(heads, opt, images, texts, order, train, captions_of, id_to_row)
        val = evaluate_heads(heads, val_images, val_texts)
        score = (val["coarse"] + val["fine"]) / 2
        history.append({"epoch": epoch, "loss": loss, "val_R@10_coarse": val["coarse"], "val_R@10_fine": val["fine"]})
        bar.set_postfix(loss=f"{loss:.3f}", val_coarse=f"{val['coarse']:.3f}", val_fine=f"{val['fine']:.3f}")
        log.debug("align epoch %d: loss %.4f val R@10 coarse %.3f fine %.3f", epoch, loss, val["coarse"], val["fine"])
        if score > best + 1e-4:
            best, best_state, bad = score, copy.deepcopy(heads.state_dict()), 0
        else:
            bad += 1
            if bad >= train.patience:
                break
    heads.load_state_dict(best_state)
    heads.eval()
    return heads, {"history": history, "best_val_mean_R@10": best, "train_time_s": time.perf_counter() - t0}


@torch.no_grad()
def evaluate_by_granularity(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures,
                            k: int = 10) -> dict:
    """Text-to-image R@k of coarse-only and fine-only scoring, overall and per caption granularity."""
    from dsanchor.features.types import GRANULARITY_CODES
    from dsanchor.metrics.retrieval import recall_at_k

    heads.eval()
    t = heads.encode_text(texts.embeddings.float())
    terms = pair_terms(t, embed_images(heads, images), heads.pool_s)
    pos = texts.image_ids.view(-1, 1) == images.image_ids.view(1, -1)
    groups = {"all": torch.ones(len(texts), dtype=torch.bool)}
    groups.update({n: texts.granularity == c for n, c in GRANULARITY_CODES.items()})
    out = {}
    for name, sel in groups.items():
        if sel.any():
            out[name] = {"coarse": recall_at_k(terms.coarse[sel], pos[sel], ks=(k,))[f"R@{k}"],
                         "fine": recall_at_k(terms.fine[sel], pos[sel], ks=(k,))[f"R@{k}"], "n": int(sel.sum())}
    return out
