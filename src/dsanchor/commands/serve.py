"""`dsanchor serve`: a local web page to search an index by text and query it with an uploaded image."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config
from dsanchor.serve import DEFAULT_HOST, DEFAULT_PORT, ServeConfig


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page for searching an index (text and image queries)")
    p.add_argument("--index", required=True, help="an index written by `dsanchor index`")
    p.add_argument("--pipeline", default=None, help="the pipeline (default: the one the index records)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    add_config_args(p, ServeConfig)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.serve import serve

    set_threads(args)
    config = resolve_config(ServeConfig, args, yaml_of(args), section="serve")
    serve(args.index, host=args.host, port=args.port, pipeline=args.pipeline, config=config)
    return 0
