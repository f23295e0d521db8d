"""`dsanchor train`: train the retrieval controller with PPO (stable-baselines3)."""

from __future__ import annotations

from dsanchor.commands._common import add_common, set_threads, write_json, yaml_of
from dsanchor.config import add_config_args, resolve_config, save_resolved


def add_rl_inputs(p) -> None:
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.state import StateConfig

    p.add_argument("--features", required=True, help="feature store")
    p.add_argument("--heads", required=True, help="alignment heads run (dsanchor align)")
    p.add_argument("--detector", default=None,
                   help="hallucination detector run (dsanchor hallucination train); without it R_hall = 0")
    p.add_argument("--split", default="val",
                   help="split whose queries train the controller (default val: the heads were fit on train)")
    add_config_args(p, StateConfig)
    add_config_args(p, AccuracyConfig)


def add_parser(sub) -> None:
    from dsanchor.rl.env import RewardConfig
    from dsanchor.rl.ppo import PPOConfig

    p = sub.add_parser("train", help="train the granularity controller with PPO")
    add_rl_inputs(p)
    p.add_argument("--tuned", default=None, help="read alpha and beta from `dsanchor tune --out DIR`")
    p.add_argument("--out", required=True, help="run directory (rerun to resume)")
    add_common(p)
    add_config_args(p, RewardConfig)
    add_config_args(p, PPOConfig)
    p.set_defaults(func=run)


def load_rl_inputs(args, y):
    """(store, heads, state config, detector or None) from the RL commands' flags."""
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.features.store import FeatureStore
    from dsanchor.state import StateConfig

    detector = None
    if args.detector:
        from dsanchor.hallucination import HallucinationDetector

        detector = HallucinationDetector.from_pretrained(args.detector)
    return (FeatureStore(args.features), AlignmentHeads.from_pretrained(args.heads),
            resolve_config(StateConfig, args, y, section="state"), detector)


def run(args) -> int:
    from dsanchor.experiment import rl_view, train_retrieval_controller
    from dsanchor.rl.env import RewardConfig
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import read_best

    set_threads(args)
    y = yaml_of(args)
    reward = resolve_config(RewardConfig, args, y, section="reward")
    if args.tuned:
        tuned = read_best(args.tuned)
        reward = RewardConfig(alpha=args.alpha if args.alpha is not None else tuned.alpha,
                              beta=args.beta if args.beta is not None else tuned.beta,
                              clip_low=reward.clip_low, clip_high=reward.clip_high)
    ppo = resolve_config(PPOConfig, args, y, section="ppo")
    accuracy = resolve_config(AccuracyConfig, args, y, section="accuracy")
    store, heads, state, detector = load_rl_inputs(args, y)
    view, hall = rl_view(store, heads, state, detector, store.images(args.split), store.texts(args.split))
    save_resolved(args.out, reward=reward, ppo=ppo, accuracy=accuracy, state=state, features=args.features,
                  heads=args.heads, detector=args.detector, split=args.split)
    ctrl, info = train_retrieval_controller(view, hall, reward, accuracy, ppo, args.out)
    write_json(f"{args.out}/train_info.json", info)
    print(f"controller saved to {args.out}/controller after {info['timesteps']} steps "
          f"({info['train_time_s']:.1f}s of PPO)")
    return 0
