"""Replicate generator comparisons on the real renders that ``clevr_transfer.py`` never tested on.

``clevr_transfer.py`` scores synth-trained heads on the real test split, and the generator variants were
chosen by looking at those numbers. Synth-trained heads never see a real render, so the real train and val
renders are fresh data for them: this scores each variant's synth heads (``RUN/seed*/synth`` of a
``clevr_transfer.py`` run) on those, text→image under exact relevance at the fixed g chosen on synth val, and
gives each difference to the first variant with the bootstrap over renders and seeds.

Usage:

    python scripts/transfer_holdout.py --real runs/real_clevr/features --seeds 3 \\
        --variant "linear colours=runs/transfer_lin60:runs/synth_lin60/features" \\
        --variant "display colours=runs/transfer_display60:runs/demo/features"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clevr_transfer import _score  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="real CLEVR store with train/val/test splits")
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=TRANSFER_RUN:SYNTH_FEATURES (the first is the reference)")
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args(argv)
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.compare import cluster_bootstrap, query_clusters, query_metric
    from dsanchor.eval.views import prepare_view, subset
    from dsanchor.features.store import FeatureStore
    from dsanchor.metrics.retrieval import chance_recall
    from dsanchor.state import StateConfig

    real = FeatureStore(args.real)
    images, texts = real.images(), real.texts()
    held, held_texts = subset(images, texts, torch.tensor([s != "test" for s in images.splits]))
    ranks, view = {}, None
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        run, _, feats = rest.partition(":")
        synth = FeatureStore(feats)
        per_seed = []
        for seed in range(args.seeds):
            heads = AlignmentHeads.from_pretrained(Path(run) / f"seed{seed}" / "synth")
            view = prepare_view(heads, held, held_texts, StateConfig())
            val = prepare_view(heads, synth.images("val"), synth.texts("val"), StateConfig())
            per_seed.append(_score(heads, view, val)[0]["fixed_best"])
        ranks[name] = torch.stack(per_seed)
    chance = chance_recall(view.exact, (1, 10))
    print(f"{len(held)} real renders outside the test split, {len(held_texts)} captions; chance R@1 "
          f"{chance['R@1']:.3f}, R@10 {chance['R@10']:.3f}; fixed_best, mean over {args.seeds} seeds\n")
    print("| variant | R@1 | R@10 | − first R@1 [95% CI] | − first R@10 [95% CI] |\n|---|---|---|---|---|")
    cluster = query_clusters(view)["t2i"]
    first = next(iter(ranks))
    out = {}
    for name, r in ranks.items():
        row = {m: float(query_metric(r, m).mean()) for m in ("R@1", "R@10")}
        cells = []
        for m in ("R@1", "R@10"):
            if name == first:
                cells.append("–")
                continue
            d = cluster_bootstrap(query_metric(r, m) - query_metric(ranks[first], m), cluster)
            row[f"diff_{m}"] = d
            star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
            cells.append(f"{star}{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star}")
        out[name] = row
        print(f"| {name} | {row['R@1']:.3f} | {row['R@10']:.3f} | {cells[0]} | {cells[1]} |")
    return out


if __name__ == "__main__":
    main()
