"""``dsanchor data synth`` (generate the CLEVR-style dataset) and ``dsanchor data check`` (validate one)."""

from __future__ import annotations

import argparse
import json

from dsanchor.config import add_config_args, load_yaml, resolve_config, save_resolved
from dsanchor.data import CaptionerConfig, SynthConfig, check_dataset, format_summary, generate_synth, list_formats


def _synth(args: argparse.Namespace) -> int:
    from dsanchor.commands._common import accept_command_out

    yaml_values = load_yaml(args.config)
    cfg = resolve_config(SynthConfig, args, yaml_values, section="synth")
    ccfg = resolve_config(CaptionerConfig, args, yaml_values, section="captioner")
    accept_command_out(args, "data synth")  # before anything is written
    result = generate_synth(args.out, cfg, ccfg, progress=not args.quiet)
    save_resolved(args.out, synth=cfg, captioner=ccfg)
    print(f"wrote {result.n_images} images, {result.n_objects} objects and {result.n_captions} captions to "
          f"{result.out_dir} in {result.seconds:.1f} s ({result.n_images / max(result.seconds, 1e-9):.1f} scenes/s)")
    return 0


def _check(args: argparse.Namespace) -> int:
    options = {} if args.bbox_tolerance is None else {"bbox_tolerance": args.bbox_tolerance}  # else the loader's
    summary = check_dataset(args.format, args.path, split=args.split, allow_missing=args.allow_missing, **options)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0


def _questions(args: argparse.Namespace) -> int:
    from dsanchor.data.questions import QuestionConfig, questions_file
    from dsanchor.errors import ConfigError

    cfg = resolve_config(QuestionConfig, args, load_yaml(args.config), section="questions")
    try:
        questions = questions_file(args.data, args.format, args.out, cfg, args.split)
    except ValueError as exc:
        raise ConfigError(f"--format {args.format}: {exc}") from None
    families = len({q.family for q in questions})
    print(f"{len(questions)} questions of {families} families about {len({q.image_id for q in questions})} images "
          f"written to {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dsanchor.commands._common import add_overwrite

    parser = subparsers.add_parser("data", help="generate the synth dataset or check a dataset",
                                   description="Generate the built-in CLEVR-style dataset, or validate a dataset.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    synth = actions.add_parser("synth", help="generate CLEVR-style scenes with COCO and CLEVR annotations")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--config", help="YAML file with 'synth:' and 'captioner:' sections; flags override it")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(synth)
    add_config_args(synth, SynthConfig)
    add_config_args(synth, CaptionerConfig)
    synth.set_defaults(func=_synth)

    check = actions.add_parser("check", help="validate a dataset (annotations and image files) and summarise it")
    check.add_argument("path", help="dataset folder (or one annotation file)")
    check.add_argument("--format", required=True, choices=list_formats(), help="dataset format")
    check.add_argument("--split", choices=("train", "val", "test"), help="check only this split")
    check.add_argument("--allow-missing", action="store_true",
                       help="go on when image files are missing: check the images that are there and count the rest "
                            "(without it, missing files are an error that names a few)")
    check.add_argument("--bbox-tolerance", type=float, metavar="PX",
                       help="pixels a box may reach past the image edge; such boxes are clipped to the image and "
                            "counted, further out is an error (default: the format's own, printed in the summary)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=_check)

    from dsanchor.data.questions import QuestionConfig

    questions = actions.add_parser("questions", help="questions with exact answers from scene graphs (CLEVR format)",
                                   description="Write questions whose answers the scene graphs decide (exist, count, "
                                               "query_*, compare_integer, relate, majority, absent) in CLEVR's "
                                               "questions JSON format.")
    questions.add_argument("--data", required=True, help="dataset root with scene graphs (synth or CLEVR)")
    questions.add_argument("--format", required=True, choices=list_formats(), help="dataset format")
    questions.add_argument("--split", choices=("train", "val", "test"), help="only this split (default: all)")
    questions.add_argument("--out", required=True, help="output JSON file, e.g. questions.json")
    questions.add_argument("--config", help="YAML file with a 'questions:' section; flags override it")
    add_config_args(questions, QuestionConfig)
    questions.set_defaults(func=_questions)
