"""Retrieval of the alignment heads on photos (Flickr8k): variants of the heads and their training, over seeds and
feature stores, scored at the fixed g best on val, as ``dsanchor run`` reports ``fixed_best``.

Each variant is a set of overrides of ``AlignConfig`` (``heads.``) and ``AlignTrainConfig`` (``train.``) on top of
the library defaults and of ``dsanchor run``'s budget (24 epochs). Heads are trained with
:func:`dsanchor.align.train.train_heads` on the store's train split (early stopping on val); g is chosen on val
(:func:`dsanchor.eval.methods.select_fixed_g`); both val and test are scored, paired protocol, both directions.
Decide on val; test is reported.

Usage::

    python scripts/photo_ladder.py --features /work/runs/f8k/features --variants base lr3e4 --seeds 3 \\
        --out /work/runs/f8k_ladder.jsonl
    python scripts/photo_ladder.py --list

``--out`` appends one JSON line per (store, variant, seed); ``--table`` prints the mean ± std table of a JSONL file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

EPOCHS = 24  # dsanchor run's RunConfig.align_epochs
# name -> (AlignConfig overrides, AlignTrainConfig overrides); each row is a full configuration
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "drop3": ({"dropout": 0.3}, {}),
    "wd0.1": ({}, {"weight_decay": 0.1}),
    "drop3_wd0.1": ({"dropout": 0.3}, {"weight_decay": 0.1}),
    "lr3e-4": ({}, {"lr": 3e-4}),
    "lr3e-4_ep48": ({}, {"lr": 3e-4, "epochs": 48}),
    "lr3e-4_drop3": ({"dropout": 0.3}, {"lr": 3e-4, "epochs": 48}),
    "warm": ({"init_temperature": 0.2}, {}),
    "cold": ({"init_temperature": 0.03}, {}),
    "no_context": ({"region_context": 0}, {}),
    "pool3": ({"init_pool_scale": 3.0}, {}),
    "hard_neg": ({}, {"hard_negatives": 64}),
    "small": ({"hidden": 128, "dim": 128}, {}),
    "patience8": ({}, {"patience": 8}),
    "bs256": ({}, {"batch_size": 256}),
    "bs512": ({}, {"batch_size": 512, "lr": 2e-3}),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", nargs="+", default=[], help="feature stores (one row block per store)")
    p.add_argument("--variants", nargs="+", default=["base"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSONL file to append rows to")
    p.add_argument("--table", default=None, help="print the table of a JSONL file and exit")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="maximum epochs where a variant sets none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", nargs="+", default=[], help="saved heads to score instead of training (variant 'run'; "
                   "seed from a 'seedN' folder in the path)")
    return p


def _scores(view, g: float) -> dict:
    from dsanchor.eval.methods import fixed_g, query_ranks

    ranks = query_ranks(view, fixed_g(view, g))
    return {f"{d}_R@{k}": float((ranks[d] <= k).double().mean()) for d in ("t2i", "i2t") for k in (1, 5, 10)}


def run_one(features: str, name: str, seed: int, epochs: int = EPOCHS) -> dict:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig, train_heads
    from dsanchor.features.store import FeatureStore

    heads_o, train_o = VARIANTS[name]
    store = FeatureStore(features)
    d = store.dims
    cfg = dataclasses.replace(AlignConfig(**heads_o), coarse_dim=d["coarse"], region_dim=d["region"],
                              text_dim=d["text"])
    train = AlignTrainConfig(**{"epochs": epochs, **train_o, "seed": seed})
    t0 = time.perf_counter()
    heads, info = train_heads(store.images("train"), store.texts("train"), store.images("val"), store.texts("val"),
                              cfg, train)
    seconds = time.perf_counter() - t0
    return score(store, heads, {"features": features, "variant": name, "seed": seed, "max_epochs": train.epochs,
                                "best_epoch": info["best_epoch"], "epochs_run": len(info["history"]),
                                "train_s": round(seconds, 1)})


def run_heads(features: str, heads_dir: str, seed: int) -> dict:
    """Score heads trained elsewhere (a run's ``seed{N}/heads``) the same way, as variant ``run``."""
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.features.store import FeatureStore

    info = json.loads((Path(heads_dir) / "align_metrics.json").read_text())
    return score(FeatureStore(features), AlignmentHeads.from_pretrained(heads_dir),
                 {"features": features, "variant": "run", "seed": seed, "max_epochs": EPOCHS,
                  "best_epoch": info["best_epoch"], "epochs_run": len(info["history"]),
                  "train_s": round(info["train_time_s"], 1), "heads": str(heads_dir)})


def score(store, heads, row: dict) -> dict:
    """``row`` with g chosen on val (as ``fixed_best``) and val and test recalls at it, both directions."""
    from dsanchor.eval.methods import EvalConfig, select_fixed_g
    from dsanchor.eval.views import prepare_view
    from dsanchor.state import StateConfig

    views = {s: prepare_view(heads, store.images(s), store.texts(s), StateConfig()) for s in ("val", "test")}
    g, _ = select_fixed_g(views["val"], EvalConfig())
    row["g"] = g
    for split, view in views.items():
        row.update({f"{split}_{k}": v for k, v in _scores(view, g).items()})
        row.update({f"{split}_coarse_{k}": v for k, v in _scores(view, 0.0).items() if k.endswith("R@10")})
        row.update({f"{split}_fine_{k}": v for k, v in _scores(view, 1.0).items() if k.endswith("R@10")})
    return row


COLS = ("val_t2i_R@1", "val_t2i_R@10", "val_i2t_R@1", "val_i2t_R@10",
        "test_t2i_R@1", "test_t2i_R@10", "test_i2t_R@1", "test_i2t_R@10")


def table(rows: list[dict]) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["features"], r["variant"]), []).append(r)
    head = "| store | variant | seeds | g | best epoch | " + " | ".join(c.replace("_", " ") for c in COLS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (feats, name), rs in groups.items():
        def cell(key: str, rs=rs) -> str:
            v = [r[key] for r in rs]
            m = sum(v) / len(v)
            sd = math.sqrt(sum((x - m) ** 2 for x in v) / len(v))
            return f"{m:.3f} ± {sd:.3f}" if len(v) > 1 else f"{m:.3f}"
        lines.append(f"| {Path(feats).parent.name}/{Path(feats).name} | {name} | {len(rs)} | {cell('g')} | "
                     f"{cell('best_epoch')} | " + " | ".join(cell(c) for c in COLS) + " |")
    return "\n".join(lines)


def _emit(row: dict, out: str | None) -> dict:
    """Print ``row`` as a JSON line and append it to ``out`` (when given); returns it."""
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, (h, t) in VARIANTS.items():
            print(f"{name:16s} heads {h} train {t}")
        return 0
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return 0
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; --list shows them")
    torch.set_num_threads(args.threads)
    rows = []
    for feats in args.features if args.heads else []:
        for h in args.heads:
            seed = next((int(p[4:]) for p in Path(h).parts if p.startswith("seed") and p[4:].isdigit()), -1)
            rows.append(_emit(run_heads(feats, h, seed), args.out))
    if args.heads:
        print(table(rows))
        return 0
    for feats in args.features:
        for name in args.variants:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                rows.append(_emit(run_one(feats, name, seed, args.epochs), args.out))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
