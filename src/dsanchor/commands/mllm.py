"""``dsanchor mllm caption``: caption a dataset with a local LLaVA / BLIP-2 / IDEFICS, with and without DSA.

Example::

    dsanchor mllm caption --model-type llava --model-path ./llava-1.5-7b-hf --data ./coco --format coco \\
        --split test --limit 500 --dsa runs/ctrl --out runs/mllm

writes ``captions_base.jsonl``, ``captions_dsa.jsonl``, ``metrics.json`` (BLEU, CIDEr on its raw scale,
CHAIR) and the resolved ``config.yaml`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json

from dsanchor.config import add_config_args, load_yaml, resolve_config, save_resolved
from dsanchor.integrations.captioning import MLLMCaptionConfig, run_mllm_caption


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("mllm", help="run DSA inside a Hugging Face multimodal LLM",
                                   description="Run DSA inside a local Hugging Face multimodal LLM.")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="mllm_command", metavar="ACTION")
    caption = sub.add_parser("caption", help="caption a dataset with and without DSA; report BLEU, CIDEr, CHAIR",
                             description="Caption a dataset with a local model (LLaVA, BLIP-2 or IDEFICS), "
                                         "with and without DSA, and report BLEU, CIDEr (raw scale) and CHAIR.")
    caption.add_argument("--config", help="YAML file with MLLMCaptionConfig values (flags override it)")
    add_config_args(caption, MLLMCaptionConfig)
    caption.set_defaults(func=run_caption)


def run_caption(args: argparse.Namespace) -> int:
    cfg = resolve_config(MLLMCaptionConfig, args, load_yaml(args.config))
    metrics = run_mllm_caption(cfg)
    save_resolved(cfg.out, mllm_caption=cfg)
    for name, scores in metrics["runs"].items():
        shown = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
        print(f"{name}: {json.dumps(shown)}")
    print(f"wrote {cfg.out}/metrics.json")
    return 0
