"""``dsanchor hardneg make`` (compositional hard negatives from scene graphs, in SugarCrepe's layout) and
``dsanchor hardneg score`` (a pipeline's binary accuracy on them, per type and per g)."""

from __future__ import annotations

import argparse


def _make(args: argparse.Namespace) -> int:
    from dsanchor.config import load_yaml, resolve_config, save_resolved
    from dsanchor.data import load_dataset
    from dsanchor.data.hardneg import HardNegConfig, generate_hard_negatives, write_sugarcrepe
    from dsanchor.errors import ConfigError

    cfg = resolve_config(HardNegConfig, args, load_yaml(args.config), section="hardneg")
    samples = load_dataset(args.format, args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    try:
        items = generate_hard_negatives(samples, cfg)
    except ValueError as exc:
        raise ConfigError(f"--format {args.format}: {exc}") from None
    files = write_sugarcrepe(items, args.out)
    save_resolved(args.out, hardneg=cfg)
    counts = ", ".join(f"{kind} {sum(i.type == kind for i in items)}" for kind in files)
    print(f"{len(items)} items from {len({i.image_id for i in items})} images ({counts}) written to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dsanchor.data.hardneg import read_sugarcrepe
    from dsanchor.errors import ConfigError
    from dsanchor.eval.hardneg import accuracy_table, score_hard_negatives
    from dsanchor.files import write_json
    from dsanchor.pipeline import load

    items = read_sugarcrepe(args.items)
    if not items:
        raise ConfigError(f"--items {args.items}: no replace_att.json, swap_att.json, swap_rel.json or "
                          "replace_count.json there (write them with `dsanchor hardneg make`)")
    missing = [i.image_path for i in items if not (Path(args.images) / i.image_path).is_file()]
    if missing:
        raise ConfigError(f"--images {args.images}: {len(missing)} image files of the items are not there, "
                          f"e.g. {missing[0]}; pass the dataset root the items were made from")
    result = score_hard_negatives(load(args.pipeline), items, args.images, progress=not args.quiet)
    print("\n".join(accuracy_table(result)))
    if args.out:
        write_json(args.out, result)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dsanchor.config import add_config_args
    from dsanchor.data.hardneg import HardNegConfig

    parser = subparsers.add_parser("hardneg", help="compositional hard negatives: make them, score a pipeline",
                                   description="Compositional hard negatives from scene graphs (replace-att, "
                                               "swap-att, swap-rel, replace-count), checked against each scene.")
    actions = parser.add_subparsers(dest="hardneg_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    make = actions.add_parser("make", help="write hard negatives in SugarCrepe's JSON layout (one file per type)")
    make.add_argument("--data", required=True, help="dataset root with scene graphs (synth or CLEVR)")
    make.add_argument("--format", required=True, help="dataset format: synth or clevr")
    make.add_argument("--split", default=None, help="only this split (train, val or test); default: all images")
    make.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    make.add_argument("--out", required=True, help="output folder for replace_att.json, swap_att.json, ...")
    make.add_argument("--config", default=None, help="YAML file with a 'hardneg:' section; flags override it")
    add_config_args(make, HardNegConfig)
    make.set_defaults(func=_make)

    score = actions.add_parser("score", help="binary accuracy of a pipeline per type, at g = 0, 1, fixed and its "
                                             "controller's")
    score.add_argument("--pipeline", required=True, help="a saved pipeline (e.g. runs/demo/pipeline)")
    score.add_argument("--items", required=True, help="a folder written by `dsanchor hardneg make`")
    score.add_argument("--images", required=True, help="the dataset root the items' file names are relative to")
    score.add_argument("--out", default=None, help="also write the result as JSON here")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(func=_score)
