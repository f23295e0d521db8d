"""`dsanchor align`: train the alignment heads on a feature store."""

from __future__ import annotations

import dataclasses

from dsanchor.commands._common import add_common, set_threads, write_json, yaml_of
from dsanchor.config import add_config_args, resolve_config, save_resolved


def add_parser(sub) -> None:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig

    p = sub.add_parser("align", help="train the alignment heads (contrastive, coarse + fine scoring)")
    p.add_argument("--features", required=True, help="feature store written by `dsanchor extract`")
    p.add_argument("--out", required=True, help="run directory for the heads")
    add_common(p)
    add_config_args(p, AlignConfig, skip=("coarse_dim", "region_dim", "text_dim"))
    add_config_args(p, AlignTrainConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig, evaluate_by_granularity, train_heads
    from dsanchor.features.store import FeatureStore

    set_threads(args)
    y = yaml_of(args)
    store = FeatureStore(args.features)
    cfg = resolve_config(AlignConfig, args, y, section="align")
    d = store.dims
    cfg = dataclasses.replace(cfg, coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"])
    train_cfg = resolve_config(AlignTrainConfig, args, y, section="align_train")
    heads, info = train_heads(store.images("train"), store.texts("train"), store.images("val"), store.texts("val"),
                              cfg, train_cfg)
    heads.save_pretrained(args.out)
    save_resolved(args.out, align=cfg, align_train=train_cfg, features=str(args.features))
    info["test"] = evaluate_by_granularity(heads, store.images("test"), store.texts("test"))
    write_json(f"{args.out}/align_metrics.json", info)
    t = info["test"]
    print(f"heads saved to {args.out} ({info['train_time_s']:.1f}s); test text->image R@10:")
    for name, row in t.items():
        print(f"  {name:>9}: coarse {row['coarse']:.3f}  fine {row['fine']:.3f}  (n={row['n']})")
    return 0
