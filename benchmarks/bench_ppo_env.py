"""Benchmark: the granularity environment's speed, raw and under SB3 PPO (``make bench`` runs it).

A realistic retrieval split on random unit vectors: ``captions`` caption queries and ``images`` image
queries (default T = 1000, N = 200, five captions per image, R = 10, D = 256), their real
:class:`~dsanchor.retrieval.PairTerms` and controller states, a random hallucination matrix, and a
:class:`~dsanchor.rl.reward.RetrievalReward` (reciprocal rank, the default). Measures

1. the raw ``reset`` + ``step`` loop of one :class:`~dsanchor.rl.env.GranularityEnv` with random actions
   (one step is one episode: a contextual bandit), steps/s;
2. a short PPO run of the default configuration (k = 8 codebook) through :func:`dsanchor.rl.ppo.train_ppo`
   (``ppo_steps`` steps, ``n_envs`` envs, checkpoints and curve included, as the demo runs it), steps/s
   including training, and the projected time of the default 65,536 steps (target: under 5 minutes);
3. the env's share of the PPO wall time (raw step time x steps / PPO time); target: under half, so the
   environment is not what PPO waits on.

Run alone: ``python benchmarks/bench_ppo_env.py [--captions 1000] [--images 200] [--ppo-steps 4096]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.retrieval import pair_terms, positives_matrix
from dsanchor.rl.env import GranularityEnv, RewardConfig
from dsanchor.rl.reward import AccuracyConfig, RetrievalReward
from dsanchor.state import query_states

ENV_SHARE_TARGET = 0.5  # env time / PPO time: the env must not be PPO's bottleneck
POOL_S = 10.0  # attention-pool scale, the heads' initial value


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)


TEXT_DIM, COARSE_DIM = 384, 400  # effnet-minilm's text and scene vectors (the default query state)
DEFAULT_STEPS, PPO_TIME_TARGET_S = 65_536, 300.0  # issue 5: the default config trains in under 5 minutes


def make_split(captions: int, images: int, regions: int = 10, dim: int = 256,
               seed: int = 0) -> tuple[torch.Tensor, RetrievalReward]:
    """The (T + N, S) default query states (random encoder vectors) and the reward model of a random split
    (caption t describes image t % N)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.arange(regions).unsqueeze(0) < torch.randint(2, regions + 1, (images, 1), generator=gen)  # (N, R)
    feats = JointFeatures(_unit(images, dim, gen=gen), _unit(images, regions, dim, gen=gen) * mask.unsqueeze(-1), mask)
    text = _unit(captions, dim, gen=gen)  # (T, D)
    with torch.no_grad():
        terms = pair_terms(text, feats, POOL_S)  # (T, N)
        s_t, s_i = query_states(torch.randn(captions, TEXT_DIM, generator=gen),
                                torch.randn(images, COARSE_DIM, generator=gen))
        states = torch.cat([s_t, s_i])
    positives = positives_matrix(torch.arange(captions) % images, torch.arange(images))  # (T, N)
    hall = torch.rand(captions, images, generator=gen)  # (T, N)
    names = torch.rand(captions, generator=gen) < 0.6  # (T,) captions that name an object
    return states, RetrievalReward(terms, positives, hall, AccuracyConfig(), names)


def raw_steps_per_s(states: torch.Tensor, reward: RetrievalReward, steps: int, seed: int) -> float:
    env = GranularityEnv(states, reward, RewardConfig(), seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 1)).astype(np.float32)
    env.reset()
    start = time.perf_counter()
    for a in actions:
        env.reset()
        env.step(a)
    return steps / (time.perf_counter() - start)


def ppo_steps_per_s(states: torch.Tensor, reward: RetrievalReward, steps: int, n_envs: int, seed: int,
                    codebook: int = 8) -> dict:
    """The default PPO config (rollouts, epochs, network, k-type codebook) for ``steps`` steps."""
    from dsanchor.rl.ppo import PPOConfig, train_ppo

    cfg = PPOConfig(timesteps=steps, n_envs=n_envs, checkpoint_every=steps, seed=seed)
    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as out:
        _, info = train_ppo(states, reward, RewardConfig(), cfg, out, progress=False, codebook=codebook,
                            text_dim=TEXT_DIM if codebook else 0)
    rate = info["timesteps"] / info["train_time_s"]
    return {"ppo_steps": info["timesteps"], "ppo_s": info["train_time_s"], "ppo_steps_per_s": rate,
            "ppo_n_envs": n_envs, "ppo_n_epochs": cfg.n_epochs, "default_steps": DEFAULT_STEPS,
            "default_projected_s": DEFAULT_STEPS / rate}


def main(captions: int = 1000, images: int = 200, raw_steps: int = 5000, ppo_steps: int = 4096, n_envs: int = 8,
         seed: int = 0) -> dict:
    """Build the split, time the raw loop and PPO, print a table, return the figures."""
    states, reward = make_split(captions, images, seed=seed)
    raw = raw_steps_per_s(states, reward, raw_steps, seed)
    ppo = ppo_steps_per_s(states, reward, ppo_steps, n_envs, seed)
    share = ppo["ppo_steps"] / raw / ppo["ppo_s"]
    result = {"name": "ppo_env", "captions": captions, "images": images, "state_dim": int(states.shape[1]),
              "threads": torch.get_num_threads(), "raw_steps": raw_steps, "raw_steps_per_s": raw, **ppo,
              "env_share_of_ppo": share, "env_share_target": ENV_SHARE_TARGET,
              "meets_target": share < ENV_SHARE_TARGET, "ppo_time_target_s": PPO_TIME_TARGET_S,
              "meets_ppo_time_target": ppo["default_projected_s"] < PPO_TIME_TARGET_S}
    rows = [
        (f"raw env.reset + env.step, T={captions} + N={images} queries, steps/s", f"{raw:.0f}"),
        (f"SB3 PPO, {ppo['ppo_steps']} steps, {n_envs} envs, {ppo['ppo_n_epochs']} epochs, steps/s (training incl.)",
         f"{ppo['ppo_steps_per_s']:.0f}"),
        ("env share of the PPO wall time", f"{100 * share:.1f} %  (target < {100 * ENV_SHARE_TARGET:.0f} %)"),
        (f"default config ({DEFAULT_STEPS} steps), projected s", f"{ppo['default_projected_s']:.0f}  "
                                                                 f"(target < {PPO_TIME_TARGET_S:.0f})"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench_ppo_env (state dim {result['state_dim']}, {result['threads']} threads)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--raw-steps", type=int, default=5000)
    ap.add_argument("--ppo-steps", type=int, default=4096)
    ap.add_argument("--n-envs", type=int, default=8)
    a = ap.parse_args()
    main(a.captions, a.images, a.raw_steps, a.ppo_steps, a.n_envs)
