"""Ablation of the alignment heads: text->image retrieval by caption granularity, exact and paired protocol.

Trains the heads once per named variant (overrides of ``AlignConfig`` / ``AlignTrainConfig`` on top of the
library defaults) and scores the test split with the evaluation code the demo uses
(:func:`dsanchor.eval.views.prepare_view`, :func:`dsanchor.eval.methods.retrieval_metrics`) at g = 0, 0.5, 1
and at the best fixed g on val (grid of 21, :func:`dsanchor.eval.methods.select_fixed_g`).

Data: feature stores extracted with ``--format synth`` (so scene graphs and facts are loaded), as the demo makes
them (1000 scenes, 224 px, split 60/20/20); the default regions (head map) and stage-5 regions::

    dsanchor data synth --out /tmp/align_data --scenes 1000 --seed 0 --split-fractions 0.6 0.2 0.2
    dsanchor extract --data /tmp/align_data --format synth --out /tmp/align_feats
    dsanchor extract --data /tmp/align_data --format synth --out /tmp/align_feats_r5 --region-stage stage5
    # more training scenes (all train, another seed), for --extra-train:
    dsanchor data synth --out /tmp/align_extra --scenes 600 --seed 100 --split-fractions 1 0 0
    dsanchor extract --data /tmp/align_extra --format synth --out /tmp/align_extra_feats --region-stage stage5

Usage (each row of the report's table is one call; ``--list`` prints the variants)::

    python scripts/align_ablation.py --features /tmp/align_feats --variants paired exact_lse exact_mean epochs24
    python scripts/align_ablation.py --features /tmp/align_feats_r5 --variants paired exact_mean epochs24 context
    python scripts/align_ablation.py --features /tmp/align_feats_r5 --variants context \\
        --extra-train /tmp/align_extra_feats
    python scripts/align_ablation.py --features /tmp/align_feats_r5 --variants epochs24 --set train.seed=1

``--set heads.FIELD=V`` / ``--set train.FIELD=V`` override a field for every variant; ``--out F`` appends each
row as a JSON line (with exact R@1 per fact type and its chance level under ``by_fact``). Torch runs on one
thread; the numbers do not depend on the load, the timings do.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

GRANULARITIES = ("object", "scene", "relation")

# name -> (overrides of AlignConfig, overrides of AlignTrainConfig), each a full configuration on top of the library
# defaults. "paired" is the behaviour before exact positives; each later row changes one thing in the row above.
# The store is a separate axis (--features): the default one (regions RoI-aligned from the head map) or one
# extracted with --region-stage stage5; more scenes come in with --extra-train.
_PAIRED = {"positives": "paired", "positive_loss": "lse", "val_protocol": "paired", "epochs": 12}
_EXACT = {"epochs": 12}  # library defaults: exact positives, mean form, exact val protocol
VARIANTS: dict[str, tuple[dict, dict]] = {
    "paired": ({}, _PAIRED),
    "exact_lse": ({}, {**_PAIRED, "positives": "exact", "val_protocol": "exact"}),
    "exact_mean": ({}, _EXACT),
    "epochs24": ({}, {**_EXACT, "epochs": 24}),
    "context": ({"region_context": 1}, {**_EXACT, "epochs": 24}),
    "hard_neg": ({}, {**_EXACT, "epochs": 24, "hard_negatives": 64}),
    "hard_neg_all": ({}, {**_EXACT, "hard_negatives": 600}),
    "cold": ({"init_temperature": 0.03}, _EXACT),
    "pool3": ({"init_pool_scale": 3.0}, _EXACT),
    "wide": ({"hidden": 512}, _EXACT),
}


def parse_value(text: str):
    """A --set value: JSON where it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_configs(name: str, sets: list[str], dims: dict[str, int]):
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig

    heads_over, train_over = (dict(x) for x in VARIANTS[name])
    for item in sets:
        key, value = item.split("=", 1)
        part, field = key.split(".", 1)
        (heads_over if part == "heads" else train_over)[field] = parse_value(value)
    heads = AlignConfig(coarse_dim=dims["coarse"], region_dim=dims["region"], text_dim=dims["text"], **heads_over)
    return heads, AlignTrainConfig(**train_over)


@torch.no_grad()
def score_split(heads, images, texts, g_values: dict[str, float]) -> dict:
    """Text->image R@1/5/10 (exact and paired) per granularity at each named g."""
    from dsanchor.eval.methods import fixed_g, retrieval_metrics
    from dsanchor.eval.views import prepare_view
    from dsanchor.state import StateConfig

    view = prepare_view(heads, images, texts, StateConfig())
    out = {}
    for label, g in g_values.items():
        m = retrieval_metrics(view, fixed_g(view, g))
        out[label] = {"g": g, "all": {"exact": m.get("exact", {}).get("t2i"), "paired": m["t2i"]},
                      **{k: v for k, v in m["by_granularity"].items()}}
        if view.exact is not None:
            out[label]["by_fact"] = by_fact_type(view, g)
    return out


@torch.no_grad()
def by_fact_type(view, g: float) -> dict:
    """Exact text->image R@1 per fact type (count, absent, most, ...), with chance: the R@1 of a random ranking."""
    from dsanchor.eval.methods import fixed_g, query_ranks

    ranks = query_ranks(view, fixed_g(view, g), view.exact)["t2i"]  # (T,)
    share = view.exact.double().mean(dim=1)  # (T,) a random top-1 is true with this probability
    kinds = [f["type"] for f in view.texts.facts]
    out = {}
    for kind in sorted(set(kinds)):
        sel = torch.tensor([k == kind for k in kinds])
        out[kind] = {"R@1": float((ranks[sel] == 1).double().mean()), "chance": float(share[sel].mean()),
                     "n": int(sel.sum())}
    return out


def concat_images(parts):
    """One ImageFeatures from several (image ids must be distinct; regions padded to the widest R)."""
    from dsanchor.features.types import ImageFeatures

    r = max(p.regions.shape[1] for p in parts)

    def pad(x, fill=0):  # (N, R', ...) -> (N, R, ...)
        if x.shape[1] == r:
            return x
        return torch.nn.functional.pad(x.float(), (0, 0) * (x.dim() - 2) + (0, r - x.shape[1]), value=fill).to(x.dtype)
    scenes = None if any(p.scenes is None for p in parts) else [s for p in parts for s in p.scenes]
    return ImageFeatures(torch.cat([p.image_ids for p in parts]), torch.cat([p.coarse for p in parts]),
                         torch.cat([pad(p.regions) for p in parts]), torch.cat([pad(p.boxes) for p in parts]),
                         torch.cat([pad(p.mask, False) for p in parts]), [o for p in parts for o in p.objects],
                         [s for p in parts for s in p.splits], scenes)


def concat_texts(parts):
    from dsanchor.features.types import TextFeatures

    facts = None if any(p.facts is None for p in parts) else [f for p in parts for f in p.facts]
    return TextFeatures(torch.cat([p.embeddings for p in parts]), torch.cat([p.image_ids for p in parts]),
                        torch.cat([p.granularity for p in parts]), [c for p in parts for c in p.captions], facts)


def train_split(store, extra: list[Path]):
    """The store's train split plus every image of each extra store (ids offset past the ones before)."""
    import dataclasses as dc

    from dsanchor.features.store import FeatureStore

    images, texts = [store.images("train")], [store.texts("train")]
    offset = int(max(int(store.images(s).image_ids.max()) for s in ("train", "val", "test"))) + 1
    for path in extra:
        x = FeatureStore(path)
        im, tx = x.images(None), x.texts(None)
        images.append(dc.replace(im, image_ids=im.image_ids + offset))
        texts.append(dc.replace(tx, image_ids=tx.image_ids + offset))
        offset += int(im.image_ids.max()) + 1
    return concat_images(images), concat_texts(texts)


def run_variant(store, name: str, sets: list[str], save: Path | None = None, extra: list[Path] = ()) -> dict:
    from dsanchor.align.train import train_heads
    from dsanchor.eval.methods import EvalConfig, select_fixed_g
    from dsanchor.eval.views import prepare_view
    from dsanchor.state import StateConfig

    heads_cfg, train_cfg = build_configs(name, sets, store.dims)
    t0 = time.perf_counter()
    train_images, train_texts = train_split(store, list(extra))
    heads, info = train_heads(train_images, train_texts, store.images("val"), store.texts("val"), heads_cfg, train_cfg)
    train_s = time.perf_counter() - t0
    if save is not None:
        heads.save_pretrained(save / name)
    g_best, _ = select_fixed_g(prepare_view(heads, store.images("val"), store.texts("val"), StateConfig()),
                               EvalConfig())
    test = score_split(heads, store.images("test"), store.texts("test"),
                       {"g=0": 0.0, "g=0.5": 0.5, "g=1": 1.0, "best": g_best})
    return {"variant": name, "features": str(store.path), "sets": sets, "heads": dataclasses.asdict(heads_cfg),
            "train": dataclasses.asdict(train_cfg), "train_s": train_s, "train_images": len(train_images),
            "extra": [str(p) for p in extra],
            "epochs_run": len(info["history"]), "best_epoch": info.get("best_epoch"),
            "pool_s": float(heads.pool_s), "logit_scale": float(heads.logit_scale.exp()), "test": test}


def table(rows: list[dict]) -> str:
    """Markdown: exact R@1 per granularity at each g, then R@5/R@10 and paired R@1 at the best g."""
    head = ("| variant | best g | exact R@1 obj / scene / rel at g=0 | g=0.5 | g=1 | best g | "
            "best g exact R@5 obj/scene/rel | R@10 | paired R@1 | train s (epochs) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t = r["test"]

        def cell(label, key="exact_t2i_R@1", t=t):
            return " / ".join(f"{t[label][g][key]:.3f}" for g in GRANULARITIES if g in t[label])
        name = r["variant"] + ("" if not r["sets"] else " " + " ".join(r["sets"])) + \
            (f" +{len(r['extra'])} extra ({r['train_images']} train)" if r.get("extra") else "")
        lines.append(f"| {name} | {t['best']['g']:.2f} | {cell('g=0')} | {cell('g=0.5')} | {cell('g=1')} | "
                     f"{cell('best')} | {cell('best', 'exact_t2i_R@5')} | {cell('best', 'exact_t2i_R@10')} | "
                     f"{cell('best', 't2i_R@1')} | {r['train_s']:.1f} ({r['epochs_run']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", help="feature store (extracted with --format synth)")
    p.add_argument("--variants", nargs="+", default=["paired", "epochs24"], help="names from VARIANTS (see --list)")
    p.add_argument("--set", action="append", default=[], dest="sets",
                   help="override for every variant: heads.FIELD=VALUE or train.FIELD=VALUE (repeatable)")
    p.add_argument("--out", help="append the rows as JSON lines to this file")
    p.add_argument("--extra-train", type=Path, action="append", default=[],
                   help="another store (e.g. more synth scenes of another seed) whose images all join the train split")
    p.add_argument("--save", type=Path, help="save each variant's heads under SAVE/VARIANT")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (h, t) in VARIANTS.items():
            print(f"{name}: heads {h} train {t}")
        return []
    from dsanchor.features.store import FeatureStore

    torch.set_num_threads(1)
    store = FeatureStore(args.features)
    rows = []
    for name in args.variants:
        row = run_variant(store, name, args.sets, args.save, args.extra_train)
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        if args.out:
            with open(Path(args.out), "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
