"""Reinforcement learning of the granularity controller (DESIGN.md "RL"): a one-step gymnasium environment,
the retrieval reward, SB3 PPO, and the Optuna study over the reward weights.

The names load their module on first use (:mod:`dsanchor.lazy`).
"""

from dsanchor.lazy import lazy_exports

_WHERE = {
    "RewardConfig": "dsanchor.rl.env",
    "RewardModel": "dsanchor.rl.env",
    "GranularityEnv": "dsanchor.rl.env",
    "AccuracyConfig": "dsanchor.rl.reward",
    "RetrievalReward": "dsanchor.rl.reward",
    "PPOConfig": "dsanchor.rl.ppo",
    "train_ppo": "dsanchor.rl.ppo",
    "export_controller": "dsanchor.rl.ppo",
    "rl_view": "dsanchor.rl.train",
    "train_retrieval_controller": "dsanchor.rl.train",
    "tune_objective": "dsanchor.rl.train",
    "TuneConfig": "dsanchor.rl.tune",
    "run_study": "dsanchor.rl.tune",
    "run_parallel": "dsanchor.rl.tune",
    "best_reward": "dsanchor.rl.tune",
    "write_best": "dsanchor.rl.tune",
    "read_best": "dsanchor.rl.tune",
}

__all__ = list(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
