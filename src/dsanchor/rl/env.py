"""The granularity environment: a contextual bandit with one-step episodes (DESIGN.md "RL").

Each episode draws one query, shows its controller state, takes one action and ends. The action lives
in Box(-1, 1) (SB3 learns worse on an asymmetric box) and is rescaled to ``g = (a + 1) / 2`` here. The
reward is ``clip(alpha * R_acc + beta * R_hall, lo, hi)``; the two terms come from a
:class:`RewardModel`, so retrieval and captioning share the environment.

Observations are the raw states standardised with the mean and std given at construction (the same
statistics are stored in the exported :class:`~dsanchor.controller.GranularityController`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch

__all__ = ["RewardConfig", "RewardModel", "QueryPoolEnv", "GranularityEnv", "action_to_g", "clipped_reward"]


@dataclass
class RewardConfig:
    alpha: float = field(default=1.0, metadata={"help": "weight of the accuracy reward"})
    beta: float = field(default=0.5, metadata={"help": "weight of the hallucination term (see rl.reward)"})
    clip_low: float = field(default=-1.0, metadata={"help": "lower clip of the reward"})
    clip_high: float = field(default=1.0, metadata={"help": "upper clip of the reward"})


class RewardModel(Protocol):
    """Gives the two reward terms of query ``q`` at granularity ``g``."""

    def __call__(self, q: int, g: float) -> tuple[float, float]:
        """Returns (R_acc, R_hall): accuracy, and the hallucination term (negative when the result hallucinates)."""


def action_to_g(action: np.ndarray | float) -> float:
    """Rescale an action in [-1, 1] to g in [0, 1] (out-of-range actions are clipped)."""
    a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return (a + 1.0) / 2.0


def clipped_reward(r_acc: float, r_hall: float, config: RewardConfig) -> float:
    return float(np.clip(config.alpha * r_acc + config.beta * r_hall, config.clip_low, config.clip_high))


class QueryPoolEnv(gym.Env):
    """One-step episodes over a fixed pool of queries: each reset draws one query and shows its observation
    (``obs[q]``); subclasses define the action and :meth:`step`."""

    metadata = {"render_modes": []}

    def __init__(self, obs: np.ndarray, seed: int = 0):
        super().__init__()
        self._obs = obs  # (Q, ...) float32
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=obs.shape[1:], dtype=np.float32)
        self._rng = np.random.default_rng(seed)
        self._q = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._q = int(self._rng.integers(len(self._obs)))
        return self._obs[self._q], {"query": self._q}


class GranularityEnv(QueryPoolEnv):
    """One-step episodes over a fixed pool of queries.

    Args:
        states: (Q, S) raw controller states of the query pool.
        reward_model: the (R_acc, R_hall) of a query at a g.
        reward: alpha, beta and the clip bounds.
        mean, std: (S,) standardisation of the states.
        seed: seeds the query draws (``reset(seed=...)`` reseeds).
    """

    def __init__(self, states: torch.Tensor, reward_model: RewardModel, reward: RewardConfig,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None, seed: int = 0):
        s = states.float()
        mean = s.mean(0) if mean is None else mean
        std = s.std(0) if std is None else std
        super().__init__(((s - mean) / std.clamp_min(1e-6)).numpy().astype(np.float32), seed)  # (Q, S)
        self.reward_model = reward_model
        self.reward_config = reward
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def step(self, action):
        g = action_to_g(action)
        r_acc, r_hall = self.reward_model(self._q, g)
        reward = clipped_reward(r_acc, r_hall, self.reward_config)
        info = {"query": self._q, "g": g, "r_acc": r_acc, "r_hall": r_hall}
        return self._obs[self._q], reward, True, False, info
