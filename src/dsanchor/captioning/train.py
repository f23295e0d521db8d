"""Teacher-forced training of the caption decoder on the training captions.

Every training caption is one example: the decoder reads ``V' = anchor(V_fine, V_coarse, g)`` of its
image and predicts the caption's next tokens (cross-entropy, <pad> ignored). **g is drawn uniformly
from [0, 1] for every example**, so one decoder captions from any mix of fine and coarse tokens; that
is what makes g a meaningful knob at inference (g = 0 and g = 1 are both in-distribution, and the
controller's choice changes what the decoder sees rather than pushing it off its training data).

The alignment heads are frozen: the split is projected once (:func:`prepare_caption_split`) and only
the decoder (with its box-position term of V_coarse) is trained, for a fixed number of steps with
AdamW, warm-up and a cosine schedule, on batches of captions of similar length. Every ``eval_every``
steps the decoder is scored on val and the best check is kept; training stops after ``patience``
checks without improvement, or when ``max_time_s`` is spent (off by default: on a loaded machine a 100-s limit
cut Flickr8k decoders at 101 to 330 of 400 steps, and their CIDEr-D from 0.36 to 0.22, so results depended on
the load). The val score is minus the val loss (g
drawn per caption with a fixed seed; the default) or CIDEr-D of greedy captions (mean over ``val_g``).
The loss is the default because on a few hundred val images greedy CIDEr jumps between checks (the
decoder switches between caption kinds), which stops training early on noise.

**Granularity conditioning**: a caption starts with the start token of its own granularity (scene,
object or relation, :mod:`dsanchor.captioning.decoder`); the decoder's granularities are those of the
train captions unless ``DecoderConfig.granularities`` names them. A caption of unknown granularity, and
a random ``unconditional`` share of the others (condition dropout), starts with ``<bos>`` instead, so
the same decoder also captions without being told a granularity. The val loss is conditioned (no
dropout); the val CIDEr is the mean over every granularity's caption of each image.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from dsanchor.captioning.decode import DecodeConfig, generate_caption_sets
from dsanchor.captioning.decoder import CaptionDecoder, DecoderConfig
from dsanchor.captioning.evaluate import cider_of_sets
from dsanchor.captioning.granularity import GRANULARITIES
from dsanchor.captioning.tokenizer import PAD, Vocabulary
from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.errors import ConfigError
from dsanchor.progress import progress_bar

__all__ = ["CaptionTrainConfig", "CaptionBatch", "caption_examples", "caption_loss", "train_decoder"]

log = logging.getLogger(__name__)


@dataclass
class CaptionTrainConfig:
    steps: int = field(default=400, metadata={"help": "optimizer steps (400 x 128 captions: ~6 passes over 8000)"})
    batch_size: int = field(default=128, metadata={"help": "captions per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warm-up steps"})
    early_stop: str = field(default="loss", metadata={"help": "val score for early stopping: loss or cider"})
    val_g: tuple[float, ...] = field(default=(0.0, 0.5, 1.0), metadata={"help": "g values of the val CIDEr"})
    eval_every: int = field(default=50, metadata={"help": "steps between val checks"})
    val_images: int = field(default=200, metadata={"help": "at most this many val images score each check"})
    patience: int = field(default=3, metadata={"help": "val checks without improvement before stopping"})
    max_time_s: float = field(default=0.0, metadata={
        "help": "stop (keeping the best check) after this many seconds; 0: no limit (the default: a time limit makes "
                "the decoder depend on the machine's load)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    unconditional: float = field(default=0.1, metadata={"help": "share of training captions started with <bos> "
                                                                 "instead of their granularity's token"})


@dataclass
class CaptionBatch:
    """Tokenised captions, the row of the image each describes and the caption's granularity."""

    rows: torch.Tensor  # (M,) int64 image row in the split
    ids: torch.Tensor  # (M, L) <bos> w_1 .. w_n <eos> <pad>...; caption_loss swaps in the start token
    granularity: torch.Tensor  # (M,) int64 GRANULARITY_CODES code, -1 unknown (start with <bos>)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def index(self, idx: torch.Tensor) -> CaptionBatch:
        return CaptionBatch(self.rows[idx], self.ids[idx], self.granularity[idx])


def caption_examples(split: CaptionSplit, vocab: Vocabulary) -> CaptionBatch:
    """Every reference caption of the split as one example."""
    rows, seqs, codes = [], [], []
    for r, (refs, grans) in enumerate(zip(split.references, split.granularity, strict=True)):
        for cap, code in zip(refs, grans, strict=True):
            rows.append(r)
            seqs.append(vocab.encode(cap))
            codes.append(code)
    if not seqs:
        raise ConfigError("the split has no captions to train or score the decoder on")
    ids = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return CaptionBatch(torch.tensor(rows), ids, torch.tensor(codes, dtype=torch.long))


def caption_loss(decoder: CaptionDecoder, split: CaptionSplit, batch: CaptionBatch, g: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """Teacher-forced cross-entropy of ``batch`` at g (M,), differentiable in g and the decoder; each
    caption starts with its granularity's start token."""
    ids = batch.ids[:, : int((batch.ids != PAD).sum(1).max())].clone()  # (M, L) trimmed
    ids[:, 0] = decoder.start_ids(batch.granularity)
    pair = decoder.token_pair(split, batch.rows)
    logits = decoder(pair.mix(g), pair.mask, ids[:, :-1])  # (M, L-1, V)
    loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], ignore_index=PAD, reduction="none")  # (M, L-1)
    if reduction == "none":
        return loss.sum(1) / (ids[:, 1:] != PAD).sum(1).clamp_min(1)
    return loss.sum() / (ids[:, 1:] != PAD).sum().clamp_min(1)


@torch.no_grad()
def _val_score(decoder: CaptionDecoder, vocab: Vocabulary, val: CaptionSplit, val_batch: CaptionBatch,
               config: CaptionTrainConfig) -> dict:
    decoder.eval()
    gen = torch.Generator().manual_seed(config.seed)
    loss = float(caption_loss(decoder, val, val_batch, torch.rand(len(val_batch), generator=gen)))
    out = {"val_loss": loss}
    if config.early_stop == "cider":
        pair = decoder.token_pair(val)
        ciders = [float(cider_of_sets(generate_caption_sets(decoder, vocab, pair, g, DecodeConfig(beam=1)),
                                      val.references).mean()) for g in config.val_g]
        out["val_cider"] = float(np.mean(ciders))
        out["val_cider_by_g"] = dict(zip(map(str, config.val_g), ciders, strict=True))
    out["score"] = out.get("val_cider", -loss)
    return out


def _batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator, pool: int = 32) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of similar length: per pass over the data, shuffle, sort within pools of
    ``pool`` batches (less padding), and shuffle the batches."""
    while True:
        order = torch.randperm(len(lengths), generator=gen)
        batches = []
        for s in range(0, len(order), batch_size * pool):
            chunk = order[s:s + batch_size * pool]
            batches += list(chunk[lengths[chunk].argsort(stable=True)].split(batch_size))
        yield from (batches[i] for i in torch.randperm(len(batches), generator=gen).tolist())


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))


def _setup(train: CaptionSplit, vocab: Vocabulary, config: DecoderConfig, cfg: CaptionTrainConfig):
    if cfg.early_stop not in ("cider", "loss"):
        raise ConfigError(f"early_stop must be 'cider' or 'loss'; got {cfg.early_stop!r}")
    if cfg.steps < 1 or cfg.eval_every < 1:
        raise ConfigError("caption training needs steps >= 1 and eval_every >= 1")
    if not 0.0 <= cfg.unconditional <= 1.0:
        raise ConfigError(f"unconditional must lie in [0, 1]; got {cfg.unconditional}")
    torch.manual_seed(cfg.seed)
    present = {c for codes in train.granularity for c in codes}
    grans = tuple(config.granularities) or tuple(k for i, k in enumerate(GRANULARITIES) if i in present)
    config = dataclasses.replace(config, vocab_size=len(vocab), visual_dim=int(train.coarse.shape[1]),
                                 max_len=vocab.max_len + 2, granularities=grans)
    decoder = CaptionDecoder(config)
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, cfg.steps, cfg.warmup_steps))
    return decoder, opt, sched


def train_decoder(train: CaptionSplit, val: CaptionSplit, vocab: Vocabulary, config: DecoderConfig,
                  train_cfg: CaptionTrainConfig) -> tuple[CaptionDecoder, dict]:
    """Train a decoder on ``train``'s captions with early stopping on ``val`` (module docstring).

    ``config``'s vocab_size, visual_dim and max_len are set here from ``vocab`` and the split.

    Returns:
        The best decoder (by val score, in eval mode) and a history dict.
    """
    cfg = train_cfg
    decoder, opt, sched = _setup(train, vocab, config, cfg)
    data = caption_examples(train, vocab)
    val = val.subset(torch.arange(min(len(val), cfg.val_images)))
    val_batch = caption_examples(val, vocab)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _batches((data.ids != PAD).sum(1), cfg.batch_size, gen)
    best, best_state, bad, history = -math.inf, None, 0, []
    total, n, seen = 0.0, 0, 0  # training loss sum and captions since the last check; captions seen
    t0 = time.perf_counter()
    bar = progress_bar(range(1, cfg.steps + 1), desc="caption decoder", unit="step")
    for step in bar:
        decoder.train()
        batch = data.index(next(batches))
        drop = torch.rand(len(batch), generator=gen) < cfg.unconditional  # condition dropout: start with <bos>
        batch.granularity = batch.granularity.masked_fill(drop, -1)
        loss = caption_loss(decoder, train, batch, torch.rand(len(batch), generator=gen))  # g ~ U[0, 1] per caption
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        sched.step()
        total, n, seen = total + float(loss.detach()) * len(batch), n + len(batch), seen + len(batch)
        out_of_time = cfg.max_time_s > 0 and time.perf_counter() - t0 > cfg.max_time_s
        if step % cfg.eval_every and step < cfg.steps and not out_of_time:
            continue
        val_out = _val_score(decoder, vocab, val, val_batch, cfg)
        history.append({"step": step, "epoch": seen / len(data), "loss": total / max(n, 1), **val_out})
        total, n = 0.0, 0
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", val=f"{val_out['score']:.3f}")
        if val_out["score"] > best + 1e-4:
            best, best_state, bad = val_out["score"], copy.deepcopy(decoder.state_dict()), 0
        else:
            bad += 1
        if bad >= cfg.patience or out_of_time:
            break
    bar.close()
    decoder.load_state_dict(best_state)
    decoder.eval()
    return decoder, {"history": history, "best_val_score": best, "early_stop": cfg.early_stop, "steps": step,
                     "train_time_s": time.perf_counter() - t0, "n_train_captions": len(data)}
