"""``dsanchor mllm train`` and ``dsanchor mllm tune``: a granularity controller for an attached MLLM.

``mllm train`` (seed §2.3):

1. loads the local model (LLaVA, BLIP-2 or IDEFICS) and the dataset's train split;
2. captions every train image at each g of a grid with DSA attached, recording its state
   (:mod:`dsanchor.mllm.grid`: cached on disk, resumable, sharded over ``torchrun`` processes);
3. scores every cached caption: R_acc = CIDEr-D against the image's references, R_hall = minus the share
   of named objects the image lacks;
4. trains SB3 PPO on one-step episodes over the train images, the reward
   ``clip(alpha * R_acc + beta * R_hall)`` read from the cache by linear interpolation between grid points
   (:func:`dsanchor.rl.ppo.train_ppo`: TensorBoard logs, checkpoints, resume);
5. exports the controller to ``OUT/controller`` with its :class:`~dsanchor.integrations.state.StateLayout`,
   so ``attach_dsa(model, GranularityController.from_pretrained(OUT/controller))`` rebuilds its state.

With ``--questions`` the episodes are items (questions and caption prompts, :mod:`dsanchor.mllm.items`) in place
of images: each has its own state (the seam and its own prompt), R_acc is exact match or CIDEr-D and R_hall a false
"yes" or the CHAIR share; the same cache's answer losses also train the ``router_loss`` baseline
(:mod:`dsanchor.mllm.router`) into ``OUT/router/controller``.

``mllm tune`` searches the reward with Optuna's GPSampler (:mod:`dsanchor.rl.tune`: alpha = 1, beta / alpha
and the clip bounds, the only things SB3's advantage normalisation leaves to matter) on the val split's grid
cache. A trial's value is a 2-fold score: PPO trained on one half of the val images, the other half scored by
its interpolated ``CIDEr-D - hallucination share`` at the controller's g, and the other way round. The study
lives in an RDB (``sqlite:///OUT/study.db`` by default), so several workers can share it.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsanchor.errors import ConfigError
from dsanchor.files import write_json
from dsanchor.mllm.config import GridConfig, MLLMConfig, MLLMTrainConfig, RouterConfig
from dsanchor.mllm.data import MLLMData, load_mllm_data
from dsanchor.mllm.grid import GridCache
from dsanchor.mllm.items import ItemRewards, split_grid
from dsanchor.mllm.rewards import GridRewardModel, GridRewards, mllm_objective, reward_model
from dsanchor.mllm.router import train_router
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig, train_ppo
from dsanchor.rl.tune import TuneConfig, best_reward, run_parallel, write_best

__all__ = ["train_mllm_controller", "tune_mllm_reward"]


def _train_seeds(cache: GridCache, rewards: GridRewards | ItemRewards, rc: RewardConfig, ppo: PPOConfig, out: Path,
                 seeds: int, progress: bool) -> list[dict[str, Any]]:
    """PPO once per seed (``ppo.seed + k``) on the same cached rewards; one info dict per seed."""
    runs = []
    for k in range(seeds):
        run_dir = out if seeds == 1 else out / f"seed{k}"
        tic = time.perf_counter()
        ctrl, info = train_ppo(cache.states, reward_model(cache, rewards), rc,
                               dataclasses.replace(ppo, seed=ppo.seed + k), run_dir, progress,
                               state_layout=cache.layout)
        with torch.no_grad():
            g = ctrl(cache.states)
        runs.append({"seed": ppo.seed + k, "controller": str(run_dir / "controller"), "ppo": info,
                     "ppo_seconds": time.perf_counter() - tic, "train_mean_g": float(g.mean()),
                     "train_g_std": float(g.std())})
    return runs


def train_mllm_controller(cfg: MLLMConfig, grid: GridConfig, reward: RewardConfig, train: MLLMTrainConfig,
                          ppo: PPOConfig, progress: bool = True, data: MLLMData | None = None,
                          router: RouterConfig | None = None) -> dict[str, Any] | None:
    """Grid cache, rewards and PPO (module docstring). Returns the info dict on rank 0, ``None`` elsewhere.

    With ``train.seeds`` > 1, PPO is trained once per seed (``ppo.seed + k``) on the same cached rewards, into
    ``OUT/seed{k}/controller``; ``mllm eval --controller OUT`` then measures every seed. ``train.tuned`` replaces
    ``reward`` by the reward ``mllm tune`` found. With ``--questions`` the router (``router``, default
    :class:`RouterConfig`) is trained into ``OUT/router``.
    """
    t0 = time.perf_counter()
    data = data or load_mllm_data(cfg)
    t_load = time.perf_counter() - t0
    tic = time.perf_counter()
    cache, rewards = split_grid(cfg, data, "train", grid, progress)
    t_grid = time.perf_counter() - tic
    if data.rank != 0:
        return None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rc = train.reward(reward)
    runs = _train_seeds(cache, rewards, rc, ppo, out, train.seeds, progress)
    result = {
        "model_type": cfg.model_type, "model_path": str(cfg.model_path), "split_note": data.split_note,
        "n_train_images": len(set(cache.image_ids)), "grid": cache.grid.tolist(), "state_layout": cache.layout,
        "reward": {"alpha": rc.alpha, "beta": rc.beta, "clip_low": rc.clip_low, "clip_high": rc.clip_high},
        "n_unjudged": rewards.n_unjudged, "n_hallucination_by_detector": rewards.n_detector,
        f"train_{rewards.accuracy_name}_by_g": rewards.accuracy.mean(0).tolist(),
        "train_hallucination_by_g": rewards.hallucination.mean(0).tolist(),
        "train_mean_g": runs[0]["train_mean_g"], "seeds": runs,
        "seconds": {"load": t_load, "grid_cache": t_grid, "grid_generate_total": cache.seconds,
                    "ppo": sum(r["ppo_seconds"] for r in runs)},
        "controller": runs[0]["controller"] if train.seeds == 1 else str(out),
    }
    if cfg.questions:
        _, info = train_router(cache.states, cache.losses, cache.grid, router or RouterConfig(), out / "router",
                               cache.layout)
        result.update({"n_train_items": len(cache.row_keys), "questions": cfg.questions, "router": info,
                       "train_answer_loss_by_g": np.nanmean(cache.losses, 0).tolist()})
        result["seconds"]["router"] = info["seconds"]
    write_json(out / "train_info.json", result)
    return result


def _trial(states: torch.Tensor, model: GridRewardModel, layout: dict, ppo: PPOConfig, work_dir: str,
           reward: RewardConfig, groups: np.ndarray | None = None) -> float:
    """2-fold value of one reward: PPO on each half of the val images, scored on the other half.

    Args:
        groups: (N,) the image of each row; rows of one image stay in one half (items: its questions). None: one
            row per image.
    """
    uniq, inverse = np.unique(np.arange(len(model)) if groups is None else groups, return_inverse=True)
    perm = np.random.default_rng(ppo.seed).permutation(len(uniq))
    halves = [np.flatnonzero(np.isin(inverse, perm[: len(uniq) // 2])),
              np.flatnonzero(np.isin(inverse, perm[len(uniq) // 2:]))]
    values = []
    for k in range(2):
        fit, score = halves[k], halves[1 - k]
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            ctrl, _ = train_ppo(states[fit], model.subset(fit), reward, ppo, tmp, progress=False, state_layout=layout)
        with torch.no_grad():
            g = ctrl(states[score]).numpy()
        values.append(mllm_objective(model.subset(score), g))
    return float(np.mean(values))


def tune_mllm_reward(cfg: MLLMConfig, grid: GridConfig, tune: TuneConfig, ppo: PPOConfig,
                     progress: bool = True, data: MLLMData | None = None) -> dict[str, Any] | None:
    """Optuna's GPSampler over the reward on the val grid cache; writes ``OUT/best_reward.json`` (rank 0)."""
    data = data or load_mllm_data(cfg)
    tic = time.perf_counter()
    cache, rewards = split_grid(cfg, data, "val", grid, progress)
    t_grid = time.perf_counter() - tic
    if data.rank != 0:
        return None
    n_images = len(set(cache.image_ids))
    if n_images < 4:
        raise ConfigError(f"mllm tune needs at least 4 val images for its 2-fold score; got {n_images}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not tune.storage:
        tune = dataclasses.replace(tune, storage=f"sqlite:///{(out / 'study.db').resolve()}")
    trial_ppo = dataclasses.replace(ppo, timesteps=tune.timesteps, checkpoint_every=10 ** 9)
    objective = functools.partial(functools.partial, _trial, cache.states, reward_model(cache, rewards),
                                  cache.layout, trial_ppo, str(out), groups=np.array(cache.image_ids))
    tic = time.perf_counter()
    study = run_parallel(objective, tune)
    t_tune = time.perf_counter() - tic
    best = best_reward(study)
    path = write_best(out, study, best)
    info = {"best": dataclasses.asdict(best), "best_value": study.best_value, "trials": len(study.trials),
            "storage": tune.storage, "objective": f"2-fold val mean {rewards.accuracy_name} - hallucination",
            "seconds": {"grid_cache": t_grid, "tune": t_tune}, "best_reward": str(path)}
    write_json(out / "tune_info.json", info)
    return info
