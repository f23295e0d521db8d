"""``dsanchor mllm build``: train a small LLaVA on a dataset's captions, with g as a working knob.

The model is transformers' ``LlavaForConditionalGeneration`` from a small config: a CLIP vision tower and a
Llama language model (widths and depths in :class:`BuildConfig`). The tokenizer is word-level over the training
captions and the prompts (lower-cased; words and punctuation split), with ``<image>`` as the image token. Model
and processor are saved with ``save_pretrained``, so ``LlavaForConditionalGeneration.from_pretrained(DIR)`` and
``AutoProcessor.from_pretrained(DIR)`` load them offline, and ``dsanchor mllm caption --model-type llava
--model-path DIR`` runs on it unchanged.

Why stages: trained end to end from scratch on a few thousand captions, the small model learns the captions'
language prior long before a random vision tower gives it anything, and ends up ignoring the image (its val
loss is the same with shuffled images). So the build runs, on the train split only:

1. **Vision pre-training** (``pretrain_steps``; like CLIP before LLaVA): the CLIP vision tower is trained
   contrastively (InfoNCE in both directions, learnable temperature) against frozen all-MiniLM-L6-v2
   embeddings of the training captions (the project's offline text encoder), through a linear projection of
   the pooled vision output (the mean of the patch tokens of the layer the projector reads). The same loss on
   the coarse layer's pooled tokens (weight ``pretrain_coarse_weight``) grounds V_coarse too, which the model
   sees alone at g = 0. Contrastive learning alone barely beats chance with ~600 images in a few hundred steps
   (synth: val caption-to-image retrieval 0.007-0.014 against a chance of 0.005), so an auxiliary multi-label loss
   (``pretrain_object_weight``) also asks the pooled features which annotated object names and name words
   ("red cube", "red", "cube") are in the image (in a side experiment a ViT trained on colour presence alone
   reached 0.73 on val, majority 0.56). Both use only the train split; projections, heads and temperature are
   dropped afterwards.
   Images are shifted by a few pixels (``pretrain_shift``) but never flipped (captions say left and right).
2. **Alignment** (``align_steps``, as LLaVA's stage 1): the tower is frozen while projector and language model
   learn to read its features.
3. **Instruction tuning**: everything, the tower at ``vision_lr_scale`` times the learning rate.

Stages 2 and 3 train on the captions with teacher forcing (prompt ``DEFAULT_PROMPTS["llava"]``) mixed with
POPE-style yes/no questions (``questions_per_image`` per training image, half about objects in it, "yes",
half about objects of the dataset vocabulary that are not, "no"; prompt
:func:`~dsanchor.integrations.captioning.question_prompt`), as LLaVA-1.5 mixes VQA data into its tuning.
``loss_per_text`` averages each text's loss over its own tokens first, so a one-word answer weighs as much as a
caption; it is off by default because on synth it did not help (the model still answered "no" to every val
question, POPE 0.500) and cost val caption loss (0.847 against 0.837).

Measured on the synth demo data (600 train images, 2 CPU threads, defaults, ~8 min): val caption loss 0.837
with the true images against 0.891 with shuffled ones (the build before these stages: 0.595 against 0.598),
but the yes/no questions are not learnt (val POPE 0.500: the language model does
not bind the object named in the question to the image). Training the tower at the full learning rate after
alignment (``vision_lr_scale`` 1) undid the pre-training (0.863 against 0.868).

DSA is attached during stages 2 and 3 (:func:`dsanchor.integrations.attach_dsa`) with g drawn uniformly in
[0, 1] for every image of every batch, so the model learns to answer from any
``V' = g V_fine + (1 - g) V_coarse`` (V_coarse: the vision tower's layer ``coarse_layer``). Early stopping keeps
the step with the lowest val caption loss (mean of g = 1 and g = 0). ``build_info.json`` records the time of
each stage, the val caption loss with the true images and with the val images shuffled (a model that ignores
the image scores the same on both) and, when questions are trained, the val POPE accuracy.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.errors import ConfigError

__all__ = ["BuildConfig", "build_tokenizer", "build_llava", "derangement", "pope_questions", "pretrain_vision",
           "random_shift", "train_llava"]

log = logging.getLogger(__name__)
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")


@dataclass
class BuildConfig:
    """The small LLaVA, its training stages and their budgets."""

    image_size: int = field(default=64, metadata={"help": "input side of the vision tower in pixels"})
    patch_size: int = field(default=16, metadata={"help": "vision patch size (image_size / patch_size squared tokens)"})
    vision_width: int = field(default=96, metadata={"help": "CLIP vision hidden size"})
    vision_layers: int = field(default=4, metadata={"help": "CLIP vision layers"})
    text_width: int = field(default=128, metadata={"help": "Llama hidden size"})
    text_layers: int = field(default=3, metadata={"help": "Llama layers"})
    heads: int = field(default=4, metadata={"help": "attention heads of both towers"})
    pretrain_steps: int = field(default=400, metadata={
        "help": "contrastive vision pre-training steps against MiniLM caption embeddings (0: none)"})
    pretrain_batch_size: int = field(default=128, metadata={"help": "images per pre-training step"})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the pre-training"})
    pretrain_coarse_weight: float = field(default=0.5, metadata={
        "help": "weight of the same contrastive loss on the coarse layer's tokens (grounds V_coarse; 0: off)"})
    pretrain_object_weight: float = field(default=3.0, metadata={
        "help": "weight of an auxiliary pre-training loss: which annotated object names and name words (e.g. "
                "'red cube', 'red', 'cube') are in the image (multi-label, train annotations; 0: off)"})
    pretrain_shift: int = field(default=4, metadata={
        "help": "pre-training augmentation: random shift of each image by up to this many pixels (edges "
                "replicated; no flips, the captions say left and right; 0: none)"})
    steps: int = field(default=1200, metadata={"help": "LLaVA optimizer steps (alignment included)"})
    align_steps: int = field(default=200, metadata={
        "help": "first LLaVA steps with the vision tower frozen (LLaVA's stage 1; 0: none)"})
    vision_lr_scale: float = field(default=0.1, metadata={
        "help": "vision tower learning rate after alignment, as a multiple of lr (0: keep it frozen)"})
    questions_per_image: int = field(default=6, metadata={
        "help": "POPE-style yes/no questions per training image, half yes half no (even; 0: captions only)"})
    loss_per_text: bool = field(default=False, metadata={
        "help": "average the training loss over each text's tokens, then over texts, so a one-word yes/no "
                "answer weighs as much as a caption (off: over all tokens, as transformers does)"})
    batch_size: int = field(default=32, metadata={"help": "training texts (captions and questions) per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (linear warm-up, cosine decay)"})
    eval_every: int = field(default=250, metadata={"help": "steps between val losses (early stopping)"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden state that gives V_coarse"})
    max_words: int = field(default=24, metadata={"help": "longest caption in words; longer ones are cut"})
    uniform_g: bool = field(default=True, metadata={
        "help": "train with g ~ U[0, 1] per image (--no-uniform-g: g = 1 throughout, like a pretrained MLLM that "
                "has only seen V_fine at its seam; the model `dsanchor mllm adapt` is for)"})
    seed: int = field(default=0, metadata={"help": "seed of init, batches, questions and g"})

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision_width % self.heads or self.text_width % self.heads:
            raise ConfigError("vision_width and text_width must be multiples of heads")
        if min(self.steps, self.batch_size, self.eval_every, self.pretrain_batch_size) < 1:
            raise ConfigError("steps, batch_size, eval_every and pretrain_batch_size must be >= 1")
        if min(self.pretrain_steps, self.align_steps, self.questions_per_image) < 0:
            raise ConfigError("pretrain_steps, align_steps and questions_per_image must be >= 0")
        if self.align_steps >= self.steps:
            raise ConfigError(f"align_steps {self.align_steps} must be smaller than steps {self.steps}")
        if self.questions_per_image % 2:
            raise ConfigError(f"questions_per_image must be even (half yes, half no); got {self.questions_per_image}")
        if min(self.vision_lr_scale, self.pretrain_coarse_weight, self.pretrain_object_weight) < 0:
            raise ConfigError("vision_lr_scale, pretrain_coarse_weight and pretrain_object_weight must be >= 0")
        if not 0 <= self.coarse_layer <= self.vision_layers:
            raise ConfigError(f"coarse_layer must lie in [0, {self.vision_layers}] (vision_layers); "
                              f"got {self.coarse_layer}")


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


class UniformG(nn.Module):
    """A 'controller' that draws g ~ U[0, 1] per image (training), or returns a fixed g when set."""

    def __init__(self, seed: int):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.fixed: float | None = None  # set for measurements at one g
        self.train_g: float | None = None  # set: this g while training instead of g ~ U[0, 1]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return torch.full((state.shape[0],), self.fixed, device=state.device)
        if self.train_g is not None:
            return torch.full((state.shape[0],), self.train_g, device=state.device)
        return torch.rand(state.shape[0], generator=self.gen).to(state.device)


def pope_questions(objects: Sequence[tuple[Any, Sequence[str]]], per_image: int,
                   seed: int = 0) -> list[tuple[Any, str, str]]:
    """POPE-style yes/no questions: ``(image, prompt, answer)``, ``per_image`` per image, half "yes", half "no".

    The "yes" questions name objects in the image (each distinct name once before any repeats), the "no"
    questions objects of the vocabulary (every name in ``objects``) that are absent from it, drawn at random
    ("random" POPE sampling). Images whose objects cover the whole vocabulary, or with no objects, get none.

    Args:
        objects: ``(image, object names in it)`` per image, e.g. the samples' ``ObjectAnnotation.name``.
        per_image: questions per image (even).
    """
    from dsanchor.integrations.captioning import question_prompt

    rng = random.Random(seed)
    vocabulary = sorted({n for _, names in objects for n in names})
    out: list[tuple[Any, str, str]] = []
    half = per_image // 2
    for image, names in objects:
        present = sorted(set(names))
        absent = [n for n in vocabulary if n not in set(names)]
        if not present or not absent or not half:
            continue
        yes = rng.sample(present, len(present))
        yes = (yes * (half // len(yes) + 1))[:half]
        no = rng.sample(absent, min(half, len(absent)))
        no = (no * (half // len(no) + 1))[:half]
        out += [(image, question_prompt("llava", n), "yes") for n in yes]
        out += [(image, question_prompt("llava", n), "no") for n in no]
    return out


def _batches(tok, rows: Sequence[tuple[str, str]], n_image_tokens: int,
             max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of prompt (its ``<image>`` expanded to the image's tokens) + answer + </s> and labels
    (C, L), -100 outside the answer, right padded. ``rows``: (prompt, answer) per text."""
    heads: dict[str, list[int]] = {}
    seqs = []
    for prompt, answer in rows:
        if prompt not in heads:
            heads[prompt] = tok(prompt.replace("<image>", "<image>" * n_image_tokens),
                                add_special_tokens=False).input_ids
        head = heads[prompt]
        body = tok(" ".join(words(answer)[:max_words]), add_special_tokens=False).input_ids + [tok.eos_token_id]
        seqs.append((head + body, [-100] * len(head) + body))
    width = max(len(r[0]) for r in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    for i, (a, b) in enumerate(seqs):
        ids[i, :len(a)] = torch.tensor(a)
        labels[i, :len(b)] = torch.tensor(b)
    return ids, labels


def derangement(n: int, seed: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` that moves every index (for n > 1): image i -> another image."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    other = torch.empty(n, dtype=torch.long)
    other[perm] = perm.roll(1)  # perm[k] -> perm[k - 1]
    return other


def _per_text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each row's labelled tokens, then over rows: (B, L, V), (B, L) -> ()."""
    target = labels[:, 1:]  # (B, L - 1)
    token = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100,
                                        reduction="none").view_as(target)  # (B, L - 1)
    mask = (target != -100).float()
    return ((token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def _pooled(hidden: torch.Tensor) -> torch.Tensor:
    """Mean of the patch tokens (CLS dropped, as the projector sees them): (B, 1 + N, D) -> (B, D)."""
    return hidden[:, 1:].mean(1)


def _image_index(images: Sequence[Any]) -> tuple[list[Any], torch.Tensor]:
    """The distinct images (by identity, first-seen order) and the index of each item's image among them."""
    unique = list({id(im): im for im in images}.values())
    where = {id(im): i for i, im in enumerate(unique)}
    return unique, torch.tensor([where[id(im)] for im in images], dtype=torch.long)


def random_shift(pixels: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image of ``(B, 3, S, S)`` moved by up to ``shift`` pixels each way, edges replicated (same shape)."""
    if shift <= 0:
        return pixels
    size = pixels.shape[-1]
    padded = nn.functional.pad(pixels, (shift,) * 4, mode="replicate")  # (B, 3, S + 2 shift, S + 2 shift)
    dx, dy = torch.randint(2 * shift + 1, (2, len(pixels)), generator=gen).tolist()
    return torch.stack([padded[i, :, y:y + size, x:x + size] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])


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
    heads = nn.ModuleList([nn.Linear(width, dim), nn.Linear(width, dim)])
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    use_objects = objects is not None and cfg.pretrain_object_weight > 0
    object_heads = nn.ModuleList([nn.Linear(width, objects.shape[1]) for _ in range(2)]) if use_objects else None
    params = [*tower.parameters(), *heads.parameters(), log_scale,
              *(object_heads.parameters() if use_objects else [])]
    opt = torch.optim.AdamW(params, lr=cfg.pretrain_lr, weight_decay=0.05)
    warm = max(1, cfg.pretrain_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.pretrain_steps) / cfg.pretrain_steps)))
    by_image: list[list[int]] = [[] for _ in range(len(pixels))]
    for c, i in enumerate(text_image.tolist()):
        by_image[i].append(c)
    with_text = torch.tensor([i for i, cs in enumerate(by_image) if cs])
    batch = min(cfg.pretrain_batch_size, len(with_text))
    layers = [(-1, 1.0), (cfg.coarse_layer, cfg.pretrain_coarse_weight)]
    tower.train()
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(cfg.pretrain_steps), desc="mllm build: vision pre-training", unit="step", disable=not progress)
    for _ in bar:
        imgs = with_text[torch.randperm(len(with_text), generator=gen)[:batch]]
        caps = torch.tensor([by_image[i][int(torch.randint(len(by_image[i]), (1,), generator=gen))]
                             for i in imgs.tolist()])
        t = texts[caps]  # (B, E)
        hidden = tower(pixel_values=random_shift(pixels[imgs], cfg.pretrain_shift, gen),
                       output_hidden_states=True).hidden_states
        target = torch.arange(len(imgs))
        loss = torch.zeros(())
        for k, ((layer, weight), head) in enumerate(zip(layers, heads, strict=True)):
            if weight == 0:
                continue
            pooled = _pooled(hidden[layer])  # (B, D)
            v = nn.functional.normalize(head(pooled), dim=-1)  # (B, E)
            logits = log_scale.exp().clamp(max=100) * v @ t.T  # (B, B)
            loss = loss + weight * 0.5 * (nn.functional.cross_entropy(logits, target)
                                          + nn.functional.cross_entropy(logits.T, target))
            if use_objects:
                loss = loss + weight * cfg.pretrain_object_weight * nn.functional.binary_cross_entropy_with_logits(
                    object_heads[k](pooled), objects[imgs])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", T=f"{1 / float(log_scale.detach().exp()):.3f}")
    info: dict[str, Any] = {"pretrain_loss": float(loss.detach())}
    if val is not None and len(val[0]) > 1:
        tower.eval()
        with torch.no_grad():
            v = torch.cat([nn.functional.normalize(heads[0](_pooled(tower(pixel_values=val[0][a:a + 128])
                                                                     .last_hidden_state)), dim=-1)
                           for a in range(0, len(val[0]), 128)])  # (I_val, E)
            nearest = (val[1] @ v.T).argmax(1)  # (C_val,)
        info["val_retrieval_acc"] = float((nearest == val[2]).float().mean())
        info["val_retrieval_chance"] = 1 / len(val[0])
        if use_objects and val_objects is not None:
            with torch.no_grad():
                said = torch.cat([object_heads[0](_pooled(tower(pixel_values=val[0][a:a + 128]).last_hidden_state))
                                  for a in range(0, len(val[0]), 128)]) > 0  # (I_val, K)
            info["val_object_acc"] = float((said == val_objects.bool()).float().mean())
    tower.train()
    return info


def _caption_texts(pairs: Sequence[tuple[Any, str]]) -> list[str]:
    return [c for _, c in pairs]


def _object_labels(object_names: Sequence[str]) -> set[str]:
    """An image's object labels for the auxiliary loss: its object names and their words ("red cube", "red")."""
    return set(object_names) | {w for n in object_names for w in n.split()}


def _multi_hot(unique: Sequence[Any], objects: Sequence[tuple[Any, Sequence[str]]],
               names: Sequence[str]) -> torch.Tensor | None:
    """(I, K) which of the label ``names`` each image of ``unique`` holds (None without labels)."""
    if not names:
        return None
    held = {id(im): _object_labels(n) for im, n in objects}
    return torch.tensor([[float(n in held.get(id(im), ())) for n in names] for im in unique])


def _embed(text_encoder: Any, texts: list[str]) -> torch.Tensor:
    """(C, E) unit-norm embeddings of ``texts`` (each distinct text encoded once)."""
    unique = sorted(set(texts))
    where = {t: i for i, t in enumerate(unique)}
    with torch.inference_mode():
        emb = text_encoder.encode(unique, batch_size=128, normalize_embeddings=True, convert_to_tensor=True,
                                  show_progress_bar=False)
    return emb.float().cpu().clone()[torch.tensor([where[t] for t in texts])]


@torch.no_grad()
def _caption_loss(model: nn.Module, g_source: UniformG, g: float, ids: torch.Tensor, labels: torch.Tensor,
                  pixels: torch.Tensor, image_of: torch.Tensor, pad_id: int) -> float:
    """Mean loss per answer token at a fixed g, text i seeing image ``image_of[i]`` of ``pixels``."""
    g_source.fixed = g
    total, count = 0.0, 0
    for a in range(0, len(ids), 64):
        sl = slice(a, a + 64)
        n = int((labels[sl][:, 1:] != -100).sum())
        out = model(input_ids=ids[sl], labels=labels[sl], pixel_values=pixels[image_of[sl]],
                    attention_mask=(ids[sl] != pad_id).long())
        total, count = total + float(out.loss) * n, count + n
    g_source.fixed = None
    return total / max(count, 1)


@torch.no_grad()
def _pope_accuracy(model: nn.Module, tokenizer, g_source: UniformG, g: float, ids: torch.Tensor,
                   labels: torch.Tensor, pixels: torch.Tensor, image_of: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of yes/no questions answered right: the greedy first answer token, read with ``read_yes_no``
    (neither yes nor no counts as no, as in POPE)."""
    from dsanchor.integrations.captioning import read_yes_no

    first = (labels != -100).float().argmax(1)  # (Q,) position of the answer's first token
    g_source.fixed = g
    said: list[bool | None] = []
    for a in range(0, len(ids), 64):
        sl = slice(a, a + 64)
        logits = model(input_ids=ids[sl], pixel_values=pixels[image_of[sl]],
                       attention_mask=(ids[sl] != tokenizer.pad_token_id).long()).logits  # (b, L, V)
        top = logits[torch.arange(len(logits)), first[sl] - 1].argmax(-1)  # (b,)
        said += [read_yes_no(w) for w in tokenizer.convert_ids_to_tokens(top.tolist())]
    g_source.fixed = None
    return float((torch.tensor([s is True for s in said]) == truth).float().mean())


def _optimizer(model: nn.Module, cfg: BuildConfig) -> tuple[torch.optim.Optimizer, Any, list[nn.Parameter]]:
    """AdamW with two groups (everything else, the vision tower) and their schedules: linear warm-up and cosine
    decay; the tower's learning rate is 0 for ``align_steps``, then ``vision_lr_scale`` times, warmed up again."""
    tower = list(model.model.vision_tower.parameters())
    tower_ids = {id(p) for p in tower}
    rest = [p for p in model.parameters() if id(p) not in tower_ids]
    opt = torch.optim.AdamW([{"params": rest}, {"params": tower}], lr=cfg.lr, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)

    def cosine(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))

    def tower_lr(s: int) -> float:
        if s < cfg.align_steps:
            return 0.0
        return cfg.vision_lr_scale * min(1.0, (s - cfg.align_steps + 1) / warm) * cosine(s)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, [cosine, tower_lr]), tower


def train_llava(train: list[tuple[Any, str]], val: list[tuple[Any, str]], cfg: BuildConfig, out: str | Path,
                prompt: str, progress: bool = True, train_objects: Sequence[tuple[Any, Sequence[str]]] = (),
                val_objects: Sequence[tuple[Any, Sequence[str]]] = (),
                text_encoder: Any = None) -> dict[str, Any]:
    """Pre-train the vision tower, then train a small LLaVA on (PIL image, caption) pairs (and yes/no questions
    about ``train_objects``); save it with its processor and ``build_info.json`` to ``out``.

    Args:
        train, val: ``(image, caption)`` pairs; an image is the same object in all its pairs.
        prompt: the captioning prompt (with ``<image>``).
        train_objects, val_objects: ``(image, object names)`` per image, for the POPE questions (none: no
            questions, whatever ``cfg.questions_per_image``).
        text_encoder: something with ``encode(texts, ...)`` like a SentenceTransformer, for the pre-training;
            None loads all-MiniLM-L6-v2 offline (:func:`dsanchor.encoders.effnet_minilm.load_minilm`).

    Returns:
        The contents of ``build_info.json``: ``stage_times_s`` (pretrain, align + tune, final val), ``best_step``,
        ``best_val_loss``, ``history``, ``val_loss_true_images`` / ``val_loss_shuffled_images`` (g = 1 and 0),
        ``val_pope_accuracy`` (g = 1 and 0; questions only), ``pretrain`` (its loss and val retrieval accuracy),
        ``vocab_size``, ``n_train_captions``, ``n_train_questions``, ``image_tokens``, ``prompt``.
    """
    from dsanchor.integrations import attach_dsa
    from dsanchor.integrations.captioning import QUESTION_PROMPTS

    if not train or not val:
        raise ConfigError("mllm build needs train and val captions")
    questions = pope_questions(train_objects, cfg.questions_per_image, cfg.seed)
    val_questions = pope_questions(val_objects, max(cfg.questions_per_image, 2), cfg.seed + 1) if questions else []
    tokenizer = build_tokenizer(_caption_texts(train) + [prompt, QUESTION_PROMPTS["llava"], "yes no"]
                                + [p for _, p, _ in questions])
    model, processor = build_llava(tokenizer, cfg)
    n_img = (cfg.image_size // cfg.patch_size) ** 2
    pad = tokenizer.pad_token_id
    times: dict[str, float] = {}

    def pixels(images):
        unique, index = _image_index(images)
        return processor.image_processor(images=unique, return_tensors="pt")["pixel_values"], index, unique

    rows = [(prompt, c) for c in _caption_texts(train)] + [(p, a) for _, p, a in questions]
    tr_pv, tr_img, tr_unique = pixels([im for im, _ in train] + [im for im, _, _ in questions])
    va_pv, va_img, va_unique = pixels([im for im, _ in val])
    tr_ids, tr_lab = _batches(tokenizer, rows, n_img, cfg.max_words)
    va_ids, va_lab = _batches(tokenizer, [(prompt, c) for c in _caption_texts(val)], n_img, cfg.max_words)

    t0 = time.perf_counter()
    pre_info: dict[str, Any] = {}
    if cfg.pretrain_steps:
        if text_encoder is None:
            from dsanchor.encoders.effnet_minilm import load_minilm

            text_encoder = load_minilm("cpu")
        names = sorted({n for _, ns in train_objects for n in _object_labels(ns)})
        pre_info = pretrain_vision(model.model.vision_tower, tr_pv, _embed(text_encoder, _caption_texts(train)),
                                   tr_img[:len(train)], cfg,
                                   val=(va_pv, _embed(text_encoder, _caption_texts(val)), va_img),
                                   objects=_multi_hot(tr_unique, train_objects, names),
                                   val_objects=_multi_hot(va_unique, val_objects, names), progress=progress)
    times["pretrain"] = time.perf_counter() - t0

    g_source = UniformG(cfg.seed)
    g_source.train_g = None if cfg.uniform_g else 1.0
    handle = attach_dsa(model, g_source, cfg.coarse_layer, state_fn=lambda vf, vc: vf.mean(1))
    opt, sched, tower = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)

    def val_loss() -> float:
        model.eval()
        v = 0.5 * sum(_caption_loss(model, g_source, g, va_ids, va_lab, va_pv, va_img, pad) for g in (1.0, 0.0))
        model.train()
        return v

    t1 = time.perf_counter()
    best, best_state, best_step, history = float("inf"), None, -1, []
    model.train()
    for p in tower:  # frozen while aligning (and for good with vision_lr_scale 0)
        p.requires_grad_(cfg.align_steps == 0 and cfg.vision_lr_scale > 0)
    bar = tqdm(range(cfg.steps), desc="mllm build: LLaVA", unit="step", disable=not progress)
    for step in bar:
        if step == cfg.align_steps and step and cfg.vision_lr_scale > 0:
            for p in tower:
                p.requires_grad_(True)
        idx = torch.randint(len(tr_ids), (cfg.batch_size,), generator=gen)
        ids = tr_ids[idx]
        keep = int((ids != pad).sum(1).max())
        ids, lab = ids[:, :keep], tr_lab[idx][:, :keep]
        out_ = model(input_ids=ids, labels=None if cfg.loss_per_text else lab, pixel_values=tr_pv[tr_img[idx]],
                     attention_mask=(ids != pad).long())
        loss = _per_text_loss(out_.logits, lab) if cfg.loss_per_text else out_.loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            v = val_loss()
            history.append({"step": step + 1, "train_loss": float(loss.detach()), "val_loss": v})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{v:.3f}")
            if v < best:
                best, best_state, best_step = v, copy.deepcopy(model.state_dict()), step + 1
    for p in tower:
        p.requires_grad_(True)
    times["llava"] = time.perf_counter() - t1
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()

    t2 = time.perf_counter()
    # the shuffled-image control: every val caption paired with another val image (a derangement of images)
    shuffled = derangement(len(va_pv), cfg.seed + 2)[va_img]
    true_loss = {f"g={g:g}": _caption_loss(model, g_source, g, va_ids, va_lab, va_pv, va_img, pad) for g in (1.0, 0.0)}
    shuffled_loss = {f"g={g:g}": _caption_loss(model, g_source, g, va_ids, va_lab, va_pv, shuffled, pad)
                     for g in (1.0, 0.0)}
    pope: dict[str, float] = {}
    if val_questions:
        q_ids, q_lab = _batches(tokenizer, [(p, a) for _, p, a in val_questions], n_img, cfg.max_words)
        q_pv, q_img, _ = pixels([im for im, _, _ in val_questions])
        truth = torch.tensor([a == "yes" for _, _, a in val_questions])
        pope = {f"g={g:g}": _pope_accuracy(model, tokenizer, g_source, g, q_ids, q_lab, q_pv, q_img, truth)
                for g in (1.0, 0.0)}
    handle.detach()
    times["final_val"] = time.perf_counter() - t2

    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"train_time_s": sum(times.values()), "stage_times_s": times, "best_step": best_step,
            "best_val_loss": best, "history": history, "val_loss_true_images": true_loss,
            "val_loss_shuffled_images": shuffled_loss, "val_pope_accuracy": pope or None,
            "n_val_questions": len(val_questions), "pretrain": pre_info or None, "vocab_size": len(tokenizer),
            "n_train_captions": len(train), "n_train_questions": len(questions), "image_tokens": n_img,
            "prompt": prompt}
    (out / "build_info.json").write_text(json.dumps(info, indent=2))
    return info


def build_from_dataset(data: str | Path, format: str, out: str | Path, cfg: BuildConfig, splits: str | None = None,
                       split_seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """What ``dsanchor mllm build`` runs (and ``dsanchor demo --mllm``): load a dataset, split it as
    ``dsanchor run`` does, and :func:`train_llava` on its train captions and objects (val for early stopping).

    Returns:
        :func:`train_llava`'s info dict, plus ``split_note``.
    """
    from dsanchor.data import load_dataset
    from dsanchor.data.splits import assign_splits
    from dsanchor.encoders.transforms import load_rgb
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS

    samples, how = assign_splits(load_dataset(format, data), splits, seed=split_seed)
    log.info(how)
    root = Path(data) if Path(data).is_dir() else Path(data).parent

    def split(name: str):
        """(image, caption) pairs and (image, object names) per image of one split (one image object each)."""
        pairs, objects = [], []
        for s in samples:
            if s.split == name and s.captions:
                image = load_rgb(root / s.image_path)
                pairs += [(image, c.text) for c in s.captions]
                objects.append((image, [o.name for o in s.objects]))
        return pairs, objects

    (train, train_objects), (val, val_objects) = split("train"), split("val")
    if not train or not val:
        raise ConfigError(f"mllm build needs captions in the train and val splits ({how})")
    info = train_llava(train, val, cfg, out, DEFAULT_PROMPTS["llava"], train_objects=train_objects,
                       val_objects=val_objects, progress=progress)
    info["split_note"] = how
    return info
