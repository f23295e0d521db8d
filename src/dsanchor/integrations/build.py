"""``dsanchor mllm build``: train a small LLaVA on a dataset's captions, with g as a working knob.

The model is transformers' ``LlavaForConditionalGeneration`` from a small config: a CLIP vision tower and a
Llama language model (widths and depths in :class:`BuildConfig`), trained from scratch on the dataset's train
captions with teacher forcing. The tokenizer is word-level over the training captions and the prompt
(lower-cased; words and punctuation split), with ``<image>`` as the image token. Model and processor are saved
with ``save_pretrained``, so ``LlavaForConditionalGeneration.from_pretrained(DIR)`` and
``AutoProcessor.from_pretrained(DIR)`` load them offline, and ``dsanchor mllm caption --model-type llava
--model-path DIR`` runs on it unchanged.

DSA is attached while training (:func:`dsanchor.integrations.attach_dsa`) with g drawn uniformly in [0, 1]
for every image of every batch, so the model learns to caption from any ``V' = g V_fine + (1 - g) V_coarse``
(V_coarse: the vision tower's layer ``coarse_layer``), as the caption decoder does. Early stopping keeps the
step with the lowest val loss (measured at g = 1 and g = 0).

The prompt is LLaVA-1.5's (``dsanchor.integrations.captioning.DEFAULT_PROMPTS["llava"]``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.errors import ConfigError

__all__ = ["BuildConfig", "build_tokenizer", "build_llava", "train_llava"]

log = logging.getLogger(__name__)
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")


@dataclass
class BuildConfig:
    """The small LLaVA and its training budget."""

    image_size: int = field(default=64, metadata={"help": "input side of the vision tower in pixels"})
    patch_size: int = field(default=8, metadata={"help": "vision patch size (image_size / patch_size squared tokens)"})
    vision_width: int = field(default=128, metadata={"help": "CLIP vision hidden size"})
    vision_layers: int = field(default=4, metadata={"help": "CLIP vision layers"})
    text_width: int = field(default=192, metadata={"help": "Llama hidden size"})
    text_layers: int = field(default=3, metadata={"help": "Llama layers"})
    heads: int = field(default=4, metadata={"help": "attention heads of both towers"})
    steps: int = field(default=1500, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "captions per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear warm-up, cosine decay)"})
    eval_every: int = field(default=250, metadata={"help": "steps between val losses (early stopping)"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden state that gives V_coarse"})
    max_words: int = field(default=24, metadata={"help": "longest caption in words; longer ones are cut"})
    seed: int = field(default=0, metadata={"help": "seed of init, batches and g"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ConfigError("vision_width and text_width must be multiples of heads")
        if min(self.steps, self.batch_size, self.eval_every) < 1:
            raise ConfigError("steps, batch_size and eval_every must be >= 1")


def words(text: str) -> list[str]:
    """The tokenizer's words: lower-cased, word characters and punctuation split (its pre-tokenizer)."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def build_tokenizer(texts: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` over ``texts`` (every word seen once or more)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = Counter(w for t in texts for w in words(t))
    vocab = {w: i for i, w in enumerate(SPECIALS)}
    for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def build_llava(tokenizer, cfg: BuildConfig):
    """(model, processor) from ``cfg``: a randomly initialised small LLaVA and its LlavaProcessor."""
    import transformers
    from transformers import LlavaProcessor

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = transformers.CLIPVisionConfig(hidden_size=cfg.vision_width, intermediate_size=4 * cfg.vision_width,
                                           num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.heads,
                                           image_size=cfg.image_size, patch_size=cfg.patch_size)
    text = transformers.LlamaConfig(hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
                                    num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads,
                                    num_key_value_heads=cfg.heads, vocab_size=len(tokenizer),
                                    max_position_embeddings=(cfg.image_size // cfg.patch_size) ** 2 + 128,
                                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id,
                                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(cfg.seed)
    model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = transformers.CLIPImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size}, do_center_crop=False,
        crop_size={"height": cfg.image_size, "width": cfg.image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1)
    return model, processor


class _UniformG(nn.Module):
    """A 'controller' that draws g ~ U[0, 1] per image (training), or returns a fixed g when set."""

    def __init__(self, seed: int):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.fixed: float | None = None

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return torch.full((state.shape[0],), self.fixed)
        return torch.rand(state.shape[0], generator=self.gen)


def _batches(tok, prompt: str, n_image_tokens: int, captions: list[str],
             max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of prompt (its ``<image>`` expanded to the image's tokens) + caption + </s> and labels
    (C, L), -100 outside the caption, right padded."""
    head = tok(prompt.replace("<image>", "<image>" * n_image_tokens), add_special_tokens=False).input_ids
    rows = []
    for c in captions:
        body = tok(" ".join(words(c)[:max_words]), add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append((head + body, [-100] * len(head) + body))
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (a, b) in enumerate(rows):
        ids[i, :len(a)] = torch.tensor(a)
        labels[i, :len(b)] = torch.tensor(b)
    return ids, labels


def train_llava(train: list[tuple[Any, str]], val: list[tuple[Any, str]], cfg: BuildConfig, out: str | Path,
                prompt: str, progress: bool = True) -> dict[str, Any]:
    """Train a small LLaVA on (PIL image, caption) pairs and save it with its processor to ``out``.

    Returns:
        ``{"train_time_s", "best_step", "best_val_loss", "history", "vocab_size", "n_train_captions"}``.
    """
    from dsanchor.integrations import attach_dsa

    tokenizer = build_tokenizer([c for _, c in train] + [prompt])
    model, processor = build_llava(tokenizer, cfg)
    n_img = (cfg.image_size // cfg.patch_size) ** 2

    def pixels(pairs):
        images = list({id(im): im for im, _ in pairs}.values())
        index = {id(im): i for i, im in enumerate(images)}
        pv = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pv, torch.tensor([index[id(im)] for im, _ in pairs])

    tr_pv, tr_img = pixels(train)
    va_pv, va_img = pixels(val)
    tr_ids, tr_lab = _batches(tokenizer, prompt, n_img, [c for _, c in train], cfg.max_words)
    va_ids, va_lab = _batches(tokenizer, prompt, n_img, [c for _, c in val], cfg.max_words)
    g_source = _UniformG(cfg.seed)
    handle = attach_dsa(model, g_source, cfg.coarse_layer, state_fn=lambda vf, vc: vf.mean(1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(cfg.seed)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        losses = []
        for g in (1.0, 0.0):
            g_source.fixed = g
            for a in range(0, len(va_ids), 64):
                sl = slice(a, a + 64)
                out_ = model(input_ids=va_ids[sl], labels=va_lab[sl], pixel_values=va_pv[va_img[sl]],
                             attention_mask=(va_ids[sl] != tokenizer.pad_token_id).long())
                losses.append(float(out_.loss))
        g_source.fixed = None
        model.train()
        return sum(losses) / len(losses)

    t0 = time.perf_counter()
    best, best_state, best_step, history = float("inf"), None, -1, []
    model.train()
    bar = tqdm(range(cfg.steps), desc="mllm build", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(len(tr_ids), (cfg.batch_size,), generator=gen)
        ids = tr_ids[idx]
        keep = int((ids != tokenizer.pad_token_id).sum(1).max())
        ids, lab = ids[:, :keep], tr_lab[idx][:, :keep]
        loss = model(input_ids=ids, labels=lab, pixel_values=tr_pv[tr_img[idx]],
                     attention_mask=(ids != tokenizer.pad_token_id).long()).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            v = val_loss()
            history.append({"step": step + 1, "train_loss": float(loss.detach()), "val_loss": v})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{v:.3f}")
            if v < best:
                best, best_state, best_step = v, copy.deepcopy(model.state_dict()), step + 1
    handle.detach()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"train_time_s": time.perf_counter() - t0, "best_step": best_step, "best_val_loss": best,
            "history": history, "vocab_size": len(tokenizer), "n_train_captions": len(train),
            "image_tokens": n_img, "prompt": prompt}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info
