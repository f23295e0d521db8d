"""Stages of :mod:`dsanchor.run` that no single command covers: making the synthetic data, extracting the
features of already-split samples, and the captioning run. The trained stages (heads, detector, tuning, PPO,
evaluation) are :mod:`dsanchor.stages`, the same functions the commands call."""

from __future__ import annotations

from pathlib import Path

from dsanchor.stages import write_json

__all__ = ["synth_stage", "extract_samples", "caption_stage"]

SPLITS = (0.6, 0.2, 0.2)  # more val than the 80/10/10 default: controllers and fixed_best are fit on val


def synth_stage(out: Path, config) -> None:
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(out, SynthConfig(scenes=config.scenes, seed=config.data_seed, image_size=config.image_size,
                                    split_fractions=SPLITS, workers=config.workers, color_space=config.color_space))


def extract_samples(samples, data: Path, out: Path, config, fmt: str) -> None:
    """Encode the samples (with their splits) into a feature store with the default encoder and regions."""
    from dsanchor.encoders import create_encoder
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.extract import ExtractConfig, extract_features

    encoder = create_encoder("effnet-minilm")
    extract_features(samples, data, out, encoder, ExtractConfig(workers=config.workers, progress=False),
                     RegionConfig(), source={"format": fmt, "split": None})


def _store(features: Path):
    from dsanchor.features.store import FeatureStore

    return FeatureStore(features)


def _rl_inputs(features: Path, seed_dir: Path):
    from dsanchor.stages import load_rl_inputs

    return load_rl_inputs(features, seed_dir / "heads", seed_dir / "detector")


def caption_stage(features: Path, seed_dir: Path, out: Path, config, seed: int) -> None:
    from dsanchor.captioning import (
        CaptionGateConfig,
        CaptionRLConfig,
        CaptionTrainConfig,
        DecodeConfig,
        DecoderConfig,
        VocabConfig,
        Vocabulary,
        evaluate_captioning,
        fit_caption_methods,
        prepare_caption_split,
        train_decoder,
    )
    from dsanchor.captioning.controller import DetectorHallucination
    from dsanchor.hallucination.matrices import guess_vocabulary

    store, heads, det = _rl_inputs(features, seed_dir)
    splits = {s: (prepare_caption_split(heads, store.images(s), store.texts(s)), store.images(s))
              for s in ("train", "val", "test")}
    vocab = Vocabulary.build(store.texts("train").captions, VocabConfig())
    train_cfg = CaptionTrainConfig(steps=config.caption_steps, seed=seed)
    decoder, info = train_decoder(splits["train"][0], splits["val"][0], vocab, DecoderConfig(), train_cfg)
    decoder.save_pretrained(out / "decoder", vocab)
    vocabulary = guess_vocabulary(splits["test"][1])
    hall = DetectorHallucination(det, splits["val"][1], store.object_vocabulary(), vocabulary)
    from dsanchor.rl.ppo import PPOConfig

    steps = config.caption_ppo_timesteps
    ppo = PPOConfig(timesteps=steps, seed=seed, checkpoint_every=max(steps // 4, 1024))
    decode = DecodeConfig()
    methods = fit_caption_methods(decoder, vocab, splits["val"][0], splits["test"][0], CaptionRLConfig(), ppo,
                                  CaptionGateConfig(seed=seed), decode, out, hall)
    results = evaluate_captioning(decoder, vocab, splits["test"][0], methods.g, decode, methods.test_grid,
                                  vocabulary)
    results["fixed_best"]["g"] = methods.info["fixed_best_g"]
    write_json(out / "caption_metrics.json", {"split": "test", "vocabulary": vocabulary,
                                              "cider_scale": "raw (not x100)", "methods": results, "decoder": info,
                                              "info": methods.info})
