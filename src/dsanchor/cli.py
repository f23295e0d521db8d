"""The ``dsanchor`` command line.

Each subcommand lives in ``dsanchor.commands.<name>`` and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
The library never imports this module or the commands.

Start-up is cheap: ``dsanchor --help`` lists the commands from :data:`HELP` without importing any of
them, and ``dsanchor CMD ...`` imports only ``CMD``'s module (which imports torch and the rest when it
runs). Other libraries' INFO logs and weight-loading bars are off unless ``-v`` (:mod:`dsanchor.logs`).

``main(argv=None)`` lets tests call the CLI in-process. A :class:`~dsanchor.errors.DsanchorError` is
printed as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable

from dsanchor import __version__
from dsanchor.errors import DsanchorError
from dsanchor.logs import setup_logging

# module name under dsanchor.commands, in the order ``dsanchor --help`` lists them
COMMANDS: tuple[str, ...] = (
    "data", "extract", "align", "hallucination", "train", "tune", "caption", "eval", "hardneg", "metrics", "mllm",
    "demo", "run", "index", "search", "caption_images", "serve",
)
# each command's one-line help for ``dsanchor --help`` (the same text its module registers; a test checks)
HELP: dict[str, str] = {
    "data": "generate the synth dataset or check a dataset",
    "extract": "encode a dataset into a feature store",
    "align": "train the alignment heads (contrastive, coarse + fine scoring)",
    "hallucination": "train / evaluate the object-hallucination detector (POPE)",
    "train": "train the granularity controllers with PPO (query-only and per pair)",
    "tune": "tune the reward (beta/alpha, clip bounds) with Optuna (GPSampler)",
    "caption": "caption decoder over V': train, generate, evaluate methods",
    "eval": "evaluate coarse, fine, fixed_best, gate_grad, dsa_ppo, gate_pair, dsa_pair and the oracle, and the "
            "compositional hard negatives",
    "hardneg": "compositional hard negatives: make them, score a pipeline",
    "metrics": "score caption files: CHAIR, BLEU, CIDEr",
    "mllm": "run DSA inside a Hugging Face multimodal LLM",
    "demo": "run the whole pipeline on synthetic data (about 4 minutes on 2 idle cores)",
    "run": "extraction, heads, detector, tuning, PPO, captioning, eval and the report on a dataset on disk",
    "index": "index a folder of images (or a dataset) for `dsanchor search`",
    "search": "search an index by text (or rank its captions for an image)",
    "caption_images": "caption image files with a saved pipeline (also: `dsanchor caption --pipeline P IMAGE...`)",
    "serve": "a local web page for searching an index (text and image queries)",
}
_CAPTION_ACTIONS = ("train", "generate", "eval", "-h", "--help")
_VERBOSE = ("-v", "--verbose")
_VERBOSE_HELP = "also show other libraries' INFO logs and weight-loading bars, and dsanchor's debug logs"


def _name(module: str) -> str:
    return module.replace("_", "-")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``dsanchor`` parser.

    Args:
        commands: modules under ``dsanchor.commands`` whose parsers are built (None: all of them); the
            others are listed by name and help only, without importing them.
    """
    parser = argparse.ArgumentParser(
        prog="dsanchor", description="Dynamic Semantic Anchoring for fine-grained image-text alignment.")
    parser.add_argument("--version", action="version", version=f"dsanchor {__version__}")
    parser.add_argument(*_VERBOSE, action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    built = set(COMMANDS if commands is None else commands)
    for module in COMMANDS:
        if module in built:
            importlib.import_module(f"dsanchor.commands.{module}").add_parser(sub)
            _add_verbose(sub.choices[_name(module)])
        else:
            sub.add_parser(_name(module), help=HELP[module], add_help=False)
    if "caption_images" in built:
        sub.choices["caption-images"].prog = "dsanchor caption"  # its errors read "dsanchor caption: error: ..."
        if "caption" in built:
            _caption_forms(sub.choices["caption"], sub.choices["caption-images"])
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (``dsanchor search ... -v``), in every action's parser."""
    try:
        parser.add_argument(*_VERBOSE, action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    except argparse.ArgumentError:  # the command has its own -v
        pass
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child)


def _caption_forms(caption: argparse.ArgumentParser, images: argparse.ArgumentParser) -> None:
    """``dsanchor caption --help`` shows both forms: ``caption ACTION`` and ``caption --pipeline P IMAGE...``."""
    usage = images.format_usage().removeprefix("usage: ").strip()
    caption.usage = f"{caption.format_usage().removeprefix('usage: ').strip()}\n       {usage}"
    caption.formatter_class = argparse.RawDescriptionHelpFormatter
    options = images.format_help().split("\n\n", 1)[1]
    caption.epilog = f"dsanchor caption --pipeline P IMAGE...: caption image files with a saved pipeline\n\n{options}"


def _route(argv: list[str]) -> list[str]:
    """``dsanchor caption --pipeline P IMAGE...`` (no action) is the ``caption-images`` command."""
    if len(argv) > 1 and argv[0] == "caption" and argv[1] not in _CAPTION_ACTIONS and "--pipeline" in argv:
        return ["caption-images", *argv[1:]]
    return argv


def _modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules to import for ``argv``: the named command's, or none (``dsanchor --help``)."""
    command = next((a for a in _options_part(argv) if not a.startswith("-")), None)
    module = command.replace("-", "_") if command else None
    if module not in COMMANDS:
        return ()
    return ("caption", "caption_images") if module == "caption" else (module,)


def _options_part(argv: list[str]) -> list[str]:
    return argv[:argv.index("--")] if "--" in argv else argv


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as ``main`` parses it (routing and the command's own parser), without running it."""
    argv = _route(list(argv))
    return build_parser(_modules_for(argv)).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = _route(list(sys.argv[1:] if argv is None else argv))
    setup_logging(verbose=any(a in _VERBOSE for a in _options_part(argv)))
    parser = build_parser(_modules_for(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DsanchorError as exc:
        name = "caption" if args.command == "caption-images" else args.command
        print(f"dsanchor {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m dsanchor.cli (torchrun uses this)
    sys.exit(main())
