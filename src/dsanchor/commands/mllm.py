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
                                       "the train split: contrastive pre-training of the vision tower against "
                                       "MiniLM caption embeddings, then captions mixed with POPE-style yes/no "
                                       "questions, with g ~ U[0, 1] at the seam; save it with its processor "
                                       "(word-level tokenizer) for from_pretrained.")
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
    import torch

    from dsanchor.integrations.build import BuildConfig, build_from_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(BuildConfig, args, {})
    info = build_from_dataset(args.data, args.format, args.out, cfg, args.splits, args.split_seed)
    save_resolved(args.out, build=cfg, data=str(args.data), format=args.format)
    t = info["stage_times_s"]
    print(f"small LLaVA saved to {args.out} in {info['train_time_s']:.0f}s (vision pre-training "
          f"{t['pretrain']:.0f}s, LLaVA {t['llava']:.0f}s, final val {t['final_val']:.0f}s); best val loss "
          f"{info['best_val_loss']:.3f} at step {info['best_step']}, {info['vocab_size']} words")
    if info["pretrain"]:
        p = info["pretrain"]
        nan = float("nan")
        print(f"vision pre-training: loss {p['pretrain_loss']:.3f}, val caption->image retrieval "
              f"{p.get('val_retrieval_acc', nan):.3f} (chance {p.get('val_retrieval_chance', nan):.3f})"
              + (f", val object labels {p['val_object_acc']:.3f}" if "val_object_acc" in p else ""))
    for g in info["val_loss_true_images"]:
        print(f"val caption loss at {g}: {info['val_loss_true_images'][g]:.3f} with the true images, "
              f"{info['val_loss_shuffled_images'][g]:.3f} with shuffled images")
    if info["val_pope_accuracy"]:
        shown = ", ".join(f"{g}: {a:.3f}" for g, a in info["val_pope_accuracy"].items())
        print(f"val POPE accuracy ({info['n_val_questions']} yes/no questions, half yes): {shown}")
    print(f"caption it with `dsanchor mllm caption --model-type llava --model-path {args.out} --data {args.data} "
          f"--format {args.format}`")
    return 0
