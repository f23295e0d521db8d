"""``dsanchor mllm build | caption | answer | tune | train | eval | adapt``: DSA inside a local Hugging Face MLLM.

Examples (the small LLaVA from ``dsanchor mllm build``; the same flags run a 7B model on a GPU)::

    dsanchor mllm build --data D --format synth --out M
    dsanchor mllm caption --model-type llava --model-path M --data D --format synth --g 0.5 --out runs/cap
    dsanchor mllm tune  --model-type llava --model-path M --data D --format synth --out runs/tune
    dsanchor mllm train --model-type llava --model-path M --data D --format synth --tuned runs/tune --out runs/ctrl
    dsanchor mllm eval  --model-type llava --model-path M --data D --format synth --controller runs/ctrl --out runs/eval
    dsanchor mllm adapt --model-type llava --model-path M --data D --format synth --out runs/adapter

Every action takes its flags from the configs of :mod:`dsanchor.mllm.config` (``--config FILE``: a YAML file
with one section per config; flags override it) and writes the resolved ``config.yaml`` next to its outputs.
Every action splits the data by the same rule, so ``test`` means the same images everywhere. ``--cache DIR``
shares one grid cache (a folder per split) between train, tune and eval; ``torchrun --nproc_per_node N -m
dsanchor mllm train ...`` shares the grid captions over N processes (GPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dsanchor.commands._common import set_threads
from dsanchor.config import add_config_args, load_yaml, resolve_config, save_resolved
from dsanchor.mllm import (
    build_from_dataset,
    run_adapt,
    run_mllm_answer,
    run_mllm_caption,
    run_mllm_eval,
    train_mllm_controller,
    tune_mllm_reward,
)
from dsanchor.mllm.config import (
    MLLM_PPO_DEFAULTS,
    MLLM_REWARD_DEFAULTS,
    MLLM_TUNE_DEFAULTS,
    AdaptConfig,
    AnswerConfig,
    BuildConfig,
    CaptionConfig,
    GridConfig,
    MLLMConfig,
    MLLMEvalConfig,
    MLLMTrainConfig,
    RouterConfig,
)
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig
from dsanchor.rl.tune import TuneConfig

__all__ = ["ACTIONS", "add_parser"]

NAN = float("nan")


@dataclass(frozen=True)
class Part:
    """One config of an action: its class, its YAML section (also its name in config.yaml) and its flags."""

    cls: type
    section: str
    prefix: str = ""  # flag prefix (--ppo-timesteps)
    skip: tuple[str, ...] = ()  # fields that are not flags of this action
    defaults: dict[str, Any] | None = None  # the action's defaults over the class's


# MLLMConfig fields that only the commands which load a model and cache grids use
MODEL_FIELDS = ("model_type", "model_path", "limit", "prompt", "coarse_layer", "adapter", "hall_detector",
                "features", "cache", "device", "dtype")
MLLM = Part(MLLMConfig, "mllm")
GRID = Part(GridConfig, "grid")
PPO = Part(PPOConfig, "ppo", prefix="ppo_", defaults=MLLM_PPO_DEFAULTS)


@dataclass(frozen=True)
class Action:
    """One ``dsanchor mllm`` action: its parser text, its configs, the library call and the summary it prints."""

    name: str
    help: str
    description: str
    parts: tuple[Part, ...]
    run: Callable[[dict[str, Any], bool], dict[str, Any] | None]  # (configs by section, progress) -> info
    report: Callable[[dict[str, Any], dict[str, Any]], None]  # (info, configs) -> prints


def _print_caption(metrics: dict[str, Any], c: dict[str, Any]) -> None:
    for name, scores in metrics["runs"].items():
        shown = {k: round(v, 4) for k, v in scores.items() if isinstance(v, float)}
        print(f"{name}: {json.dumps(shown)}")
    print(f"wrote {c['mllm'].out}/metrics.json")


def _print_build(info: dict[str, Any], c: dict[str, Any]) -> None:
    out, t = c["mllm"].out, info["stage_times_s"]
    print(f"small LLaVA saved to {out} in {info['train_time_s']:.0f}s (vision pre-training "
          f"{t['pretrain']:.0f}s, LLaVA {t['llava']:.0f}s, final val {t['final_val']:.0f}s); best val loss "
          f"{info['best_val_loss']:.3f} at step {info['best_step']}, {info['vocab_size']} words")
    if info["pretrain"]:
        p = info["pretrain"]
        print(f"vision pre-training: loss {p['pretrain_loss']:.3f}, val caption->image retrieval "
              f"{p.get('val_retrieval_acc', NAN):.3f} (chance {p.get('val_retrieval_chance', NAN):.3f})"
              + (f", val object labels {p['val_object_acc']:.3f}" if "val_object_acc" in p else ""))
    for g in info["val_loss_true_images"]:
        print(f"val caption loss at {g}: {info['val_loss_true_images'][g]:.3f} with the true images, "
              f"{info['val_loss_shuffled_images'][g]:.3f} with shuffled images")
    if info["val_pope_accuracy"]:
        shown = ", ".join(f"{g}: {a:.3f}" for g, a in info["val_pope_accuracy"].items())
        print(f"val POPE accuracy ({info['n_val_questions']} yes/no questions, half yes): {shown}")
    print(f"caption it with `dsanchor mllm caption --model-type llava --model-path {out} --data {c['mllm'].data} "
          f"--format {c['mllm'].format}`")


def _print_train(info: dict[str, Any], c: dict[str, Any]) -> None:
    s = info["seconds"]
    print(f"controller saved to {info['controller']} ({info['n_train_images']} train images, grid "
          f"{len(info['grid'])} g; grid cache {s['grid_cache']:.0f}s, PPO {s['ppo']:.0f}s; mean train g "
          f"{info['train_mean_g']:.2f})")
    if "router" in info:
        r = info["router"]
        print(f"router_loss saved to {r['controller']} ({info['n_train_items']} train items; the lowest-loss g "
              f"picked on {100 * r['train_lowest_loss_hit']:.0f}% of them)")
    if info["n_unjudged"]:
        how = ("from the hallucination detector" if info["n_hallucination_by_detector"] else
               "0 (pass --hall-detector and --features to estimate it)")
        print(f"note: {info['n_unjudged']} train images have no annotated objects; their R_hall is {how}")


def _print_tune(info: dict[str, Any], c: dict[str, Any]) -> None:
    b = info["best"]
    print(f"best reward after {info['trials']} trials: alpha {b['alpha']:g}, beta {b['beta']:.4g}, clip "
          f"[{b['clip_low']:.3g}, {b['clip_high']:.3g}] (2-fold val objective {info['best_value']:.4f}); "
          f"wrote {info['best_reward']}")


def _print_eval(results: dict[str, Any], c: dict[str, Any]) -> None:
    if results.get("mode") == "questions":
        for name, r in results["methods"].items():
            g = f", mean g {r['g_mean']:.2f}" if "g_mean" in r else ""
            print(f"{name}: accuracy {r.get('accuracy', NAN):.3f}, false yes {r.get('false_yes', NAN):.3f}{g}")
        print(f"wrote {c['mllm'].out}/results.json and {c['mllm'].out}/report.md (per question family)")
        return
    for name, r in results["methods"].items():
        pope = r.get("pope", {}).get("all", {})
        print(f"{name}: CIDEr {r.get('CIDEr', NAN):.3f}, CHAIR_i {r.get('CHAIR_i', NAN):.3f}, "
              f"POPE F1 {pope.get('f1', NAN):.3f}")
    print(f"wrote {c['mllm'].out}/results.json and {c['mllm'].out}/report.md")


def _print_answer(result: dict[str, Any], c: dict[str, Any]) -> None:
    a = result["answers"]
    print(f"{len(a)} questions answered" + (f", written to {c['answer'].out}" if c["answer"].out else ""))
    for family, row in result["accuracy"].items():
        print(f"  {family:<16} accuracy {row['accuracy']:.3f} ({row['n']} questions)")


def _print_adapt(info: dict[str, Any], c: dict[str, Any]) -> None:
    print(json.dumps({k: info[k] for k in ("adapter", "seconds", "cider_before", "cider_after")}, indent=None))


ACTIONS: tuple[Action, ...] = (
    Action("build", "train a small LLaVA (CLIP vision + Llama) on a dataset's captions",
           "Train transformers' LlavaForConditionalGeneration from a small config on the train split: "
           "contrastive pre-training of the vision tower against MiniLM caption embeddings, then captions mixed "
           "with POPE-style yes/no questions, with g ~ U[0, 1] at the seam; save it with its processor "
           "(word-level tokenizer) to --out for from_pretrained.",
           (Part(MLLMConfig, "mllm", skip=MODEL_FIELDS), Part(BuildConfig, "build")),
           lambda c, progress: build_from_dataset(c["mllm"], c["build"], progress), _print_build),
    Action("caption", "caption a dataset with and without DSA; report BLEU, CIDEr, CHAIR",
           "Caption a split with a local model (LLaVA, BLIP-2 or IDEFICS), with and without DSA (--dsa or --g), "
           "and report BLEU, CIDEr (raw scale) and CHAIR.",
           (Part(MLLMConfig, "mllm", skip=("cache", "hall_detector", "features")),
            Part(GridConfig, "grid", skip=("grid", "chunk_size")), Part(CaptionConfig, "caption")),
           lambda c, progress: run_mllm_caption(c["mllm"], c["grid"], c["caption"]), _print_caption),
    Action("answer", "answer a CLEVR-format questions file, with or without DSA (--g or --controller)",
           "Answer every question of a CLEVR-format questions file (`dsanchor data questions` writes one) about "
           "the images in --images with a local model; with --g or --controller DSA is attached and the g used is "
           "written with each answer. Prints accuracy per question family when the file holds answers.",
           (Part(AnswerConfig, "answer"),),
           lambda c, progress: run_mllm_answer(c["answer"], progress), _print_answer),
    Action("tune", "Bayesian optimisation (Optuna GPSampler) of the MLLM reward on val",
           "Search beta / alpha and the clip bounds with Optuna's GPSampler on the val grid cache (2-fold PPO "
           "score); the study is in an RDB shared by workers. Writes OUT/best_reward.json for `mllm train "
           "--tuned OUT`.",
           (MLLM, GRID, Part(TuneConfig, "tune", prefix="tune_", defaults=MLLM_TUNE_DEFAULTS),
            Part(PPOConfig, "ppo", prefix="ppo_", skip=("timesteps",), defaults=MLLM_PPO_DEFAULTS)),
           lambda c, progress: tune_mllm_reward(c["mllm"], c["grid"], c["tune"], c["ppo"], progress), _print_tune),
    Action("train", "PPO controller for an attached MLLM, on cached grid captions",
           "Caption the train split at a grid of g (cached, resumable, torchrun-sharded), score CIDEr-D and "
           "hallucination, train SB3 PPO on the interpolated rewards; the controller goes to OUT/controller. With "
           "--questions: per question and caption prompt (exact match or CIDEr-D, false yes or CHAIR), and the "
           "router_loss baseline (AVG-LLaVA's supervised router on the answer losses) goes to OUT/router.",
           (MLLM, GRID, Part(RewardConfig, "reward", defaults=MLLM_REWARD_DEFAULTS), Part(MLLMTrainConfig, "train"),
            PPO, Part(RouterConfig, "router", prefix="router_")),
           lambda c, progress: train_mllm_controller(c["mllm"], c["grid"], c["reward"], c["train"], c["ppo"],
                                                     progress, router=c["router"]), _print_train),
    Action("eval", "base / fixed_best / dsa_ppo / oracle: BLEU, CIDEr, CHAIR, POPE, R@K, time",
           "Evaluate the unmodified model, the best fixed g (on val), the PPO controller and the per-image oracle "
           "on the test split; writes results.json and report.md. With --questions: base, fixed_best, family_best, "
           "router_loss, dsa_ppo and the per-item oracle, per question family (accuracy, CIDEr-D and CHAIR per "
           "caption prompt, POPE, mean g), with the two plots.",
           (MLLM, GRID, Part(MLLMEvalConfig, "eval")),
           lambda c, progress: run_mllm_eval(c["mllm"], c["grid"], c["eval"], progress), _print_eval),
    Action("adapt", "fine-tune a small seam adapter with g ~ U[0, 1] (saved alone)",
           "Train a residual adapter on V' at the seam with g drawn uniformly per image, on the train captions, "
           "the model frozen; saves only the adapter (OUT/adapter.safetensors), which --adapter loads; measures "
           "CIDEr-D at fixed g before and after on val.",
           (MLLM, GRID, Part(AdaptConfig, "adapt")),
           lambda c, progress: run_adapt(c["mllm"], c["grid"], c["adapt"], progress), _print_adapt),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from dsanchor.commands._common import add_overwrite

    parser = subparsers.add_parser("mllm", help="run DSA inside a Hugging Face multimodal LLM",
                                   description="Run DSA inside a local Hugging Face multimodal LLM.")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="mllm_command", metavar="ACTION")
    for action in ACTIONS:
        p = sub.add_parser(action.name, help=action.help, description=action.description)
        p.add_argument("--config", default=None, help="YAML file with sections "
                                                      + ", ".join(part.section for part in action.parts))
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if any(part.section == "mllm" for part in action.parts):  # writes a folder
            add_overwrite(p)
        for part in action.parts:
            add_config_args(p, part.cls, prefix=part.prefix, skip=part.skip)
        p.set_defaults(func=lambda args, action=action: run_action(action, args))


def run_action(action: Action, args: argparse.Namespace) -> int:
    """Resolve the action's configs (defaults < YAML < flags), run it, save config.yaml and print its summary."""
    from dsanchor.commands._common import accept_command_out

    set_threads(args)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    y = load_yaml(args.config)
    configs = {part.section: resolve_config(part.cls, args, y, prefix=part.prefix, section=part.section,
                                            defaults=part.defaults) for part in action.parts}
    if "mllm" in configs:  # an action that writes a folder (`answer` writes one file)
        accept_command_out(args, f"mllm {action.name}", out=configs["mllm"].out)  # before anything is written
    info = action.run(configs, not args.quiet)
    if dist.is_available() and dist.is_initialized():  # leave torchrun's process group
        dist.destroy_process_group()
    if info is None:  # a torchrun rank other than 0: its share of the work is written
        return 0
    out = next((c.out for c in configs.values() if getattr(c, "out", None)), None)
    if out is not None and Path(out).suffix != ".json":
        save_resolved(out, **configs)
    action.report(info, configs)
    return 0
