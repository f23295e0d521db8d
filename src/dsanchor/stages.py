"""The pipeline's stages as library functions: what `dsanchor align`, `hallucination train`, `tune`, `train`,
`caption train`, `caption eval` and `eval` run, and what `dsanchor run` and the demo run (also making the
synthetic data and extracting features), with the same config dataclasses and defaults.

Each stage reads a feature store and the folders of earlier stages, and writes its own folder. Entry points
only parse arguments into configs and print; a behaviour exists once, here (STYLE.md 13).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path

from dsanchor.config import save_resolved
from dsanchor.errors import ConfigError
from dsanchor.files import write_captions, write_json

__all__ = ["SPLITS", "synth_stage", "extract_samples", "align_stage", "fit_heads_relations", "detector_stage",
           "tune_stage", "train_stage",
           "caption_train_stage", "caption_eval_stage", "caption_stage", "eval_stage", "load_rl_inputs",
           "caption_split", "CAPTION_METRICS"]

SPLITS = (0.6, 0.2, 0.2)  # the demo's synth split: more val than the 80/10/10 default (controllers are fit on val)
CAPTION_METRICS = "caption_metrics.json"

log = logging.getLogger(__name__)


def synth_stage(out: Path, config) -> None:
    """The demo's synthetic data (``config``: a :class:`~dsanchor.demo.DemoConfig`), split 60/20/20."""
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(out, SynthConfig(scenes=config.scenes, seed=config.data_seed, image_size=config.image_size,
                                    split_fractions=SPLITS, workers=config.workers, color_space=config.color_space),
                   progress=sys.stderr.isatty())


def encoder_config(config):
    """The effnet-minilm config of a run (``config``: a :class:`~dsanchor.run.RunConfig`): the encoder's defaults,
    with ``config.region_stage`` where set."""
    from dsanchor.encoders import encoder_config_class

    base = encoder_config_class("effnet-minilm")()
    stage = getattr(config, "region_stage", "")
    return dataclasses.replace(base, region_stage=stage) if stage and stage != "auto" else base


def auto_regions(config, object_labels: str):
    """``config`` (a :class:`~dsanchor.run.RunConfig`) with its "auto" region source and region stage resolved for
    a dataset whose object labels are ``object_labels``: photos whose objects come from captions get every grid
    cell, pooled from the encoder's head map (the 1280-d ImageNet features; text→image R@10 on Flickr8k val 0.648
    against 0.513 from stage5, docs/real-data.md); everything else keeps proposals from the encoder's default map
    (stage5, which keeps the colour and material that synth and CLEVR captions name)."""
    photo = object_labels == "captions"
    changes = {}
    if config.region_source == "auto":
        changes["region_source"] = auto_region_source(object_labels)
    if getattr(config, "region_stage", "") == "auto":
        changes["region_stage"] = "head" if photo else ""
    return dataclasses.replace(config, **changes) if changes else config


def auto_region_source(object_labels: str) -> str:
    """``--region-source auto``: "grid" for photos without boxes (their objects come from captions), where the
    proposals are only the grid's first cells and every grid cell did better on Flickr8k's val split
    (docs/real-data.md); "proposals" otherwise (renders, annotated data)."""
    return "grid" if object_labels == "captions" else "proposals"


def region_config(region_source: str):
    """The :class:`~dsanchor.encoders.regions.RegionConfig` of a run's region source (RunConfig.region_source):

    * "proposals": the class-agnostic fallback new files get (components, then grid cells; 10 regions);
    * "annotations": the dataset's boxes where an image has them, else the proposals;
    * "grid": every cell of the 1x1, 2x2 and 3x3 grids (14 regions), no components;
    * "union": the components (up to 6), then every grid cell (20 regions).
    """
    from dsanchor.encoders.regions import RegionConfig

    base = RegionConfig()
    cells = sum(s * s for s in base.grid_scales)
    choices = {"proposals": RegionConfig(annotations=False), "annotations": RegionConfig(annotations=True),
               "grid": RegionConfig(annotations=False, components=False, max_regions=cells),
               "union": RegionConfig(annotations=False, max_components=6, max_regions=cells + 6)}
    if region_source not in choices:
        raise ConfigError(f"region source must be one of {', '.join(choices)}, got {region_source!r}")
    return choices[region_source]


def extract_samples(samples, data: Path, out: Path, config, fmt: str, object_labels: str = "annotations") -> None:
    """Encode the samples (with their splits) into a feature store with the default encoder and the regions of
    ``config.region_source`` (a :class:`~dsanchor.run.RunConfig`; :func:`region_config`), pooled from the map of
    ``config.region_stage``; "auto" values follow ``object_labels`` (:func:`auto_regions`), "annotations" or
    "captions", which the manifest's source records."""
    from dsanchor.data.caption_objects import CAPTION_LABELS
    from dsanchor.encoders import create_encoder
    from dsanchor.features.extract import ExtractConfig, extract_features

    config = auto_regions(config, object_labels)  # "auto" region source and stage (dsanchor run resolves them first)
    encoder = create_encoder("effnet-minilm", encoder_config(config))
    progress = sys.stderr.isatty()  # a bar on a terminal, nothing in a log
    source = {"format": fmt, "split": None, **({"objects": CAPTION_LABELS} if object_labels == "captions" else {})}
    extract_features(samples, data, out, encoder, ExtractConfig(workers=config.workers, progress=progress),
                     region_config(config.region_source), source=source)


def align_stage(features, out, align=None, train=None, init=None, relations: bool = True) -> dict:
    """Train the alignment heads on train (early stopping on val), fit their compositional scorer on val, score
    test; returns the info dict.

    ``init``: a folder of saved heads to fine-tune (their architecture is kept and ``align`` is ignored).
    ``relations``: fit the scorer of multi-phrase captions (:mod:`dsanchor.relations`); off, they keep the single
    pool.
    """
    from dsanchor.align.heads import AlignConfig, AlignmentHeads
    from dsanchor.align.train import AlignTrainConfig, evaluate_by_granularity, train_heads
    from dsanchor.features.store import FeatureStore

    store, out = FeatureStore(features), Path(out)
    d = store.dims
    start = AlignmentHeads.from_pretrained(init) if init is not None else None
    base = start.config if start is not None else (align or AlignConfig())
    cfg = dataclasses.replace(base, coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"])
    train = train or AlignTrainConfig()
    heads, info = train_heads(store.images("train"), store.texts("train"), store.images("val"), store.texts("val"),
                              cfg, train, init=start)
    if relations:
        info["relations"] = fit_heads_relations(heads, store)
    heads.save_pretrained(out)
    info["init"] = None if init is None else str(init)
    save_resolved(out, align=cfg, align_train=train, features=str(features), init=info["init"])
    info["test"] = evaluate_by_granularity(heads, store.images("test"), store.texts("test"))
    write_json(out / "align_metrics.json", info)
    return info


def fit_heads_relations(heads, store) -> dict:
    """Fit the heads' compositional scorer of multi-phrase captions on the store's val split (at the best fixed g,
    by the selection score of :mod:`dsanchor.eval.methods`) and set it in ``heads.config``; returns the fit."""
    from dsanchor.eval.methods import EvalConfig, fit_relations
    from dsanchor.eval.views import prepare_view
    from dsanchor.relations import RelationConfig
    from dsanchor.state import StateConfig

    val = prepare_view(heads, store.images("val"), store.texts("val"), StateConfig(codebook=0),
                       encode_texts=store.encode_texts, relation=RelationConfig(), parse=True)
    chosen, info = fit_relations(val, EvalConfig())
    heads.config.relation_mix, heads.config.relation_weight = chosen.mix, chosen.weight
    log.info("compositional scorer fit on val: mix %.2f, relation weight %.2f", chosen.mix, chosen.weight)
    return info


def detector_stage(features, out, detector=None, train=None, pope=None, val_fraction: float = 0.1) -> dict:
    """Train the hallucination detector and score it POPE-style on val and test; returns the info dict.

    Without val images that have objects, ``val_fraction`` of train is held out for early stopping.
    """
    import logging

    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import (
        DetectorConfig,
        DetectorTrainConfig,
        PopeConfig,
        dataset_stats,
        evaluate_pope,
        holdout,
        train_detector,
    )

    store, out = FeatureStore(features), Path(out)
    d = store.dims
    cfg = dataclasses.replace(detector or DetectorConfig(), coarse_dim=d["coarse"], region_dim=d["region"],
                              text_dim=d["text"])
    train_cfg, pope = train or DetectorTrainConfig(), pope or PopeConfig()
    vocab = store.object_vocabulary()
    tr, val, test = store.images("train"), store.images("val"), store.images("test")
    if len(tr) == 0:
        raise ConfigError(f"{features}: the store has no train images; extract a dataset with splits")
    if not any(val.objects):
        logging.getLogger(__name__).warning("no val images with objects; holding out %.0f%% of train",
                                            100 * val_fraction)
        tr, val = holdout(tr, val_fraction, train_cfg.seed)
    det, info = train_detector(tr, val, vocab, cfg, train_cfg, pope)
    det.save_pretrained(out)
    save_resolved(out, detector=det.config, detector_train=train_cfg, pope=pope, features=str(features))
    stats = dataset_stats(vocab, tr, val, test)
    info = {"train_time_s": info.pop("train_time_s"), "val": evaluate_pope(det, val, vocab, stats, pope),
            **({"test": evaluate_pope(det, test, vocab, stats, pope)} if any(test.objects) else {}),
            "n_images": {"train": len(tr), "val": len(val), "test": len(test)},
            "vocabulary_size": len(vocab.names), **info}
    write_json(out / "detector_metrics.json", info)
    return info


def load_rl_inputs(features, heads, hall_detector=None):
    """(store, heads, hallucination detector or None) from their folders."""
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.features.store import FeatureStore

    det = None
    if hall_detector:
        from dsanchor.hallucination import HallucinationDetector

        det = HallucinationDetector.from_pretrained(hall_detector)
    return FeatureStore(features), AlignmentHeads.from_pretrained(heads), det


def tune_stage(features, heads, hall_detector, out, state=None, tune=None, ppo=None, accuracy=None,
               split: str = "val"):
    """Optuna study over the reward (beta / alpha and the clip bounds) with the 2-fold objective on ``split``.

    Returns (study, best RewardConfig); writes ``best_reward.json`` and ``objective.png`` into ``out``.
    """
    from dsanchor.eval.views import split_halves, subset
    from dsanchor.report.plots import plot_tuning
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.train import rl_view, tune_objective
    from dsanchor.rl.tune import TuneConfig, best_reward, run_parallel, write_best
    from dsanchor.state import StateConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tune, state = tune or TuneConfig(), state or StateConfig()
    if not tune.storage:
        tune = dataclasses.replace(tune, storage=f"sqlite:///{(out / 'study.db').resolve()}")
    ppo = dataclasses.replace(ppo or PPOConfig(), timesteps=tune.timesteps,
                              checkpoint_every=max(tune.timesteps // 4, 1024))
    accuracy = accuracy or AccuracyConfig()
    store, heads_m, det = load_rl_inputs(features, heads, hall_detector)
    images, texts = store.images(split), store.texts(split)
    folds = [rl_view(store, heads_m, state, det, *subset(images, texts, keep))
             for keep in split_halves(images, tune.seed)]
    make = functools.partial(tune_objective, folds, accuracy, ppo, str(out))
    study = run_parallel(make, tune)
    reward = best_reward(study)
    write_best(out, study, reward)
    save_resolved(out, tune=tune, ppo=ppo, accuracy=accuracy, state=state, features=str(features), heads=str(heads),
                  hall_detector=str(hall_detector), split=split)
    plot_tuning(json.loads((out / "best_reward.json").read_text())["trials"], out / "objective.png")
    return study, reward


def train_stage(features, heads, hall_detector, out, reward=None, state=None, ppo=None, accuracy=None,
                split: str = "val", progress: bool = True, pair=None):
    """PPO retrieval controllers on ``split``'s queries: the query-only one, and (unless ``pair`` is False) the
    per-pair one in ``out/pair`` (:mod:`dsanchor.pairs`, ``pair``: its :class:`~dsanchor.pairs.PairPPOConfig`);
    returns (query-only controller, info).

    Also writes ``out/pipeline`` (:func:`dsanchor.pipeline.save_pipeline`: encoder, regions, heads, this
    controller, the detector, and the fixed g best on ``split``) for query-state controllers.
    """
    from dsanchor.rl.env import RewardConfig
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.train import rl_view, train_retrieval_controller
    from dsanchor.state import StateConfig

    reward, state = reward or RewardConfig(), state or StateConfig()
    ppo, accuracy = ppo or PPOConfig(), accuracy or AccuracyConfig()
    store, heads_m, det = load_rl_inputs(features, heads, hall_detector)
    view, hall = rl_view(store, heads_m, state, det, store.images(split), store.texts(split))
    save_resolved(out, reward=reward, ppo=ppo, accuracy=accuracy, state=state, features=str(features),
                  heads=str(heads), hall_detector=str(hall_detector), split=split)
    ctrl, info = train_retrieval_controller(view, hall, reward, accuracy, ppo, out, progress=progress)
    from dsanchor.eval.methods import EvalConfig, select_fixed_g

    g_best, _ = select_fixed_g(view, EvalConfig())
    if pair is not False:
        from dsanchor.pairs import PairPPOConfig
        from dsanchor.rl.train import train_pair_controller

        pair = pair or PairPPOConfig(seed=ppo.seed)
        _, info["pair"] = train_pair_controller(view, hall, reward, accuracy, pair, Path(out) / "pair", g_best,
                                                progress=progress)
    write_json(Path(out) / "train_info.json", info)
    if state.state_kind == "query":  # a pipeline runs query states (dsanchor.pipeline)
        from dsanchor.pipeline import save_pipeline

        save_pipeline(Path(out) / "pipeline", features, heads, out, hall_detector, state=state, fixed_g=g_best)
    return ctrl, info


def caption_split(store, heads, name: str):
    """(caption split projected with ``heads``, its image features) of split ``name`` of ``store``."""
    from dsanchor.captioning import prepare_caption_split

    images = store.images(name)
    if len(images) == 0:
        raise ConfigError(f"the feature store has no {name!r} images; extract a dataset with splits")
    return prepare_caption_split(heads, images, store.texts(name)), images


def caption_train_stage(features, heads, out, decoder=None, train=None, vocab=None) -> dict:
    """Train the caption decoder on the train captions (early stopping on val); returns its training info.

    Writes the decoder and its vocabulary, ``config.yaml`` (sections ``decoder``, ``caption_train``, ``vocab``)
    and ``caption_train.json`` (per-check history) into ``out``.
    """
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.captioning import CaptionTrainConfig, DecoderConfig, VocabConfig, Vocabulary, train_decoder
    from dsanchor.features.store import FeatureStore

    cfg, train_cfg, vocab_cfg = decoder or DecoderConfig(), train or CaptionTrainConfig(), vocab or VocabConfig()
    store, heads_m, out = FeatureStore(features), AlignmentHeads.from_pretrained(heads), Path(out)
    train_split, _ = caption_split(store, heads_m, "train")
    val_split, _ = caption_split(store, heads_m, "val")
    words = Vocabulary.build(store.texts("train").captions, vocab_cfg)
    model, info = train_decoder(train_split, val_split, words, cfg, train_cfg)
    model.save_pretrained(out, words)
    save_resolved(out, decoder=model.config, caption_train=train_cfg, vocab=vocab_cfg, features=str(features),
                  heads=str(heads))
    write_json(out / "caption_train.json", info)
    return info


def caption_eval_stage(features, heads, decoder, out, rl=None, ppo=None, gate=None, decode=None,
                       hall_detector=None, vocabulary: str = "auto", extra: dict | None = None) -> dict:
    """Fit fixed_best, gate_grad and dsa_ppo on val; evaluate them, coarse, fine and the oracle (an upper bound)
    on test. Returns what it writes to ``caption_metrics.json``.

    Also writes the controllers (``ppo/controller``, ``gate/controller``), the g grids, ``config.yaml`` and each
    method's captions (``captions/<method>.jsonl``) into ``out``.

    Args:
        decoder: a folder written by :func:`caption_train_stage`.
        hall_detector: a hallucination detector folder; without it the reward has no hallucination term.
        vocabulary: the object vocabulary of CHAIR and the detector ("synth", "coco", or "auto": synth for
            CLEVR-style names).
        extra: more entries for ``caption_metrics.json``.
    """
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.captioning import (
        CaptionGateConfig,
        CaptionRLConfig,
        DecodeConfig,
        evaluate_captioning,
        fit_caption_methods,
        load_captioner,
    )
    from dsanchor.captioning.controller import DetectorHallucination
    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import HallucinationDetector
    from dsanchor.hallucination.matrices import guess_vocabulary
    from dsanchor.rl.ppo import PPOConfig

    rl, ppo = rl or CaptionRLConfig(), ppo or PPOConfig()
    gate, decode = gate or CaptionGateConfig(), decode or DecodeConfig()
    store, heads_m, out = FeatureStore(features), AlignmentHeads.from_pretrained(heads), Path(out)
    val, val_images = caption_split(store, heads_m, "val")
    test, test_images = caption_split(store, heads_m, "test")
    vocabulary = guess_vocabulary(test_images) if vocabulary == "auto" else vocabulary
    model, words = load_captioner(decoder)
    save_resolved(out, caption_rl=rl, ppo=ppo, gate=gate, decode=decode, features=str(features), heads=str(heads),
                  decoder=str(decoder), hall_detector=None if hall_detector is None else str(hall_detector),
                  vocabulary=vocabulary)
    t0 = time.perf_counter()
    hall = None if hall_detector is None else DetectorHallucination(
        HallucinationDetector.from_pretrained(hall_detector), val_images, store.object_vocabulary(), vocabulary)
    methods = fit_caption_methods(model, words, val, test, rl, ppo, gate, decode, out, hall)
    captions: dict[str, list] = {}
    results = evaluate_captioning(model, words, test, methods.g, decode, methods.test_grid, vocabulary, captions)
    for name, caps in captions.items():
        write_captions(out / "captions" / f"{name}.jsonl", test.image_ids.tolist(), caps, methods.g[name].tolist())
    results["fixed_best"]["g"] = methods.info["fixed_best_g"]
    metrics = {"split": "test", "n_images": len(test), "vocabulary": vocabulary, "cider_scale": "raw (not x100)",
               "methods": results, "oracle": methods.info["oracle"], "info": methods.info,
               "baselines": caption_baselines(store, test, test_images, vocabulary), **(extra or {}),
               "time_s": time.perf_counter() - t0}
    write_json(out / CAPTION_METRICS, metrics)
    return metrics


def caption_baselines(store, test, test_images, vocabulary: str) -> dict:
    """The captioning rows without a decoder (:mod:`dsanchor.captioning.baselines`): the nearest-neighbour caption
    (Devlin et al. 2015) and the human leave-one-out references, scored as the methods are."""
    from dsanchor.captioning.baselines import human_leave_one_out, nearest_neighbour_captions
    from dsanchor.captioning.evaluate import caption_metrics

    nn = nearest_neighbour_captions(store.images("train"), store.texts("train"), test_images)
    keys = ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s", "CHAIR_images")
    row = caption_metrics([{"nn": c} for c in nn], test, vocabulary)
    return {"nearest_neighbour": {k: row[k] for k in keys if k in row},
            "human_leave_one_out": human_leave_one_out(test, vocabulary)}


def caption_stage(features: Path, seed_dir: Path, out: Path, config, seed: int, train, detector: bool = True) -> dict:
    """The captioning of one seed of ``dsanchor run``: :func:`caption_train_stage` of the decoder configured by
    ``train`` (a :class:`~dsanchor.captioning.CaptionTrainConfig`, part of the stage's key) into ``out/decoder``,
    then :func:`caption_eval_stage` with the seed's heads and (with ``detector``) its detector; ``config`` is a
    :class:`~dsanchor.run.RunConfig` (its caption PPO budget)."""
    from dsanchor.captioning import CaptionGateConfig
    from dsanchor.rl.ppo import PPOConfig

    out = Path(out)
    info = caption_train_stage(features, seed_dir / "heads", out / "decoder", train=train)
    steps = config.caption_ppo_timesteps
    ppo = PPOConfig(timesteps=steps, seed=seed, checkpoint_every=max(steps // 4, 1024))
    return caption_eval_stage(features, seed_dir / "heads", out / "decoder", out, ppo=ppo,
                              gate=CaptionGateConfig(seed=seed),
                              hall_detector=seed_dir / "detector" if detector else None,
                              extra={"decoder": info})


def eval_stage(features, heads, out, controller=None, captioning=None, hall_detector=None, config=None, state=None,
               gate=None, split: str = "test", dataset: str | None = None) -> dict:
    """Every retrieval method on ``split`` -> ``results.json``, ``hits.safetensors``, ``eval_details.json``.

    Args:
        controller: a PPO run folder (or its ``controller/``), adds ``dsa_ppo``.
        captioning: a caption run with ``caption_metrics.json``, adds the caption columns.
        hall_detector: a hallucination detector run with ``detector_metrics.json``, adds POPE.
    """
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.controller import GranularityController
    from dsanchor.eval.compare import compare_methods, save_hits
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.eval.run import evaluate_retrieval
    from dsanchor.features.store import FeatureStore
    from dsanchor.gate import GateConfig
    from dsanchor.pairs import PairGateConfig
    from dsanchor.report.results import build_results
    from dsanchor.state import StateConfig

    cfg, state, gate = config or EvalConfig(), state or StateConfig(), gate or GateConfig()
    store, out = FeatureStore(features), Path(out)
    ctrl, pair_ctrl = None, None
    if controller is not None:
        p = Path(controller)
        ctrl = GranularityController.from_pretrained(p / "controller" if (p / "controller").is_dir() else p)
        if (p / "pair" / "pair_controller").is_dir():
            from dsanchor.pairs import PairController

            pair_ctrl = PairController.from_pretrained(p / "pair" / "pair_controller")
    res = evaluate_retrieval(store, AlignmentHeads.from_pretrained(heads), cfg, state, ctrl, gate, split,
                             pair_controller=pair_ctrl, pair_gate=PairGateConfig(seed=gate.seed))
    caps = json.loads((Path(captioning) / CAPTION_METRICS).read_text()) if captioning else None
    pope = (json.loads((Path(hall_detector) / "detector_metrics.json").read_text()).get("test") if hall_detector
            else None)
    overhead = None
    enc_ms = store.timing.get("text_ms_per_item")
    if enc_ms and ctrl is not None:
        ctrl_ms = res.extra["timing_ms"]["state"] + res.extra["timing_ms"]["controller"]
        overhead = {"controller_ms": ctrl_ms, "encoder_ms": enc_ms, "ratio": ctrl_ms / enc_ms}
    name = dataset or store.manifest.get("source", {}).get("format", "unknown")
    results = build_results(name, split, res.extra["n_images"], res.extra["n_captions"], [gate.seed], res.methods,
                            caps["methods"] if caps else None, pope, overhead,
                            paired=compare_methods(res.records, res.clusters, n_boot=cfg.n_boot, seed=gate.seed))
    results["protocols"] = res.extra["protocols"]
    results["chance"] = res.extra["chance"]
    results["relations"] = res.extra["relations"]
    hard = res.extra.pop("hard_negatives", None)
    if hard is not None:
        from dsanchor.eval.hardneg import WINS_FILE, save_wins

        save_wins(out / WINS_FILE, hard)
        results["hard_negatives"] = {k: v for k, v in hard.items() if k != "_wins"}
    labels = store.manifest.get("source", {}).get("objects")
    results["object_labels"] = labels or ("annotations" if any(store.images(split).objects) else "none")
    if store.timing.get("image_ms_per_item"):
        results["extract_images_per_s"] = 1000.0 / store.timing["image_ms_per_item"]
    if caps:
        results["captioning"] = {k: v for k, v in caps.items() if k != "methods"}
    save_resolved(out, eval=cfg, state=state, gate=gate, features=str(features), heads=str(heads),
                  controller=None if controller is None else str(controller), split=split)
    write_json(out / "results.json", results)
    save_hits(out / "hits.safetensors", res.records, res.clusters)
    from safetensors.torch import save_file

    save_file({f"{k}.{d}": getattr(v, d).contiguous() for k, v in res.g.items() for d in ("t2i", "i2t")},
              str(out / "g.safetensors"))
    write_json(out / "eval_details.json", {"val_curve": res.val_curve, "test_curve": res.test_curve,
                                      "two_stage": res.two_stage, **res.extra})
    return results
