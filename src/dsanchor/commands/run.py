"""`dsanchor run`: the whole pipeline on any dataset on disk (the demo is this command on generated data)."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.data import list_formats
    from dsanchor.run import RunConfig

    p = sub.add_parser("run", help="extraction, heads, detector, tuning, PPO, captioning, eval and the report "
                                   "on a dataset on disk")
    p.add_argument("--data", required=True, help="dataset root directory")
    p.add_argument("--format", required=True, help=f"dataset format: {', '.join(list_formats())}")
    p.add_argument("--out", required=True, help="output directory (rerun to resume, reusing finished stages)")
    p.add_argument("--splits", default=None,
                   help="split file: splits.json {train: [ids], val: [...], test: [...]} or Karpathy's "
                        "dataset_coco.json (default: the dataset's own splits, else a seeded 60/20/20 split)")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, RunConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.run import RunConfig, run_pipeline

    set_threads(args)
    run_pipeline(args.data, args.format, args.out, resolve_config(RunConfig, args, yaml_of(args), section="run"),
                 splits=args.splits, overwrite=bool(args.overwrite))
    return 0
