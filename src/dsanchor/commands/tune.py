"""`dsanchor tune`: Bayesian optimisation of alpha and beta (Optuna GPSampler, shared RDB storage)."""

from __future__ import annotations

import functools
from pathlib import Path

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.commands.train import add_rl_inputs
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.tune import TuneConfig

    p = sub.add_parser("tune", help="tune the reward weights alpha, beta with Optuna (GPSampler)")
    add_rl_inputs(p)
    p.add_argument("--out", required=True, help="directory for best_reward.json (and the default SQLite study)")
    add_common(p)
    add_config_args(p, TuneConfig)
    add_config_args(p, PPOConfig, prefix="ppo_")
    p.set_defaults(func=run)


def run(args) -> int:
    import dataclasses

    from dsanchor.commands.train import load_rl_inputs
    from dsanchor.experiment import rl_view, split_halves, subset, tune_objective
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import TuneConfig, best_reward, run_parallel, write_best

    set_threads(args)
    y = yaml_of(args)
    cfg = resolve_config(TuneConfig, args, y, section="tune")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.storage:
        cfg = dataclasses.replace(cfg, storage=f"sqlite:///{(out / 'study.db').resolve()}")
    ppo = resolve_config(PPOConfig, args, y, prefix="ppo_", section="ppo")
    accuracy = resolve_config(AccuracyConfig, args, y, section="accuracy")
    store, heads, state, detector = load_rl_inputs(args, y)
    images, texts = store.images(args.split), store.texts(args.split)
    halves = [rl_view(store, heads, state, detector, *subset(images, texts, keep))
              for keep in split_halves(images, cfg.seed)]
    make = functools.partial(tune_objective, halves[0], halves[1], accuracy, ppo, str(out))
    study = run_parallel(make, cfg)
    reward = best_reward(study)
    path = write_best(out, study, reward)
    print(f"best of {len(study.trials)} trials: alpha={reward.alpha:.3f} beta={reward.beta:.3f} "
          f"(val objective {study.best_value:.4f}); written to {path}")
    return 0
