"""`dsanchor train`: train the retrieval controller with PPO (stable-baselines3)."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_rl_inputs(p) -> None:
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.state import StateConfig

    p.add_argument("--features", required=True, help="feature store")
    p.add_argument("--heads", required=True, help="alignment heads run (dsanchor align)")
    p.add_argument("--hall-detector", default=None,
                   help="hallucination detector run (dsanchor hallucination train); without it R_hall = 0")
    p.add_argument("--split", default="val",
                   help="split whose queries train the controller (default val: the heads were fit on train)")
    add_config_args(p, StateConfig)
    add_config_args(p, AccuracyConfig)


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.pairs import PairPPOConfig
    from dsanchor.rl.env import RewardConfig
    from dsanchor.rl.ppo import PPOConfig

    p = sub.add_parser("train", help="train the granularity controllers with PPO (query-only and per pair)")
    add_rl_inputs(p)
    p.add_argument("--tuned", default=None, help="read alpha and beta from `dsanchor tune --out DIR`")
    p.add_argument("--no-pair", dest="pair", action="store_false",
                   help="train only the query-only controller, not the per-pair one (a g per text query and "
                        "candidate image, in OUT/pair)")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, RewardConfig)
    add_config_args(p, PPOConfig)
    add_config_args(p, PairPPOConfig, prefix="pair_")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.commands._common import accept_command_out
    from dsanchor.rl.env import RewardConfig
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import read_best
    from dsanchor.stages import train_stage
    from dsanchor.state import StateConfig

    set_threads(args)
    y = yaml_of(args)
    reward = resolve_config(RewardConfig, args, y, section="reward")
    if args.tuned:
        tuned = read_best(args.tuned)  # flags given explicitly override the tuned values
        reward = RewardConfig(**{k: getattr(args, k) if getattr(args, k, None) is not None else getattr(tuned, k)
                                 for k in ("alpha", "beta", "clip_low", "clip_high")})
    state = resolve_config(StateConfig, args, y, section="state")
    ppo = resolve_config(PPOConfig, args, y, section="ppo")
    from dsanchor.pairs import PairPPOConfig

    pair = resolve_config(PairPPOConfig, args, y, prefix="pair_", section="pair") if args.pair else False
    accuracy = resolve_config(AccuracyConfig, args, y, section="accuracy")
    accept_command_out(args, "train")  # before anything is written
    ctrl, info = train_stage(args.features, args.heads, args.hall_detector, args.out, reward, state, ppo, accuracy,
                             args.split, pair=pair)
    print(f"controller saved to {args.out}/controller after {info['timesteps']} steps "
          f"({info['train_time_s']:.1f}s of PPO)")
    if "pair" in info:
        print(f"per-pair controller saved to {args.out}/pair/pair_controller after {info['pair']['timesteps']} "
              f"steps ({info['pair']['train_time_s']:.1f}s of PPO)")
    return 0
