"""Contrastive training of the alignment heads (symmetric multi-positive InfoNCE on coarse and fine scores).

A batch is B captions and the U images they were written for. A caption's positives among those images are
every image it is true of where the data has scene graphs (:mod:`dsanchor.align.positives`, rule ``exact``),
else its own image and any image with the identical caption string; an image's positives are the captions
that have it as a positive. The loss on each of the coarse and the fine score is
:func:`~dsanchor.align.loss.symmetric_multi_positive_infonce`.

Early stopping and the choice of the kept epoch use the val split's exact protocol where it exists (mean
reciprocal rank of the first true image, averaged over coarse-only and fine-only scoring), else the paired
R@10 (the two averaged as well).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import torch

from dsanchor.align.heads import AlignConfig, AlignmentHeads, JointFeatures
from dsanchor.align.loss import POSITIVE_LOSSES, symmetric_multi_positive_infonce
from dsanchor.align.positives import POSITIVE_RULES, Relevance
from dsanchor.errors import ConfigError
from dsanchor.features.types import GRANULARITY_CODES, ImageFeatures, TextFeatures
from dsanchor.metrics.retrieval import ranks_of_first_positive
from dsanchor.progress import progress_bar
from dsanchor.retrieval import pair_terms

__all__ = ["AlignTrainConfig", "train_heads", "embed_images", "evaluate_heads", "evaluate_by_granularity"]

log = logging.getLogger(__name__)
VAL_PROTOCOLS = ("exact", "paired")


@dataclass
class AlignTrainConfig:
    epochs: int = field(default=40, metadata={"help": "maximum epochs"})
    batch_size: int = field(default=128, metadata={"help": "captions per batch"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=4, metadata={"help": "epochs without val improvement before stopping"})
    fine_weight: float = field(default=1.0, metadata={"help": "weight of the fine-score loss vs the coarse one"})
    positives: str = field(default="exact", metadata={
        "help": "in-batch positives: exact (every batch image the caption is true of, from facts and scene "
                "graphs; paired where the data has none) or paired (own image + identical caption strings)"})
    positive_loss: str = field(default="mean", metadata={
        "help": "multi-positive InfoNCE: mean (-mean log-softmax over positives, SupCon L_out / UniCL) or lse "
                "(-log of the positives' summed softmax, SupCon L_in / MIL-NCE)"})
    hard_negatives: int = field(default=0, metadata={
        "help": "extra train images per batch: those scoring highest (coarse + fine, current heads, no gradient) "
                "against some batch caption they are not true of; the mining scores the batch against every "
                "train image each step"})
    val_protocol: str = field(default="exact", metadata={
        "help": "early stopping on val: exact (MRR of the first true image, where the data has scene graphs; "
                "paired R@10 otherwise) or paired (R@10 of the own image)"})
    seed: int = field(default=0, metadata={"help": "random seed (training is deterministic for a seed on CPU)"})

    def __post_init__(self) -> None:
        for name, valid in (("positives", POSITIVE_RULES), ("positive_loss", POSITIVE_LOSSES),
                            ("val_protocol", VAL_PROTOCOLS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"align_train {name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        if self.hard_negatives < 0:
            raise ConfigError(f"align_train hard_negatives must be >= 0, got {self.hard_negatives}")


def embed_images(heads: AlignmentHeads, images: ImageFeatures, idx: torch.Tensor | None = None) -> JointFeatures:
    """Project (a subset of) the store's images into the joint space."""
    sel = slice(None) if idx is None else idx
    return heads.encode_images(images.coarse[sel].float(), images.regions[sel].float(), images.boxes[sel].float(),
                               images.mask[sel])


def evaluate_heads(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures, k: int = 10) -> dict:
    """Text-to-image R@k (and exact MRR where defined) of coarse-only and fine-only scoring, all captions."""
    return evaluate_by_granularity(heads, images, texts, k)["all"]


def _batch_rows(texts: TextFeatures, captions: torch.Tensor, id_to_row: dict[int, int]) -> torch.Tensor:
    """(U,) image rows of the distinct images the batch's captions were written for."""
    return torch.tensor([id_to_row[i] for i in torch.unique(texts.image_ids[captions]).tolist()])


@torch.no_grad()
def _hard_negatives(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures, captions: torch.Tensor,
                    rows: torch.Tensor, relevance: Relevance, k: int) -> torch.Tensor:
    """(<= k,) rows of the train images outside ``rows`` that score highest against a batch caption (coarse +
    fine score, eval mode) that is not true of them."""
    heads.eval()
    every = torch.arange(len(images))
    text = heads.encode_text(texts.embeddings[captions].float())  # (B, D)
    terms = pair_terms(text, embed_images(heads, images), heads.pool_s)  # (B, N) each
    heads.train()
    taken = relevance.block(captions, every)  # (B, N) positives are no negatives
    taken[:, rows] = True  # nor are the images already in the batch
    hardness = (terms.coarse + terms.fine).masked_fill(taken, float("-inf")).amax(dim=0)  # (N,)
    top = hardness.topk(min(k, len(images))).indices
    return top[hardness[top] > float("-inf")]


def _epoch(heads: AlignmentHeads, opt: torch.optim.Optimizer, images: ImageFeatures, texts: TextFeatures,
           order: torch.Tensor, cfg: AlignTrainConfig, relevance: Relevance, id_to_row: dict[int, int]) -> float:
    heads.train()
    total, n = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        b = order[start:start + cfg.batch_size]  # (B,) caption indices
        rows = _batch_rows(texts, b, id_to_row)  # (U,)
        if cfg.hard_negatives:
            rows = torch.cat([rows, _hard_negatives(heads, images, texts, b, rows, relevance, cfg.hard_negatives)])
        pos = relevance.block(b, rows)  # (B, U + H)
        t = heads.encode_text(texts.embeddings[b].float())  # (B, D)
        terms = pair_terms(t, embed_images(heads, images, rows), heads.pool_s)
        scale = heads.logit_scale.exp().clamp(max=100.0)
        loss = symmetric_multi_positive_infonce(scale * terms.coarse, pos, cfg.positive_loss) + \
            cfg.fine_weight * symmetric_multi_positive_infonce(scale * terms.fine, pos, cfg.positive_loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(b)
        n += len(b)
    return total / max(n, 1)


def _val_score(val: dict, protocol: str) -> float:
    """The early-stopping signal from :func:`evaluate_heads` (see the module docstring)."""
    if protocol == "exact" and "exact_coarse_MRR" in val:
        return (val["exact_coarse_MRR"] + val["exact_fine_MRR"]) / 2
    return (val["coarse"] + val["fine"]) / 2


def train_heads(images: ImageFeatures, texts: TextFeatures, val_images: ImageFeatures, val_texts: TextFeatures,
                config: AlignConfig, train: AlignTrainConfig,
                init: AlignmentHeads | None = None) -> tuple[AlignmentHeads, dict]:
    """Train heads on the train split, keeping the epoch with the best val score (module docstring).

    With ``init`` (heads trained elsewhere, e.g. on synth) this fine-tunes a copy of them; their config
    must match ``config``'s dimensions, and the starting point counts as epoch -1 of early stopping, so
    fine-tuning that only hurts on val returns the starting heads.

    Returns:
        The best heads (by val) and an info dict: per-epoch ``history`` (loss, val R@10 and exact MRR of
        coarse and fine scoring), ``best_epoch``, ``best_val_score`` and what it measures (``val_score``),
        ``positives`` (the rule in force: ``exact`` or ``paired``), ``best_val_mean_R@10`` and
        ``train_time_s``.
    """
    torch.manual_seed(train.seed)
    heads = _initial_heads(config, init)
    opt = torch.optim.AdamW(heads.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    gen = torch.Generator().manual_seed(train.seed)
    t0 = time.perf_counter()
    relevance = Relevance(texts, images, train.positives)
    val_rel = Relevance(val_texts, val_images, "exact")
    val_exact = val_rel.matrix() if val_rel.exact else None  # (T_val, N_val), decided once
    id_to_row = {iid: r for r, iid in enumerate(images.image_ids.tolist())}
    best, best_state, best_epoch, bad, history, start = -1.0, None, -1, 0, [], None
    if init is not None:  # the starting heads are a candidate too
        val = evaluate_by_granularity(heads, val_images, val_texts, exact=val_exact)["all"]
        best, best_state = _val_score(val, train.val_protocol), copy.deepcopy(heads.state_dict())
        start = _history_row(-1, float("nan"), best, val)
    bar = progress_bar(range(train.epochs), desc="align heads", unit="epoch")
    for epoch in bar:
        order = torch.randperm(len(texts), generator=gen)
        loss = _epoch(heads, opt, images, texts, order, train, relevance, id_to_row)
        val = evaluate_by_granularity(heads, val_images, val_texts, exact=val_exact)["all"]
        score = _val_score(val, train.val_protocol)
        history.append(_history_row(epoch, loss, score, val))
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.3f}")
        log.debug("align epoch %d: loss %.4f val score %.4f", epoch, loss, score)
        if score > best + 1e-4:
            best, best_state, best_epoch, bad = score, copy.deepcopy(heads.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= train.patience:
                break
    bar.close()
    heads.load_state_dict(best_state)
    heads.eval()
    kept = start if best_epoch < 0 else history[best_epoch]
    measured = "exact MRR" if "val_exact_coarse_MRR" in kept and train.val_protocol == "exact" else "paired R@10"
    return heads, {"history": history, "best_epoch": best_epoch, "best_val_score": best,
                   "val_score": f"mean of coarse and fine val {measured}", "positives": relevance.rule,
                   "best_val_mean_R@10": (kept["val_coarse"] + kept["val_fine"]) / 2,
                   "train_time_s": time.perf_counter() - t0}


def _initial_heads(config: AlignConfig, init: AlignmentHeads | None) -> AlignmentHeads:
    """New heads of ``config``, or a trainable copy of ``init`` when its feature sizes match ``config``'s."""
    if init is None:
        return AlignmentHeads(config)
    dims = ("coarse_dim", "region_dim", "text_dim")
    if any(getattr(init.config, d) != getattr(config, d) for d in dims):
        raise ConfigError(f"the initial heads expect features {[getattr(init.config, d) for d in dims]} "
                          f"(coarse, region, text) but the store has {[getattr(config, d) for d in dims]}")
    return copy.deepcopy(init).train()


def _history_row(epoch: int, loss: float, score: float, val: dict) -> dict:
    """One epoch of the training history: loss, val score and every val number of :func:`evaluate_heads`."""
    return {"epoch": epoch, "loss": loss, "val_score": score, **{f"val_{k}": v for k, v in val.items() if k != "n"}}


@torch.no_grad()
def evaluate_by_granularity(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures, k: int = 10,
                            exact: torch.Tensor | None = None) -> dict:
    """Text-to-image retrieval of coarse-only and fine-only scoring, overall and per caption granularity.

    Args:
        exact: the (T, N) exact relevance, when the caller has it; else it is computed where the data has
            scene graphs.

    Returns:
        Per group (``all``, ``scene``, ``object``, ``relation``): ``coarse`` and ``fine`` R@k of the paired
        protocol, ``n``, and where exact relevance exists ``exact_coarse`` / ``exact_fine`` (R@k) and
        ``exact_coarse_R@1`` / ``exact_fine_R@1`` / ``exact_coarse_MRR`` / ``exact_fine_MRR``.
    """
    heads.eval()
    t = heads.encode_text(texts.embeddings.float())
    terms = pair_terms(t, embed_images(heads, images), heads.pool_s)
    protocols = {"": texts.image_ids.view(-1, 1) == images.image_ids.view(1, -1)}  # (T, N) paired
    if exact is None:
        rel = Relevance(texts, images, "exact")
        exact = rel.matrix() if rel.exact else None
    if exact is not None:
        protocols["exact_"] = exact
    ranks = {(p, s): ranks_of_first_positive(getattr(terms, s), pos) for p, pos in protocols.items()
             for s in ("coarse", "fine")}  # (T,) each
    groups = {"all": torch.ones(len(texts), dtype=torch.bool)}
    groups.update({n: texts.granularity == c for n, c in GRANULARITY_CODES.items()})
    out = {}
    for name, sel in groups.items():
        if not sel.any():
            continue
        row: dict = {}
        for (p, s), r in ranks.items():
            row[f"{p}{s}"] = float((r[sel] <= k).double().mean())
            if p:
                row[f"{p}{s}_R@1"] = float((r[sel] == 1).double().mean())
                row[f"{p}{s}_MRR"] = float((1.0 / r[sel].double()).mean())
        out[name] = {**row, "n": int(sel.sum())}
    return out
