"""``dsanchor mllm eval``: the unmodified MLLM against DSA inside it (the paper's Table 1 layout).

Methods (``results.json``'s ``methods``, the project's schema; every g is applied through
:func:`~dsanchor.integrations.attach_dsa`):

* ``base``: the unmodified model (no hooks);
* ``fixed_best``: one g for every image, the grid g with the best val score;
* ``dsa_ppo``: the controller from ``dsanchor mllm train`` (g per image and prompt);
* ``oracle``: per test image the grid g with its best score on that image's own references: an upper
  bound, not a method.

The score that picks g (``fixed_best`` on val, ``oracle`` per test image) is the tuning target of
:mod:`dsanchor.mllm.train`: CIDEr-D minus the hallucinated share of named objects.

Columns:

* BLEU-4 and CIDEr-D (pycocoevalcap's scorers; CIDEr on its raw scale, not x100), every image's caption
  against all its references;
* CHAIR_i and CHAIR_s (fractions) over the images with annotated objects;
* POPE (Li et al. 2023): for each annotated test image, up to ``pope_positives`` of its objects ("yes") and
  as many absent ones ("no") drawn by each of the random, popular and adversarial samplings
  (:mod:`dsanchor.hallucination.negatives`, statistics over the whole dataset); the model is asked
  :data:`~dsanchor.mllm.pope.POPE_QUESTION` and its answer read by
  :func:`~dsanchor.mllm.pope.read_yes_no` (anything but yes counts as no). Accuracy, precision,
  recall, F1 and the yes-ratio per sampling and over all three;
* R@1 and R@10 both ways with the MLLM's own embeddings (E5-V, Jiang et al. 2024): the last token's last
  hidden state after a one-word-summary prompt (each family's ``EMBED_PROMPTS``, :mod:`dsanchor.mllm.embed`),
  images with the method's g, captions text-only. Relevance is exact where the data has scene graphs (every
  image a caption is true of), else paired;
* ms per image of captioning and the controller's share of it (state + controller, timed inside the hook).

Differences to ``base`` (and ``dsa_ppo - fixed_best``) in CIDEr-D, CHAIR_i and POPE F1 carry a 95%
percentile interval from a bootstrap over test images (each with all its captions or questions) and training
seeds (:func:`dsanchor.eval.compare.bootstrap_diff`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsanchor.anchoring import choose_fixed_g, choose_g_per_item
from dsanchor.controller import GranularityController
from dsanchor.data.records import Sample
from dsanchor.errors import DataError
from dsanchor.eval.compare import bootstrap_diff
from dsanchor.files import write_json
from dsanchor.integrations import SettableG, processor_fns
from dsanchor.integrations.handle import DSAHandle
from dsanchor.mllm.config import GridConfig, MLLMConfig, MLLMEvalConfig
from dsanchor.mllm.data import MLLMData, load_mllm_data
from dsanchor.mllm.embed import image_embeddings, recalls, relevance, text_embeddings
from dsanchor.mllm.evaluate_items import run_item_eval
from dsanchor.mllm.generate import CaptionRun, caption_samples, write_captions
from dsanchor.mllm.grid import GridCache
from dsanchor.mllm.pope import Question, answer_questions, f1_of_counts, pope_counts, pope_questions, pope_scores
from dsanchor.mllm.rewards import GridRewards, objective_scores, split_rewards
from dsanchor.mllm.scores import per_image_scores, score_captions, vocabulary_matches
from dsanchor.mllm.seeds import mean_over_seeds, resolve_controllers
from dsanchor.report.mllm import write_mllm_report

__all__ = ["METHODS", "resolve_controllers", "mean_over_seeds", "run_mllm_eval"]

METHODS = ("base", "fixed_best", "dsa_ppo", "oracle")


@dataclass
class EvalSetup:
    """What every method is measured with: the test split, its grid cache and the chosen g, POPE and retrieval."""

    cfg: MLLMConfig
    grid: GridConfig
    data: MLLMData
    test: list[Sample]
    test_cache: GridCache
    fixed_g: float  # the best fixed g on val
    oracle: dict[int, float]  # test image id -> its best grid g
    questions: dict[str, list[Question]]  # POPE, per sampling
    texts: list[str]  # the test captions (retrieval queries)
    txt_emb: torch.Tensor | None  # (T, H)
    rel: torch.Tensor | None  # (T, N)
    protocol: str | None  # exact or paired
    progress: bool


@dataclass
class MethodRun:
    """One measurement of a method (one controller for dsa_ppo)."""

    entry: dict[str, Any]  # its numbers in results.json
    per_image: dict[str, np.ndarray]  # what the bootstrap resamples
    captions: CaptionRun


@contextmanager
def attached(setup: EvalSetup, method: str, ctrl: GranularityController | None) -> Iterator[tuple[Any, Any]]:
    """DSA as ``method`` applies it (nothing for base, the fixed g, the controller, or the oracle's g per image):
    ``(handle or None, set_images(image_ids))``, the setter giving each image its oracle g before a call."""
    source: Any = {"base": None, "fixed_best": float(setup.fixed_g), "dsa_ppo": ctrl}.get(method, SettableG())
    handle: DSAHandle | None = None if source is None else setup.data.attach(source, setup.cfg.coarse_layer)

    def set_images(image_ids: list[int]) -> None:
        if isinstance(source, SettableG):
            source.set(torch.tensor([setup.oracle[i] for i in image_ids], dtype=torch.float32))

    try:
        yield handle, set_images
    finally:
        if handle is not None:
            handle.detach()


def _captions(setup: EvalSetup, method: str, ctrl, entry: dict[str, Any]) -> CaptionRun:
    """The method's test captions: from the grid cache for grid methods, else generated (timed into ``entry``)."""
    cache = setup.test_cache
    if method in ("fixed_best", "oracle"):
        j = {round(float(g), 6): k for k, g in enumerate(cache.grid)}
        gs = {i: (setup.fixed_g if method == "fixed_best" else setup.oracle[i]) for i in cache.image_ids}
        return CaptionRun({i: cache.captions[n][j[round(gs[i], 6)]] for n, i in enumerate(cache.image_ids)}, gs)
    cfg, data = setup.cfg, setup.data
    prepare, decode = processor_fns(cfg.model_type, data.processor, cfg.caption_prompt)
    with attached(setup, method, ctrl) as (handle, set_images):
        run = caption_samples(data.model, prepare, decode, setup.test, data.root, setup.grid.batch_size,
                              setup.grid.max_new_tokens, on_batch=lambda b: set_images([s.image_id for s in b]),
                              progress=setup.progress)
        ctrl_s = handle.controller_seconds if handle is not None else 0.0
    n, secs = len(setup.test), run.seconds
    entry["ms_per_image"] = 1000 * secs / n
    if method == "dsa_ppo":
        entry["controller_ms_per_image"] = 1000 * ctrl_s / n
        entry["controller_share"] = ctrl_s / secs if secs else 0.0
    return run


def measure(setup: EvalSetup, method: str, ctrl: GranularityController | None = None) -> MethodRun:
    """Every column of the module docstring for one method (one controller for dsa_ppo)."""
    cfg, data, test = setup.cfg, setup.data, setup.test
    entry: dict[str, Any] = {}
    run = _captions(setup, method, ctrl, entry)
    entry.update(score_captions(run.captions, test, data.vocabulary))
    if run.g:
        g_arr = np.array(list(run.g.values()))
        entry["g_mean"], entry["g_std"] = float(g_arr.mean()), float(g_arr.std())
    per_image = per_image_scores(run.captions, test, data.vocabulary)
    if setup.questions:
        with attached(setup, method, ctrl) as (_, set_images):
            answers = answer_questions(data.model, cfg.model_type, data.processor, test, data.root,
                                       setup.questions, setup.grid.batch_size, set_images, setup.progress)
        entry["pope"] = pope_scores(setup.questions, answers)
        per_image["pope"] = pope_counts(setup.questions, answers, len(test))
    if setup.txt_emb is not None:
        with attached(setup, method, ctrl) as (_, set_images):
            img = image_embeddings(data.model, cfg.model_type, data.processor, test, data.root,
                                   setup.grid.batch_size, set_images, setup.progress)
        entry["retrieval"] = {"protocol": setup.protocol, **recalls(img, setup.txt_emb, setup.rel)}
    return MethodRun(entry, per_image, run)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def _chair_i(x: np.ndarray) -> float:  # columns: hallucinated mentions, mentions
    return float(x[:, 0].sum() / x[:, 1].sum()) if x[:, 1].sum() else 0.0


def differences(per_image: dict[str, dict[str, np.ndarray]], methods: list[str],
                ev: MLLMEvalConfig) -> dict[str, Any]:
    """Bootstrap differences of CIDEr-D, CHAIR_i and POPE F1 (per-image arrays are (S, n, ...))."""
    pairs = [(a, "base") for a in methods if a != "base"]
    if "dsa_ppo" in methods:
        pairs.append(("dsa_ppo", "fixed_best"))
    out: dict[str, Any] = {}
    for a, b in pairs:
        pa, pb = per_image[a], per_image[b]
        d = {"CIDEr": bootstrap_diff(_mean, pa["cider"], pb["cider"], ev.n_boot, ev.seed)}
        judged = pa["judged"][0]
        if judged.any():
            d["CHAIR_i"] = bootstrap_diff(_chair_i, np.stack([pa["hall"], pa["mentions"]], -1)[:, judged],
                                          np.stack([pb["hall"], pb["mentions"]], -1)[:, judged], ev.n_boot, ev.seed)
        if "pope" in pa:
            d["POPE_F1"] = bootstrap_diff(f1_of_counts, pa["pope"], pb["pope"], ev.n_boot, ev.seed)
        out[f"{a} - {b}"] = d
    return out


def _choose_g(val_rewards: GridRewards, test_cache: GridCache, test_rewards: GridRewards):
    """(fixed g chosen on val, oracle g per test image, val objective by g, test objective (N, G))."""
    val_obj = objective_scores(val_rewards.cider, val_rewards.hallucination).mean(0)  # (G,)
    fixed_g = choose_fixed_g(torch.from_numpy(val_obj), test_cache.grid)
    test_obj = objective_scores(test_rewards.cider, test_rewards.hallucination)  # (N, G)
    oracle_g = choose_g_per_item(torch.from_numpy(test_obj), test_cache.grid)
    oracle = {i: float(g) for i, g in zip(test_cache.image_ids, oracle_g, strict=True)}
    return fixed_g, oracle, val_obj, test_obj


def _setup(cfg: MLLMConfig, grid: GridConfig, ev: MLLMEvalConfig, data: MLLMData, progress: bool):
    """The val and test grid caches (every rank), then on rank 0 the :class:`EvalSetup` and the objective
    curves; ``(None, {})`` on other ranks."""
    tic = time.perf_counter()
    val_cache, val_rewards = split_rewards(cfg, data, "val", grid, progress)
    test_cache, test_rewards = split_rewards(cfg, data, "test", grid, progress)
    info = {"grid_caches": time.perf_counter() - tic, "val_grid_seconds": val_cache.seconds,
            "test_grid_seconds": test_cache.seconds}
    if data.rank != 0:
        return None, info
    test = data.split("test", cfg.limit)
    if [s.image_id for s in test] != test_cache.image_ids:
        raise DataError(cfg.cache_dir("test"), "the test grid cache holds other images; use another --cache")
    fixed_g, oracle, val_obj, test_obj = _choose_g(val_rewards, test_cache, test_rewards)
    questions = pope_questions(test, data.samples, ev.pope_positives, ev.seed) if ev.pope_positives else {}
    texts, rel, protocol = relevance(test) if ev.retrieval else ([], None, None)
    txt_emb = (text_embeddings(data.model, cfg.model_type, data.processor, texts, grid.batch_size, progress)
               if ev.retrieval and texts else None)
    info.update({"fixed_best_g": fixed_g, "grid": test_cache.grid.tolist(), "val_objective_by_g": val_obj.tolist(),
                 "test_objective_by_g": test_obj.mean(0).tolist()})
    return EvalSetup(cfg, grid, data, test, test_cache, fixed_g, oracle, questions, texts, txt_emb, rel, protocol,
                     progress), info


def _measure_methods(setup: EvalSetup, ctrls: list[GranularityController],
                     out: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """``methods`` of results.json and each method's per-image values; writes each run's captions."""
    methods: dict[str, Any] = {}
    per_image: dict[str, dict[str, np.ndarray]] = {}
    for method in [m for m in METHODS if m != "dsa_ppo" or ctrls]:
        tic = time.perf_counter()
        runs = [measure(setup, method, c) for c in ctrls] if method == "dsa_ppo" else [measure(setup, method)]
        entry = mean_over_seeds([r.entry for r in runs])
        if len(runs) > 1:
            entry["seeds"] = [r.entry for r in runs]
        entry["seconds"] = time.perf_counter() - tic
        methods[method] = entry
        per_image[method] = {k: np.stack([r.per_image[k] for r in runs]) for k in runs[0].per_image}  # (S, n, ...)
        for k, r in enumerate(runs):
            name = method if len(runs) == 1 else f"{method}_seed{k}"
            write_captions(out / "captions" / f"{name}.jsonl", r.captions, setup.test_cache.image_ids)
    return methods, per_image


def run_mllm_eval(cfg: MLLMConfig, grid: GridConfig, ev: MLLMEvalConfig, progress: bool = True,
                  data: MLLMData | None = None) -> dict[str, Any] | None:
    """Every method and column of the module docstring; writes results.json and report.md to ``cfg.out``.
    With ``--questions`` the evaluation is per item and question family instead
    (:func:`dsanchor.mllm.evaluate_items.run_item_eval`).

    With several training seeds (``mllm train --seeds N``) ``dsa_ppo`` is measured once per seed: its numbers
    are the means with ``_std`` beside them, and its intervals resample seeds as well as images.
    """
    t0 = time.perf_counter()
    data = data or load_mllm_data(cfg)
    ctrls = [GranularityController.from_pretrained(p).to(data.device) for p in resolve_controllers(ev.controller)]
    for c in ctrls:
        data.attach(c, cfg.coarse_layer).detach()  # the layout check, before any work
    if cfg.questions:  # per item and question family
        return run_item_eval(cfg, grid, ev, data, progress, ctrls)
    setup, info = _setup(cfg, grid, ev, data, progress)
    if setup is None:
        return None
    out = Path(cfg.out)
    methods, per_image = _measure_methods(setup, ctrls, out)
    results: dict[str, Any] = {
        "dataset": cfg.format, "split": "test", "n_images": len(setup.test), "methods": methods,
        **{k: info[k] for k in ("fixed_best_g", "grid", "val_objective_by_g", "test_objective_by_g")},
        "cider_scale": "raw (not x100)", "chair_scale": "fraction", "n_controller_seeds": len(ctrls)}
    if ctrls:
        d = methods["dsa_ppo"]
        results["overhead"] = {"base_ms_per_image": methods["base"]["ms_per_image"],
                               "dsa_ppo_ms_per_image": d["ms_per_image"],
                               "controller_ms_per_image": d["controller_ms_per_image"],
                               "controller_share": d["controller_share"]}
    results["differences"] = differences(per_image, list(methods), ev)
    results.update({"model_type": cfg.model_type, "model_path": str(cfg.model_path), "data": str(cfg.data),
                    "split_note": data.split_note, "n_test_images": len(setup.test),
                    "n_judged_chair": int(per_image["base"]["judged"][0].sum()),
                    "chair_vocabulary": data.vocabulary,
                    "chair_vocabulary_matches": vocabulary_matches(setup.test, data.vocabulary),
                    "n_pope_questions": {s: len(q) for s, q in setup.questions.items()},
                    "retrieval_protocol": setup.protocol, "n_captions": len(setup.texts), "controller": ev.controller,
                    "controllers": [str(p) for p in resolve_controllers(ev.controller)],
                    "timing_s": {"grid_caches": info["grid_caches"], "total": time.perf_counter() - t0},
                    "val_grid_seconds": info["val_grid_seconds"], "test_grid_seconds": info["test_grid_seconds"]})
    write_json(out / "results.json", results)
    write_mllm_report(results, out)
    return results
