"""Binary accuracy on compositional hard negatives (:mod:`dsanchor.data.hardneg`), per type and per method.

For each item, a method scores the image against its true caption and its negative; the item is right when the
true caption scores higher (chance: 0.5), as SugarCrepe and ARO count it. Images go through the pipeline the way
new files do (``DSAPipeline.encode_images``: the pipeline's region source, no annotations), once per image.

Methods are values of g: ``coarse`` (g = 0), ``fine`` (g = 1), ``fixed_best`` (the pipeline's g chosen on
validation) and ``dsa`` (the controller's g for the image, when the pipeline has a controller). Intervals are a
95% bootstrap over images (an image's items resampled together: :func:`dsanchor.eval.compare.cluster_bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dsanchor.data.hardneg import HARD_NEGATIVE_TYPES, HardNegative
from dsanchor.eval.compare import cluster_bootstrap

__all__ = ["pipeline_methods", "score_hard_negatives", "accuracy_table"]


def pipeline_methods(pipe) -> dict[str, float | None]:
    """Method name -> g (None: the controller's own choice per image)."""
    methods: dict[str, float | None] = {"coarse": 0.0, "fine": 1.0, "fixed_best": float(pipe.fixed_g)}
    if pipe.controller is not None:
        methods["dsa"] = None
    return methods


@torch.no_grad()
def _item_wins(pipe, items: Sequence[HardNegative], root: Path, methods: dict[str, float | None],
               progress: bool) -> dict[str, np.ndarray]:
    texts = sorted({t for i in items for t in (i.caption, i.negative)})
    where = {t: k for k, t in enumerate(texts)}
    emb = pipe.encode_texts(texts)  # (T, Dt)
    wins = {m: np.zeros(len(items), dtype=bool) for m in methods}
    by_image: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        by_image.setdefault(item.image_path, []).append(k)
    for path, ks in tqdm(by_image.items(), desc="hard negatives", unit="image", disable=not progress):
        feats = pipe.encode_images([root / path])
        rows = sorted({where[t] for k in ks for t in (items[k].caption, items[k].negative)})
        for name, g in methods.items():
            ranked, _ = pipe.rank_captions_embedded(feats, emb[rows], [texts[r] for r in rows], g, collapse=False)
            score = dict(ranked)  # caption -> its DSA score for this image
            for k in ks:
                wins[name][k] = score[items[k].caption] > score[items[k].negative]
    return wins


def score_hard_negatives(pipe, items: Sequence[HardNegative], root: str | Path,
                         methods: dict[str, float | None] | None = None, n_boot: int = 2000, seed: int = 0,
                         progress: bool = True) -> dict[str, Any]:
    """Accuracy per method and type (with a bootstrap interval over images) on ``items`` whose image paths are
    relative to ``root``: ``{"n_items", "n_images", "methods": {m: {"g", type: {"accuracy", "lo", "hi", "n"}}}}``.
    """
    if not items:
        raise ValueError("no hard-negative items to score")
    methods = methods if methods is not None else pipeline_methods(pipe)
    wins = _item_wins(pipe, items, Path(root), methods, progress)
    types = np.array([i.type for i in items])
    images = np.array([i.image_id for i in items])
    out: dict[str, Any] = {"n_items": len(items), "n_images": int(len(np.unique(images))), "methods": {}}
    for name, w in wins.items():
        row: dict[str, Any] = {"g": methods[name]}
        for kind in (*HARD_NEGATIVE_TYPES, "all"):
            keep = types == kind if kind != "all" else np.ones(len(items), dtype=bool)
            if keep.any():
                _, cluster = np.unique(images[keep], return_inverse=True)  # image of each item, 0..C-1
                ci = cluster_bootstrap(torch.tensor(w[keep], dtype=torch.float64)[None], torch.from_numpy(cluster),
                                       n_boot=n_boot, seed=seed)
                row[kind] = {"accuracy": float(w[keep].mean()), "lo": ci["lo"], "hi": ci["hi"], "n": int(keep.sum())}
        out["methods"][name] = row
    return out


def accuracy_table(result: dict[str, Any]) -> list[str]:
    """A markdown table: one row per method, one column per type (accuracy [95% interval])."""
    kinds = [k for k in (*HARD_NEGATIVE_TYPES, "all") if any(k in r for r in result["methods"].values())]
    lines = ["| method | g | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for name, row in result["methods"].items():
        g = "controller" if row["g"] is None else f"{row['g']:.2f}"
        cells = [f"{row[k]['accuracy']:.3f} [{row[k]['lo']:.2f}, {row[k]['hi']:.2f}]" if k in row else "–"
                 for k in kinds]
        lines.append(f"| {name} | {g} | " + " | ".join(cells) + " |")
    return lines
