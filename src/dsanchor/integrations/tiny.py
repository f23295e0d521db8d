"""Tiny randomly initialised LLaVA, BLIP-2 and IDEFICS models with offline processors, for tests and smoke runs.

``save_tiny_mllm(model_type, path)`` writes a model that ``load_mllm`` (``from_pretrained`` +
``AutoProcessor.from_pretrained``) reads back, so every ``dsanchor mllm`` command runs on it in seconds. Its
captions and answers mean nothing: it exists to exercise code paths (the hooks, the state, the grid cache,
PPO, the evaluation), never to produce a number.

The tokenizer is word-level over :data:`TINY_WORDS` plus the words of every default prompt, so prompts are
tokenised without unknown words; whitespace and punctuation split words as in
:func:`dsanchor.integrations.build.words`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsanchor.errors import ConfigError

__all__ = ["TINY_WORDS", "tiny_vocabulary", "tiny_tokenizer", "tiny_mllm", "save_tiny_mllm"]

TINY_WORDS = ("a red blue green cube sphere cylinder on the left right of and two three small large metal rubber "
              "yes no there is image in").split()
IMAGE_SIZE, PATCH = 16, 8  # 2 x 2 patches (+ CLS)


def tiny_vocabulary() -> list[str]:
    """Specials, then the tiny words and the words of the default and question prompts."""
    from dsanchor.integrations.build import words
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS, QUESTION_PROMPTS

    out = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "<fake_token_around_image>", "<end_of_utterance>"]
    text = " ".join([*TINY_WORDS, *DEFAULT_PROMPTS.values(), *QUESTION_PROMPTS.values(),
                     "summary above image sentence in one word : user assistant"])
    for w in words(text.replace("<image>", " ").replace("{question}", " ")):
        if w not in out:
            out.append(w)
    return out


def tiny_tokenizer(vocab: list[str], with_image_token: bool = True):
    """A word-level ``PreTrainedTokenizerFast`` (lower-cased) over ``vocab``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": "<image>"}} if with_image_token else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", **extra)
    specials = ["<image>", "<fake_token_around_image>", "<end_of_utterance>"]
    tok.add_special_tokens({"additional_special_tokens": specials if with_image_token else specials[1:]})
    return tok


def _vision(**extra) -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=0.02, **extra)


def tiny_mllm(model_type: str, seed: int = 0):
    """(model, processor): a tiny random model of ``model_type`` and its offline processor."""
    import transformers

    vocab = tiny_vocabulary()
    n, image_id = len(vocab), vocab.index("<image>")
    torch.manual_seed(seed)
    if model_type == "llava":
        cfg = transformers.LlavaConfig(
            vision_config=transformers.CLIPVisionConfig(**_vision()),
            text_config=transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=2, vocab_size=n,
                                                 pad_token_id=0, bos_token_id=2, eos_token_id=3),
            image_token_id=image_id, vision_feature_layer=-1, vision_feature_select_strategy="default")
        model = transformers.LlavaForConditionalGeneration(cfg)
        processor = transformers.LlavaProcessor(
            image_processor=transformers.CLIPImageProcessorPil(
                size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False,
                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
            tokenizer=tiny_tokenizer(vocab), patch_size=PATCH, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, image_token="<image>")
    elif model_type == "blip2":  # Blip2Processor adds "<image>" to the tokenizer itself, as the next id
        vocab = [w for w in vocab if w != "<image>"]
        n = len(vocab) + 1
        image_id = len(vocab)
        cfg = transformers.Blip2Config(
            vision_config=transformers.Blip2VisionConfig(**_vision()).to_dict(),
            qformer_config=transformers.Blip2QFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=32, encoder_hidden_size=16,
                                                           vocab_size=n).to_dict(),
            text_config=transformers.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                               vocab_size=n, word_embed_proj_dim=16, max_position_embeddings=128,
                                               pad_token_id=0, bos_token_id=2, eos_token_id=3).to_dict(),
            num_query_tokens=4, image_token_id=image_id)
        model = transformers.Blip2ForConditionalGeneration(cfg)
        tokenizer = tiny_tokenizer(vocab, with_image_token=False)
        processor = transformers.Blip2Processor(
            image_processor=transformers.BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
            tokenizer=tokenizer, num_query_tokens=4)
    elif model_type == "idefics":
        vision = _vision()
        vision["embed_dim"] = vision.pop("hidden_size")
        cfg = transformers.IdeficsConfig(
            vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            alpha_initializer="ones", vision_config=vision, use_resampler=True, max_position_embeddings=128,
            initializer_range=0.2, pad_token_id=0, bos_token_id=2, eos_token_id=3,
            perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                                  resampler_head_dim=8),
            freeze_text_layers=False, freeze_vision_layers=False)
        model = transformers.IdeficsForVisionText2Text(cfg)
        processor = transformers.IdeficsProcessor(
            image_processor=transformers.IdeficsImageProcessorPil(image_size=IMAGE_SIZE),
            tokenizer=tiny_tokenizer(vocab))
    else:
        raise ConfigError(f"unknown model type {model_type!r}; valid: llava, blip2, idefics")
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 3
    return model.eval(), processor


def save_tiny_mllm(model_type: str, path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model of ``model_type`` and its processor to ``path`` (``save_pretrained``)."""
    model, processor = tiny_mllm(model_type, seed)
    out = Path(path)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
