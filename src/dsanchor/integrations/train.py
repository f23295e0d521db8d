"""``dsanchor mllm train`` and ``dsanchor mllm tune``: a granularity controller for an attached MLLM.

``mllm train`` (seed §2.3):

1. loads the local model (LLaVA, BLIP-2 or IDEFICS) and the dataset's train split;
2. captions every train image at each g of a grid with DSA attached, recording its state
   (:mod:`dsanchor.integrations.grid`: cached on disk, resumable, sharded over ``torchrun`` processes);
3. scores every cached caption: R_acc = CIDEr-D against the image's references, R_hall = minus the share
   of named objects the image lacks;
4. trains SB3 PPO on one-step episodes over the train images, the reward
   ``clip(alpha * R_acc + beta * R_hall)`` read from the cache by linear interpolation between grid points
   (:func:`dsanchor.rl.ppo.train_ppo`: TensorBoard logs, checkpoints, resume);
5. exports the controller to ``OUT/controller`` with its :class:`~dsanchor.integrations.state.StateLayout`,
   so ``attach_dsa(model, GranularityController.from_pretrained(OUT/controller))`` rebuilds its state.

``mllm tune`` searches the reward with Optuna's GPSampler (:mod:`dsanchor.rl.tune`: alpha = 1, beta / alpha
and the clip bounds, the only things SB3's advantage normalisation leaves to matter) on the val split's grid
cache. A trial's value is a 2-fold score: PPO trained on one half of the val images, the other half scored by
its interpolated ``CIDEr-D - hallucination share`` at the controller's g, and the other way round. The study
lives in an RDB (``sqlite:///OUT/study.db`` by default), so several workers can share it.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsanchor.data.records import Sample
from dsanchor.errors import ConfigError
from dsanchor.integrations.grid import (
    GridCache,
    GridConfig,
    GridRewardModel,
    build_grid_cache,
    grid_rewards,
    load_grid_cache,
    model_fingerprint,
)
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig, train_ppo
from dsanchor.rl.tune import TuneConfig

__all__ = ["MLLMConfig", "MLLMRewardConfig", "MLLMData", "load_mllm_data", "split_grid", "train_mllm_controller",
           "tune_mllm_reward", "mllm_objective"]

log = logging.getLogger(__name__)


@dataclass
class MLLMConfig:
    """The model, the data and where the grid caches go: shared by mllm train, tune and eval."""

    model_type: str | None = field(default=None, metadata={"help": "llava, blip2 or idefics"})
    model_path: str | None = field(default=None, metadata={"help": "local directory saved with save_pretrained"})
    data: str | None = field(default=None, metadata={"help": "dataset root (the loader's path)"})
    format: str | None = field(default=None, metadata={"help": "dataset format: coco, vg, clevr or synth"})
    splits: str | None = field(default=None, metadata={"help": "split file (default: the dataset's, else seeded)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the 60/20/20 split when the data has none"})
    limit: int | None = field(default=None, metadata={"help": "use at most this many images of each split"})
    prompt: str | None = field(default=None, metadata={"help": "caption prompt; unset: a default per model type"})
    coarse_layer: int = field(default=1, metadata={"help": "vision hidden-state index that gives V_coarse"})
    adapter: str | None = field(default=None, metadata={"help": "seam adapter from `dsanchor mllm adapt`"})
    hall_detector: str | None = field(default=None, metadata={
        "help": "hallucination detector (`dsanchor hallucination train`) for the reward of images without "
                "annotated objects; needs --features"})
    features: str | None = field(default=None, metadata={"help": "feature store of the dataset (for --hall-detector)"})
    cache: str | None = field(default=None, metadata={"help": "grid cache root (default: OUT/grid); one folder "
                                                               "per split, shared by train, tune and eval"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto (under torchrun: cuda:LOCAL_RANK)"})
    dtype: str = field(default="auto", metadata={"help": "auto (the checkpoint's), float32, float16 or bfloat16"})
    out: str | None = field(default=None, metadata={"help": "output directory"})

    def check(self) -> None:
        from dsanchor.data import list_formats
        from dsanchor.integrations.captioning import MODEL_CLASSES

        for name in ("model_type", "model_path", "data", "format", "out"):
            if getattr(self, name) is None:
                raise ConfigError(f"--{name.replace('_', '-')} is required")
        if self.model_type not in MODEL_CLASSES:
            raise ConfigError(f"unknown --model-type {self.model_type!r}; valid: {', '.join(MODEL_CLASSES)}")
        if self.format not in list_formats():
            raise ConfigError(f"unknown --format {self.format!r}; valid: {', '.join(list_formats())}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"--limit must be positive; got {self.limit}")
        if (self.hall_detector is None) != (self.features is None):
            raise ConfigError("--hall-detector and --features go together (the detector reads the store's features)")

    def cache_dir(self, split: str) -> Path:
        return Path(self.cache or Path(self.out) / "grid") / split


@dataclass
class MLLMRewardConfig:
    """``clip(alpha * CIDEr-D + beta * (-hallucination share))``; CIDEr-D is on its raw scale (0 to ~3)."""

    alpha: float = field(default=1.0, metadata={"help": "weight of R_acc (CIDEr-D)"})
    beta: float = field(default=1.0, metadata={"help": "weight of R_hall (minus the hallucinated share)"})
    clip_low: float = field(default=-5.0, metadata={"help": "lower clip of the reward"})
    clip_high: float = field(default=5.0, metadata={"help": "upper clip of the reward"})
    tuned: str | None = field(default=None, metadata={"help": "read alpha, beta and the clip from `mllm tune --out`"})

    def reward_config(self) -> RewardConfig:
        if self.tuned:
            from dsanchor.rl.tune import read_best

            return read_best(self.tuned)
        return RewardConfig(alpha=self.alpha, beta=self.beta, clip_low=self.clip_low, clip_high=self.clip_high)


@dataclass
class MLLMData:
    """A loaded model and dataset: what every mllm command starts from."""

    model: Any
    processor: Any
    samples: list[Sample]
    root: Path
    split_note: str
    vocabulary: str
    device: str
    rank: int = 0
    world: int = 1

    def split(self, name: str, limit: int | None = None) -> list[Sample]:
        rows = sorted((s for s in self.samples if s.split == name), key=lambda s: s.image_id)
        return rows[:limit] if limit else rows


def _device(name: str, local_rank: int) -> str:
    if name != "auto":
        return name
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def load_mllm_data(cfg: MLLMConfig) -> MLLMData:
    """Check ``cfg``, join torchrun's process group if any, load the model (with its adapter) and the samples."""
    import os

    from dsanchor.data import load_dataset
    from dsanchor.data.splits import assign_splits
    from dsanchor.distributed import init_distributed
    from dsanchor.integrations.captioning import CHAIR_VOCABULARY, load_mllm

    cfg.check()
    rank, world = init_distributed()
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    samples, note = assign_splits(load_dataset(cfg.format, cfg.data), cfg.splits, seed=cfg.split_seed)
    model, processor = load_mllm(cfg.model_type, cfg.model_path, device, cfg.dtype)
    if cfg.adapter:
        from dsanchor.integrations.adapt import load_adapter

        load_adapter(model, cfg.adapter)
    root = Path(cfg.data) if Path(cfg.data).is_dir() else Path(cfg.data).parent
    return MLLMData(model, processor, samples, root, note, CHAIR_VOCABULARY.get(cfg.format, "coco"), device, rank,
                    world)


def split_grid(cfg: MLLMConfig, data: MLLMData, split: str, grid: GridConfig,
               progress: bool = True) -> tuple[GridCache, dict[str, Any]]:
    """The grid cache of ``split`` (built or resumed, every rank sharing the work) and its rewards."""
    from dsanchor.integrations.captioning import DEFAULT_PROMPTS, processor_fns
    from dsanchor.integrations.state import state_layout

    samples = data.split(split, cfg.limit)
    if not samples:
        raise ConfigError(f"the {split} split is empty ({data.split_note})")
    prompt = DEFAULT_PROMPTS[cfg.model_type] if cfg.prompt is None else cfg.prompt
    prepare, decode = processor_fns(cfg.model_type, data.processor, prompt)
    layout = state_layout(data.model, cfg.coarse_layer)
    meta = {"model": model_fingerprint(cfg.model_path), "model_type": cfg.model_type, "prompt": prompt,
            "adapter": str(cfg.adapter), "split": split}
    out = cfg.cache_dir(split)
    build_grid_cache(data.model, prepare, decode, samples, data.root, out, grid, layout, meta,
                     cfg.coarse_layer, progress)
    cache = load_grid_cache(out)
    detector = None
    if cfg.hall_detector and any(not s.objects for s in samples):
        from dsanchor.integrations.grid import DetectorShares

        detector = DetectorShares(cfg.hall_detector, cfg.features, data.vocabulary)
    rewards = grid_rewards(cache, samples, data.vocabulary, detector)
    return cache, rewards


def _reward_model(cache: GridCache, rewards: dict[str, Any]) -> GridRewardModel:
    return GridRewardModel(cache.grid, rewards["cider"], rewards["hallucination"])


def train_mllm_controller(cfg: MLLMConfig, grid: GridConfig, reward: MLLMRewardConfig, ppo: PPOConfig,
                          progress: bool = True, data: MLLMData | None = None, seeds: int = 1) -> dict[str, Any] | None:
    """Grid cache, rewards and PPO (module docstring). Returns the info dict on rank 0, ``None`` elsewhere.

    With ``seeds`` > 1, PPO is trained once per seed (``ppo.seed + k``) on the same cached rewards, into
    ``OUT/seed{k}/controller``; ``mllm eval --controller OUT`` then measures every seed.
    """
    import dataclasses

    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1; got {seeds}")
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
    rc = reward.reward_config()
    runs = []
    for k in range(seeds):
        run_dir = out if seeds == 1 else out / f"seed{k}"
        tic = time.perf_counter()
        ctrl, info = train_ppo(cache.states, _reward_model(cache, rewards), rc,
                               dataclasses.replace(ppo, seed=ppo.seed + k), run_dir, progress,
                               state_layout=cache.layout)
        with torch.no_grad():
            g = ctrl(cache.states)
        runs.append({"seed": ppo.seed + k, "controller": str(run_dir / "controller"), "ppo": info,
                     "ppo_seconds": time.perf_counter() - tic, "train_mean_g": float(g.mean()),
                     "train_g_std": float(g.std())})
    cider, hall = rewards["cider"], rewards["hallucination"]
    result = {
        "model_type": cfg.model_type, "model_path": str(cfg.model_path), "split_note": data.split_note,
        "n_train_images": len(cache.image_ids), "grid": cache.grid.tolist(), "state_layout": cache.layout,
        "reward": {"alpha": rc.alpha, "beta": rc.beta, "clip_low": rc.clip_low, "clip_high": rc.clip_high},
        "n_unjudged": rewards["n_unjudged"], "n_hallucination_by_detector": rewards["n_detector"],
        "train_cider_by_g": cider.mean(0).tolist(), "train_hallucination_by_g": hall.mean(0).tolist(),
        "train_mean_g": runs[0]["train_mean_g"], "seeds": runs,
        "seconds": {"load": t_load, "grid_cache": t_grid, "grid_generate_total": cache.seconds,
                    "ppo": sum(r["ppo_seconds"] for r in runs)},
        "controller": runs[0]["controller"] if seeds == 1 else str(out),
    }
    (out / "train_info.json").write_text(json.dumps(result, indent=2))
    return result


def mllm_objective(model: GridRewardModel, g: np.ndarray) -> float:
    """The tuning target at per-image g: mean interpolated CIDEr-D minus mean hallucination share."""
    vals = [model.values(q, float(gq)) for q, gq in enumerate(g)]
    return float(np.mean([c - h for c, h in vals]))


def _trial(states: torch.Tensor, model: GridRewardModel, layout: dict, ppo: PPOConfig, work_dir: str,
           reward: RewardConfig) -> float:
    """2-fold value of one reward: PPO on each half of the val images, scored on the other half."""
    n = len(model)
    perm = np.random.default_rng(ppo.seed).permutation(n)
    halves = [np.sort(perm[: n // 2]), np.sort(perm[n // 2:])]
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
    import dataclasses

    from dsanchor.rl.tune import best_reward, run_parallel, write_best

    data = data or load_mllm_data(cfg)
    tic = time.perf_counter()
    cache, rewards = split_grid(cfg, data, "val", grid, progress)
    t_grid = time.perf_counter() - tic
    if data.rank != 0:
        return None
    if len(cache.image_ids) < 4:
        raise ConfigError(f"mllm tune needs at least 4 val images for its 2-fold score; got {len(cache.image_ids)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not tune.storage:
        tune = dataclasses.replace(tune, storage=f"sqlite:///{(out / 'study.db').resolve()}")
    trial_ppo = dataclasses.replace(ppo, timesteps=tune.timesteps, checkpoint_every=10 ** 9)
    objective = functools.partial(functools.partial, _trial, cache.states, _reward_model(cache, rewards),
                                  cache.layout, trial_ppo, str(out))
    tic = time.perf_counter()
    study = run_parallel(objective, tune)
    t_tune = time.perf_counter() - tic
    best = best_reward(study)
    path = write_best(out, study, best)
    info = {"best": dataclasses.asdict(best), "best_value": study.best_value, "trials": len(study.trials),
            "storage": tune.storage, "objective": "2-fold val mean CIDEr-D - hallucination share",
            "seconds": {"grid_cache": t_grid, "tune": t_tune}, "best_reward": str(path)}
    (out / "tune_info.json").write_text(json.dumps(info, indent=2))
    return info
