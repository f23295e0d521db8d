"""``dsanchor mllm build``: train a small LLaVA on a dataset's captions, with g as a working knob.

The model is transformers' ``LlavaForConditionalGeneration`` from a small config: a CLIP vision tower and a
Llama language model (widths and depths in :class:`~dsanchor.mllm.config.BuildConfig`; built by
:func:`dsanchor.integrations.small_models.small_llava`). The tokenizer is word-level over the training
captions and the prompts (lower-cased; words and punctuation split), with ``<image>`` as the image token. Model
and processor are saved with ``save_pretrained``, so ``LlavaForConditionalGeneration.from_pretrained(DIR)`` and
``AutoProcessor.from_pretrained(DIR)`` load them offline, and ``dsanchor mllm caption --model-type llava
--model-path DIR`` runs on it unchanged.

Why stages: trained end to end from scratch on a few thousand captions, the small model learns the captions'
language prior long before a random vision tower gives it anything, and ends up ignoring the image (its val
loss is the same with shuffled images). So the build runs, on the train split only:

0. **Distillation** (``distill_steps``; :mod:`dsanchor.mllm.distill`): the pretrained EfficientNet-Lite0 reads
   the same images; each patch token of the tower's last layer regresses the teacher's stage-5 cell under it
   (stride 16, one cell per 16-px patch at 128 px), the coarse layer's tokens an earlier stage
   (``distill_coarse_stage``), through linear heads that are dropped afterwards. With ``summary_token`` the
   tower's CLS token is kept as the first image token (LLaVA's "full" feature strategy) and learns how many
   objects carry each attribute value and pair of values (train scene graphs), a summary at one fixed position.
1. **Vision pre-training** (``pretrain_steps``, off by default since distillation; like CLIP before LLaVA): the
   tower is trained contrastively (InfoNCE both ways, learnable temperature) against frozen all-MiniLM-L6-v2
   embeddings of the training captions through a linear projection of the pooled patch tokens, the coarse
   layer's pooled tokens too (``pretrain_coarse_weight``), with an auxiliary multi-label loss on the annotated
   object names and name words (``pretrain_object_weight``); images shifted by up to ``pretrain_shift`` pixels.
   With ~600 images it barely beat chance on val retrieval (0.007-0.014, chance 0.005).
2. **Alignment** (``align_steps``, as LLaVA's stage 1): the tower is frozen while projector and language model
   learn to read its features.
3. **Instruction tuning**: everything, the tower at ``vision_lr_scale`` times the learning rate.

With ``ground_weight`` > 0 (:mod:`dsanchor.mllm.ground`), stages 2 and 3 add a dense grounding loss on the image
tokens the language model reads (after the projector, at the drawn g): each patch token predicts the words of the
objects whose box covers it (colour, size, material, shape; background: none), the summary token every word in
the image, by cosine with the language model's own input embeddings of those words (multi-label, learnt scale and
bias per word). The image tokens then live where the question's words do.

Stages 2 and 3 train on the rows of :mod:`dsanchor.mllm.instructions`, answers only in the loss: the captions
(LLaVA's ``CAPTION_PROMPT``), POPE-style yes/no questions (``questions_per_image``, half "yes" about objects in
the image, half "no" about absent vocabulary objects; :func:`~dsanchor.mllm.pope.training_questions`), and where
the data has scene graphs the questions of ``dsanchor data questions`` (``question_families``,
``questions_per_family``; exact answers), its caption prompts (``caption_prompts``) and an object list per image
(``object_lists``). The rows of an image are packed into conversations of up to ``turns_per_text`` turns, the
image tokens paid once (an object list always alone: it would give later turns their answers as text).
``loss_per_text`` averages each text's loss over its own tokens first; off by default (it did not help).

What limits it (synth, measured with ``scripts/mllm_tower_probe.py`` and ``scripts/mllm_see_bench.py``): not the
tower. Linear probes on the objects' patch tokens at 128 px read colour 0.93, shape 0.71, size 0.95, material
0.95 after 1200 distillation steps (teacher stage 5: 0.93 / 0.90 / 0.98 / 0.96; random tower 0.83 / 0.45 / 0.75 /
0.79). The language model does not learn to bind a word of the question to what the image tokens hold: trained
800 steps on 1000 images with every row type, val POPE stayed 0.50 and "Is there a <colour> thing?" ranked
colours at AUC 0.58; trained only on that colour question for 1500 steps it reached AUC 0.63 on the *train*
images (16 image tokens or 64, with a CLS summary token or without: the same). The same build on one-colour
images answers it right 52% after 200 steps and 100% after 800 (chance 12.5%), while it names the colour in a
caption at once (val caption loss 0.02, shuffled 0.91): matching a question word against the image is what a
from-scratch language model learns slowly, and slower still when the object is one of 64 tokens.

The grounding targets (POPE F1 >= 0.85, exist and query attributes >= 0.85, relate >= 0.7, count >= 0.6,
CHAIR_i <= 0.10), measured by ``scripts/mllm_see_bench.py`` on the default build without grounding
(``ground_weight`` 0; 4000 train images at 128 px, 26 min on one CPU thread; 150 test images; blind baselines in
brackets: deranged images): POPE F1 0.36 / 0.38 / 0.37 (random, popular, adversarial), exist 0.62 (0.63), query
attributes 0.41 (0.36), relate 0.49 (0.47), count 0.48 (0.25; majority 0.20: counts are what the summary token
holds, and naming a count is a readout, not a match), CHAIR_i of object captions 0.73 (0.70). With the
patch-word grounding loss (``ground_weight`` 1.0, now the default; same budget): POPE F1 0.75 / 0.74 / 0.76,
exist 0.74 (0.59), query attributes 0.46 (0.35; colour 0.33 vs 0.09 before), relate 0.50 (0.52), count 0.48
(0.27), CHAIR_i 0.51 (0.75): the words now find their patches, relations do not. None of the targets is met
(``scripts/mllm_see_diag/README.md``).

DSA is attached during stages 2 and 3 (:func:`dsanchor.integrations.attach_dsa`) with g drawn uniformly in
[0, 1] for every image of every batch, so the model learns to answer from any
``V' = g V_fine + (1 - g) V_coarse`` (V_coarse: the vision tower's layer ``coarse_layer``). Early stopping keeps
the step with the lowest val caption loss (mean of g = 1 and g = 0). ``build_info.json`` records the time of
each stage, the val caption loss with the true images and with the val images shuffled (a model that ignores
the image scores the same on both) and, when questions are trained, the val POPE accuracy.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.encoders import effnet_minilm
from dsanchor.encoders.transforms import load_rgb
from dsanchor.errors import ConfigError
from dsanchor.files import write_json
from dsanchor.integrations import UniformG, attach_dsa, get_family
from dsanchor.integrations.small_models import caption_tokenizer, small_llava
from dsanchor.mllm.config import BuildConfig, MLLMConfig
from dsanchor.mllm.data import split_samples
from dsanchor.mllm.distill import TeacherMaps, distill_vision, label_counts, scene_labels, standardise, teacher_maps
from dsanchor.mllm.ground import Boxes, GroundHead, ProjectorTap, ground_vocabulary, patch_targets, word_auc
from dsanchor.mllm.instructions import OBJECT_LIST_PROMPT, Row, conversation_batches, pack_turns, scene_rows
from dsanchor.mllm.items import item_prompt
from dsanchor.mllm.pope import read_yes_no, training_questions
from dsanchor.mllm.pretrain import embed_texts, multi_hot, object_labels, pretrain_vision

__all__ = ["build_llava", "token_batches", "derangement", "per_text_loss", "train_llava", "build_from_dataset"]

Pairs = Sequence[tuple[Any, str]]  # (image, caption)
Objects = Sequence[tuple[Any, Sequence[str]]]  # (image, object names in it)
Summaries = Sequence[tuple[Any, Counter]]  # (image, how many objects carry each label)


def build_llava(tokenizer, cfg: BuildConfig):
    """(model, processor) from ``cfg``: a randomly initialised small LLaVA and its LlavaProcessor."""
    return small_llava(tokenizer, cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
                       cfg.text_width, cfg.text_layers, cfg.heads, mlp_ratio=4,
                       max_positions=(cfg.image_size // cfg.patch_size) ** 2 + 128 * cfg.turns_per_text,
                       seed=cfg.seed, keep_cls=cfg.summary_token)


def token_batches(tok, rows: Sequence[tuple[str, str]], n_image_tokens: int,
                  max_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of prompt (its ``<image>`` expanded to the image's tokens) + answer + </s> and labels
    (C, L), -100 outside the answer, right padded. ``rows``: (prompt, answer) per text (one-turn
    :func:`~dsanchor.mllm.instructions.conversation_batches`)."""
    return conversation_batches(tok, [[r] for r in rows], n_image_tokens, max_words)


def derangement(n: int, seed: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` that moves every index (for n > 1): image i -> another image."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    other = torch.empty(n, dtype=torch.long)
    other[perm] = perm.roll(1)  # perm[k] -> perm[k - 1]
    return other


def per_text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each row's labelled tokens, then over rows: (B, L, V), (B, L) -> ()."""
    target = labels[:, 1:]  # (B, L - 1)
    token = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100,
                                        reduction="none").view_as(target)  # (B, L - 1)
    mask = (target != -100).float()
    return ((token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def _image_index(images: Sequence[Any]) -> tuple[list[Any], torch.Tensor]:
    """The distinct images (by identity, first-seen order) and the index of each item's image among them."""
    unique = list({id(im): im for im in images}.values())
    where = {id(im): i for i, im in enumerate(unique)}
    return unique, torch.tensor([where[id(im)] for im in images], dtype=torch.long)


@dataclass
class TextBatch:
    """Texts with the images they see: ids and labels (C, L), pixels (I, 3, S, S), image of each text (C,)."""

    ids: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    image_of: torch.Tensor
    unique: list[Any]  # the distinct images, in the order of ``pixels``


@dataclass
class _Ground:
    """The patch-word grounding loss's words, targets and head (``ground_weight``; :mod:`dsanchor.mllm.ground`)."""

    vocab: list[str]
    word_ids: torch.Tensor  # (K,) token ids of the words
    train: torch.Tensor  # (I, T, K) multi-hot targets per train image (the order of _Build.train.unique)
    val: torch.Tensor  # (I_val, T, K) the same for the val images (_Build.val.unique)
    head: GroundHead


def _ground_targets(unique: Sequence[Any], boxes: Boxes, vocab: list[str], cfg: BuildConfig) -> torch.Tensor:
    """(I, T, K) :func:`~dsanchor.mllm.ground.patch_targets` of ``unique`` (an image without boxes: none)."""
    held = {id(im): objs for im, objs in boxes}
    return torch.stack([patch_targets(held.get(id(im), ()), im.size, cfg.image_size, cfg.patch_size, vocab,
                                      cfg.summary_token) for im in unique])


@dataclass
class _Build:
    """The small LLaVA being built, its data and its g source."""

    model: nn.Module
    processor: Any
    tokenizer: Any
    g_source: UniformG
    train: TextBatch  # captions, yes/no questions and scene questions of the train images, packed in conversations
    val: TextBatch  # val captions
    questions: list[tuple[Any, str, str]]
    val_questions: list[tuple[Any, str, str]]
    n_img: int  # image tokens per image
    n_items: int = 0  # scene questions and caption prompts among the train rows
    ground: _Ground | None = None  # the grounding loss's data (ground_weight > 0 and located objects)

    def texts(self, rows: Sequence[tuple[str, str]], images: Sequence[Any], cfg: BuildConfig) -> TextBatch:
        """(prompt, answer) rows seeing ``images`` (one per row) as a :class:`TextBatch`."""
        unique, index = _image_index(images)
        pixels = self.processor.image_processor(images=unique, return_tensors="pt")["pixel_values"]
        ids, labels = token_batches(self.tokenizer, rows, self.n_img, cfg.max_words)
        return TextBatch(ids, labels, pixels, index, unique)

    def conversations(self, rows: Sequence[Row], cfg: BuildConfig) -> TextBatch:
        """``(image, prompt, answer)`` rows packed into conversations of up to ``cfg.turns_per_text`` turns."""
        convs = pack_turns(rows, cfg.turns_per_text, cfg.seed,
                           alone=[item_prompt("llava", OBJECT_LIST_PROMPT, caption=True)])
        unique, index = _image_index([im for im, _ in convs])
        pixels = self.processor.image_processor(images=unique, return_tensors="pt")["pixel_values"]
        ids, labels = conversation_batches(self.tokenizer, [c for _, c in convs], self.n_img, cfg.max_words)
        return TextBatch(ids, labels, pixels, index, unique)


def _prepare(train: Pairs, val: Pairs, cfg: BuildConfig, prompt: str, train_objects: Objects,
             val_objects: Objects, train_items: Sequence[Row] = (), boxes: Boxes = ()) -> _Build:
    """Questions, tokenizer, the randomly initialised model and the tokenised texts."""
    questions = training_questions(train_objects, cfg.questions_per_image, cfg.seed)
    val_questions = (training_questions(val_objects, max(cfg.questions_per_image, 2), cfg.seed + 1)
                     if questions else [])
    tokenizer = caption_tokenizer([c for _, c in train] + [prompt, get_family("llava").QUESTION_PROMPT, "yes no"]
                                  + [p for _, p, _ in questions] + [f"{p} {a}" for _, p, a in train_items])
    model, processor = build_llava(tokenizer, cfg)
    b = _Build(model, processor, tokenizer, UniformG(cfg.seed), None, None, questions, val_questions,
               (cfg.image_size // cfg.patch_size) ** 2 + int(cfg.summary_token))
    b.n_items = len(train_items)
    b.train = b.conversations([(im, prompt, c) for im, c in train] + list(questions) + list(train_items), cfg)
    b.val = b.texts([(prompt, c) for _, c in val], [im for im, _ in val], cfg)
    vocab, word_ids = ground_vocabulary(boxes, tokenizer) if cfg.ground_weight > 0 else ([], None)
    if vocab:
        b.ground = _Ground(vocab, word_ids, _ground_targets(b.train.unique, boxes, vocab, cfg),
                           _ground_targets(b.val.unique, boxes, vocab, cfg), GroundHead(len(vocab)))
    return b


def _pretrain(b: _Build, train: Pairs, val: Pairs, train_objects: Objects, val_objects: Objects, cfg: BuildConfig,
              text_encoder: Any, progress: bool) -> dict[str, Any]:
    """Stage 1: :func:`~dsanchor.mllm.pretrain.pretrain_vision` on the train images (val for its scores)."""
    if text_encoder is None:
        text_encoder = effnet_minilm.load_minilm("cpu")
    names = sorted({n for _, ns in train_objects for n in object_labels(ns)})
    where = {id(im): i for i, im in enumerate(b.train.unique)}
    text_image = torch.tensor([where[id(im)] for im, _ in train])  # (C,) the image of each caption
    return pretrain_vision(b.model.model.vision_tower, b.train.pixels, embed_texts(text_encoder, [c for _, c in train]),
                           text_image, cfg,
                           val=(b.val.pixels, embed_texts(text_encoder, [c for _, c in val]), b.val.image_of),
                           objects=multi_hot(b.train.unique, train_objects, names),
                           val_objects=multi_hot(b.val.unique, val_objects, names), progress=progress)


def _distill(b: _Build, cfg: BuildConfig, progress: bool, summaries: Summaries) -> dict[str, Any]:
    """Stage 0: :func:`~dsanchor.mllm.distill.distill_vision` from EfficientNet-Lite0 on the train images (and,
    with ``cfg.summary_token``, the CLS token on ``summaries``)."""
    tic = time.perf_counter()
    summary = val_summary = None
    if cfg.summary_token and summaries:
        names = sorted({n for _, c in summaries for n in c})
        summary, val_summary = (label_counts(batch.unique, summaries, names) for batch in (b.train, b.val))
    grid = cfg.image_size // cfg.patch_size
    stages = (cfg.distill_stage, cfg.distill_coarse_stage)
    (fine, coarse), (fine_val, coarse_val) = (teacher_maps(p, grid, stages) for p in (b.train.pixels, b.val.pixels))
    fine, fine_val = standardise(fine, fine_val)
    coarse, coarse_val = standardise(coarse, coarse_val)
    seconds = time.perf_counter() - tic
    info = distill_vision(b.model.model.vision_tower, b.train.pixels, TeacherMaps(fine, coarse, seconds, summary),
                          cfg, val=(b.val.pixels, TeacherMaps(fine_val, coarse_val, 0.0, val_summary)),
                          progress=progress)
    return {**info, "teacher_s": seconds, "n_images": len(b.train.pixels)}


@torch.no_grad()
def _caption_loss(b: _Build, g: float, batch: TextBatch, image_of: torch.Tensor | None = None) -> float:
    """Mean loss per answer token at a fixed g, text i seeing image ``image_of[i]`` (default: its own)."""
    image_of = batch.image_of if image_of is None else image_of
    pad = b.tokenizer.pad_token_id
    total, count = 0.0, 0
    with b.g_source.at(g):
        for a in range(0, len(batch.ids), 64):
            sl = slice(a, a + 64)
            n = int((batch.labels[sl][:, 1:] != -100).sum())
            out = b.model(input_ids=batch.ids[sl], labels=batch.labels[sl], pixel_values=batch.pixels[image_of[sl]],
                          attention_mask=(batch.ids[sl] != pad).long())
            total, count = total + float(out.loss) * n, count + n
    return total / max(count, 1)


@torch.no_grad()
def _pope_accuracy(b: _Build, g: float, batch: TextBatch, truth: torch.Tensor) -> float:
    """Share of yes/no questions answered right: the greedy first answer token, read with ``read_yes_no``
    (neither yes nor no counts as no, as in POPE)."""
    first = (batch.labels != -100).float().argmax(1)  # (Q,) position of the answer's first token
    said: list[bool | None] = []
    with b.g_source.at(g):
        for a in range(0, len(batch.ids), 64):
            sl = slice(a, a + 64)
            logits = b.model(input_ids=batch.ids[sl], pixel_values=batch.pixels[batch.image_of[sl]],
                             attention_mask=(batch.ids[sl] != b.tokenizer.pad_token_id).long()).logits  # (b, L, V)
            top = logits[torch.arange(len(logits)), first[sl] - 1].argmax(-1)  # (b,)
            said += [read_yes_no(w) for w in b.tokenizer.convert_ids_to_tokens(top.tolist())]
    return float((torch.tensor([s is True for s in said]) == truth).float().mean())


def _optimizer(model: nn.Module, cfg: BuildConfig,
               extra: Sequence[nn.Parameter] = ()) -> tuple[torch.optim.Optimizer, Any, list[nn.Parameter]]:
    """AdamW with two groups (everything else and ``extra``, the vision tower) and their schedules: linear warm-up
    and cosine decay; the tower's learning rate is 0 for ``align_steps``, then ``vision_lr_scale`` times, warmed up
    again."""
    tower = list(model.model.vision_tower.parameters())
    tower_ids = {id(p) for p in tower}
    rest = [p for p in model.parameters() if id(p) not in tower_ids] + list(extra)
    opt = torch.optim.AdamW([{"params": rest}, {"params": tower}], lr=cfg.lr, weight_decay=0.01)
    warm = max(1, cfg.steps // 20)

    def cosine(s: int) -> float:
        return min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))

    def tower_lr(s: int) -> float:
        if s < cfg.align_steps:
            return 0.0
        return cfg.vision_lr_scale * min(1.0, (s - cfg.align_steps + 1) / warm) * cosine(s)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, [cosine, tower_lr]), tower


def _step_loss(b: _Build, idx: torch.Tensor, cfg: BuildConfig,
               tap: ProjectorTap | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The answer loss of the train texts ``idx`` (padding columns beyond the longest text cut) and, with
    ``tap`` (on the projector) and grounding data, the grounding loss of their image tokens (else None)."""
    pad = b.tokenizer.pad_token_id
    ids = b.train.ids[idx]
    keep = int((ids != pad).sum(1).max())
    ids, lab = ids[:, :keep], b.train.labels[idx][:, :keep]
    out = b.model(input_ids=ids, labels=None if cfg.loss_per_text else lab,
                  pixel_values=b.train.pixels[b.train.image_of[idx]], attention_mask=(ids != pad).long())
    loss = per_text_loss(out.logits, lab) if cfg.loss_per_text else out.loss
    if tap is None or b.ground is None:
        return loss, None
    embeddings = b.model.get_input_embeddings().weight[b.ground.word_ids]  # (K, D)
    return loss, b.ground.head.loss(tap.tokens, embeddings, b.ground.train[b.train.image_of[idx]])


def _tune(b: _Build, cfg: BuildConfig, progress: bool) -> tuple[float, int, list[dict[str, float]]]:
    """Stages 2 and 3 (alignment, then instruction tuning) with early stopping on the val caption loss (mean of
    g = 1 and g = 0); the model is left at its best step. Returns (best val loss, best step, history)."""
    opt, sched, tower = _optimizer(b.model, cfg, list(b.ground.head.parameters()) if b.ground else [])
    tap = ProjectorTap(b.model.model.multi_modal_projector) if b.ground else None
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_step, history = float("inf"), None, -1, []
    b.model.train()
    for p in tower:  # frozen while aligning (and for good with vision_lr_scale 0)
        p.requires_grad_(cfg.align_steps == 0 and cfg.vision_lr_scale > 0)
    bar = tqdm(range(cfg.steps), desc="mllm build: LLaVA", unit="step", disable=not progress)
    for step in bar:
        if step == cfg.align_steps and step and cfg.vision_lr_scale > 0:
            for p in tower:
                p.requires_grad_(True)
        loss, ground = _step_loss(b, torch.randint(len(b.train.ids), (cfg.batch_size,), generator=gen), cfg, tap)
        opt.zero_grad()
        (loss if ground is None else loss + cfg.ground_weight * ground).backward()
        torch.nn.utils.clip_grad_norm_([p for p in b.model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            b.model.eval()
            v = 0.5 * sum(_caption_loss(b, g, b.val) for g in (1.0, 0.0))
            b.model.train()
            history.append({"step": step + 1, "train_loss": float(loss.detach()), "val_loss": v,
                            **({} if ground is None else {"train_ground_loss": float(ground.detach())})})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val=f"{v:.3f}")
            if v < best:
                best, best_state, best_step = v, copy.deepcopy(b.model.state_dict()), step + 1
    for p in tower:
        p.requires_grad_(True)
    if tap is not None:
        tap.remove()
    if best_state is not None:
        b.model.load_state_dict(best_state)
    b.model.eval()
    return best, best_step, history


def _final_val(b: _Build, cfg: BuildConfig) -> dict[str, Any]:
    """Val caption loss with the true images and with shuffled ones, and val POPE accuracy, at g = 1 and 0."""
    # the shuffled-image control: every val caption paired with another val image (a derangement of images)
    shuffled = derangement(len(b.val.pixels), cfg.seed + 2)[b.val.image_of]
    true_loss = {f"g={g:g}": _caption_loss(b, g, b.val) for g in (1.0, 0.0)}
    shuffled_loss = {f"g={g:g}": _caption_loss(b, g, b.val, shuffled) for g in (1.0, 0.0)}
    pope: dict[str, float] = {}
    if b.val_questions:
        q = b.texts([(p, a) for _, p, a in b.val_questions], [im for im, _, _ in b.val_questions], cfg)
        truth = torch.tensor([a == "yes" for _, _, a in b.val_questions])
        pope = {f"g={g:g}": _pope_accuracy(b, g, q, truth) for g in (1.0, 0.0)}
    return {"val_loss_true_images": true_loss, "val_loss_shuffled_images": shuffled_loss,
            "val_pope_accuracy": pope or None, "n_val_questions": len(b.val_questions),
            "val_ground": _val_ground(b) if b.ground is not None else None}


@torch.no_grad()
def _val_ground(b: _Build) -> dict[str, Any]:
    """How well the val image tokens the language model reads name the words under them, at g = 1 and 0: the
    mean AUC over words of the grounding logits, on the patch tokens and (when kept) the summary token."""
    g = b.ground
    tap = ProjectorTap(b.model.model.multi_modal_projector)
    embeddings = b.model.get_input_embeddings().weight[g.word_ids]
    out: dict[str, Any] = {"words": g.vocab}
    try:
        for at in (1.0, 0.0):
            with b.g_source.at(at):
                logits = []
                for a in range(0, len(b.val.pixels), 64):
                    b.model.model.get_image_features(pixel_values=b.val.pixels[a:a + 64])
                    logits.append(g.head.logits(tap.tokens, embeddings))
            logits = torch.cat(logits)  # (I, T, K)
            summary = logits.shape[1] - (int(math.isqrt(logits.shape[1])) ** 2)  # 1 with the CLS token kept
            out[f"patch_auc g={at:g}"] = word_auc(logits[:, summary:].flatten(0, 1), g.val[:, summary:].flatten(0, 1))
            if summary:
                out[f"summary_auc g={at:g}"] = word_auc(logits[:, 0], g.val[:, 0])
    finally:
        tap.remove()
    return out


def train_llava(train: Pairs, val: Pairs, cfg: BuildConfig, out: str | Path, prompt: str, progress: bool = True,
                train_objects: Objects = (), val_objects: Objects = (), text_encoder: Any = None,
                train_items: Sequence[Row] = (), summaries: Summaries = (), boxes: Boxes = ()) -> dict[str, Any]:
    """Pre-train the vision tower, then train a small LLaVA on (PIL image, caption) pairs (and yes/no questions
    about ``train_objects``); save it with its processor and ``build_info.json`` to ``out``.

    Args:
        train, val: ``(image, caption)`` pairs; an image is the same object in all its pairs.
        prompt: the captioning prompt (with ``<image>``).
        train_objects, val_objects: ``(image, object names)`` per image, for the POPE questions (none: no
            questions, whatever ``cfg.questions_per_image``).
        text_encoder: something with ``encode(texts, ...)`` like a SentenceTransformer, for the pre-training;
            None loads all-MiniLM-L6-v2 offline (:func:`dsanchor.encoders.effnet_minilm.load_minilm`).
        train_items: more ``(image, prompt, answer)`` rows about train images (scene questions and caption
            prompts: :func:`~dsanchor.mllm.instructions.scene_rows`), trained with the captions and questions.
        summaries: ``(image, Counter of labels)`` per train and val image, what the summary token learns
            (:func:`~dsanchor.mllm.distill.scene_labels`); none: the object names of ``train_objects`` and
            ``val_objects``.
        boxes: ``(image, annotated objects)`` per train and val image, for the grounding loss (``ground_weight``;
            :mod:`dsanchor.mllm.ground`): the words of the objects whose box covers each patch. None: no grounding.

    Returns:
        The contents of ``build_info.json``: ``stage_times_s`` (pretrain, align + tune, final val), ``best_step``,
        ``best_val_loss``, ``history``, ``val_loss_true_images`` / ``val_loss_shuffled_images`` (g = 1 and 0),
        ``val_pope_accuracy`` (g = 1 and 0; questions only), ``pretrain`` (its loss and val retrieval accuracy),
        ``vocab_size``, ``n_train_captions``, ``n_train_questions``, ``image_tokens``, ``prompt``.
    """
    if not train or not val:
        raise ConfigError("mllm build needs train and val captions")
    b = _prepare(train, val, cfg, prompt, train_objects, val_objects, train_items, boxes)
    summaries = summaries or [(im, Counter(names)) for im, names in [*train_objects, *val_objects]]
    times: dict[str, float] = {}
    tic = time.perf_counter()
    distill_info = _distill(b, cfg, progress, summaries) if cfg.distill_steps else None
    times["distill"], tic = time.perf_counter() - tic, time.perf_counter()
    pre_info = _pretrain(b, train, val, train_objects, val_objects, cfg, text_encoder,
                         progress) if cfg.pretrain_steps else {}
    times["pretrain"], tic = time.perf_counter() - tic, time.perf_counter()
    b.g_source.fixed = None if cfg.uniform_g else 1.0
    handle = attach_dsa(b.model, b.g_source, cfg.coarse_layer, state_fn=lambda vf, vc: vf.mean(1))
    best, best_step, history = _tune(b, cfg, progress)
    times["llava"], tic = time.perf_counter() - tic, time.perf_counter()
    final = _final_val(b, cfg)
    handle.detach()
    times["final_val"] = time.perf_counter() - tic
    out = Path(out)
    b.model.save_pretrained(out)
    b.processor.save_pretrained(out)
    info = {"train_time_s": sum(times.values()), "stage_times_s": times, "best_step": best_step,
            "best_val_loss": best, "history": history, **final, "pretrain": pre_info or None,
            "distill": distill_info, "vocab_size": len(b.tokenizer), "n_train_captions": len(train),
            "n_train_questions": len(b.questions), "n_train_items": b.n_items,
            "n_train_sequences": len(b.train.ids), "ground_words": b.ground.vocab if b.ground else None,
            "image_tokens": b.n_img, "prompt": prompt}
    write_json(out / "build_info.json", info)
    return info


def _split_pairs(samples, name: str, root: Path) -> tuple[list[tuple[Any, str]], list[tuple[Any, list[str]]], list]:
    """(image, caption) pairs, (image, object names) and (image, sample) per image of one split (one image
    object each)."""
    pairs, objects, images = [], [], []
    for s in samples:
        if s.split == name and s.captions:
            image = load_rgb(root / s.image_path)
            pairs += [(image, c.text) for c in s.captions]
            objects.append((image, [o.name for o in s.objects]))
            images.append((image, s))
    return pairs, objects, images


def build_from_dataset(cfg: MLLMConfig, build: BuildConfig, progress: bool = True) -> dict[str, Any]:
    """What ``dsanchor mllm build`` runs (and ``dsanchor demo --mllm``): load ``cfg``'s dataset, split it by the
    one split rule, and :func:`train_llava` on its train captions and objects (val for early stopping) into
    ``cfg.out``.

    Returns:
        :func:`train_llava`'s info dict, plus ``split_note``.
    """
    cfg.check(model=False)
    samples, how = split_samples(cfg)
    (train, train_objects, train_images), (val, val_objects, val_images) = (_split_pairs(samples, n, cfg.image_root)
                                                                            for n in ("train", "val"))
    if not train or not val:
        raise ConfigError(f"mllm build needs captions in the train and val splits ({how})")
    items = scene_rows(train_images, build.question_families if build.questions_per_family else (),
                       max(build.questions_per_family, 1), build.caption_prompts, build.seed, build.object_lists)
    summaries = [(im, scene_labels(s.scene)) for im, s in [*train_images, *val_images] if s.scene is not None]
    boxes = [(im, s.objects) for im, s in [*train_images, *val_images]]
    info = train_llava(train, val, build, cfg.out, get_family("llava").CAPTION_PROMPT, train_objects=train_objects,
                       val_objects=val_objects, progress=progress, train_items=items, summaries=summaries,
                       boxes=boxes)
    info["split_note"] = how
    return info
