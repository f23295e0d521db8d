"""`dsanchor tune`: Bayesian optimisation of alpha and beta (Optuna GPSampler, shared RDB storage)."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.commands.train import add_rl_inputs
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.tune import TuneConfig

    p = sub.add_parser("tune", help="tune the reward (beta/alpha, clip bounds) with Optuna (GPSampler)")
    add_rl_inputs(p)
    p.add_argument("--out", required=True, help="directory for best_reward.json (and the default SQLite study)")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, TuneConfig)
    add_config_args(p, PPOConfig, prefix="ppo_", skip=("timesteps", "checkpoint_every"))
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.commands._common import accept_command_out
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import TuneConfig
    from dsanchor.stages import tune_stage
    from dsanchor.state import StateConfig

    set_threads(args)
    y = yaml_of(args)
    state = resolve_config(StateConfig, args, y, section="state")
    tune = resolve_config(TuneConfig, args, y, section="tune")
    ppo = resolve_config(PPOConfig, args, y, prefix="ppo_", section="ppo")
    accuracy = resolve_config(AccuracyConfig, args, y, section="accuracy")
    accept_command_out(args, "tune")  # before anything is written
    study, reward = tune_stage(args.features, args.heads, args.hall_detector, args.out, state, tune, ppo, accuracy,
                               args.split)
    print(f"best of {len(study.trials)} trials: beta/alpha={reward.beta:.3f} clip=[{reward.clip_low:.2f}, "
          f"{reward.clip_high:.2f}] (2-fold val objective {study.best_value:.4f}); written to "
          f"{args.out}/best_reward.json, plot {args.out}/objective.png")
    return 0
