"""The stages of :mod:`dsanchor.demo`; each reads the outputs of earlier stages and writes into ``out``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from safetensors.torch import save_file

from dsanchor.config import save_resolved

__all__ = ["synth_stage", "extract_stage", "heads_stage", "detector_stage", "tune_stage", "ppo_stage",
           "caption_stage", "eval_stage"]

SPLITS = (0.6, 0.2, 0.2)  # more val than the 80/10/10 default: controllers and fixed_best are fit on val
# R_acc as the reciprocal rank: with hit@10 the per-query signal of g is too sparse for PPO to learn in the
# demo's budget (measured: same R@10, g not separated by caption granularity)
ACCURACY = {"dense": True}


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def synth_stage(out: Path, config) -> None:
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(out, SynthConfig(scenes=config.scenes, seed=config.data_seed, image_size=config.image_size,
                                    split_fractions=SPLITS, workers=config.workers))


def extract_stage(data: Path, out: Path, config) -> None:
    from dsanchor.data import load_dataset
    from dsanchor.encoders import create_encoder
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.extract import ExtractConfig, extract_features

    samples = load_dataset("coco", data)
    encoder = create_encoder("effnet-minilm")
    extract_features(samples, data, out, encoder, ExtractConfig(workers=config.workers, progress=False),
                     RegionConfig(), source={"format": "coco", "split": None})


def _store(features: Path):
    from dsanchor.features.store import FeatureStore

    return FeatureStore(features)


def heads_stage(features: Path, out: Path, config, seed: int) -> None:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig, evaluate_by_granularity, train_heads

    store = _store(features)
    d = store.dims
    cfg = AlignConfig(coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"])
    train = AlignTrainConfig(epochs=config.align_epochs, seed=seed)
    heads, info = train_heads(store.images("train"), store.texts("train"), store.images("val"),
                              store.texts("val"), cfg, train)
    heads.save_pretrained(out)
    info["test"] = evaluate_by_granularity(heads, store.images("test"), store.texts("test"))
    save_resolved(out, align=cfg, align_train=train)
    _json(out / "align_metrics.json", info)


def detector_stage(features: Path, out: Path, config, seed: int) -> None:
    from dsanchor.hallucination import (
        DetectorConfig,
        DetectorTrainConfig,
        PopeConfig,
        dataset_stats,
        evaluate_pope,
        train_detector,
    )

    store = _store(features)
    vocab = store.object_vocabulary()
    train_img, val_img, test_img = (store.images(s) for s in ("train", "val", "test"))
    stats = dataset_stats(vocab, train_img)
    train = DetectorTrainConfig(epochs=config.detector_epochs, seed=seed)
    det, info = train_detector(train_img, val_img, vocab, DetectorConfig(), train, PopeConfig(seed=seed), stats)
    det.save_pretrained(out)
    info["test"] = evaluate_pope(det, test_img, vocab, stats, PopeConfig(seed=seed))
    _json(out / "detector_metrics.json", info)


def _rl_inputs(features: Path, seed_dir: Path):
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.hallucination import HallucinationDetector
    from dsanchor.state import StateConfig

    return (_store(features), AlignmentHeads.from_pretrained(seed_dir / "heads"), StateConfig(),
            HallucinationDetector.from_pretrained(seed_dir / "detector"))


def _ppo(config, seed: int, steps: int):
    from dsanchor.rl.ppo import PPOConfig

    return PPOConfig(timesteps=steps, seed=seed, checkpoint_every=max(steps // 4, 1024))


def tune_stage(features: Path, seed_dir: Path, out: Path, config, seed: int) -> None:
    from dsanchor.experiment import rl_view, split_halves, subset, tune_objective
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import TuneConfig, best_reward, run_parallel, write_best

    store, heads, state, det = _rl_inputs(features, seed_dir)
    images, texts = store.images("val"), store.texts("val")
    halves = [rl_view(store, heads, state, det, *subset(images, texts, keep)) for keep in split_halves(images, seed)]
    cfg = TuneConfig(trials=config.tune_trials, workers=config.tune_workers, seed=seed,
                     storage=f"sqlite:///{(out / 'study.db').resolve()}", study_name=f"demo-seed{seed}")
    make = functools.partial(tune_objective, halves[0], halves[1], AccuracyConfig(**ACCURACY),
                             _ppo(config, seed, config.tune_timesteps), str(out))
    study = run_parallel(make, cfg)
    write_best(out, study, best_reward(study))


def ppo_stage(features: Path, seed_dir: Path, out: Path, config, seed: int) -> None:
    from dsanchor.experiment import rl_view, train_retrieval_controller
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import read_best

    store, heads, state, det = _rl_inputs(features, seed_dir)
    view, hall = rl_view(store, heads, state, det, store.images("val"), store.texts("val"))
    reward = read_best(seed_dir / "tune")
    ppo = _ppo(config, seed, config.ppo_timesteps)
    save_resolved(out, reward=reward, ppo=ppo, accuracy=AccuracyConfig(**ACCURACY), state=state, split="val")
    train_retrieval_controller(view, hall, reward, AccuracyConfig(**ACCURACY), ppo, out, progress=False)


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
    from dsanchor.experiment import guess_vocabulary

    store, heads, _, det = _rl_inputs(features, seed_dir)
    splits = {s: (prepare_caption_split(heads, store.images(s), store.texts(s)), store.images(s))
              for s in ("train", "val", "test")}
    vocab = Vocabulary.build(store.texts("train").captions, VocabConfig())
    train_cfg = CaptionTrainConfig(steps=config.caption_steps, seed=seed)
    decoder, info = train_decoder(splits["train"][0], splits["val"][0], vocab, DecoderConfig(), train_cfg)
    decoder.save_pretrained(out / "decoder", vocab)
    vocabulary = guess_vocabulary(splits["test"][1])
    hall = DetectorHallucination(det, splits["val"][1], store.object_vocabulary(), vocabulary)
    ppo = _ppo(config, seed, config.caption_ppo_timesteps)
    decode = DecodeConfig()
    methods = fit_caption_methods(decoder, vocab, splits["val"][0], splits["test"][0], CaptionRLConfig(), ppo,
                                  CaptionGateConfig(seed=seed), decode, out, hall)
    results = evaluate_captioning(decoder, vocab, splits["test"][0], methods.g, decode, methods.test_grid,
                                  vocabulary)
    results["fixed_best"]["g"] = methods.info["fixed_best_g"]
    _json(out / "caption_metrics.json", {"split": "test", "vocabulary": vocabulary, "cider_scale": "raw (not x100)",
                                         "methods": results, "decoder": info, "info": methods.info})


def eval_stage(features: Path, seed_dir: Path, out: Path, config, seed: int) -> None:
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.controller import GranularityController
    from dsanchor.eval.compare import compare_methods, save_hits
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.eval.run import evaluate_retrieval
    from dsanchor.gate import GateConfig
    from dsanchor.report.results import build_results
    from dsanchor.state import StateConfig

    store = _store(features)
    heads = AlignmentHeads.from_pretrained(seed_dir / "heads")
    ctrl = GranularityController.from_pretrained(seed_dir / "ppo" / "controller")
    cfg = EvalConfig()
    res = evaluate_retrieval(store, heads, cfg, StateConfig(), ctrl, GateConfig(seed=seed))
    captioning = json.loads((seed_dir / "caption" / "caption_metrics.json").read_text())["methods"]
    pope = json.loads((seed_dir / "detector" / "detector_metrics.json").read_text())["test"]
    enc_ms = store.timing.get("text_ms_per_item")
    overhead = None
    if enc_ms:
        ctrl_ms = res.extra["timing_ms"]["state"] + res.extra["timing_ms"]["controller"]
        overhead = {"controller_ms": ctrl_ms, "encoder_ms": enc_ms, "ratio": ctrl_ms / enc_ms}
    results = build_results("synth", "test", res.extra["n_images"], res.extra["n_captions"], [seed], res.methods,
                            captioning, pope, overhead, paired=compare_methods(res.hits, cfg.select_k, seed=seed))
    _json(out / "results.json", results)
    save_hits(out / "hits.safetensors", res.hits)
    save_file({f"{k}.{d}": getattr(v, d).contiguous() for k, v in res.g.items() for d in ("t2i", "i2t")},
              str(out / "g.safetensors"))
    _json(out / "eval_details.json", {"val_curve": res.val_curve, "test_curve": res.test_curve,
                                      "two_stage": res.two_stage, **res.extra})
