"""The two demos on the embedded default: the whole DSA pipeline (``dsanchor demo``, :func:`run_demo`) and DSA
inside a small LLaVA (``dsanchor demo --mllm``, :func:`run_mllm_demo`).

``dsanchor demo``: synthetic CLEVR-style data, then ``dsanchor run`` on it.

    data/       synthetic CLEVR-style scenes (COCO + CLEVR formats), made here
    ...         every other stage and the report: see :mod:`dsanchor.run`

``dsanchor demo --mllm``, with its own 10-minute budget (:class:`MLLMDemoConfig`):

    data/         the MLLM demo's synthetic scenes (``--mllm-scenes``, ``--mllm-data-seed``), at the model's
                  image size; by default seed 1, none of whose scenes the shipped model has seen
    questions.json  ``dsanchor data questions``: questions whose answers the scene graphs decide, and caption
                  prompts per granularity (CLEVR's questions format; ``--no-mllm-questions``: one caption per image)
    llava/        only with ``--mllm-build``: ``dsanchor mllm build`` on the demo's train split; by default the
                  small LLaVA shipped in the package (:mod:`dsanchor.mllm.shipped`) stands in for LLaVA-1.5
    grid/         the grid caches of train, val and test (shared by the three stages below)
    tune/         ``dsanchor mllm tune``: the reward weights (Optuna GPSampler on val)
    controller/   ``dsanchor mllm train --tuned tune``: PPO on the cached rewards, and the router_loss baseline
    eval/         ``dsanchor mllm eval``: results.json and report.md (per question family with questions, the
                  paper's Table 1 layout without)

Every MLLM stage is the library function its command calls, with the command's defaults except the budget
fields of :class:`MLLMDemoConfig`. It is a separate command because the MLLM stages take minutes on 2 cores,
and ``make demo`` has its own 10-minute budget. The shipped model exists for the same reason: ``mllm build``'s
defaults take about 25 minutes on 2 cores.

``--data-seed N`` (with ``--mllm``: ``--mllm-data-seed N``) generates a fresh benchmark; a rerun reuses the stages
that already finished.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsanchor.errors import ConfigError
from dsanchor.files import read_json, write_json
from dsanchor.mllm import (
    BuildConfig,
    GridConfig,
    MLLMConfig,
    MLLMEvalConfig,
    MLLMTrainConfig,
    build_from_dataset,
    mllm_ppo,
    mllm_reward,
    mllm_tune,
    run_mllm_eval,
    train_mllm_controller,
    tune_mllm_reward,
)
from dsanchor.mllm.config import MLLM_PPO_DEFAULTS, MLLM_TUNE_DEFAULTS
from dsanchor.mllm.shipped import SMALL_LLAVA, shipped_record
from dsanchor.report.mllm import write_mllm_report
from dsanchor.report.mllm_items import write_items_report
from dsanchor.run import RunConfig

__all__ = ["DemoConfig", "MLLMDemoConfig", "run_demo", "run_mllm_demo"]


@dataclass
class DemoConfig(RunConfig):
    """The synthetic data of the demo; the budget of the run is :class:`~dsanchor.run.RunConfig`'s."""

    scenes: int = field(default=1000, metadata={"help": "synthetic scenes (split 60/20/20)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the synthetic scenes (another: a fresh benchmark)"})
    image_size: int = field(default=224, metadata={"help": "synthetic image size in pixels"})
    color_space: str = field(default="linear", metadata={
        "help": "the renderer's colour pipeline: linear (CLEVR's) or display (the generator's first version)"})


def run_demo(out_dir: str | Path, config: DemoConfig, overwrite: bool = False) -> dict:
    """Generate the synthetic data, then :func:`dsanchor.run.run_pipeline` on it. Returns the merged results.

    ``out_dir`` holding a demo of other settings is refused before anything is written, unless ``overwrite``."""
    from dsanchor.run import quiet_progress, run_inputs, run_pipeline, start_run
    from dsanchor.stages import synth_stage

    quiet_progress()
    out = Path(out_dir)
    data_key = {"scenes": config.scenes, "image_size": config.image_size, "seed": config.data_seed, "facts": 1,
                "color_space": config.color_space}
    stages = start_run(out, 2 + 6 * config.seeds, run_inputs(data_key, "synth", None, config), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    stages.run("synth data", out / "data", data_key, lambda d: synth_stage(d, config), "synth")
    return run_pipeline(out / "data", "synth", out, config, stages=stages, data_key=data_key, dataset="synth")


@dataclass
class MLLMDemoConfig:
    """The budget of the MLLM demo (the synthetic data is :class:`DemoConfig`'s)."""

    train_images: int = field(default=200, metadata={"help": "train images captioned on the grid for PPO"})
    eval_images: int = field(default=100, metadata={"help": "val and test images (each) for tune and eval"})
    grid: int = field(default=6, metadata={"help": "g values of the grid cache"})
    tune_trials: int = field(default=4, metadata={"help": "Optuna trials"})
    tune_timesteps: int = field(default=MLLM_TUNE_DEFAULTS["timesteps"], metadata={
        "help": "PPO steps of each fold of a trial"})
    ppo_timesteps: int = field(default=MLLM_PPO_DEFAULTS["timesteps"], metadata={"help": "PPO steps"})
    seed: int = field(default=0, metadata={"help": "seed of the build, tuning and PPO"})
    build: bool = field(default=False, metadata={
        "help": "build the small LLaVA on the demo's train split (`mllm build`'s defaults: about 25 minutes on 2 "
                "cores) instead of starting from the one shipped in the package (dsanchor/mllm/shipped/llava_small, "
                "which `dsanchor mllm build` rebuilds from its build.yaml)"})
    scenes: int = field(default=500, metadata={"help": "synthetic scenes of the MLLM demo (split 60/20/20), rendered "
                                                       "at the model's image size"})
    data_seed: int = field(default=1, metadata={
        "help": "seed of the MLLM demo's scenes; the shipped model was built on seed 0's train split, so with it "
                "seed 0 is refused (its val and test scenes would include scenes it was trained on)"})
    questions: bool = field(default=True, metadata={
        "help": "learn and measure on scene-graph questions and caption prompts (`dsanchor data questions`), per "
                "question family; off: one caption per image"})


def run_mllm_demo(out_dir: str | Path, config: MLLMDemoConfig, demo: DemoConfig | None = None,
                  build: BuildConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Every MLLM stage of the module docstring on the data of ``demo``, the small LLaVA built with ``build``
    (default: ``mllm build``'s defaults with the demo's seed); returns the eval results. ``out_dir`` holding a
    demo of other settings is refused before anything is written, unless ``overwrite``."""
    from dsanchor.run import RUN_RECORD, quiet_progress, run_inputs, start_run
    from dsanchor.stages import synth_stage

    quiet_progress()
    t0 = time.perf_counter()
    out = Path(out_dir)
    build = build or BuildConfig(seed=config.seed)
    if config.build:
        model_key: dict[str, Any] = {"build": dataclasses.asdict(build)}
        image_size = build.image_size
    else:
        record = shipped_record()
        if config.data_seed == record["data"]["seed"]:
            raise ConfigError(f"--mllm-data-seed {config.data_seed} is the seed of the shipped model's training "
                              f"scenes; give another (default 1), or --mllm-build")
        model_key = {"shipped": record["sha256"]}
        image_size = record["data"]["image_size"]
    demo = dataclasses.replace(demo or DemoConfig(), scenes=config.scenes, data_seed=config.data_seed,
                               image_size=image_size)
    data_key = {"scenes": demo.scenes, "image_size": demo.image_size, "seed": demo.data_seed, "facts": 1,
                "color_space": demo.color_space}
    stages = start_run(out, 4 + config.build + config.questions,
                       run_inputs(data_key, "synth", None, config, **model_key), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    data = stages.run("synth data", out / "data", data_key, lambda d: synth_stage(d, demo), "synth")
    questions, q_key = None, None
    if config.questions:
        from dsanchor.data.questions import QuestionConfig, questions_file

        q_key = {"data": data_key, "questions": dataclasses.asdict(QuestionConfig())}
        questions = stages.run("questions (scene graphs)", out / "questions", q_key,
                               lambda d: questions_file(data, "synth", d / "questions.json"),
                               "questions") / "questions.json"

    model_path = out / "llava" if config.build else SMALL_LLAVA

    def mllm(stage_out: Path, limit: int | None = None, model: bool = True) -> MLLMConfig:
        return MLLMConfig(model_type="llava" if model else None, model_path=str(model_path) if model else None,
                          data=str(data), format="synth", limit=limit, cache=str(out / "grid"), out=str(stage_out),
                          questions=str(questions) if questions and model else None)

    if config.build:
        stages.run("mllm build (small LLaVA)", out / "llava", {"data": data_key, **model_key},
                   lambda d: build_from_dataset(mllm(d, model=False), build, progress=False), "build")
    grid = GridConfig(grid=config.grid)
    ppo = mllm_ppo(timesteps=config.ppo_timesteps, seed=config.seed)
    base_key = {"data": data_key, **model_key, "grid": dataclasses.asdict(grid),
                **({"questions": q_key} if questions else {})}
    tune = mllm_tune(trials=config.tune_trials, seed=config.seed, study_name="demo-mllm",
                     timesteps=config.tune_timesteps)
    stages.run("mllm tune (reward weights)", out / "tune", {**base_key, "tune": dataclasses.asdict(tune),
                                                            "n": config.eval_images},
               lambda d: tune_mllm_reward(mllm(d, config.eval_images), grid, tune, ppo, progress=False), "tune")
    train = MLLMTrainConfig(tuned=str(out / "tune"))
    stages.run("mllm train (grid + PPO)", out / "controller", {**base_key, "ppo": dataclasses.asdict(ppo),
                                                               "n": config.train_images, "tuned": 1},
               lambda d: train_mllm_controller(mllm(d, config.train_images), grid, mllm_reward(), train, ppo,
                                               progress=False), "ppo")
    ev = MLLMEvalConfig(controller=str(out / "controller"), seed=config.seed)
    stages.run("mllm eval", out / "eval", {**base_key, "eval": dataclasses.asdict(ev), "n": config.eval_images,
                                           "ppo": dataclasses.asdict(ppo)},
               lambda d: run_mllm_eval(mllm(d, config.eval_images), grid, ev, progress=False), "eval")
    results = read_json(out / "eval" / "results.json")
    results["demo_timing_s"] = {**stages.times, "total": time.perf_counter() - t0}
    write_json(out / "eval" / "results.json", results)
    (write_items_report if questions else write_mllm_report)(results, out / "eval")
    if stages.record is not None:  # a demo from before RUN_RECORD, now finished with these inputs
        write_json(out / RUN_RECORD, stages.record, indent=1)
    return results
