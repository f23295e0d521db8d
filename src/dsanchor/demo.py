"""The whole DSA pipeline on the embedded default (synth data, effnet-minilm), stage by stage.

Stages and their folders under the output directory:

    data/       synthetic CLEVR-style scenes (COCO + CLEVR formats)
    features/   feature store (effnet-minilm)
    seed<S>/heads/        alignment heads
    seed<S>/detector/     hallucination detector (+ POPE)
    seed<S>/tune/         Optuna study over alpha, beta (SQLite)
    seed<S>/ppo/          PPO retrieval controller
    seed<S>/caption/      caption decoder, its controllers and caption metrics
    seed<S>/eval/         retrieval evaluation -> results.json of that seed
    results.json, report.md, *.png   merged over seeds

Each stage writes ``.stage.json`` with the configuration it ran with. On a rerun, a stage whose
folder holds the same configuration is reused (and says so), so a crashed demo continues where it
stopped. Data and features are shared by all seeds; everything trained depends on the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    scenes: int = field(default=1000, metadata={"help": "synthetic scenes (split 60/20/20)"})
    data_seed: int = field(default=0, metadata={"help": "seed of the synthetic scenes (another: a fresh benchmark)"})
    seeds: int = field(default=1, metadata={"help": "training seeds; with several, numbers are mean ± std"})
    image_size: int = field(default=224, metadata={"help": "synthetic image size in pixels"})
    align_epochs: int = field(default=12, metadata={"help": "maximum epochs of the alignment heads"})
    detector_epochs: int = field(default=20, metadata={"help": "maximum epochs of the hallucination detector"})
    tune_trials: int = field(default=6, metadata={"help": "Optuna trials over alpha, beta"})
    tune_workers: int = field(default=1, metadata={"help": "processes sharing the Optuna study"})
    tune_timesteps: int = field(default=8192, metadata={"help": "PPO steps per tuning trial"})
    ppo_timesteps: int = field(default=65536, metadata={"help": "PPO steps of the final retrieval controller"})
    caption_steps: int = field(default=400, metadata={"help": "optimizer steps of the caption decoder"})
    caption_ppo_timesteps: int = field(default=4096, metadata={"help": "PPO steps of the captioning controller"})
    workers: int = field(default=2, metadata={"help": "worker processes for data generation and image loading"})


class _Stages:
    """Runs stages with reuse and prints one progress line per stage."""

    def __init__(self, out: Path, total: int):
        self.out, self.total, self.i, self.times = out, total, 0, {}

    def run(self, name: str, folder: Path, key: dict[str, Any], fn: Callable[[Path], Any], timing: str) -> Path:
        self.i += 1
        marker = folder / ".stage.json"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        label = f"[{self.i}/{self.total}] {name:<28}"
        if marker.is_file() and json.loads(marker.read_text()).get("key") == digest:
            prev = json.loads(marker.read_text())
            self.times[timing] = self.times.get(timing, 0.0) + prev["seconds"]
            print(f"{label} reused ({folder}, took {prev['seconds']:.1f}s when it ran)", flush=True)
            return folder
        if marker.is_file():
            shutil.rmtree(folder)  # finished with another config: start afresh
        # no marker: a crashed run of this stage; stages that can resume (extraction, PPO) do so
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{label} running ...", flush=True)
        t0 = time.perf_counter()
        fn(folder)
        dt = time.perf_counter() - t0
        self.times[timing] = self.times.get(timing, 0.0) + dt
        marker.write_text(json.dumps({"key": digest, "config": key, "seconds": dt}, default=str, indent=1))
        print(f"{label} done in {dt:.1f}s", flush=True)
        return folder


def _quiet_progress() -> None:
    """One line per stage: silence the inner progress bars and INFO logs of the library."""
    import functools
    import logging

    from tqdm import tqdm

    tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    logging.getLogger().setLevel(logging.WARNING)


def run_demo(out_dir: str | Path, config: DemoConfig) -> dict:
    """Run every stage and write results.json, report.md and the plots. Returns the merged results."""
    from dsanchor.demo_stages import (
        caption_stage,
        detector_stage,
        eval_stage,
        extract_stage,
        heads_stage,
        ppo_stage,
        synth_stage,
        tune_stage,
    )
    from dsanchor.eval.compare import compare_methods, load_hits
    from dsanchor.report.demo_report import write_report
    from dsanchor.report.results import merge_seeds
    from dsanchor.state import StateConfig

    _quiet_progress()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(config)
    stages = _Stages(out, 2 + 6 * config.seeds)
    t_start = time.perf_counter()
    data_key = {"scenes": config.scenes, "image_size": config.image_size, "seed": config.data_seed}
    stages.run("synth data", out / "data", data_key, lambda d: synth_stage(d, config), "synth")
    feat_key = {"data": data_key, "encoder": "effnet-minilm"}
    stages.run("extract features", out / "features", feat_key,
               lambda d: extract_stage(out / "data", d, config), "extract")
    per_seed = []
    for seed in range(config.seeds):
        sd = out / f"seed{seed}"
        key = {"features": feat_key, "seed": seed}
        heads_key = {**key, "epochs": cfg["align_epochs"]}
        stages.run(f"align heads (seed {seed})", sd / "heads", heads_key,
                   lambda d, s=seed: heads_stage(out / "features", d, config, s), "align")
        det_key = {**key, "epochs": cfg["detector_epochs"]}
        stages.run(f"hallucination det. (seed {seed})", sd / "detector", det_key,
                   lambda d, s=seed: detector_stage(out / "features", d, config, s), "detector")
        tune_key = {**heads_key, **det_key, "trials": cfg["tune_trials"], "steps": cfg["tune_timesteps"],
                    "state": dataclasses.asdict(StateConfig())}  # the controller's state shapes tuning too
        stages.run(f"tune alpha, beta (seed {seed})", sd / "tune", tune_key,
                   lambda d, s=seed, sd=sd: tune_stage(out / "features", sd, d, config, s), "tune")
        ppo_key = {**tune_key, "steps": cfg["ppo_timesteps"]}
        stages.run(f"PPO controller (seed {seed})", sd / "ppo", ppo_key,
                   lambda d, s=seed, sd=sd: ppo_stage(out / "features", sd, d, config, s), "ppo")
        cap_key = {**heads_key, **det_key, "steps": cfg["caption_steps"], "ppo_steps": cfg["caption_ppo_timesteps"]}
        stages.run(f"captioning (seed {seed})", sd / "caption", cap_key,
                   lambda d, s=seed, sd=sd: caption_stage(out / "features", sd, d, config, s), "caption")
        eval_key = {**ppo_key, **cap_key, "format": 2}  # format 2 writes hits.safetensors
        stages.run(f"evaluate (seed {seed})", sd / "eval", eval_key,
                   lambda d, s=seed, sd=sd: eval_stage(out / "features", sd, d, config, s), "eval")
        per_seed.append(json.loads((sd / "eval" / "results.json").read_text()))
    times = {k: round(v, 2) for k, v in stages.times.items()}
    times["total"] = round(sum(times.values()), 2)  # every stage's own time, reused ones included
    if len(per_seed) > 1:  # one paired bootstrap over the stacked seeds (intervals do not average)
        hits = load_hits([out / f"seed{s}" / "eval" / "hits.safetensors" for s in range(config.seeds)])
        results = merge_seeds(per_seed, compare_methods(hits, per_seed[0]["paired"]["k"]))
    else:
        results = per_seed[0]
    results["timing_s"] = times
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results, config)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}\n"
          f"this run: {time.perf_counter() - t_start:.1f}s; all stages: {times['total']:.1f}s", flush=True)
    return results
