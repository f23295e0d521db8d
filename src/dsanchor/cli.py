"""The ``dsanchor`` command line.

Each subcommand lives in ``dsanchor.commands.<name>`` and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
The library never imports this module or the commands.

``main(argv=None)`` lets tests call the CLI in-process. A :class:`~dsanchor.errors.DsanchorError` is
printed as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dsanchor import __version__
from dsanchor.errors import DsanchorError

# module name under dsanchor.commands, in the order ``dsanchor --help`` lists them
COMMANDS: tuple[str, ...] = (
    "data", "extract", "align", "hallucination", "train", "tune", "caption", "eval", "hardneg", "metrics", "mllm", "demo", "run",
    "index", "search", "caption_images", "serve",
)
_CAPTION_ACTIONS = ("train", "generate", "eval", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsanchor", description="Dynamic Semantic Anchoring for fine-grained image-text alignment.")
    parser.add_argument("--version", action="version", version=f"dsanchor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"dsanchor.commands.{name}").add_parser(sub)
    return parser


def _route(argv: list[str]) -> list[str]:
    """``dsanchor caption --pipeline P IMAGE...`` (no action) is the ``caption-images`` command."""
    if len(argv) > 1 and argv[0] == "caption" and argv[1] not in _CAPTION_ACTIONS and "--pipeline" in argv:
        return ["caption-images", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_route(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DsanchorError as exc:
        print(f"dsanchor {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dsanchor.cli (torchrun uses this)
    sys.exit(main())
