"""``dsanchor mllm train | tune | eval | adapt``: DSA inside a local MLLM, trained on the model's own outputs.

Examples (the small LLaVA from ``dsanchor mllm build``; the same flags run a 7B model on a GPU)::

    dsanchor mllm adapt --model-type llava --model-path M --data D --format synth --out runs/adapter
    dsanchor mllm tune  --model-type llava --model-path M --data D --format synth --out runs/tune
    dsanchor mllm train --model-type llava --model-path M --data D --format synth --tuned runs/tune --out runs/ctrl
    dsanchor mllm eval  --model-type llava --model-path M --data D --format synth --controller runs/ctrl --out runs/eval

``--cache DIR`` shares one grid cache (a folder per split) between the three; ``torchrun --nproc_per_node N
-m dsanchor mllm train ...`` shares the grid captions over N processes (GPUs).
"""

from __future__ import annotations

import argparse
import json

from dsanchor.config import add_config_args, load_yaml, resolve_config, save_resolved

__all__ = ["add_actions"]

PPO_PREFIX, TUNE_PREFIX = "ppo_", "tune_"


def _common(p: argparse.ArgumentParser) -> None:
    from dsanchor.integrations.grid import GridConfig
    from dsanchor.integrations.train import MLLMConfig

    p.add_argument("--config", default=None, help="YAML file with sections mllm, grid, ppo, reward, tune, eval")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_args(p, MLLMConfig)
    add_config_args(p, GridConfig)


def add_actions(sub: argparse._SubParsersAction) -> None:
    from dsanchor.integrations.evaluate import EvalConfig
    from dsanchor.integrations.train import MLLMRewardConfig
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.tune import TuneConfig

    train = sub.add_parser("train", help="PPO controller for an attached MLLM, on cached grid captions",
                           description="Caption the train split at a grid of g (cached, resumable, torchrun-"
                                       "sharded), score CIDEr-D and hallucination, train SB3 PPO on the "
                                       "interpolated rewards; the controller goes to OUT/controller.")
    _common(train)
    train.add_argument("--seeds", type=int, default=1, help="PPO training seeds on the same cache (OUT/seed{k}; "
                                                             "mllm eval measures each and resamples them)")
    add_config_args(train, MLLMRewardConfig)
    add_config_args(train, PPOConfig, prefix=PPO_PREFIX)
    train.set_defaults(func=run_train)

    tune = sub.add_parser("tune", help="Bayesian optimisation (Optuna GPSampler) of the MLLM reward on val",
                          description="Search beta / alpha and the clip bounds with Optuna's GPSampler on the "
                                      "val grid cache (2-fold PPO score); the study is in an RDB shared by "
                                      "workers. Writes OUT/best_reward.json for `mllm train --tuned OUT`.")
    _common(tune)
    add_config_args(tune, TuneConfig, prefix=TUNE_PREFIX)
    add_config_args(tune, PPOConfig, prefix=PPO_PREFIX, skip=("timesteps",))
    tune.set_defaults(func=run_tune)

    ev = sub.add_parser("eval", help="base / fixed_best / dsa_ppo / oracle: BLEU, CIDEr, CHAIR, POPE, R@K, time",
                        description="Evaluate the unmodified model, the best fixed g (on val), the PPO "
                                    "controller and the per-image oracle on the test split; writes results.json "
                                    "and report.md.")
    _common(ev)
    add_config_args(ev, EvalConfig)
    ev.set_defaults(func=run_eval)

    from dsanchor.integrations.adapt import AdaptConfig

    adapt = sub.add_parser("adapt", help="fine-tune a small seam adapter with g ~ U[0, 1] (saved alone)",
                           description="Train a residual adapter on V' at the seam with g drawn uniformly per "
                                       "image, on the train captions, the model frozen; saves only the adapter "
                                       "(OUT/adapter.safetensors), which --adapter loads; measures CIDEr-D at "
                                       "fixed g before and after on val.")
    _common(adapt)
    add_config_args(adapt, AdaptConfig)
    adapt.set_defaults(func=run_adapt)


def _setup(args: argparse.Namespace):
    import logging

    import torch

    from dsanchor.integrations.grid import GridConfig
    from dsanchor.integrations.train import MLLMConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    y = load_yaml(args.config)
    return y, resolve_config(MLLMConfig, args, y, section="mllm"), resolve_config(GridConfig, args, y, section="grid")


def _finish() -> None:
    """Leave torchrun's process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _ppo(args, y):
    """PPO for the MLLM commands: the cached rewards are cheap, so fewer steps than `dsanchor train`'s default."""
    from dsanchor.rl.ppo import PPOConfig

    return resolve_config(PPOConfig, args, y, prefix=PPO_PREFIX, section="ppo",
                          defaults={"timesteps": 16_384, "checkpoint_every": 4_096})


def run_train(args: argparse.Namespace) -> int:
    from dsanchor.integrations.train import MLLMRewardConfig, train_mllm_controller

    y, cfg, grid = _setup(args)
    reward = resolve_config(MLLMRewardConfig, args, y, section="reward")
    ppo = _ppo(args, y)
    info = train_mllm_controller(cfg, grid, reward, ppo, progress=not args.quiet, seeds=args.seeds)
    _finish()
    if info is None:  # a torchrun rank other than 0: its share of the grid is written
        return 0
    save_resolved(cfg.out, mllm=cfg, grid=grid, reward=reward, ppo=ppo)
    s = info["seconds"]
    print(f"controller saved to {info['controller']} ({info['n_train_images']} train images, grid "
          f"{len(info['grid'])} g; grid cache {s['grid_cache']:.0f}s, PPO {s['ppo']:.0f}s; mean train g "
          f"{info['train_mean_g']:.2f})")
    if info["n_unjudged"]:
        how = ("from the hallucination detector" if info["n_hallucination_by_detector"] else
               "0 (pass --hall-detector and --features to estimate it)")
        print(f"note: {info['n_unjudged']} train images have no annotated objects; their R_hall is {how}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from dsanchor.integrations.train import tune_mllm_reward
    from dsanchor.rl.tune import TuneConfig

    y, cfg, grid = _setup(args)
    tune = resolve_config(TuneConfig, args, y, prefix=TUNE_PREFIX, section="tune",
                          defaults={"study_name": "dsa-mllm-reward", "timesteps": 4096})
    ppo = _ppo(args, y)
    info = tune_mllm_reward(cfg, grid, tune, ppo, progress=not args.quiet)
    _finish()
    if info is None:
        return 0
    save_resolved(cfg.out, mllm=cfg, grid=grid, tune=tune, ppo=ppo)
    b = info["best"]
    print(f"best reward after {info['trials']} trials: alpha {b['alpha']:g}, beta {b['beta']:.4g}, clip "
          f"[{b['clip_low']:.3g}, {b['clip_high']:.3g}] (2-fold val objective {info['best_value']:.4f}); "
          f"wrote {info['best_reward']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from dsanchor.integrations.evaluate import EvalConfig, run_mllm_eval

    y, cfg, grid = _setup(args)
    ev = resolve_config(EvalConfig, args, y, section="eval")
    results = run_mllm_eval(cfg, grid, ev, progress=not args.quiet)
    _finish()
    if results is None:
        return 0
    save_resolved(cfg.out, mllm=cfg, grid=grid, eval=ev)
    for name, r in results["rows"].items():
        pope = r.get("pope", {}).get("all", {})
        print(f"{name}: CIDEr {r.get('CIDEr', float('nan')):.3f}, CHAIR_i {r.get('CHAIR_i', float('nan')):.3f}, "
              f"POPE F1 {pope.get('f1', float('nan')):.3f}")
    print(f"wrote {cfg.out}/results.json and {cfg.out}/report.md")
    return 0


def run_adapt(args: argparse.Namespace) -> int:
    from dsanchor.integrations.adapt import AdaptConfig
    from dsanchor.integrations.adapt import run_adapt as adapt

    y, cfg, grid = _setup(args)
    ac = resolve_config(AdaptConfig, args, y, section="adapt")
    info = adapt(cfg, grid, ac, progress=not args.quiet)
    _finish()
    if info is None:
        return 0
    save_resolved(cfg.out, mllm=cfg, grid=grid, adapt=ac)
    print(json.dumps({k: info[k] for k in ("adapter", "seconds", "cider_before", "cider_after")}, indent=None))
    return 0
