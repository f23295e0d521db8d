"""``dsanchor mllm eval``: the unmodified MLLM against DSA inside it (the seed's Table 1 layout).

Rows (every g is applied through :func:`~dsanchor.integrations.attach_dsa`):

* ``base``: the unmodified model (no hooks);
* ``fixed_best``: one g for every image, the grid g with the best val score;
* ``dsa_ppo``: the controller from ``dsanchor mllm train`` (g per image and prompt);
* ``oracle``: per test image the grid g with its best score on that image's own references: an upper
  bound, not a method.

The score that picks g (``fixed_best`` on val, ``oracle`` per test image) is the tuning target of
:mod:`dsanchor.integrations.train`: CIDEr-D minus the hallucinated share of named objects.

Columns:

* BLEU-4 and CIDEr-D (pycocoevalcap's scorers; CIDEr on its raw scale, not x100), every image's caption
  against all its references;
* CHAIR_i and CHAIR_s (fractions) over the images with annotated objects;
* POPE (Li et al. 2023): for each annotated test image, up to ``pope_positives`` of its objects ("yes") and
  as many absent ones ("no") drawn by each of the random, popular and adversarial samplings
  (:mod:`dsanchor.hallucination.negatives`, statistics over the whole dataset); the model is asked
  :data:`~dsanchor.integrations.captioning.POPE_QUESTION` and its answer read by
  :func:`~dsanchor.integrations.captioning.read_yes_no` (anything but yes counts as no). Accuracy, precision,
  recall, F1 and the yes-ratio per sampling and over all three;
* R@1 and R@10 both ways with the MLLM's own embeddings (E5-V, Jiang et al. 2024): the last token's last
  hidden state after a one-word-summary prompt (:data:`EMBED_PROMPTS`), images with the row's g, captions
  text-only. Relevance is exact where the data has scene graphs (every image a caption is true of), else
  paired;
* ms per image of captioning and the controller's share of it (state + controller, timed inside the hook).

Differences to ``base`` (and ``dsa_ppo - fixed_best``) in CIDEr-D, CHAIR_i and POPE F1 carry a 95%
percentile interval from a bootstrap over test images (each with all its captions or questions).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dsanchor.data.records import Sample
from dsanchor.errors import DataError
from dsanchor.integrations.grid import GridConfig
from dsanchor.integrations.train import MLLMConfig, MLLMData, load_mllm_data, split_grid

__all__ = ["EvalConfig", "EMBED_PROMPTS", "run_mllm_eval", "bootstrap_diff", "pope_questions", "objective_scores"]

log = logging.getLogger(__name__)
ROWS = ("base", "fixed_best", "dsa_ppo", "oracle")
SAMPLINGS = ("random", "popular", "adversarial")
# E5-V prompts: {x} is "<image>" for images or the sentence for captions
EMBED_PROMPTS: dict[str, dict[str, str]] = {
    "llava": {"image": "USER: <image>\nSummary above image in one word: ASSISTANT:",
              "text": "USER: {x}\nSummary above sentence in one word: ASSISTANT:"},
    "blip2": {"image": "Summary above image in one word:", "text": "{x} Summary above sentence in one word:"},
    "idefics": {"image": "Summary above image in one word:", "text": "{x}\nSummary above sentence in one word:"},
}


@dataclass
class EvalConfig:
    controller: str | None = field(default=None, metadata={"help": "controller from `mllm train --out` (the "
                                                                   "directory or its controller/ folder)"})
    pope_positives: int = field(default=3, metadata={"help": "POPE: at most this many present objects per image "
                                                             "(as many absent ones per sampling); 0 skips POPE"})
    retrieval: bool = field(default=True, metadata={"help": "R@1 / R@10 with the MLLM's own embeddings"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples over test images"})
    seed: int = field(default=0, metadata={"help": "seed of POPE's random negatives and of the bootstrap"})


class _SetG(nn.Module):
    """A g source that returns the g values set before each call (one per image of the batch)."""

    def __init__(self):
        super().__init__()
        self.g: torch.Tensor = torch.ones(1)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.g.to(state.device).expand(state.shape[0]) if self.g.numel() == 1 else self.g.to(state.device)


def objective_scores(cider: np.ndarray, hallucination: np.ndarray) -> np.ndarray:
    """What picks g: CIDEr-D minus the hallucinated share (same shape as the inputs)."""
    return cider - hallucination


def resolve_controllers(path: str | None) -> list[Path]:
    """The controller folders of ``--controller``: a controller, a ``mllm train --out`` folder, or one with
    a ``seed*/controller`` per training seed (``mllm train --seeds N``)."""
    if path is None:
        return []
    p = Path(path)
    if (p / "controller").is_dir():
        return [p / "controller"]
    seeds = sorted(q / "controller" for q in p.glob("seed*") if (q / "controller").is_dir())
    return seeds or [p]


def _load_controllers(path: str | None) -> list:
    from dsanchor.controller import GranularityController

    return [GranularityController.from_pretrained(p) for p in resolve_controllers(path)]


def _g_source(row: str, fixed_g: float, ctrl):
    """What to attach for a row: None (base), a float, the controller, or a per-image setter (oracle)."""
    if row == "base":
        return None
    if row == "fixed_best":
        return float(fixed_g)
    if row == "dsa_ppo":
        return ctrl
    return _SetG()


class _Attached:
    """Context manager: attach a row's g source (or nothing) and set per-image g for the oracle."""

    def __init__(self, model, source, coarse_layer: int):
        self.model, self.source, self.coarse_layer, self.handle = model, source, coarse_layer, None

    def __enter__(self):
        from dsanchor.integrations.hf import attach_dsa

        if self.source is not None:
            self.handle = attach_dsa(self.model, self.source, coarse_layer=self.coarse_layer)
        return self

    def set_images(self, image_ids: Sequence[int], oracle: dict[int, float]) -> None:
        if isinstance(self.source, _SetG):
            self.source.g = torch.tensor([oracle[i] for i in image_ids], dtype=torch.float32)

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.detach()


# ---------------------------------------- captions


def _caption_row(data: MLLMData, cfg: MLLMConfig, grid: GridConfig, samples: list[Sample], source,
                 oracle: dict[int, float],
                 progress: bool) -> tuple[dict[int, str], dict[int, float], float, float]:
    """Captions of a row; (captions, g per image, generate seconds, controller seconds)."""
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS, caption_samples, processor_fns

    prompt = DEFAULT_PROMPTS[cfg.model_type] if cfg.prompt is None else cfg.prompt
    prepare, decode = processor_fns(cfg.model_type, data.processor, prompt)
    with _Attached(data.model, source, cfg.coarse_layer) as att:
        run = caption_samples(data.model, prepare, decode, samples, data.root, grid.batch_size, grid.max_new_tokens,
                              on_batch=lambda batch: att.set_images([s.image_id for s in batch], oracle),
                              progress=progress)
        ctrl_s = att.handle.controller_seconds if att.handle is not None else 0.0
    return run.captions, run.g, run.seconds, ctrl_s


def _per_image_caption_scores(captions: dict[int, str], samples: list[Sample],
                              vocabulary: str) -> dict[str, np.ndarray]:
    """Per test image: CIDEr-D, hallucinated mentions, mentions, judged."""
    from dsanchor.captioning.evaluate import cider_per_image
    from dsanchor.integrations.captioning import chair_ground_truth
    from dsanchor.integrations.grid import caption_mentions

    ids = [s.image_id for s in samples]
    cider = np.nan_to_num(cider_per_image([captions[i] for i in ids], [[c.text for c in s.captions] for s in samples]))
    counts = caption_mentions({i: captions[i] for i in ids}, chair_ground_truth(samples, vocabulary), vocabulary)
    c = np.array([counts[i] or (0, 0) for i in ids], dtype=float).reshape(len(ids), 2)
    return {"cider": cider, "hall": c[:, 0], "mentions": c[:, 1],
            "judged": np.array([counts[i] is not None for i in ids])}


# ---------------------------------------- POPE


def pope_questions(samples: list[Sample], all_samples: Sequence[Sample], positives: int,
                   seed: int) -> dict[str, list[tuple[int, str, int]]]:
    """Per sampling, the (test row, object name, label) questions; images without objects are skipped."""
    from dsanchor.hallucination.negatives import ObjectStats, build_pairs, object_rows

    names = sorted({o.name for s in all_samples for o in s.objects})
    if not names:
        return {}
    index = {n: i for i, n in enumerate(names)}
    stats = ObjectStats.from_rows(object_rows([[o.name for o in s.objects] for s in all_samples], index), len(names))
    rows = object_rows([[o.name for o in s.objects] for s in samples], index)
    out = {}
    for k, sampling in enumerate(SAMPLINGS):
        gen = torch.Generator().manual_seed(seed + k)
        pairs = build_pairs(rows, stats, [sampling], max_positives=positives, generator=gen)
        out[sampling] = [(int(i), names[int(o)], int(lab)) for i, o, lab in zip(pairs.image, pairs.object,
                                                                              pairs.label, strict=True)]
    return out


def _pope_row(data: MLLMData, cfg: MLLMConfig, samples: list[Sample], questions, source,
              oracle: dict[int, float], batch_size: int, progress: bool) -> dict[tuple[int, str], bool]:
    """The row's yes/no answer to every distinct (test row, object) question."""
    from dsanchor.integrations.captioning import _open_image, _to, question_prompt, read_yes_no

    todo = sorted({(i, o) for qs in questions.values() for i, o, _ in qs})
    param = next(data.model.parameters())
    answers: dict[tuple[int, str], bool] = {}
    images: dict[int, Any] = {}
    with _Attached(data.model, source, cfg.coarse_layer) as att:
        for a in tqdm(range(0, len(todo), batch_size), desc="POPE", unit="batch", disable=not progress):
            batch = todo[a:a + batch_size]
            for i, _ in batch:
                if i not in images:
                    images[i] = _open_image(data.root, samples[i])
            att.set_images([samples[i].image_id for i, _ in batch], oracle)
            inputs = _prompt_batch(cfg.model_type, data.processor, [images[i] for i, _ in batch],
                                   [question_prompt(cfg.model_type, o) for _, o in batch])
            inputs = {k: _to(v, param) for k, v in inputs.items()}
            with torch.no_grad():
                out = data.model.generate(**inputs, max_new_tokens=3, do_sample=False)
            texts = data.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for q, t in zip(batch, texts, strict=True):
                answers[q] = read_yes_no(t) is True
    return answers


def _prompt_batch(model_type: str, processor, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs for one prompt per image (prompts may differ, so they are padded)."""
    if model_type == "llava":
        token = getattr(processor, "image_token", "<image>")
        texts = [p if token in p else f"{token}\n{p}" for p in prompts]
        return processor(images=images, text=texts, return_tensors="pt", padding=True)
    if model_type == "blip2":
        return processor(images=images, text=prompts, return_tensors="pt", padding=True)
    turns = [["User:", im, f"{p}\nAssistant:"] for im, p in zip(images, prompts, strict=True)]
    return processor(text=turns, return_tensors="pt", padding="longest")


def _pope_metrics(questions, answers) -> dict[str, dict[str, float]]:
    """POPE metrics per sampling and over all three (``all``)."""
    from dsanchor.metrics.pope import pope_metrics

    out = {}
    pooled_p, pooled_l = [], []
    for sampling, qs in questions.items():
        if not qs:
            continue
        pred = [answers[(i, o)] for i, o, _ in qs]
        lab = [bool(label) for _, _, label in qs]
        out[sampling] = pope_metrics(pred, lab).as_dict()
        pooled_p += pred
        pooled_l += lab
    if pooled_p:
        out["all"] = pope_metrics(pooled_p, pooled_l).as_dict()
    return out


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _pope_counts(questions, answers, n_images: int) -> np.ndarray:
    """(n_images, 3) per-image (tp, fp, fn) over all samplings: what the F1 bootstrap resamples."""
    c = np.zeros((n_images, 3))
    for qs in questions.values():
        for i, o, label in qs:
            yes = answers[(i, o)]
            c[i] += (yes and label, yes and not label, (not yes) and label)
    return c


# ---------------------------------------- retrieval


def _last_hidden(model: nn.Module, model_type: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, H) last layer's hidden state at the last position (prompts are left padded)."""
    with torch.no_grad():
        if model_type == "blip2" and "pixel_values" not in inputs:
            out = model.language_model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                                       output_hidden_states=True)
            hidden = out.hidden_states[-1]
        else:
            out = model(**inputs, output_hidden_states=True)
            hs = getattr(out, "hidden_states", None)
            if hs is None:  # BLIP-2 keeps the language model's outputs apart
                hs = out.language_model_outputs.hidden_states
            hidden = hs[-1]
    return hidden[:, -1].float().cpu()


def _text_embeddings(data: MLLMData, cfg: MLLMConfig, texts: list[str], batch_size: int,
                     progress: bool) -> torch.Tensor:
    from dsanchor.integrations.captioning import _to

    tok = getattr(data.processor, "tokenizer", data.processor)
    param = next(data.model.parameters())
    out = []
    template = EMBED_PROMPTS[cfg.model_type]["text"]
    for a in tqdm(range(0, len(texts), batch_size), desc="text embeddings", unit="batch", disable=not progress):
        enc = dict(tok([template.format(x=t) for t in texts[a:a + batch_size]], return_tensors="pt", padding=True))
        if cfg.model_type == "idefics":  # IDEFICS always takes an image: a blank one no text token may attend to
            size = data.processor.image_processor.image_size
            b, t = enc["input_ids"].shape
            enc["pixel_values"] = torch.zeros(b, 1, 3, size, size)
            enc["image_attention_mask"] = torch.zeros(b, t, 1, dtype=torch.long)
        out.append(_last_hidden(data.model, cfg.model_type, {k: _to(v, param) for k, v in enc.items()}))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _image_embeddings(data: MLLMData, cfg: MLLMConfig, samples: list[Sample], source, oracle: dict[int, float],
                      batch_size: int, progress: bool) -> torch.Tensor:
    from dsanchor.integrations.captioning import _open_image, _to

    param = next(data.model.parameters())
    prompt = EMBED_PROMPTS[cfg.model_type]["image"]
    out = []
    with _Attached(data.model, source, cfg.coarse_layer) as att:
        for a in tqdm(range(0, len(samples), batch_size), desc="image embeddings", unit="batch",
                      disable=not progress):
            batch = samples[a:a + batch_size]
            att.set_images([s.image_id for s in batch], oracle)
            inputs = _prompt_batch(cfg.model_type, data.processor, [_open_image(data.root, s) for s in batch],
                                   [prompt] * len(batch))
            out.append(_last_hidden(data.model, cfg.model_type, {k: _to(v, param) for k, v in inputs.items()}))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _relevance(samples: list[Sample]) -> tuple[list[str], torch.Tensor, str]:
    """Captions of the split, (T, N) relevance and its protocol (exact with scene graphs, else paired)."""
    texts, owner, facts = [], [], []
    for n, s in enumerate(samples):
        for c in s.captions:
            texts.append(c.text)
            owner.append(n)
            facts.append(c.fact)
    own = torch.tensor(owner)[:, None] == torch.arange(len(samples))[None, :]
    if all(f is not None for f in facts) and all(s.scene is not None for s in samples) and facts:
        from dsanchor.data.facts import holds_matrix

        return texts, own | torch.from_numpy(holds_matrix(facts, [s.scene for s in samples])), "exact"
    return texts, own, "paired"


def _recalls(img: torch.Tensor, txt: torch.Tensor, rel: torch.Tensor) -> dict[str, dict[str, float]]:
    from dsanchor.metrics.retrieval import recall_at_k

    scores = txt @ img.T  # (T, N)
    return {"t2i": recall_at_k(scores, rel, (1, 10)), "i2t": recall_at_k(scores.T.contiguous(), rel.T.contiguous(),
                                                                          (1, 10))}


# ---------------------------------------- bootstrap


def bootstrap_diff(stat, a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """``stat(a) - stat(b)`` with a 95% percentile interval from a bootstrap over images and training seeds.

    Args:
        stat: maps an (m, ...) array of per-image values to a number (a mean, a ratio of sums, an F1).
        a, b: per-image values of the two rows, ``(S, n, ...)``: one slice per training seed (a deterministic
            row has S = 1). Images are aligned between the rows and resampled together; each row's seeds are
            resampled with replacement in every draw, so the interval carries the spread over seeds as well as
            over images.
    """
    if a.ndim < 2 or b.ndim < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"bootstrap_diff needs (seeds, images, ...) arrays with the same images; got "
                         f"{a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def flat(x: np.ndarray, seeds: np.ndarray, idx: np.ndarray) -> np.ndarray:
        y = x[seeds][:, idx]
        return y.reshape(-1, *x.shape[2:])

    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        sa, sb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[k] = stat(flat(a, sa, idx)) - stat(flat(b, sb, idx))
    d = float(stat(a.reshape(-1, *a.shape[2:])) - stat(b.reshape(-1, *b.shape[2:])))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": d, "low": float(lo), "high": float(hi), "excludes_zero": bool(lo > 0 or hi < 0),
            "seeds": [int(a.shape[0]), int(b.shape[0])]}


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def _chair_i(x: np.ndarray) -> float:  # columns: hallucinated mentions, mentions
    return float(x[:, 0].sum() / x[:, 1].sum()) if x[:, 1].sum() else 0.0


def _f1_of(x: np.ndarray) -> float:  # columns: tp, fp, fn
    return _f1(*x.sum(0))


# ---------------------------------------- run


def _combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over training seeds of every number (nested dicts too), with ``<key>_std`` beside it."""
    if len(entries) == 1:
        return entries[0]
    out: dict[str, Any] = {}
    for key, v in entries[0].items():
        vals = [e.get(key) for e in entries]
        if isinstance(v, dict):
            out[key] = _combine(vals)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals))
        else:
            out[key] = v
    return out


def run_mllm_eval(cfg: MLLMConfig, grid: GridConfig, ev: EvalConfig, progress: bool = True,
                  data: MLLMData | None = None) -> dict[str, Any] | None:
    """Every row and column of the module docstring; writes results.json and report.md to ``cfg.out``.

    With several training seeds (``mllm train --seeds N``) ``dsa_ppo`` is measured once per seed: its numbers
    are the means with ``_std`` beside them, and its intervals resample seeds as well as images.
    """
    from dsanchor.anchoring import choose_fixed_g, choose_g_per_item
    from dsanchor.integrations.hf import attach_dsa

    t0 = time.perf_counter()
    data = data or load_mllm_data(cfg)
    ctrls = [c.to(data.device) for c in _load_controllers(ev.controller)]
    for c in ctrls:
        attach_dsa(data.model, c, coarse_layer=cfg.coarse_layer).detach()  # the layout check, before any work
    timing: dict[str, float] = {}
    tic = time.perf_counter()
    val_cache, val_rewards = split_grid(cfg, data, "val", grid, progress)
    test_cache, test_rewards = split_grid(cfg, data, "test", grid, progress)
    timing["grid_caches"] = time.perf_counter() - tic
    if data.rank != 0:
        return None
    test = data.split("test", cfg.limit)
    if [s.image_id for s in test] != test_cache.image_ids:
        raise DataError(cfg.cache_dir("test"), "the test grid cache holds other images; use another --cache")
    grid_g = test_cache.grid
    val_obj = objective_scores(val_rewards["cider"], val_rewards["hallucination"]).mean(0)  # (G,)
    fixed_g = choose_fixed_g(torch.from_numpy(val_obj), grid_g)
    test_obj = objective_scores(test_rewards["cider"], test_rewards["hallucination"])  # (N, G)
    oracle_g = choose_g_per_item(torch.from_numpy(test_obj), grid_g)
    oracle = {i: float(g) for i, g in zip(test_cache.image_ids, oracle_g, strict=True)}
    rows = [r for r in ROWS if r != "dsa_ppo" or ctrls]
    results: dict[str, Any] = {"rows": {}, "fixed_best_g": fixed_g, "grid": grid_g.tolist(),
                               "val_objective_by_g": val_obj.tolist(),
                               "test_objective_by_g": test_obj.mean(0).tolist(), "cider_scale": "raw (not x100)",
                               "chair_scale": "fraction", "n_controller_seeds": len(ctrls)}
    per_image: dict[str, dict[str, np.ndarray]] = {}
    questions = pope_questions(test, data.samples, ev.pope_positives, ev.seed) if ev.pope_positives else {}
    texts, rel, protocol = _relevance(test) if ev.retrieval else ([], None, None)
    txt_emb = _text_embeddings(data, cfg, texts, grid.batch_size, progress) if ev.retrieval and texts else None
    measure = functools.partial(_measure_row, data, cfg, grid, test, test_cache, fixed_g, oracle, questions,
                                txt_emb, rel, protocol, progress)
    for row in rows:
        tic = time.perf_counter()
        runs = [measure(row, c) for c in ctrls] if row == "dsa_ppo" else [measure(row, None)]
        entry = _combine([r[0] for r in runs])
        if len(runs) > 1:
            entry["seeds"] = [r[0] for r in runs]
        entry["seconds"] = time.perf_counter() - tic
        results["rows"][row] = entry
        per_image[row] = {k: np.stack([r[1][k] for r in runs]) for k in runs[0][1]}  # (S, n, ...)
        (Path(cfg.out) / "captions").mkdir(parents=True, exist_ok=True)
        for k, (_, _, caps, gs) in enumerate(runs):
            name = row if len(runs) == 1 else f"{row}_seed{k}"
            with (Path(cfg.out) / "captions" / f"{name}.jsonl").open("w") as f:
                for i in test_cache.image_ids:
                    f.write(json.dumps({"image_id": i, "caption": caps[i], **({"g": gs[i]} if i in gs else {})})
                            + "\n")
    if ctrls:
        d = results["rows"]["dsa_ppo"]
        results["overhead"] = {"base_ms_per_image": results["rows"]["base"]["ms_per_image"],
                               "dsa_ppo_ms_per_image": d["ms_per_image"],
                               "controller_ms_per_image": d["controller_ms_per_image"],
                               "controller_share": d["controller_share"]}
    results["differences"] = _differences(per_image, rows, ev)
    timing["total"] = time.perf_counter() - t0
    results.update({"model_type": cfg.model_type, "model_path": str(cfg.model_path), "dataset": cfg.format,
                    "data": str(cfg.data), "split_note": data.split_note, "n_test_images": len(test),
                    "n_judged_chair": int(per_image["base"]["judged"][0].sum()),
                    "n_pope_questions": {s: len(q) for s, q in questions.items()},
                    "retrieval_protocol": protocol, "n_captions": len(texts), "controller": ev.controller,
                    "controllers": [str(p) for p in resolve_controllers(ev.controller)],
                    "timing_s": timing, "val_grid_seconds": val_cache.seconds, "test_grid_seconds": test_cache.seconds})
    out = Path(cfg.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    from dsanchor.integrations.report import write_mllm_report

    write_mllm_report(results, out)
    return results


def _measure_row(data, cfg, grid, test, test_cache, fixed_g, oracle, questions, txt_emb, rel, protocol, progress,
                 row: str, ctrl) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[int, str], dict[int, float]]:
    """(entry, per-image values, captions, g per image) of one row (one controller for dsa_ppo)."""
    from dsanchor.integrations.captioning import score_captions

    source = _g_source(row, fixed_g, ctrl)
    j = {round(float(g), 6): k for k, g in enumerate(test_cache.grid)}
    entry: dict[str, Any] = {}
    if row in ("fixed_best", "oracle"):  # grid rows: their captions are in the test grid cache
        gs = {i: (fixed_g if row == "fixed_best" else oracle[i]) for i in test_cache.image_ids}
        caps = {i: test_cache.captions[n][j[round(gs[i], 6)]] for n, i in enumerate(test_cache.image_ids)}
    else:
        caps, gs, secs, ctrl_s = _caption_row(data, cfg, grid, test, source, oracle, progress)
        entry["ms_per_image"] = 1000 * secs / len(test)
        if row == "dsa_ppo":
            entry["controller_ms_per_image"] = 1000 * ctrl_s / len(test)
            entry["controller_share"] = ctrl_s / secs if secs else 0.0
    entry.update(score_captions(caps, test, data.vocabulary))
    if gs:
        g_arr = np.array(list(gs.values()))
        entry["g_mean"], entry["g_std"] = float(g_arr.mean()), float(g_arr.std())
    pi = _per_image_caption_scores(caps, test, data.vocabulary)
    if questions:
        answers = _pope_row(data, cfg, test, questions, source, oracle, grid.batch_size, progress)
        entry["pope"] = _pope_metrics(questions, answers)
        pi["pope"] = _pope_counts(questions, answers, len(test))
    if txt_emb is not None:
        img_emb = _image_embeddings(data, cfg, test, source, oracle, grid.batch_size, progress)
        entry["retrieval"] = {"protocol": protocol, **_recalls(img_emb, txt_emb, rel)}
    return entry, pi, caps, gs


def _differences(per_image: dict[str, dict[str, np.ndarray]], rows: list[str], ev: EvalConfig) -> dict[str, Any]:
    """Bootstrap differences of CIDEr-D, CHAIR_i and POPE F1 (per-image arrays are (S, n, ...))."""
    pairs = [(a, "base") for a in rows if a != "base"]
    if "dsa_ppo" in rows:
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
            d["POPE_F1"] = bootstrap_diff(_f1_of, pa["pope"], pb["pope"], ev.n_boot, ev.seed)
        out[f"{a} - {b}"] = d
    return out
