"""`dsanchor demo`: every stage on the embedded default, then results.json, report.md and plots."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.demo import DemoConfig

    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data (about 4 minutes on 2 idle cores)")
    p.add_argument("--out", default="runs/demo", help="output directory (rerun to reuse finished stages)")
    add_common(p)
    add_config_args(p, DemoConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.demo import DemoConfig, run_demo

    set_threads(args)
    run_demo(args.out, resolve_config(DemoConfig, args, yaml_of(args), section="demo"))
    return 0
