"""Bayesian optimisation of the reward with Optuna's GPSampler: the ratio beta / alpha and the clip bounds.

SB3's PPO normalises the advantages of each batch, so scaling the whole reward by a constant changes
nothing it learns: only the ratio beta / alpha and where the clip bounds cut (relative to alpha) matter.
The study therefore fixes alpha = 1 and searches beta (log scale) and the two clip bounds.

The study lives in an RDB (SQLite by default; any SQLAlchemy URL such as PostgreSQL works), so
several processes or machines can run trials of one study: each calls :func:`run_study` with the same
``storage`` and ``study_name`` and Optuna hands out distinct trial numbers.

The objective is supplied by the caller (see :func:`dsanchor.rl.train.tune_objective`): a 2-fold score on
val, training PPO on one half and scoring the other, then the other way round.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from dsanchor.files import write_json
from dsanchor.progress import progress_bar
from dsanchor.rl.env import RewardConfig

__all__ = ["TuneConfig", "run_study", "run_parallel", "best_reward", "write_best", "read_best"]

log = logging.getLogger(__name__)
BEST_NAME = "best_reward.json"


@dataclass
class TuneConfig:
    trials: int = field(default=12, metadata={"help": "trials in total (over all workers)"})
    storage: str = field(default="", metadata={"help": "Optuna RDB URL (default: sqlite:///OUT/study.db)"})
    study_name: str = field(default="dsa-reward", metadata={"help": "study name inside the storage"})
    ratio_low: float = field(default=0.01, metadata={"help": "lower bound of beta / alpha (log scale; alpha = 1)"})
    ratio_high: float = field(default=10.0, metadata={"help": "upper bound of beta / alpha"})
    clip_low_min: float = field(default=-2.0, metadata={"help": "lowest lower clip bound searched"})
    clip_low_max: float = field(default=-0.05, metadata={"help": "highest lower clip bound searched"})
    clip_high_min: float = field(default=0.05, metadata={"help": "lowest upper clip bound searched"})
    clip_high_max: float = field(default=2.0, metadata={"help": "highest upper clip bound searched"})
    timesteps: int = field(default=8192, metadata={"help": "PPO steps of each fold of a trial"})
    startup_trials: int = field(default=4, metadata={"help": "random trials before the Gaussian process takes over"})
    workers: int = field(default=1, metadata={"help": "local worker processes sharing the study"})
    seed: int = field(default=0, metadata={"help": "sampler seed (worker i uses seed + i)"})


    def __post_init__(self) -> None:
        if not 0 < self.ratio_low < self.ratio_high:
            raise ValueError("need 0 < ratio_low < ratio_high")
        if not self.clip_low_min < self.clip_low_max < 0 < self.clip_high_min < self.clip_high_max:
            raise ValueError("need clip_low_min < clip_low_max < 0 < clip_high_min < clip_high_max")


def _sampler(seed: int, startup: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)


def suggest_reward(trial: optuna.Trial, config: TuneConfig) -> RewardConfig:
    return RewardConfig(alpha=1.0, beta=trial.suggest_float("ratio", config.ratio_low, config.ratio_high, log=True),
                        clip_low=trial.suggest_float("clip_low", config.clip_low_min, config.clip_low_max),
                        clip_high=trial.suggest_float("clip_high", config.clip_high_min, config.clip_high_max))


def run_study(objective: Callable[[RewardConfig], float], config: TuneConfig, n_trials: int,
              worker: int = 0) -> optuna.Study:
    """Run ``n_trials`` trials of the shared study in this process (maximising the objective), with a progress
    bar of the trials (one line per worker process, on a terminal)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=config.study_name, storage=config.storage, direction="maximize",
                                sampler=_sampler(config.seed + worker, config.startup_trials), load_if_exists=True)
    bar = progress_bar(total=n_trials, desc=f"tune (worker {worker})" if config.workers > 1 else "tune",
                       unit="trial", position=worker)

    def wrapped(trial: optuna.Trial) -> float:
        value = objective(suggest_reward(trial, config))
        log.info("trial %d: %s -> %.4f", trial.number, trial.params, value)
        bar.set_postfix(last=f"{value:.4f}")
        bar.update()
        return value

    with bar:
        study.optimize(wrapped, n_trials=n_trials)
    return study


def _worker(args: tuple) -> None:
    make_objective, config, n, worker = args
    run_study(make_objective(), config, n, worker)


def run_parallel(make_objective: Callable[[], Callable[[RewardConfig], float]], config: TuneConfig) -> optuna.Study:
    """Split ``config.trials`` over ``config.workers`` processes that share the study's storage.

    ``make_objective`` must be picklable (a module-level function or a functools.partial of one); each
    worker builds its own objective.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=config.study_name, storage=config.storage, direction="maximize",
                        load_if_exists=True)
    per = [config.trials // config.workers + (i < config.trials % config.workers) for i in range(config.workers)]
    if config.workers == 1:
        run_study(make_objective(), config, per[0], 0)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(config.workers) as pool:
            pool.map(_worker, [(make_objective, config, n, i) for i, n in enumerate(per) if n])
    return optuna.load_study(study_name=config.study_name, storage=config.storage)


def best_reward(study: optuna.Study) -> RewardConfig:
    p = study.best_params
    return RewardConfig(alpha=1.0, beta=p["ratio"], clip_low=p["clip_low"], clip_high=p["clip_high"])


def write_best(out_dir: str | Path, study: optuna.Study, reward: RewardConfig) -> Path:
    """Write the best reward weights where `dsanchor train --tuned DIR` and the demo read them."""
    trials = [{"number": t.number, "params": t.params, "value": t.value}
              for t in study.get_trials(deepcopy=False) if t.value is not None]
    return write_json(Path(out_dir) / BEST_NAME, {"alpha": reward.alpha, "beta": reward.beta,
                                                   "clip_low": reward.clip_low, "clip_high": reward.clip_high,
                                                   "best_value": study.best_value, "study_name": study.study_name,
                                                   "trials": trials})


def read_best(path: str | Path) -> RewardConfig:
    from dsanchor.errors import DataError

    p = Path(path)
    p = p / BEST_NAME if p.is_dir() else p
    if not p.is_file():
        raise DataError(p, "no tuned reward found (run `dsanchor tune --out DIR` first)")
    d = json.loads(p.read_text())
    return RewardConfig(alpha=d["alpha"], beta=d["beta"], clip_low=d["clip_low"], clip_high=d["clip_high"])
