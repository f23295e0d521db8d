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
    from dsanchor.commands.mllm_loop import add_actions

    add_actions(sub)
    build = sub.add_parser("build", help="train a small LLaVA (CLIP vision + Llama) on a dataset's captions",
                           description="Train transformers' LlavaForConditionalGeneration from a small config on "
                                       "the train captions, with g ~ U[0, 1] at the seam; save it with its "
                                       "processor (word-level tokenizer) for from_pretrained.")
    build.add_argument("--data", required=True, help="dataset root")
    build.add_argument("--format", required=True, help="dataset format: coco, vg, clevr, synth")
    build.add_argument("--out", required=True, help="model directory (save_pretrained)")
    build.add_argument("--splits", default=None, help="split file (as for `dsanchor run`)")
    build.add_argument("--split-seed", type=int, default=0, help="seed of the split when the data has none")
    build.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    from dsanchor.integrations.build import BuildConfig

    add_config_args(build, BuildConfig)
    build.set_defaults(func=run_build)


def run_caption(args: argparse.Namespace) -> int:
    cfg = resolve_config(MLLMCaptionConfig, args, load_yaml(args.config))
    metrics = run_mllm_caption(cfg)
    save_resolved(cfg.out, mllm_caption=cfg)
    for name, scores in metrics["runs"].items():
        shown = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
        print(f"{name}: {json.dumps(shown)}")
    print(f"wrote {cfg.out}/metrics.json")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from dsanchor.data import load_dataset
    from dsanchor.data.splits import assign_splits
    from dsanchor.encoders.transforms import load_rgb
    from dsanchor.integrations.build import BuildConfig, train_llava
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(BuildConfig, args, {})
    samples, how = assign_splits(load_dataset(args.format, args.data), args.splits, seed=args.split_seed)
    print(how, flush=True)
    root = Path(args.data) if Path(args.data).is_dir() else Path(args.data).parent

    def pairs(split: str):
        out = []
        for s in samples:
            if s.split == split and s.captions:
                image = load_rgb(root / s.image_path)
                out += [(image, c.text) for c in s.captions]
        return out

    info = train_llava(pairs("train"), pairs("val"), cfg, args.out, DEFAULT_PROMPTS["llava"])
    save_resolved(args.out, build=cfg, data=str(args.data), format=args.format)
    print(f"small LLaVA saved to {args.out} in {info['train_time_s']:.0f}s (best val loss {info['best_val_loss']:.3f} "
          f"at step {info['best_step']}, {info['vocab_size']} words); caption it with `dsanchor mllm caption "
          f"--model-type llava --model-path {args.out} --data {args.data} --format {args.format}`")
    return 0
