"""Bayesian optimisation of the reward weights alpha and beta with Optuna's GPSampler.

The study lives in an RDB (SQLite by default; any SQLAlchemy URL such as PostgreSQL works), so
several processes or machines can run trials of one study: each calls :func:`run_study` with the same
``storage`` and ``study_name`` and Optuna hands out distinct trial numbers.

The objective is supplied by the caller (see :mod:`dsanchor.experiment`): it trains a controller
with the trial's reward weights on one half of the val split and returns the documented val score
of the other half.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from dsanchor.rl.env import RewardConfig

__all__ = ["TuneConfig", "run_study", "run_parallel", "best_reward", "write_best", "read_best"]

log = logging.getLogger(__name__)
BEST_NAME = "best_reward.json"


@dataclass
class TuneConfig:
    trials: int = field(default=12, metadata={"help": "trials in total (over all workers)"})
    storage: str = field(default="", metadata={"help": "Optuna RDB URL (default: sqlite:///OUT/study.db)"})
    study_name: str = field(default="dsa-reward", metadata={"help": "study name inside the storage"})
    alpha_low: float = field(default=0.1, metadata={"help": "lower bound of alpha"})
    alpha_high: float = field(default=2.0, metadata={"help": "upper bound of alpha"})
    beta_low: float = field(default=0.0, metadata={"help": "lower bound of beta"})
    beta_high: float = field(default=2.0, metadata={"help": "upper bound of beta"})
    workers: int = field(default=1, metadata={"help": "local worker processes sharing the study"})
    seed: int = field(default=0, metadata={"help": "sampler seed (worker i uses seed + i)"})


def _sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)


def suggest_reward(trial: optuna.Trial, config: TuneConfig) -> RewardConfig:
    return RewardConfig(alpha=trial.suggest_float("alpha", config.alpha_low, config.alpha_high),
                        beta=trial.suggest_float("beta", config.beta_low, config.beta_high))


def run_study(objective: Callable[[RewardConfig], float], config: TuneConfig, n_trials: int,
              worker: int = 0) -> optuna.Study:
    """Run ``n_trials`` trials of the shared study in this process (maximising the objective)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=config.study_name, storage=config.storage, direction="maximize",
                                sampler=_sampler(config.seed + worker), load_if_exists=True)

    def wrapped(trial: optuna.Trial) -> float:
        value = objective(suggest_reward(trial, config))
        log.info("trial %d: alpha=%.3f beta=%.3f -> %.4f", trial.number, trial.params["alpha"],
                 trial.params["beta"], value)
        return value

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


def best_reward(study: optuna.Study, base: RewardConfig | None = None) -> RewardConfig:
    base = base or RewardConfig()
    p = study.best_params
    return RewardConfig(alpha=p["alpha"], beta=p["beta"], clip_low=base.clip_low, clip_high=base.clip_high)


def write_best(out_dir: str | Path, study: optuna.Study, reward: RewardConfig) -> Path:
    """Write the best reward weights where `dsanchor train --tuned DIR` and the demo read them."""
    path = Path(out_dir) / BEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    trials = [{"number": t.number, "params": t.params, "value": t.value}
              for t in study.get_trials(deepcopy=False) if t.value is not None]
    path.write_text(json.dumps({"alpha": reward.alpha, "beta": reward.beta, "clip_low": reward.clip_low,
                                "clip_high": reward.clip_high, "best_value": study.best_value,
                                "study_name": study.study_name, "trials": trials}, indent=2))
    return path


def read_best(path: str | Path) -> RewardConfig:
    from dsanchor.errors import DataError

    p = Path(path)
    p = p / BEST_NAME if p.is_dir() else p
    if not p.is_file():
        raise DataError(p, "no tuned reward found (run `dsanchor tune --out DIR` first)")
    d = json.loads(p.read_text())
    return RewardConfig(alpha=d["alpha"], beta=d["beta"], clip_low=d["clip_low"], clip_high=d["clip_high"])
