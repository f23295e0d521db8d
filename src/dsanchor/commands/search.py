"""`dsanchor search`: text→image search of an index, or image→caption ranking of an index's captions."""

from __future__ import annotations

import json

from dsanchor.commands._common import add_common, set_threads


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search an index by text (or rank its captions for an image)")
    p.add_argument("--index", required=True, help="an index written by `dsanchor index`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query", help="text query")
    q.add_argument("--image", help="an image file: rank the index's captions for it")
    p.add_argument("--k", type=int, default=10, help="results to show")
    p.add_argument("--g", type=float, default=None, help="use this g instead of the controller's")
    p.add_argument("--m", type=int, default=100, help="faiss first-stage candidates re-ranked by DSA")
    p.add_argument("--per-pair", action="store_true",
                   help="with --query: re-rank with the per-pair controller, a g for each candidate image (when the "
                        "pipeline has one; it has not measured better than the fixed g)")
    p.add_argument("--pipeline", default=None, help="the pipeline (default: the one the index records)")
    p.add_argument("--all-captions", action="store_true",
                   help="with --image: list near-duplicate captions too (by default a caption is dropped when a "
                        "higher-ranked one states the same fact (synth, CLEVR), has the same text up to case and "
                        "punctuation, or a text-encoder cosine >= 0.97 with it)")
    p.add_argument("--json", action="store_true", help='print {"results": [{"path", "score", "g"}, ...], "g", '
                                                       '"source", "query_type", "domain_note"}; without --json '
                                                       'the domain note is one line on stderr')
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from dsanchor.errors import ConfigError
    from dsanchor.index import load_index, rank_index_captions
    from dsanchor.pipeline import load

    set_threads(args)
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    idx, pipe = load_index(args.index, load(args.pipeline) if args.pipeline else None)
    if args.image:
        feats = pipe.encode_images([args.image])  # once, for the ranking and the domain note
        ranked, choice = rank_index_captions(pipe, idx, feats, args.k, args.g, collapse=not args.all_captions)
        rows = [{"caption": c, "score": s, "g": choice.g} for c, s in ranked]
        head = f"captions for {args.image}, {choice.describe()}"
        note = pipe.image_notes(feats)[0]
    else:
        hits, choice = pipe.search_with_choice(args.query, idx, k=args.k, g=args.g, m=args.m, per_pair=args.per_pair)
        rows = [{"path": h.path, "score": h.score, "g": h.g} for h in hits]
        head = f"{args.query!r}: {choice.describe()}"
        note = pipe.text_note(args.query)
    if args.json:
        print(json.dumps({"results": rows, "g": choice.g, "source": choice.source, "query_type": choice.query_type,
                          "domain_note": note}))
        return 0
    if note:
        print(f"dsanchor search: note: {note}", file=sys.stderr)
    print(head)
    per_pair = choice.source == "per-pair controller"
    for r, row in enumerate(rows, 1):
        g = f"  g={row['g']:.2f}" if per_pair else ""
        print(f"{r:>3}. {row['score']:+.4f}{g}  {row.get('path', row.get('caption'))}")
    return 0
