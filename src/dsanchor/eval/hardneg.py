"""Binary accuracy on compositional hard negatives (:mod:`dsanchor.data.hardneg`), per type and per method.

For each item, a method scores the image against its true caption and its negative; the item is right when the
true caption scores higher (chance: 0.5), as SugarCrepe and ARO count it. Two entry points share one scorer
(:func:`gallery_wins`): :func:`score_hard_negatives` (``dsanchor hardneg score``) encodes the items' images through
a saved pipeline the way new files go (its region source, no annotations); :func:`store_hard_negatives`
(``dsanchor eval``) makes items from the test split's scenes and scores them on the stored features. Texts are
scored with the heads' compositional scorer (:mod:`dsanchor.relations`).

Methods are values of g: ``coarse`` (g = 0), ``fine`` (g = 1), ``fixed_best`` (the g chosen on validation), a
query-only controller (``dsa``, ``dsa_ppo``, ``gate_grad``: the g it gives the image as a query) and a per-pair
controller (``dsa_pair``, ``gate_pair``: the g it gives each text and image, the text ranking the gallery as a
query). Intervals are a 95% bootstrap over images (an image's items resampled together, and with several training
seeds their spread: :func:`dsanchor.eval.compare.cluster_bootstrap`).
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

__all__ = ["pipeline_methods", "score_hard_negatives", "gallery_wins", "accuracy_by_type", "store_hard_negatives",
           "save_wins",
           "merge_wins", "WINS_FILE", "accuracy_table"]


def pipeline_methods(pipe) -> dict[str, float | None]:
    """Method name -> g (None: the pipeline's controller chooses, per image; for ``dsa_pair`` per pair)."""
    methods: dict[str, float | None] = {"coarse": 0.0, "fine": 1.0, "fixed_best": float(pipe.fixed_g)}
    if pipe.controller is not None:
        methods["dsa"] = None
    if pipe.pair_controller is not None:
        methods["dsa_pair"] = None
    return methods


def score_hard_negatives(pipe, items: Sequence[HardNegative], root: str | Path,
                         methods: dict[str, float | None] | None = None, n_boot: int = 2000, seed: int = 0,
                         progress: bool = True) -> dict[str, Any]:
    """Accuracy per method and type (with a bootstrap interval over images) on ``items`` whose image paths are
    relative to ``root``: ``{"n_items", "n_images", "methods": {m: {"g", type: {"accuracy", "lo", "hi", "n"}}}}``.

    The items' images go through the pipeline the way new files do (its region source, no annotations) and form
    the gallery; every method scores through :func:`gallery_wins`, as ``dsanchor eval`` does on stored features.
    """
    from dsanchor.features.types import ImageFeatures

    if not items:
        raise ValueError("no hard-negative items to score")
    methods = methods if methods is not None else pipeline_methods(pipe)
    paths = sorted({i.image_path for i in items})
    parts = [pipe.encode_images([Path(root) / p for p in paths[a:a + 16]])
             for a in tqdm(range(0, len(paths), 16), desc="hard negatives", unit="batch", disable=not progress)]
    images = ImageFeatures(torch.arange(len(paths)), *(torch.cat([getattr(f, k) for f in parts])
                                                        for k in ("coarse", "regions", "boxes", "mask")),
                           [[] for _ in paths], [None] * len(paths))
    col = {p: k for k, p in enumerate(paths)}
    image_g = pipe.choices(coarse_raw=images.coarse) if pipe.controller is not None else None
    g_i2t, pairs = {}, {}
    for name, g in methods.items():
        if name == "dsa_pair":
            pairs[name] = pipe.pair_controller
            g_i2t[name] = torch.full((len(paths),), float(pipe.pair_controller.config.base_g))
        elif g is None:
            g_i2t[name] = torch.tensor([c.g for c in image_g])
        else:
            g_i2t[name] = torch.full((len(paths),), float(g))
    wins, labels = gallery_wins(pipe.heads, images, items, [col[i.image_path] for i in items], pipe.encode_texts,
                                pipe.state, g_i2t, pairs)
    return accuracy_by_type(wins, items, {m: methods[m] if m not in pairs else "per pair" for m in wins}, n_boot,
                            seed)


@torch.no_grad()
def gallery_wins(heads, images, items: Sequence[HardNegative], columns: Sequence[int], encode_texts, state,
                 g_i2t: dict[str, torch.Tensor], pair_controllers: dict,
                 relation=None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """For each method and item, whether the true text outscores the negative on the item's image.

    Args:
        heads: the alignment heads (their compositional scorer applies unless ``relation`` is given).
        images: the gallery (:class:`~dsanchor.features.types.ImageFeatures`); ``columns``: each item's image in
            it. encode_texts: texts -> encoder vectors. state: the query-state config of the views.
        g_i2t: method -> (N,) the g each image gets as a query (a fixed g repeated, or a controller's).
        pair_controllers: method -> per-pair controller; it scores each (text, image) with its own g, the text
            ranking the gallery as a query (:mod:`dsanchor.pairs`).
    Returns:
        (method -> (I,) bool wins, method -> the g label of the table)
    """
    from dsanchor.eval.methods import pair_method
    from dsanchor.eval.views import prepare_view
    from dsanchor.features.types import TextFeatures
    from dsanchor.retrieval import anchored_scores

    texts = sorted({t for i in items for t in (i.caption, i.negative)})
    where = {t: k for k, t in enumerate(texts)}
    feats = TextFeatures(encode_texts(texts).float(), torch.full((len(texts),), -1), torch.full((len(texts),), -1),
                         texts)
    view = prepare_view(heads, images, feats, state, encode_texts, relation)
    pos = torch.tensor([where[i.caption] for i in items])
    neg = torch.tensor([where[i.negative] for i in items])
    img = torch.as_tensor(list(columns))
    wins, labels = {}, {}
    for name, g in g_i2t.items():
        if name in pair_controllers:
            grid, _ = pair_method(view, pair_controllers[name], float(g[0]))
            scores = anchored_scores(view.terms, grid.t2i_grid())  # (texts, N)
            labels[name] = "per pair"
        else:
            scores = anchored_scores(view.terms, g.view(1, -1))  # each image's own g, per column
            labels[name] = float(g[0]) if bool((g == g[0]).all()) else None
        wins[name] = (scores[pos, img] > scores[neg, img]).numpy()
    return wins, labels


def accuracy_by_type(wins: dict[str, np.ndarray], items: Sequence[HardNegative], g: dict[str, Any],
                     n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per method (``wins``: method -> (I,) bool, the true text scored higher) and type, the accuracy with a 95%
    bootstrap interval over images; ``g``: what each method's g was, for the table."""
    return _accuracy(wins, np.array([i.type for i in items]), np.array([i.image_id for i in items]), g, n_boot, seed)


def _accuracy(wins: dict[str, np.ndarray], types: np.ndarray, images: np.ndarray, g: dict[str, Any], n_boot: int,
              seed: int) -> dict[str, Any]:
    """:func:`accuracy_by_type` on arrays; a method's wins may be (I,) or (S, I), one row per training seed (the
    interval then also carries the spread over seeds)."""
    out: dict[str, Any] = {"n_items": int(len(types)), "n_images": int(len(np.unique(images))), "methods": {}}
    for name, w in wins.items():
        w = np.atleast_2d(np.asarray(w, dtype=np.float64))  # (S, I)
        row: dict[str, Any] = {"g": g.get(name)}
        for kind in (*HARD_NEGATIVE_TYPES, "all"):
            keep = types == kind if kind != "all" else np.ones(len(types), dtype=bool)
            if keep.any():
                _, cluster = np.unique(images[keep], return_inverse=True)  # image of each item, 0..C-1
                ci = cluster_bootstrap(torch.from_numpy(w[:, keep]), torch.from_numpy(cluster), n_boot=n_boot,
                                       seed=seed)
                row[kind] = {"accuracy": float(w[:, keep].mean()), "lo": ci["lo"], "hi": ci["hi"],
                             "n": int(keep.sum())}
        out["methods"][name] = row
    return out


WINS_FILE = "hardneg_wins.json"  # in an eval folder: per item, which text won for each method (to merge seeds)


def save_wins(path: str | Path, result: dict[str, Any]) -> None:
    """Write the per-item wins that :func:`store_hard_negatives` returned with its summary (``"_wins"``)."""
    from dsanchor.files import write_json

    write_json(Path(path), result["_wins"], indent=None)


def merge_wins(paths: Sequence[str | Path], n_boot: int = 2000) -> dict[str, Any] | None:
    """The hard-negative summary over several training seeds' :data:`WINS_FILE`: accuracy over seeds and items,
    the interval from one bootstrap over images carrying the seeds' spread; None when a file is missing."""
    import json

    if not paths or not all(Path(p).is_file() for p in paths):
        return None
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    methods = [m for m in first["wins"] if all(m in r["wins"] for r in runs)]
    wins = {m: np.array([r["wins"][m] for r in runs], dtype=bool) for m in methods}
    out = _accuracy(wins, np.array(first["types"]), np.array(first["images"]), first["g"], n_boot, 0)
    out["config"], out["seeds"] = first.get("config"), len(runs)
    return out


@torch.no_grad()
def store_hard_negatives(store, heads, test, methods: dict, pair_controllers: dict, config) -> dict[str, Any] | None:
    """Hard negatives of the test split's scenes scored by every retrieval method of ``dsanchor eval`` on the
    stored features (the store's text encoder embeds the new texts), or None when the split has no scene graphs.

    A method scores an item's two texts against its image with the g it gives that image as a query (``i2t``);
    a per-pair controller (``pair_controllers``: method -> :class:`~dsanchor.pairs.PairController`) with the g it
    gives each (text, image) pair, the text ranking the test gallery as a query. The oracle is left out.

    Args:
        test: the :class:`~dsanchor.eval.views.SplitView` of the test split. methods: method -> MethodG.
    """
    from dsanchor.data.hardneg import HardNegConfig, scene_hard_negatives

    scenes = test.images.scenes
    if scenes is None or any(s is None for s in scenes):
        return None
    cfg = HardNegConfig()
    items = [it for n, sc in enumerate(scenes)
             for it in scene_hard_negatives(sc, cfg, int(test.images.image_ids[n]))]
    if not items:
        return None
    col = {int(i): k for k, i in enumerate(test.images.image_ids.tolist())}
    g_i2t = {name: g.i2t for name, g in methods.items() if name != "oracle"}
    wins, g_label = gallery_wins(heads, test.images, items, [col[i.image_id] for i in items], store.encode_texts,
                                 test.state, g_i2t, pair_controllers, relation=test.relation)
    out = accuracy_by_type(wins, items, g_label, config.n_boot)
    out["config"] = {"types": list(cfg.types), "per_image": cfg.per_image, "seed": cfg.seed}
    out["_wins"] = {"types": [i.type for i in items], "images": [i.image_id for i in items], "g": g_label,
                    "config": out["config"], "wins": {m: w.astype(int).tolist() for m, w in wins.items()}}
    return out


def accuracy_table(result: dict[str, Any]) -> list[str]:
    """A markdown table: one row per method, one column per type (accuracy [95% interval])."""
    kinds = [k for k in (*HARD_NEGATIVE_TYPES, "all") if any(k in r for r in result["methods"].values())]
    lines = ["| method | g | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for name, row in result["methods"].items():
        g = row["g"] if isinstance(row["g"], str) else "controller" if row["g"] is None else f"{row['g']:.2f}"
        cells = [f"{row[k]['accuracy']:.3f} [{row[k]['lo']:.2f}, {row[k]['hi']:.2f}]" if k in row else "–"
                 for k in kinds]
        lines.append(f"| {name} | {g} | " + " | ".join(cells) + " |")
    return lines
