"""Heads must be trained on the region source they will see: annotation boxes vs class-agnostic proposals.

Two feature stores of the same synth images, one extracted with annotation boxes (the default) and one with
``--no-annotations`` (every image gets the fallback proposals: connected components, then grid cells, as a new
image without boxes does). Heads are trained on one store's train split (early stopping on its val split,
:func:`dsanchor.stages.align_stage`) and scored on the test split of one store, text→image under exact
relevance, coarse-only, fine-only and at the fixed g best on the training store's val split:

* annotations → annotations; proposals → proposals; annotations → proposals (trained on boxes, shown proposals).

Differences come with a 95% interval from the bootstrap over test images and training seeds.

Usage:

    dsanchor data synth --out runs/synth --split-fractions 0.6 0.2 0.2
    dsanchor extract --data runs/synth --format synth --out runs/synth_ann
    dsanchor extract --data runs/synth --format synth --out runs/synth_props --no-annotations
    python scripts/region_sources.py --annotations runs/synth_ann --proposals runs/synth_props --seeds 3 \\
        --out runs/region_sources
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dsanchor.files import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clevr_transfer import SCORINGS, _score, _view  # noqa: E402

ROWS = (("annotations", "annotations"), ("proposals", "proposals"), ("annotations", "proposals"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", required=True, help="store extracted with annotation boxes")
    p.add_argument("--proposals", required=True, help="the same images extracted with --no-annotations")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--heads", nargs=2, default=None, metavar=("ANN", "PROP"),
                   help="reuse heads already trained on each store, as path patterns with {seed}")
    p.add_argument("--threads", type=int, default=0)
    return p


def _table(ranks: dict, test_view, seeds: int) -> dict:
    """R@1 / R@10 per row and scoring (mean and std over seeds), and the fixed_best differences with intervals."""
    from dsanchor.eval.compare import cluster_bootstrap, query_clusters, query_metric

    cluster = query_clusters(test_view)["t2i"]
    table = {"n_test_images": len(test_view.images), "n_test_captions": len(test_view.texts), "seeds": seeds,
             "rows": {}, "differences": {}}
    for row, by in ranks.items():
        key = f"{row[0]} → {row[1]}"
        table["rows"][key] = {}
        for s, rs in by.items():
            st = torch.stack(rs)
            table["rows"][key][s] = {m: float(query_metric(st, m).mean()) for m in ("R@1", "R@10")}
            table["rows"][key][s].update({f"{m}_std": float(query_metric(st, m).mean(1).std(unbiased=False))
                                          for m in ("R@1", "R@10")})
    pairs = ((ROWS[2], ROWS[1]), (ROWS[2], ROWS[0]), (ROWS[0], ROWS[1]))
    for a, b in pairs:
        for m in ("R@1", "R@10"):
            diff = (query_metric(torch.stack(ranks[a]["fixed_best"]), m)
                    - query_metric(torch.stack(ranks[b]["fixed_best"]), m))
            table["differences"][f"({a[0]} → {a[1]}) − ({b[0]} → {b[1]}) {m}"] = cluster_bootstrap(diff, cluster)
    return table


def _markdown(table: dict, seeds: int) -> str:
    lines = [f"Synth test split: {table['n_test_images']} images, {table['n_test_captions']} captions, exact "
             f"relevance, text→image; mean ± std over {seeds} seeds.", "",
             "| heads trained on → tested on | fine R@1 | fixed_best R@1 | fine R@10 | fixed_best R@10 |",
             "|---|---|---|---|---|"]
    for key, r in table["rows"].items():
        lines.append(f"| {key} | " + " | ".join(f"{r[s][m]:.3f} ± {r[s][m + '_std']:.3f}"
                                                  for m in ("R@1", "R@10") for s in ("fine", "fixed_best")) + " |")
    lines += ["", "| difference (fixed_best) | value [95% CI] |", "|---|---|"]
    for k, d in table["differences"].items():
        star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
        lines.append(f"| {k} | {star}{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from dsanchor.align.heads import AlignConfig, AlignmentHeads
    from dsanchor.align.train import AlignTrainConfig
    from dsanchor.features.store import FeatureStore
    from dsanchor.run import quiet_progress
    from dsanchor.stages import align_stage

    quiet_progress()
    out = Path(args.out)
    paths = {"annotations": args.annotations, "proposals": args.proposals}
    stores = {name: FeatureStore(path) for name, path in paths.items()}
    ids = [s.images("test").image_ids for s in stores.values()]
    if not torch.equal(*ids):
        raise SystemExit("the two stores must hold the same images with the same splits")
    ranks = {r: {s: [] for s in SCORINGS} for r in ROWS}
    test_view = None
    for seed in range(args.seeds):
        heads = {}
        for k, name in enumerate(stores):
            if args.heads:
                folder = Path(args.heads[k].format(seed=seed))
            else:
                folder = out / f"seed{seed}" / name
                print(f"seed {seed}: training heads on {name}", file=sys.stderr, flush=True)
                align_stage(paths[name], folder, AlignConfig(), AlignTrainConfig(epochs=args.epochs, seed=seed))
            heads[name] = AlignmentHeads.from_pretrained(folder)
        for train, test in ROWS:
            h = heads[train]
            test_view = _view(h, stores[test], "test")
            r, _ = _score(h, test_view, _view(h, stores[train], "val"))
            for s in SCORINGS:
                ranks[(train, test)][s].append(r[s])
    table = _table(ranks, test_view, args.seeds)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "region_sources.json", table)
    md = _markdown(table, args.seeds)
    (out / "region_sources.md").write_text(md)
    print(md)
    return table


if __name__ == "__main__":
    main()
