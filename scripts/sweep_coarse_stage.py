"""Which EfficientNet-Lite0 stage should V_coarse pool? Extract one store per stage, train heads, compare.

For every candidate stage: text->image R@10 of coarse-only and fine-only scoring per caption
granularity, fixed_best and the per-query oracle on the test split. Usage:

    python scripts/sweep_coarse_stage.py --data runs/sweep/data --scenes 500 --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dsanchor.files import write_json


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--stages", nargs="+", default=["stage3", "stage4", "stage5", "stage6", "head"])
    p.add_argument("--pool", default="avg+grid2")
    p.add_argument("--epochs", type=int, default=12)
    args = p.parse_args(argv)
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig, evaluate_by_granularity, train_heads
    from dsanchor.data import SynthConfig, generate_synth, load_dataset
    from dsanchor.encoders import create_encoder
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.eval.methods import EvalConfig, fixed_g, oracle_g, retrieval_metrics, select_fixed_g
    from dsanchor.eval.views import prepare_view
    from dsanchor.features.extract import ExtractConfig, extract_features
    from dsanchor.features.store import FeatureStore
    from dsanchor.state import StateConfig

    out = Path(args.out)
    data = out / "data"
    if not (data / "captions.json").exists():
        generate_synth(data, SynthConfig(scenes=args.scenes, seed=0, split_fractions=(0.6, 0.2, 0.2)))
    samples = load_dataset("coco", data)
    rows = {}
    for stage in args.stages:
        t0 = time.perf_counter()
        enc = create_encoder("effnet-minilm", coarse_stage=stage, coarse_pool=args.pool)
        feats = out / f"feats-{stage}"
        extract_features(samples, data, feats, enc, ExtractConfig(progress=False), RegionConfig())
        store = FeatureStore(feats)
        d = store.dims
        heads, _ = train_heads(store.images("train"), store.texts("train"), store.images("val"), store.texts("val"),
                               AlignConfig(coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"]),
                               AlignTrainConfig(epochs=args.epochs))
        val = prepare_view(heads, store.images("val"), store.texts("val"), StateConfig())
        test = prepare_view(heads, store.images("test"), store.texts("test"), StateConfig())
        g_best, _ = select_fixed_g(val, EvalConfig())
        fb = retrieval_metrics(test, fixed_g(test, g_best))["t2i"]["R@10"]
        orc = retrieval_metrics(test, oracle_g(test, 21))["t2i"]["R@10"]
        rows[stage] = {"by_granularity": evaluate_by_granularity(heads, store.images("test"), store.texts("test")),
                       "fixed_best_g": g_best, "fixed_best_R@10": fb, "oracle_R@10": orc,
                       "coarse_dim": d["coarse"], "seconds": time.perf_counter() - t0}
        print(stage, json.dumps(rows[stage]), flush=True)
    write_json(out / "sweep.json", rows, indent=1)
    print("| stage | coarse R@10 (all / scene / object / relation) | fine R@10 (all) | fixed_best (g) | oracle |")
    print("|---|---|---|---|---|")
    for stage, r in rows.items():
        g = r["by_granularity"]
        c = " / ".join(f"{g[k]['coarse']:.3f}" for k in ("all", "scene", "object", "relation") if k in g)
        print(f"| {stage} | {c} | {g['all']['fine']:.3f} | {r['fixed_best_R@10']:.3f} ({r['fixed_best_g']:.2f}) | "
              f"{r['oracle_R@10']:.3f} |")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
