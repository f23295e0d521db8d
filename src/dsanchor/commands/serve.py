"""`dsanchor serve`: a local web page to search an index by text and query it with an uploaded image."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads
from dsanchor.serve import DEFAULT_HOST, DEFAULT_PORT


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page for searching an index (text and image queries)")
    p.add_argument("--index", required=True, help="an index written by `dsanchor index`")
    p.add_argument("--pipeline", default=None, help="the pipeline (default: the one the index records)")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.serve import serve

    set_threads(args)
    serve(args.index, host=args.host, port=args.port, pipeline=args.pipeline)
    return 0
