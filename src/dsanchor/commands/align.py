"""`dsanchor align`: train the alignment heads on a feature store."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig
    from dsanchor.commands._common import add_overwrite

    p = sub.add_parser("align", help="train the alignment heads (contrastive, coarse + fine scoring)")
    p.add_argument("--features", required=True, help="feature store written by `dsanchor extract`")
    p.add_argument("--out", required=True, help="run directory for the heads")
    p.add_argument("--init", default=None, help="saved heads to fine-tune (e.g. trained on synth); keeps their "
                                                 "architecture")
    p.add_argument("--no-relations", dest="relations", action="store_false",
                   help="do not fit the compositional scorer of multi-phrase captions (one region pool per object "
                        "phrase and the stated relation, fit on val); every caption keeps the single pool")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, AlignConfig, skip=("coarse_dim", "region_dim", "text_dim"))
    add_config_args(p, AlignTrainConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig
    from dsanchor.commands._common import accept_command_out
    from dsanchor.stages import align_stage

    set_threads(args)
    y = yaml_of(args)
    align = resolve_config(AlignConfig, args, y, section="align")
    align_train = resolve_config(AlignTrainConfig, args, y, section="align_train")
    accept_command_out(args, "align")  # before anything is written
    info = align_stage(args.features, args.out, align, align_train, init=args.init, relations=args.relations)
    print(f"heads saved to {args.out} ({info['train_time_s']:.1f}s); test text->image, coarse / fine:")
    for name, row in info["test"].items():
        exact = (f"  exact R@1 {row['exact_coarse_R@1']:.3f} / {row['exact_fine_R@1']:.3f}"
                 if "exact_coarse_R@1" in row else "")
        print(f"  {name:>9}: paired R@10 {row['coarse']:.3f} / {row['fine']:.3f}{exact}  (n={row['n']})")
    rel = info.get("relations")
    if rel:
        print(f"compositional scorer, fit on val ({rel['compositional_captions']} multi-phrase captions): "
              f"mix {rel['mix']:.2f}, relation weight {rel['weight']:.2f}")
    return 0
