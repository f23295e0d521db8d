"""``dsanchor demo --mllm``: DSA inside a small LLaVA on the embedded default, with its own 10-minute budget.

    data/         the demo's synthetic scenes (the same stage and key as ``dsanchor demo``: reused when there)
    llava/        ``dsanchor mllm build``: the small LLaVA that stands in for LLaVA-1.5
    grid/         the grid caches of train, val and test (shared by the three stages below)
    tune/         ``dsanchor mllm tune``: the reward weights (Optuna GPSampler on val)
    controller/   ``dsanchor mllm train --tuned tune``: PPO on the cached rewards
    eval/         ``dsanchor mllm eval``: results.json and report.md (the MLLM table)

Every stage is the library function its command calls, with the command's defaults except the budget fields
of :class:`MLLMDemoConfig`; a rerun reuses the stages that finished. It is a separate command because the
build alone takes minutes on 2 cores, and ``make demo`` has its own 10-minute budget.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MLLMDemoConfig", "run_mllm_demo"]


@dataclass
class MLLMDemoConfig:
    """The budget of the MLLM part (the synthetic data is :class:`~dsanchor.demo.DemoConfig`'s)."""

    train_images: int = field(default=200, metadata={"help": "train images captioned on the grid for PPO"})
    eval_images: int = field(default=100, metadata={"help": "val and test images (each) for tune and eval"})
    grid: int = field(default=6, metadata={"help": "g values of the grid cache"})
    tune_trials: int = field(default=4, metadata={"help": "Optuna trials"})
    tune_timesteps: int = field(default=4096, metadata={"help": "PPO steps of each fold of a trial"})
    ppo_timesteps: int = field(default=16_384, metadata={"help": "PPO steps"})
    seed: int = field(default=0, metadata={"help": "seed of the build, tuning and PPO"})


def run_mllm_demo(out_dir: str | Path, config: MLLMDemoConfig, demo=None, build=None) -> dict[str, Any]:
    """Every stage of the module docstring on the data of ``demo`` (a DemoConfig), the small LLaVA built with
    ``build`` (a BuildConfig; default: ``mllm build``'s defaults with the demo's seed); returns the eval results."""
    import dataclasses

    from dsanchor.demo import DemoConfig
    from dsanchor.demo_stages import synth_stage
    from dsanchor.integrations.build import BuildConfig, build_from_dataset
    from dsanchor.integrations.evaluate import EvalConfig, run_mllm_eval
    from dsanchor.integrations.grid import GridConfig
    from dsanchor.integrations.train import MLLMConfig, MLLMRewardConfig, train_mllm_controller, tune_mllm_reward
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.tune import TuneConfig
    from dsanchor.run import Stages, quiet_progress

    quiet_progress()
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, 5)
    demo = demo or DemoConfig()
    data_key = {"scenes": demo.scenes, "image_size": demo.image_size, "seed": demo.data_seed, "facts": 1,
                "color_space": demo.color_space}
    data = stages.run("synth data", out / "data", data_key, lambda d: synth_stage(d, demo), "synth")
    build = build or BuildConfig(seed=config.seed)
    stages.run("mllm build (small LLaVA)", out / "llava", {"data": data_key, "build": dataclasses.asdict(build)},
               lambda d: build_from_dataset(str(data), "synth", d, build, progress=False), "build")
    grid = GridConfig(grid=config.grid)
    ppo = PPOConfig(timesteps=config.ppo_timesteps, seed=config.seed, checkpoint_every=4096)

    def mllm(stage_out: Path, limit: int) -> MLLMConfig:
        return MLLMConfig(model_type="llava", model_path=str(out / "llava"), data=str(data), format="synth",
                          limit=limit, cache=str(out / "grid"), out=str(stage_out))

    base_key = {"data": data_key, "build": dataclasses.asdict(build), "grid": dataclasses.asdict(grid)}
    tune = TuneConfig(trials=config.tune_trials, seed=config.seed, study_name="demo-mllm",
                      timesteps=config.tune_timesteps)
    stages.run("mllm tune (reward weights)", out / "tune", {**base_key, "tune": dataclasses.asdict(tune),
                                                            "n": config.eval_images},
               lambda d: tune_mllm_reward(mllm(d, config.eval_images), grid, tune, ppo, progress=False), "tune")
    reward = MLLMRewardConfig(tuned=str(out / "tune"))
    stages.run("mllm train (grid + PPO)", out / "controller", {**base_key, "ppo": dataclasses.asdict(ppo),
                                                               "n": config.train_images, "tuned": 1},
               lambda d: train_mllm_controller(mllm(d, config.train_images), grid, reward, ppo, progress=False),
               "ppo")
    ev = EvalConfig(controller=str(out / "controller"), seed=config.seed)
    stages.run("mllm eval", out / "eval", {**base_key, "eval": dataclasses.asdict(ev), "n": config.eval_images,
                                           "ppo": dataclasses.asdict(ppo)},
               lambda d: run_mllm_eval(mllm(d, config.eval_images), grid, ev, progress=False), "eval")
    results = json.loads((out / "eval" / "results.json").read_text())
    results["demo_timing_s"] = {**stages.times, "total": time.perf_counter() - t0}
    (out / "eval" / "results.json").write_text(json.dumps(results, indent=2))
    from dsanchor.integrations.report import write_mllm_report

    write_mllm_report(results, out / "eval")
    return results
