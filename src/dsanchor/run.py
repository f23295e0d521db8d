"""``dsanchor run``: the whole DSA pipeline on any dataset on disk, stage by stage (the demo is this on synth).

Stages and their folders under the output directory:

    features/             feature store (effnet-minilm), from the dataset with its train/val/test splits; its
                          boxes are RunConfig.region_source's (auto: proposals, what new files get, or every
                          grid cell for photos whose objects come from captions)
    seed<S>/heads/        alignment heads
    seed<S>/detector/     hallucination detector (+ POPE)
    seed<S>/tune/         Optuna study over the reward (SQLite) and its objective plot
    seed<S>/ppo/          PPO retrieval controller
    seed<S>/caption/      caption decoder, its controllers and caption metrics
    seed<S>/eval/         retrieval evaluation -> results.json of that seed
    results.json, report.md, *.png   merged over seeds

Each stage writes ``.stage.json`` with the configuration it ran with. On a rerun, a stage whose folder holds
the same configuration is reused (and says so), so a crashed run continues where it stopped; extraction and
PPO also resume inside a stage. Features are shared by all seeds; everything trained depends on the seed.
Splits come from a split file, the dataset, or a seeded split (:func:`dsanchor.data.splits.assign_splits`),
which the run announces.
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

from dsanchor.errors import ConfigError
from dsanchor.files import write_json

__all__ = ["REGION_SOURCES", "RunConfig", "Stages", "run_inputs", "run_pipeline", "start_run"]

# the boxes a run trains (and measures) on: the class-agnostic proposals that a new file without annotations
# gets (dsanchor.encoders.regions), or the dataset's annotation boxes. The default is proposals, so that the
# report's numbers are measured the way `search --image`, `caption` and the page work: on the demo (seed 0, 1000
# scenes) heads trained on annotation boxes report exact image→text R@1 0.99 on annotation boxes, yet give
# top-1 exact precision 0.92 [0.87, 0.97] on 100 fresh images (proposals); trained on proposals they report
# 0.935 and give 0.93 [0.88, 0.98], and 0.90 instead of 0.76 of the top 5 captions (near-duplicates collapsed)
# are true (scripts/new_image_precision.py), with text→image R@1 within the run-to-run spread (0.733 vs 0.764
# for dsa_ppo, 0.767 vs 0.744 for fixed_best).
# On photos the proposals are the grid's first cells (no uniform background to find components on), so "grid"
# (every cell of the multi-scale grid) and "union" (components, then every grid cell) are the other choices there
# (dsanchor.stages.region_config); docs/real-data.md compares them on Flickr8k.
REGION_SOURCES = ("auto", "proposals", "annotations", "grid", "union")


@dataclass
class RunConfig:
    """The budget of a whole-pipeline run; every other setting is the library's default."""

    seeds: int = field(default=1, metadata={"help": "training seeds; with several, numbers are mean ± std"})
    align_epochs: int = field(default=24, metadata={"help": "maximum epochs of the alignment heads"})
    detector_epochs: int = field(default=20, metadata={"help": "maximum epochs of the hallucination detector"})
    tune_trials: int = field(default=12, metadata={"help": "Optuna trials over beta/alpha and the clip bounds"})
    tune_workers: int = field(default=1, metadata={"help": "processes sharing the Optuna study"})
    tune_timesteps: int = field(default=8192, metadata={"help": "PPO steps per fold of a tuning trial"})
    ppo_timesteps: int = field(default=65536, metadata={"help": "PPO steps of the final retrieval controller"})
    pair_timesteps: int = field(default=16384, metadata={
        "help": "PPO steps of the per-pair retrieval controller (one text query and its top-M candidates each)"})
    caption_steps: int = field(default=400, metadata={"help": "optimizer steps of the caption decoder"})
    caption_ppo_timesteps: int = field(default=4096, metadata={"help": "PPO steps of the captioning controller"})
    workers: int = field(default=2, metadata={"help": "worker processes for image loading (and data generation)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the random split when the data has none"})
    init_heads: str = field(default="", metadata={
        "help": "saved heads to fine-tune instead of training from scratch, e.g. a synth run's "
                "runs/demo/seed{seed}/heads ({seed} is each seed); empty: from scratch"})
    region_source: str = field(default="auto", metadata={
        "help": "boxes the heads train on and the report measures on: auto (grid for photos without boxes, whose "
                "objects come from their captions; proposals otherwise), proposals (class-agnostic proposals, what "
                "a new file without annotations gets in `search --image`, `caption` and the page) or "
                "annotations (the dataset's boxes where it has them; the report then says its image numbers "
                "overstate what new files get), grid (every cell of the 1x1, 2x2 and 3x3 grids) or union "
                "(components, then every grid cell)"})
    region_stage: str = field(default="auto", metadata={
        "help": "feature map of the effnet-minilm encoder that regions are RoI-aligned from: auto (head, the "
                "1280-d ImageNet map, for photos whose objects come from captions; the encoder's default, stage5, "
                "otherwise), or a stage name (stage1..stage7, head)"})
    object_labels: str = field(default="auto", metadata={
        "help": "objects of the hallucination detector, CHAIR and the hallucination rates: auto (the dataset's "
                "annotations; for a caption-only dataset, the COCO categories its reference captions name), "
                "annotations, or captions"})

    def __post_init__(self):
        from dsanchor.data.caption_objects import OBJECT_LABELS

        if self.region_source not in REGION_SOURCES:
            raise ValueError(f"region_source must be one of {', '.join(REGION_SOURCES)}, got {self.region_source!r}")
        if self.object_labels not in OBJECT_LABELS:
            raise ValueError(f"object_labels must be one of {', '.join(OBJECT_LABELS)}, got {self.object_labels!r}")


RUN_RECORD = ".run.json"  # in a run's folder: the inputs of the run (what --overwrite is needed to change)
RUNTIME_FIELDS = ("workers", "tune_workers")  # RunConfig fields that do not change what a run computes
# RunConfig fields that say how many of something to run, each keyed on its own: `--seeds 3` over a 1-seed run
# adds seeds 1 and 2 and reuses seed 0 (results are merged anew on every run)
COUNT_FIELDS = ("seeds",)
# fields added (or given a new default) later: left out of the inputs at these defaults, so a run recorded before
# them resumes
LATER_FIELDS = {"region_stage": "auto", "object_labels": "auto", "region_source": "auto"}
PREVIOUS_DEFAULTS = {"region_source": "proposals"}  # what a record made before "auto" holds for the same choice


class Stages:
    """Runs stages with reuse and prints one progress line per stage.

    A stage whose folder holds a finished stage of the same key is reused; of another key, it is run afresh
    (its folder removed first), or with ``refuse_other`` refused before anything is written. A folder without
    a finished stage is resumed (extraction and PPO resume inside a stage), or with ``clear_unfinished``
    removed first (it belongs to a run being replaced). :func:`start_run` sets both from the run's inputs.
    """

    def __init__(self, out: Path, total: int, refuse_other: bool = False, clear_unfinished: bool = False):
        self.out, self.total, self.i, self.times = out, total, 0, {}
        self.refuse_other, self.clear_unfinished = refuse_other, clear_unfinished
        self.record: dict[str, Any] | None = None  # inputs to record in RUN_RECORD when the run ends

    def run(self, name: str, folder: Path, key: dict[str, Any], fn: Callable[[Path], Any], timing: str) -> Path:
        self.i += 1
        marker = folder / ".stage.json"
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        label = f"[{self.i}/{self.total}] {name:<28}"
        prev = json.loads(marker.read_text()) if marker.is_file() else None
        if prev is not None and prev.get("key") == digest:
            self.times[timing] = self.times.get(timing, 0.0) + prev["seconds"]
            print(f"{label} reused ({folder}, took {prev['seconds']:.1f}s when it ran)", flush=True)
            return folder
        if prev is not None and self.refuse_other:
            raise ConfigError(f"{folder} holds the stage '{name}' run with other settings "
                              f"({_key_diff(prev.get('config') or {}, key)}); pass a new --out, or --overwrite to "
                              "replace it")
        if prev is not None or (self.clear_unfinished and folder.exists()):
            shutil.rmtree(folder)  # finished with another config, or unfinished of a replaced run: start afresh
        # no marker: a crashed run of this stage; stages that can resume (extraction, PPO) do so
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{label} running ...", flush=True)
        t0 = time.perf_counter()
        fn(folder)
        dt = time.perf_counter() - t0
        self.times[timing] = self.times.get(timing, 0.0) + dt
        write_json(marker, {"key": digest, "config": key, "seconds": dt}, indent=1)
        print(f"{label} done in {dt:.1f}s", flush=True)
        return folder


def _key_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The top-level entries of two keys (or run inputs) that differ: "different ppo, seed"."""
    keys = sorted(k for k in set(old) | set(new) if json.dumps(old.get(k), sort_keys=True, default=str)
                  != json.dumps(new.get(k), sort_keys=True, default=str))
    return "different " + ", ".join(keys) if keys else "a different key"


def run_inputs(data_key: dict[str, Any], fmt: str, splits: str | None, config: Any, **extra: Any) -> dict[str, Any]:
    """What a run's outputs depend on: the data, its format and splits, the config (runtime fields left out) and
    ``extra`` entries, as JSON values."""
    cfg = {k: v for k, v in dataclasses.asdict(config).items()
           if k not in RUNTIME_FIELDS + COUNT_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return json.loads(json.dumps({"data": data_key, "format": fmt, "splits": splits, **cfg, **extra}, default=str))


def _looks_like_run(out: Path) -> bool:
    """Whether ``out`` holds stages of a run written before runs recorded their inputs."""
    return any((p / ".stage.json").is_file() or p.name in ("features", "data") or p.name.startswith("seed")
               for p in out.iterdir() if p.is_dir())


def start_run(out: Path, total: int, inputs: dict[str, Any], overwrite: bool = False) -> Stages:
    """Accept ``out`` for a run with ``inputs`` before anything is written, and the stage runner for it.

    A new or empty folder, or a run of the same inputs (resumed, its finished stages reused), is taken. A run of
    other inputs is refused in one line, nothing changed, unless ``overwrite``: then each stage whose key
    differs is run afresh in its place. A non-empty folder that is not a run is always refused.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; pass a folder as --out")
    record = out / RUN_RECORD
    if not out.is_dir() or not any(out.iterdir()):
        stages = Stages(out, total)
    elif record.is_file():
        old = json.loads(record.read_text())
        # a field left out at its default (LATER_FIELDS) matches what a record before it holds; the stage keys
        # still decide what is reused
        old = {k: v for k, v in old.items() if k not in COUNT_FIELDS
               and not (k in LATER_FIELDS and k not in inputs and v == PREVIOUS_DEFAULTS.get(k, v))}
        if old != inputs and not overwrite:
            raise ConfigError(f"{out} holds a run made with other inputs ({_key_diff(old, inputs)}); pass a new "
                              "--out, or --overwrite to replace it")
        stages = Stages(out, total, clear_unfinished=old != inputs)
    elif _looks_like_run(out):  # a run from before RUN_RECORD: its stages are checked one by one
        stages = Stages(out, total, refuse_other=not overwrite, clear_unfinished=overwrite)
        stages.record = inputs  # recorded when the run ends (a refusal must leave the folder as it was)
        return stages
    else:
        raise ConfigError(f"{out} is not empty and holds no dsanchor run; pass a new --out")
    write_json(record, inputs, indent=1)
    return stages


def quiet_progress() -> None:
    """One line per stage: silence the INFO logs of the library. The progress bars inside a stage (epochs, steps,
    trials; :func:`dsanchor.progress.progress_bar`) show on a terminal and vanish when the stage ends."""
    import logging

    logging.getLogger().setLevel(logging.WARNING)


def _seed_stages(stages: Stages, out: Path, config: RunConfig, seed: int, feat_key: dict, dataset: str,
                 detector: bool = True) -> dict:
    """The trained stages of one seed; each is the library function its command calls (dsanchor.stages),
    with the library's defaults except the budget fields of :class:`RunConfig`. Without ``detector`` (a dataset
    with fewer than two object names, labelled or caption-derived) there is no hallucination detector: the reward
    has no hallucination term and the report no hallucination cells."""
    from dsanchor.align.heads import AlignConfig
    from dsanchor.align.train import AlignTrainConfig
    from dsanchor.captioning import CaptionTrainConfig
    from dsanchor.gate import GateConfig
    from dsanchor.hallucination import DetectorTrainConfig, PopeConfig
    from dsanchor.pairs import PairPPOConfig
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.tune import TuneConfig, read_best
    from dsanchor.stages import align_stage, caption_stage, detector_stage, eval_stage, train_stage, tune_stage

    feats, sd = out / "features", out / f"seed{seed}"
    align = AlignTrainConfig(epochs=config.align_epochs, seed=seed)
    heads = AlignConfig()
    det = DetectorTrainConfig(epochs=config.detector_epochs, seed=seed)
    tune = TuneConfig(trials=config.tune_trials, workers=config.tune_workers, seed=seed, study_name=f"demo-seed{seed}",
                      timesteps=config.tune_timesteps)
    ppo = PPOConfig(timesteps=config.ppo_timesteps, seed=seed, checkpoint_every=max(config.ppo_timesteps // 4, 1024))
    key = {"features": feat_key, "seed": seed, "format": 4}  # 4: heads fit their compositional scorer
    init = config.init_heads.format(seed=seed) if config.init_heads else None
    if init is not None and not Path(init).is_dir():
        raise ConfigError(f"--init-heads: {init} is not a folder of saved heads")
    heads_key = {**key, "align": dataclasses.asdict(align), "heads": dataclasses.asdict(heads),
                 **({"init": _folder_digest(Path(init))} if init else {})}
    stages.run(f"align heads (seed {seed})", sd / "heads", heads_key,
               lambda d: align_stage(feats, d, heads, align, init=init), "align")
    det_key = {**key, "detector": dataclasses.asdict(det)} if detector else {**key, "detector": None}
    hall = sd / "detector" if detector else None
    if detector:
        stages.run(f"hallucination det. (seed {seed})", sd / "detector", det_key,
                   lambda d: detector_stage(feats, d, train=det, pope=PopeConfig(seed=seed)), "detector")
    tune_key = {**heads_key, **det_key, "tune": dataclasses.asdict(tune)}
    stages.run(f"tune reward (seed {seed})", sd / "tune", tune_key,
               lambda d: tune_stage(feats, sd / "heads", hall, d, tune=tune, ppo=ppo), "tune")
    pair = PairPPOConfig(timesteps=config.pair_timesteps, seed=seed)
    ppo_key = {**tune_key, "ppo": dataclasses.asdict(ppo), "pair": dataclasses.asdict(pair)}
    stages.run(f"PPO controllers (seed {seed})", sd / "ppo", ppo_key,
               lambda d: train_stage(feats, sd / "heads", hall, d, read_best(sd / "tune"), ppo=ppo, pair=pair),
               "ppo")
    decoder = CaptionTrainConfig(steps=config.caption_steps, seed=seed)
    cap_key = {**heads_key, **det_key, "steps": config.caption_steps, "ppo_steps": config.caption_ppo_timesteps,
               "decoder": dataclasses.asdict(decoder)}
    stages.run(f"captioning (seed {seed})", sd / "caption", cap_key,
               lambda d: caption_stage(feats, sd, d, config, seed, decoder, detector=detector), "caption")
    eval_key = {**ppo_key, **cap_key}
    stages.run(f"evaluate (seed {seed})", sd / "eval", eval_key,
               lambda d: eval_stage(feats, sd / "heads", d, sd / "ppo", sd / "caption", hall,
                                    gate=GateConfig(seed=seed), dataset=dataset), "eval")
    return json.loads((sd / "eval" / "results.json").read_text())



def _pipeline(out: Path, seed0: dict) -> None:
    """``out/pipeline``: seed 0's parts, with its caption decoder and the fixed g chosen on val."""
    from dsanchor.pipeline import save_pipeline

    sd = out / "seed0"
    det = sd / "detector" if (sd / "detector" / ".stage.json").is_file() else None
    save_pipeline(out / "pipeline", out / "features", sd / "heads", sd / "ppo", det,
                  sd / "caption" / "decoder", fixed_g=seed0["methods"]["fixed_best"]["g"],
                  info={"seed": 0, "run": str(out)}, dataset=seed0.get("dataset"))
    print(f"pipeline: {out / 'pipeline'} (seed 0; `dsanchor index --pipeline {out / 'pipeline'} --images DIR`)",
          flush=True)


def _folder_digest(folder: Path) -> dict:
    """What identifies saved weights for stage reuse: the path and a digest of the files."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return {"path": str(folder.resolve()), "sha256": h.hexdigest()[:16]}


def _extract(samples: list, data: Path, out: Path, config: RunConfig, fmt: str, labels: str) -> None:
    from dsanchor.stages import extract_samples

    extract_samples(samples, data, out, config, fmt, object_labels=labels)


def _load_samples(data: Path, fmt: str, config: RunConfig, splits: str | None) -> tuple[list, str]:
    """The dataset's samples with their splits, and where their object labels come from ("annotations" or
    "captions": :mod:`dsanchor.data.caption_objects`); the loader's notes and the split are printed."""
    from dsanchor.data import create_loader
    from dsanchor.data.caption_objects import label_objects_from_captions, object_labels_of
    from dsanchor.data.splits import assign_splits

    loader = create_loader(fmt, data)
    samples = loader.load()
    for note in getattr(loader, "notes", []):  # e.g. Flickr8k without its test list: dev is the test split
        print(f"    {note}", flush=True)
    samples, how = assign_splits(samples, splits, seed=config.split_seed)
    print(f"    {how}", flush=True)
    labels = object_labels_of(samples, config.object_labels)
    if labels == "captions":
        samples = label_objects_from_captions(samples)
        n = sum(1 for s in samples if s.objects)
        print(f"    no object annotations: objects are the COCO categories the reference captions name "
              f"({n} of {len(samples)} images name one)", flush=True)
    return samples, labels


def run_pipeline(data: str | Path, fmt: str, out_dir: str | Path, config: RunConfig, splits: str | None = None,
                 stages: Stages | None = None, data_key: dict | None = None, dataset: str | None = None,
                 overwrite: bool = False) -> dict:
    """Every stage on the dataset at ``data`` (format ``fmt``), then results.json, report.md and the plots.

    Args:
        splits: a split file (``splits.json`` or Karpathy's ``dataset_coco.json``); else the dataset's own.
        stages: a stage runner that already ran earlier stages (the demo's synth stage); made here if None
            (:func:`start_run`, which refuses an ``out_dir`` holding a run of other inputs).
        data_key: what identifies the data for stage reuse (default: its resolved path and format).
        overwrite: replace a run of other inputs in ``out_dir`` instead of refusing it.
    Returns:
        The merged results.
    """
    from dsanchor.eval.compare import compare_methods, load_hits
    from dsanchor.eval.hardneg import WINS_FILE, merge_wins
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.report.demo_report import write_report
    from dsanchor.report.results import merge_seeds

    quiet_progress()
    out, data = Path(out_dir), Path(data)
    missing = [config.init_heads.format(seed=s) for s in range(config.seeds)
               if config.init_heads and not Path(config.init_heads.format(seed=s)).is_dir()]
    if missing:  # before any stage runs
        raise ConfigError(f"--init-heads: {missing[0]} is not a folder of saved heads")
    data_key = data_key or {"data": str(data.resolve()), "format": fmt}
    stages = stages or start_run(out, 1 + 6 * config.seeds, run_inputs(data_key, fmt, splits, config), overwrite)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    from dsanchor.config import config_to_dict
    from dsanchor.stages import auto_regions, encoder_config

    samples, labels = _load_samples(data, fmt, config, splits)
    config = auto_regions(config, labels)
    print(f"    regions: {config.region_source}, pooled from the encoder's {encoder_config(config).region_stage} "
          "map", flush=True)
    encoder = config_to_dict(encoder_config(config))  # a changed default is another store
    feat_key = {"data": data_key, "encoder": "effnet-minilm", "format": fmt, "splits": splits,
                "split_seed": config.split_seed, "encoder_config": encoder}
    if config.region_source != "annotations":  # runs made before the field (annotation boxes) keep their keys
        feat_key["region_source"] = config.region_source
    if labels == "captions":  # runs with annotations keep their keys
        feat_key["object_labels"] = labels
    detector = len({o.name for s in samples for o in s.objects}) >= 2  # the detector draws negatives among them
    if not detector:
        stages.total -= config.seeds
        print("    fewer than two object names in the dataset: no hallucination detector, and no hallucination "
              "numbers", flush=True)
    stages.run("extract features", out / "features", feat_key,
               lambda d: _extract(samples, data, d, config, fmt, labels), "extract")
    name = dataset or fmt
    per_seed = [_seed_stages(stages, out, config, seed, feat_key, name, detector) for seed in range(config.seeds)]
    times = {k: round(v, 2) for k, v in stages.times.items()}
    times["total"] = round(sum(times.values()), 2)  # every stage's own time, reused ones included
    if len(per_seed) > 1:  # one bootstrap over images and seeds (intervals do not average)
        records, clusters = load_hits([out / f"seed{s}" / "eval" / "hits.safetensors" for s in range(config.seeds)])
        results = merge_seeds(per_seed, compare_methods(records, clusters, n_boot=EvalConfig().n_boot))
        hard = merge_wins([out / f"seed{s}" / "eval" / WINS_FILE for s in range(config.seeds)], EvalConfig().n_boot)
        if hard is not None:  # like the paired differences: one bootstrap over images and seeds
            results["hard_negatives"] = hard
    else:
        results = per_seed[0]
    results["timing_s"] = times
    _pipeline(out, per_seed[0])
    write_json(out / "results.json", results)
    write_report(out, results, config)
    if stages.record is not None:  # a run from before RUN_RECORD, now finished with these inputs
        write_json(out / RUN_RECORD, stages.record, indent=1)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}\n"
          f"this run: {time.perf_counter() - t_start:.1f}s; all stages: {times['total']:.1f}s", flush=True)
    return results
