"""``dsanchor mllm eval --questions``: the methods per question family, on the test split's items.

Items are the questions and caption prompts of the questions file about the test images (:mod:`dsanchor.mllm.items`).
Methods (``results.json``'s ``methods``; every g is applied through :func:`~dsanchor.integrations.attach_dsa`):

* ``base``: the unmodified model (no hooks);
* ``fixed_best``: one g for every item, the grid g with the best val score;
* ``family_best``: one g per question family, the grid g with the best val score on that family's items. It reads
  the item's true family, so it is a reference for what a question-reading controller can reach, not a method;
* ``router_loss``: AVG-LLaVA's supervised router on the answer losses (:mod:`dsanchor.mllm.router`), same state;
* ``dsa_ppo``: the PPO controller of ``mllm train --questions`` (g per item from the seam and the item's prompt);
* ``oracle``: per test item the grid g with the best score on its own test answer: an upper bound, and an
  optimistic one, since the best of G answers is taken per item (G draws of a noisy answer include lucky ones).

The score that picks g is the reward's objective: accuracy (exact match, or CIDEr-D for a caption prompt) minus the
hallucination term. The grid methods read their answers from the test grid cache; base, router_loss and dsa_ppo
generate them (timed: ms per item, and the controller's share of it).

Columns, per question family: accuracy (exact match of the normalised answer) and overall (question items); per
caption prompt CIDEr-D (raw scale), CHAIR_i and CHAIR_s as published and, on synth, with negated mentions left out
(``_no_negated``), left out where CHAIR judges no image; the false-yes rate (a "yes"
about an absent object); POPE per sampling; the mean g per family. Differences to ``fixed_best`` and to
``router_loss`` carry a 95% interval from a bootstrap over test images (each with all its items) and PPO seeds
(:func:`dsanchor.eval.compare.bootstrap_diff`). Retrieval with the MLLM's embeddings is a column of the caption
evaluation only (``mllm eval`` without ``--questions``).
"""

from __future__ import annotations

import time
from collections import defaultdict
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
from dsanchor.files import write_json, write_jsonl
from dsanchor.mllm.answer import answer_questions_file
from dsanchor.mllm.config import GridConfig, MLLMConfig, MLLMEvalConfig
from dsanchor.mllm.data import MLLMData
from dsanchor.mllm.grid import GridCache
from dsanchor.mllm.items import Item, ItemRewards, item_scores, item_split
from dsanchor.mllm.pope import answer_questions, f1_of_counts, pope_counts, pope_questions, pope_scores
from dsanchor.mllm.rewards import objective_scores
from dsanchor.mllm.scores import vocabulary_matches
from dsanchor.mllm.seeds import mean_over_seeds, resolve_controllers
from dsanchor.report.mllm_items import write_items_report

__all__ = ["ITEM_METHODS", "choose_item_g", "run_item_eval"]

ITEM_METHODS = ("base", "fixed_best", "family_best", "router_loss", "dsa_ppo", "oracle")
GRID_METHODS = ("fixed_best", "family_best", "oracle")
PAIRS = (("dsa_ppo", "fixed_best"), ("dsa_ppo", "router_loss"), ("router_loss", "fixed_best"),
         ("family_best", "fixed_best"), ("oracle", "fixed_best"))  # the last two: the headroom a controller has
# per test image, summed: what the bootstrap resamples (columns of ItemSetup.per_image)
COLUMNS = ("correct", "questions", "cider", "captions", "false_yes", "yes_no_absent")


@dataclass
class ItemSetup:
    """What every method is measured with: the test items, their grid cache, the chosen g and POPE."""

    cfg: MLLMConfig
    grid: GridConfig
    data: MLLMData
    test: list[Sample]  # the test images
    items: list[Item]  # the test items, in the cache's order
    cache: GridCache  # their grid cache
    fixed_g: float  # one g, chosen on val
    family_g: dict[str, float]  # one g per family, chosen on val (fixed_g for a family val lacks)
    oracle: np.ndarray  # (N,) per test item its best grid g on its own answer
    questions: dict[str, list]  # POPE, per sampling
    progress: bool


def choose_item_g(val_items: list[Item], val_rewards: ItemRewards, test_items: list[Item], test_rewards: ItemRewards,
                  grid: torch.Tensor) -> tuple[float, dict[str, float], np.ndarray, np.ndarray]:
    """(fixed g, g per family, oracle g per test item, val objective by g) from the grid caches' rewards."""
    val_obj = objective_scores(val_rewards.accuracy, val_rewards.hallucination)  # (Nv, G)
    fixed_g = choose_fixed_g(torch.from_numpy(val_obj.mean(0)), grid)
    family_g = {}
    for family in sorted({it.family for it in val_items} | {it.family for it in test_items}):
        rows = [k for k, it in enumerate(val_items) if it.family == family]
        family_g[family] = choose_fixed_g(torch.from_numpy(val_obj[rows].mean(0)), grid) if rows else fixed_g
    test_obj = objective_scores(test_rewards.accuracy, test_rewards.hallucination)  # (N, G)
    oracle = choose_g_per_item(torch.from_numpy(test_obj), grid).numpy()
    return fixed_g, family_g, oracle, val_obj.mean(0)


def _rows(items: list[Item]) -> list[dict[str, Any]]:
    """The items as rows of a questions file (what :func:`answer_questions_file` reads)."""
    return [{"question_index": it.key, "image_filename": it.sample.image_path, "question": it.question.question,
             "question_family": it.family, **({"references": list(it.question.references)} if it.is_caption else {})}
            for it in items]


def _source(setup: ItemSetup, method: str, ctrl: GranularityController | None):
    """The g source of a method when it runs the model: None (base), a controller, or a fixed g (POPE's yes/no
    questions: fixed_best's g, or family_best's g of the ``exist`` family, the one POPE's questions belong to)."""
    if method in ("router_loss", "dsa_ppo"):
        return ctrl
    return {"base": None, "fixed_best": setup.fixed_g,
            "family_best": setup.family_g.get("exist", setup.fixed_g)}.get(method)


def _answers(setup: ItemSetup, method: str, ctrl, entry: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """Each test item's text and g: from the grid cache (grid methods) or generated (timed into ``entry``)."""
    cache, items = setup.cache, setup.items
    if method in GRID_METHODS:
        if method == "oracle":
            g = setup.oracle
        else:
            g = np.array([setup.fixed_g if method == "fixed_best" else setup.family_g[it.family] for it in items])
        col = {round(float(v), 6): j for j, v in enumerate(cache.grid)}
        return [cache.captions[n][col[round(float(v), 6)]] for n, v in enumerate(g)], g
    cfg, data = setup.cfg, setup.data
    source = _source(setup, method, ctrl)
    handle = None if source is None else data.attach(source, cfg.coarse_layer)
    try:
        tic = time.perf_counter()
        out = answer_questions_file(data.model, cfg.model_type, data.processor, _rows(items), data.root,
                                    setup.grid.batch_size, setup.grid.answer_tokens, setup.progress,
                                    setup.grid.max_new_tokens)
        secs = time.perf_counter() - tic
        ctrl_s = handle.controller_seconds if handle is not None else 0.0
    finally:
        if handle is not None:
            handle.detach()
    entry["ms_per_item"] = 1000 * secs / len(items)
    if ctrl is not None:
        entry["controller_ms_per_item"] = 1000 * ctrl_s / len(items)
        entry["controller_share"] = ctrl_s / secs if secs else 0.0
    g = np.array([np.nan if a["g"] is None else a["g"] for a in out])
    return [a["raw"] for a in out], g


def _caption_cell(rows: list[int], s: dict[str, np.ndarray], g: np.ndarray) -> dict[str, Any]:
    """CIDEr-D, CHAIR (left out where no image is judged) and mean g of one caption prompt's items."""
    cell: dict[str, Any] = {"n": len(rows), "CIDEr": float(s["accuracy"][rows].mean())}
    judged = [k for k in rows if s["judged"][k]]
    cell["n_judged"] = len(judged)
    if judged:
        for suffix in ("", "_no_negated"):
            if f"mentions{suffix}" not in s:
                continue
            m, h = s[f"mentions{suffix}"][judged], s[f"hall_mentions{suffix}"][judged]
            cell[f"CHAIR_i{suffix}"] = float(h.sum() / m.sum()) if m.sum() else 0.0
            cell[f"CHAIR_s{suffix}"] = float((h > 0).mean())
    if np.isfinite(g[rows]).all():
        cell["g_mean"] = float(g[rows].mean())
    return cell


def _table(setup: ItemSetup, texts: list[str], g: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The method's per-family numbers and its per-image sums: ``sums`` (n_images, len(COLUMNS)) and per question
    family ``family/<name>`` (n_images, 2): correct answers and questions."""
    items, vocab = setup.items, setup.data.vocabulary
    s = item_scores(items, texts, vocab)
    by_family: dict[str, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        by_family[it.family].append(k)
    questions = [k for k, it in enumerate(items) if not it.is_caption]
    entry: dict[str, Any] = {"by_family": {}, "captions": {}}
    if questions:
        entry["accuracy"] = float(s["accuracy"][questions].mean())
    for family, rows in sorted(by_family.items()):
        if items[rows[0]].is_caption:
            entry["captions"][family] = _caption_cell(rows, s, g)
            continue
        cell = {"accuracy": float(s["accuracy"][rows].mean()), "n": len(rows)}
        if np.isfinite(g[rows]).all():
            cell["g_mean"] = float(g[rows].mean())
        entry["by_family"][family] = cell
    eligible = np.array([it.family in ("exist", "absent") and not it.is_caption for it in items])
    if eligible.any():
        entry["false_yes"] = float(s["hallucination"][eligible].mean())
    if np.isfinite(g).all():
        entry["g_mean"], entry["g_std"] = float(g.mean()), float(g.std())
    image_row = {s_.image_id: n for n, s_ in enumerate(setup.test)}
    sums = np.zeros((len(setup.test), len(COLUMNS)))
    fam = {f"family/{f}": np.zeros((len(setup.test), 2)) for f in entry["by_family"]}
    for k, it in enumerate(items):
        r = image_row[it.sample.image_id]
        if it.is_caption:
            sums[r, 2:4] += (s["accuracy"][k], 1)
        else:
            sums[r, 0:2] += (s["accuracy"][k], 1)
            sums[r, 4:6] += (s["hallucination"][k], eligible[k])
            fam[f"family/{it.family}"][r] += (s["accuracy"][k], 1)
    return entry, {"sums": sums, **fam}


def _pope(setup: ItemSetup, method: str, ctrl, entry: dict[str, Any]) -> np.ndarray | None:
    """POPE per sampling for a method that can be attached (not the oracle); per-image (tp, fp, fn)."""
    if not setup.questions or method == "oracle":
        return None
    cfg, data = setup.cfg, setup.data
    source = _source(setup, method, ctrl)
    handle = None if source is None else data.attach(source, cfg.coarse_layer)
    try:
        answers = answer_questions(data.model, cfg.model_type, data.processor, setup.test, data.root,
                                   setup.questions, setup.grid.batch_size, None, setup.progress)
    finally:
        if handle is not None:
            handle.detach()
    entry["pope"] = pope_scores(setup.questions, answers)
    return pope_counts(setup.questions, answers, len(setup.test))


def _measure(setup: ItemSetup, method: str, ctrl=None) -> tuple[dict[str, Any], dict[str, np.ndarray], list]:
    """One method (one controller): its entry, its per-image arrays and its answers."""
    entry: dict[str, Any] = {}
    texts, g = _answers(setup, method, ctrl, entry)
    table, arrays = _table(setup, texts, g)
    entry.update(table)
    pope = _pope(setup, method, ctrl, entry)
    if pope is not None:
        arrays["pope"] = pope
    answers = [{"item": it.key, "image_id": it.sample.image_id, "family": it.family, "answer": t,
                **({} if np.isnan(v) else {"g": float(v)})} for it, t, v in zip(setup.items, texts, g, strict=True)]
    return entry, arrays, answers


def _ratio(i: int, j: int):
    def stat(x: np.ndarray) -> float:
        return float(x[:, i].sum() / x[:, j].sum()) if x[:, j].sum() else 0.0
    return stat


def item_differences(per_image: dict[str, dict[str, np.ndarray]], ev: MLLMEvalConfig) -> dict[str, Any]:
    """Bootstrap differences (test images and seeds) of :data:`PAIRS`: accuracy overall and per question family,
    CIDEr-D of the caption prompts, the false-yes rate and POPE F1 (arrays (S, n_images, ...) per method)."""
    out: dict[str, Any] = {}
    for a, b in PAIRS:
        if a not in per_image or b not in per_image:
            continue
        pa, pb = per_image[a], per_image[b]
        d: dict[str, Any] = {}
        for name, (i, j) in (("accuracy", (0, 1)), ("CIDEr", (2, 3)), ("false_yes", (4, 5))):
            if pa["sums"][..., j].sum():
                d[name] = bootstrap_diff(_ratio(i, j), pa["sums"], pb["sums"], ev.n_boot, ev.seed)
        if "pope" in pa and "pope" in pb:
            d["POPE_F1"] = bootstrap_diff(f1_of_counts, pa["pope"], pb["pope"], ev.n_boot, ev.seed)
        d["by_family"] = {k.split("/", 1)[1]: bootstrap_diff(_ratio(0, 1), pa[k], pb[k], ev.n_boot, ev.seed)
                          for k in pa if k.startswith("family/") and k in pb}
        out[f"{a} - {b}"] = d
    return out


def _setup(cfg: MLLMConfig, grid: GridConfig, ev: MLLMEvalConfig, data: MLLMData, progress: bool):
    """The val and test item caches (every rank), then on rank 0 the :class:`ItemSetup` and what the report plots;
    ``(None, info)`` on other ranks."""
    tic = time.perf_counter()
    val_cache, val_items, val_rewards = item_split(cfg, data, "val", grid, progress)
    cache, items, rewards = item_split(cfg, data, "test", grid, progress)
    info: dict[str, Any] = {"grid_caches": time.perf_counter() - tic, "val_grid_seconds": val_cache.seconds,
                            "test_grid_seconds": cache.seconds}
    if data.rank != 0:
        return None, info
    test = data.split("test", cfg.limit)
    if not set(cache.image_ids) <= {s.image_id for s in test}:
        raise DataError(cfg.cache_dir("test"), "the test grid cache holds other images; use another --cache")
    fixed_g, family_g, oracle, val_obj = choose_item_g(val_items, val_rewards, items, rewards, cache.grid)
    questions = pope_questions(test, data.samples, ev.pope_positives, ev.seed) if ev.pope_positives else {}
    curves = {}
    for family in sorted({it.family for it in items}):
        rows = [k for k, it in enumerate(items) if it.family == family]
        curves[family] = rewards.accuracy[rows].mean(0).tolist()
    info.update({"fixed_best_g": fixed_g, "family_best_g": family_g, "grid": cache.grid.tolist(),
                 "val_objective_by_g": val_obj.tolist(), "test_accuracy_by_g": curves,
                 "oracle_g_mean": float(oracle.mean())})
    return ItemSetup(cfg, grid, data, test, items, cache, fixed_g, family_g, oracle, questions, progress), info


def _measure_methods(setup: ItemSetup, ctrls: list[GranularityController], router: GranularityController | None,
                     out: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """``methods`` of results.json and each method's per-image arrays (S, n, ...); writes each run's answers."""
    methods: dict[str, Any] = {}
    per_image: dict[str, dict[str, np.ndarray]] = {}
    runs_of = {"dsa_ppo": ctrls, "router_loss": [router] if router is not None else []}
    for method in ITEM_METHODS:
        ctrl_list = runs_of.get(method, [None])
        if not ctrl_list:
            continue
        tic = time.perf_counter()
        runs = [_measure(setup, method, c) for c in ctrl_list]
        entry = mean_over_seeds([r[0] for r in runs])
        if len(runs) > 1:
            entry["seeds"] = [r[0] for r in runs]
        entry["seconds"] = time.perf_counter() - tic
        methods[method] = entry
        per_image[method] = {k: np.stack([r[1][k] for r in runs]) for k in runs[0][1]}  # (S, n, ...)
        for k, r in enumerate(runs):
            write_jsonl(out / "answers" / f"{method if len(runs) == 1 else f'{method}_seed{k}'}.jsonl", r[2])
    return methods, per_image


def resolve_router(ev: MLLMEvalConfig) -> Path | None:
    """``--router``, else the ``router/controller`` folder of ``--controller``'s ``mllm train --out`` folder."""
    if ev.router:
        p = Path(ev.router)
        return p / "controller" if (p / "controller").is_dir() else p
    if ev.controller and (Path(ev.controller) / "router" / "controller").is_dir():
        return Path(ev.controller) / "router" / "controller"
    return None


def run_item_eval(cfg: MLLMConfig, grid: GridConfig, ev: MLLMEvalConfig, data: MLLMData, progress: bool = True,
                  ctrls: list[GranularityController] | None = None) -> dict[str, Any] | None:
    """Every method and column of the module docstring; writes results.json, report.md and the plots to ``cfg.out``.

    Args:
        ctrls: the PPO controllers (one per training seed), already checked against the model.
    """
    t0 = time.perf_counter()
    ctrls = ctrls or []
    router_path = resolve_router(ev)
    router = GranularityController.from_pretrained(router_path).to(data.device) if router_path else None
    if router is not None:
        data.attach(router, cfg.coarse_layer).detach()  # the layout check, before any work
    setup, info = _setup(cfg, grid, ev, data, progress)
    if setup is None:
        return None
    out = Path(cfg.out)
    methods, per_image = _measure_methods(setup, ctrls, router, out)
    families = {}
    for it in setup.items:
        families[it.family] = families.get(it.family, 0) + 1
    results: dict[str, Any] = {
        "mode": "questions", "dataset": cfg.format, "split": "test", "questions": str(cfg.questions),
        "n_images": len(setup.test), "n_items": len(setup.items), "n_items_by_family": families,
        "methods": methods, "n_controller_seeds": len(ctrls), "router": str(router_path) if router_path else None,
        **{k: info[k] for k in ("fixed_best_g", "family_best_g", "grid", "val_objective_by_g", "test_accuracy_by_g",
                                "oracle_g_mean")},
        "differences": item_differences(per_image, ev),
        "cider_scale": "raw (not x100)", "chair_scale": "fraction", "chair_vocabulary": data.vocabulary,
        "chair_vocabulary_matches": vocabulary_matches(setup.test, data.vocabulary),
        "chair_negation": "CHAIR_*: the published count (every mention); CHAIR_*_no_negated: negated mentions left "
                          "out" if data.vocabulary == "synth" else "the published count (every mention)",
        "oracle_note": f"best of {len(setup.cache.grid)} grid answers per test item on its own answer: an "
                       "optimistic upper bound, not a method",
        "n_pope_questions": {k: len(v) for k, v in setup.questions.items()},
        "model_type": cfg.model_type, "model_path": str(cfg.model_path), "data": str(cfg.data),
        "split_note": data.split_note, "controller": ev.controller,
        "controllers": [str(p) for p in resolve_controllers(ev.controller)],
        "timing_s": {"grid_caches": info["grid_caches"], "total": time.perf_counter() - t0},
        "val_grid_seconds": info["val_grid_seconds"], "test_grid_seconds": info["test_grid_seconds"]}
    if "dsa_ppo" in methods and "ms_per_item" in methods["base"]:
        d = methods["dsa_ppo"]
        results["overhead"] = {"base_ms_per_item": methods["base"]["ms_per_item"],
                               "dsa_ppo_ms_per_item": d["ms_per_item"],
                               "controller_ms_per_item": d["controller_ms_per_item"],
                               "controller_share": d["controller_share"]}
    write_json(out / "results.json", results)
    write_items_report(results, out)
    return results
