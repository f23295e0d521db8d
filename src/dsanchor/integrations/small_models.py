"""Small transformers models built offline: word-level tokenizers, the small LLaVA, and tiny random LLaVA,
BLIP-2 and IDEFICS models for tests and smoke runs.

* :func:`word_tokenizer` / :func:`caption_tokenizer`: a lower-cased word-level ``PreTrainedTokenizerFast``
  (words and punctuation split, as :func:`words`); :func:`byte_level_clip_tokenizer`: a CLIP tokenizer over the
  256 byte symbols with no merges (the tiny CLIP and OWL-ViT of :mod:`dsanchor.encoders`).
* :func:`small_llava`: transformers' ``LlavaForConditionalGeneration`` from a small config (a CLIP vision tower
  and a Llama language model) with its ``LlavaProcessor``; ``dsanchor mllm build`` trains one, and
  :func:`tiny_mllm` makes the tiny one.
* :func:`tiny_mllm` / :func:`save_tiny_mllm`: a tiny random model of each family that
  :func:`~dsanchor.integrations.loading.load_mllm` reads back, so every ``dsanchor mllm`` command runs on it in
  seconds. Its captions and answers mean nothing: it exists to exercise code paths, never to produce a number.
  Its vocabulary is :data:`TINY_WORDS` plus the words of every family's prompts, so prompts are tokenised
  without unknown words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dsanchor.errors import ConfigError
from dsanchor.integrations.families import FAMILIES

__all__ = ["SPECIALS", "TINY_WORDS", "words", "word_tokenizer", "caption_tokenizer", "byte_level_clip_tokenizer",
           "small_llava", "tiny_vocabulary", "tiny_tokenizer", "tiny_mllm", "save_tiny_mllm"]

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
TINY_WORDS = ("a red blue green cube sphere cylinder on the left right of and two three small large metal rubber "
              "yes no there is image in").split()
IDEFICS_SPECIALS = ["<image>", "<fake_token_around_image>", "<end_of_utterance>"]
TINY_IMAGE, TINY_PATCH = 16, 8  # 2 x 2 patches (+ CLS)


def words(text: str) -> list[str]:
    """The word tokenizer's words: lower-cased, word characters and punctuation split (its pre-tokenizer)."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def word_tokenizer(vocab: Sequence[str], specials: Sequence[str] = ("<image>",), image_token: str | None = None):
    """A word-level ``PreTrainedTokenizerFast`` (lower-cased) over ``vocab`` (its order gives the ids).

    Args:
        vocab: the words, ``<pad>``, ``<unk>``, ``<s>`` and ``</s>`` among them.
        specials: added as additional special tokens (never split).
        image_token: registered as the tokenizer's ``image_token`` (what LLaVA's and IDEFICS's processors read).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": image_token}} if image_token else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", **extra)
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


def caption_tokenizer(texts: Sequence[str]):
    """A word tokenizer over every word of ``texts`` (most frequent first), with ``<image>`` as a special token."""
    counts = Counter(w for t in texts for w in words(t))
    vocab = {w: i for i, w in enumerate(SPECIALS)}
    for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(w, len(vocab))
    return word_tokenizer(list(vocab), specials=["<image>"])


def byte_level_clip_tokenizer(model_max_length: int | None = None) -> tuple[Any, int, int]:
    """A CLIP tokenizer over the 256 byte symbols with no merges, built offline: (tokenizer, bos id, eos id)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return CLIPTokenizer(vocab=vocab, merges=[], **extra), bos, eos


def small_llava(tokenizer, image_size: int, patch_size: int, vision_width: int, vision_layers: int,
                text_width: int, text_layers: int, heads: int, mlp_ratio: int = 4, max_positions: int | None = None,
                seed: int = 0, keep_cls: bool = False):
    """(model, processor): a randomly initialised (``torch.manual_seed(seed)``) LLaVA of this size and its
    LlavaProcessor; the tokenizer's ``<image>`` is the image token, one per patch (the CLS token is dropped, or
    kept as the first image token with ``keep_cls``: LLaVA's ``vision_feature_select_strategy="full"``)."""
    import transformers

    strategy = "full" if keep_cls else "default"
    vision = transformers.CLIPVisionConfig(hidden_size=vision_width, intermediate_size=mlp_ratio * vision_width,
                                           num_hidden_layers=vision_layers, num_attention_heads=heads,
                                           image_size=image_size, patch_size=patch_size)
    extra = {} if max_positions is None else {"max_position_embeddings": max_positions}
    text = transformers.LlamaConfig(hidden_size=text_width, intermediate_size=mlp_ratio * text_width,
                                    num_hidden_layers=text_layers, num_attention_heads=heads,
                                    num_key_value_heads=heads, vocab_size=len(tokenizer),
                                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **extra)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                      vision_feature_layer=-1, vision_feature_select_strategy=strategy)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = transformers.CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        crop_size={"height": image_size, "width": image_size})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                            patch_size=patch_size, vision_feature_select_strategy=strategy,
                                            image_token="<image>", num_additional_image_tokens=1)
    return model, processor


def tiny_vocabulary() -> list[str]:
    """Specials, then the tiny words and the words of every family's caption and question prompts."""
    out = ["<pad>", "<unk>", "<s>", "</s>", *IDEFICS_SPECIALS]
    prompts = [f.CAPTION_PROMPT for f in FAMILIES.values()] + [f.QUESTION_PROMPT for f in FAMILIES.values()]
    text = " ".join([*TINY_WORDS, *prompts, "summary above image sentence in one word : user assistant"])
    for w in words(text.replace("<image>", " ").replace("{question}", " ")):
        if w not in out:
            out.append(w)
    return out


def tiny_tokenizer(vocab: list[str], with_image_token: bool = True):
    """The tiny models' word tokenizer over ``vocab`` (``<image>`` a special token only ``with_image_token``)."""
    specials = IDEFICS_SPECIALS if with_image_token else IDEFICS_SPECIALS[1:]
    return word_tokenizer(vocab, specials, "<image>" if with_image_token else None)


def _tiny_vision(**extra) -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                image_size=TINY_IMAGE, patch_size=TINY_PATCH, initializer_range=0.02, **extra)


def _tiny_blip2(vocab: list[str]):
    """Blip2Processor adds "<image>" to the tokenizer itself, as the next id."""
    import transformers

    vocab = [w for w in vocab if w != "<image>"]
    n = len(vocab) + 1
    cfg = transformers.Blip2Config(
        vision_config=transformers.Blip2VisionConfig(**_tiny_vision()).to_dict(),
        qformer_config=transformers.Blip2QFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=32, encoder_hidden_size=16,
                                                       vocab_size=n).to_dict(),
        text_config=transformers.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                           vocab_size=n, word_embed_proj_dim=16, max_position_embeddings=128,
                                           pad_token_id=0, bos_token_id=2, eos_token_id=3).to_dict(),
        num_query_tokens=4, image_token_id=len(vocab))
    processor = transformers.Blip2Processor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE}),
        tokenizer=tiny_tokenizer(vocab, with_image_token=False), num_query_tokens=4)
    return transformers.Blip2ForConditionalGeneration(cfg), processor


def _tiny_idefics(vocab: list[str]):
    import transformers

    vision = _tiny_vision()
    vision["embed_dim"] = vision.pop("hidden_size")
    cfg = transformers.IdeficsConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        alpha_initializer="ones", vision_config=vision, use_resampler=True, max_position_embeddings=128,
        initializer_range=0.2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=8),
        freeze_text_layers=False, freeze_vision_layers=False)
    processor = transformers.IdeficsProcessor(
        image_processor=transformers.IdeficsImageProcessorPil(image_size=TINY_IMAGE), tokenizer=tiny_tokenizer(vocab))
    return transformers.IdeficsForVisionText2Text(cfg), processor


def tiny_mllm(model_type: str, seed: int = 0):
    """(model, processor): a tiny random model of ``model_type`` and its offline processor."""
    vocab = tiny_vocabulary()
    if model_type == "llava":
        model, processor = small_llava(tiny_tokenizer(vocab), TINY_IMAGE, TINY_PATCH, vision_width=16,
                                       vision_layers=2, text_width=16, text_layers=1, heads=2, mlp_ratio=2, seed=seed)
    elif model_type in ("blip2", "idefics"):
        torch.manual_seed(seed)
        model, processor = (_tiny_blip2 if model_type == "blip2" else _tiny_idefics)(vocab)
        model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 3
    else:
        raise ConfigError(f"unknown model type {model_type!r}; valid: {', '.join(FAMILIES)}")
    return model.eval(), processor


def save_tiny_mllm(model_type: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of ``model_type`` and its processor to ``path`` (``save_pretrained``)."""
    model, processor = tiny_mllm(model_type, seed)
    out = Path(path)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
