"""`dsanchor caption --pipeline P IMAGE... [--g G]`: caption image files with a saved pipeline.

``dsanchor caption`` with ``--pipeline`` and no action (train / generate / eval) is routed here by
:func:`dsanchor.cli.main`.
"""

from __future__ import annotations

import json

from dsanchor.commands._common import add_common, set_threads


def add_parser(sub) -> None:
    p = sub.add_parser("caption-images", help="caption image files with a saved pipeline (also: `dsanchor caption "
                                              "--pipeline P IMAGE...`)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--pipeline", required=True, help="a saved pipeline with a caption decoder")
    p.add_argument("--g", type=float, default=None, help="caption at this g instead of the controller's")
    p.add_argument("--beam", type=int, default=3, help="beam width")
    p.add_argument("--json", action="store_true", help="print one JSON object per image (with \"domain_note\": one "
                                                       "line when the image looks out of the pipeline's training "
                                                       "domain, else null; without --json it goes to stderr)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from dsanchor.pipeline import GChoice, load

    set_threads(args)
    pipe = load(args.pipeline)
    for path, row in zip(args.images, pipe.caption(args.images, g=args.g, beam=args.beam), strict=True):
        if args.json:
            print(json.dumps({"image": path, **row}))
            continue
        if row["domain_note"]:
            print(f"dsanchor caption: note: {path}: {row['domain_note']}", file=sys.stderr)
        print(f"{path}: {GChoice(row['g'], row['source'], row['query_type']).describe()}")
        for kind, text in row["captions"].items():
            print(f"  {kind:>8}: {text}")
    return 0
