"""`dsanchor index`: index a folder of images (or a dataset) for search with a saved pipeline."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads

SKIPPED_SHOWN = 10  # unreadable files listed one per line; the rest are counted


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite

    p = sub.add_parser("index", help="index a folder of images (or a dataset) for `dsanchor search`")
    p.add_argument("--pipeline", required=True, help="a saved pipeline (e.g. runs/demo/pipeline)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="a folder of JPEG/PNG/WebP files (searched recursively; any size)")
    src.add_argument("--data", help="a dataset root (its captions are indexed too); needs --format")
    p.add_argument("--format", default=None, help="dataset format with --data")
    p.add_argument("--out", required=True, help="index folder (rerun after a kill to resume)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder forward pass")
    p.add_argument("--workers", type=int, default=2, help="processes that open and prepare images")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard (the unit of resume)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out images that cannot be read (each is listed) instead of stopping at the first")
    add_overwrite(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.index import build_index
    from dsanchor.pipeline import load

    set_threads(args)
    pipe = load(args.pipeline)
    idx = build_index(pipe, args.images, args.out, data=args.data, format=args.format, batch_size=args.batch_size,
                      workers=args.workers, shard_size=args.shard_size, progress=args.progress,
                      overwrite=bool(args.overwrite), skip_bad=args.skip_bad)
    for line in idx.skipped[:SKIPPED_SHOWN]:
        print(f"skipped {line}")
    more = len(idx.skipped) - SKIPPED_SHOWN
    print(f"index {args.out}: {len(idx)} images" + (", with captions" if idx.has_captions else "")
          + (f"; {len(idx.skipped)} unreadable left out" + (f" ({more} not listed above)" if more > 0 else "")
             if idx.skipped else ""))
    return 0
