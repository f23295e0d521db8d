"""``dsanchor hallucination``: train and evaluate the object-hallucination detector on a feature store.

    dsanchor hallucination train --features FEATS --out DIR [--config YAML] [config flags]
    dsanchor hallucination eval  --features FEATS --hall-detector DIR [--split test] [--out POPE.json]

``train`` writes the detector (safetensors + JSON config), the resolved config (``config.yaml``,
sections ``detector``, ``detector_train``, ``pope``) and ``detector_metrics.json`` with the val and test
POPE numbers and the training time. ``eval`` prints a POPE table per negative sampling.
"""

from __future__ import annotations

import argparse
import logging

from dsanchor.commands._common import add_common, set_threads, write_json, yaml_of
from dsanchor.config import add_config_args, resolve_config
from dsanchor.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_NAME = "detector_metrics.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.hallucination import DetectorConfig, DetectorTrainConfig, PopeConfig

    p = sub.add_parser("hallucination", help="train / evaluate the object-hallucination detector (POPE)")
    hsub = p.add_subparsers(dest="hallucination_command", metavar="ACTION", required=True)

    t = hsub.add_parser("train", help="train the detector on annotated objects and POPE-style negatives")
    t.add_argument("--features", required=True, help="feature store written by `dsanchor extract`")
    t.add_argument("--out", required=True, help="run directory for the detector")
    add_overwrite(t)
    add_common(t)
    add_config_args(t, DetectorConfig, skip=("coarse_dim", "region_dim", "text_dim"))
    add_config_args(t, DetectorTrainConfig)
    add_config_args(t, PopeConfig, prefix="pope_")
    t.set_defaults(func=run_train)

    e = hsub.add_parser("eval", help="POPE accuracy, precision, recall, F1 and yes-ratio of a trained detector")
    e.add_argument("--features", required=True, help="feature store written by `dsanchor extract`")
    e.add_argument("--hall-detector", required=True, help="directory written by `dsanchor hallucination train`")
    e.add_argument("--split", default="test", choices=("train", "val", "test", "all"), help="images to ask about")
    e.add_argument("--out", default=None, help="write the POPE numbers to this JSON file")
    add_common(e)
    add_config_args(e, PopeConfig, prefix="pope_")
    e.set_defaults(func=run_eval)


def format_pope(results: dict[str, dict[str, float]]) -> str:
    """A POPE table, one row per sampling."""
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    lines = [f"{'sampling':<12}" + "".join(f"{k:>10}" for k in keys) + f"{'n':>7}"]
    for s, m in results.items():
        lines.append(f"{s:<12}" + "".join(f"{m[k]:>10.3f}" for k in keys) + f"{int(m['n']):>7}")
    return "\n".join(lines)


def run_train(args: argparse.Namespace) -> int:
    from dsanchor.commands._common import accept_command_out
    from dsanchor.hallucination import DetectorConfig, DetectorTrainConfig, PopeConfig
    from dsanchor.stages import detector_stage

    set_threads(args)
    y = yaml_of(args)
    detector = resolve_config(DetectorConfig, args, y, section="detector")
    train = resolve_config(DetectorTrainConfig, args, y, section="detector_train")
    pope = resolve_config(PopeConfig, args, y, prefix="pope_", section="pope")
    accept_command_out(args, "hallucination train")  # before anything is written
    info = detector_stage(args.features, args.out, detector, train, pope)
    print(f"detector saved to {args.out} ({info['train_time_s']:.1f}s, best epoch {info['best_epoch']})")
    for split in ("val", "test"):
        if split in info:
            print(f"POPE on {split} ({info['n_images'][split]} images):")
            print(format_pope(info[split]))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import HallucinationDetector, PopeConfig, dataset_stats, evaluate_pope

    set_threads(args)
    pope = resolve_config(PopeConfig, args, yaml_of(args), prefix="pope_", section="pope")
    store = FeatureStore(args.features)
    detector = HallucinationDetector.from_pretrained(args.hall_detector)
    vocab = store.object_vocabulary()
    if vocab.embeddings.shape[1] != detector.config.text_dim:
        raise ConfigError(f"{args.hall_detector}: the detector expects {detector.config.text_dim}-d phrase embeddings "
                          f"but {args.features} has {vocab.embeddings.shape[1]}-d; use features of the same encoder")
    images = store.images(None if args.split == "all" else args.split)
    if not any(images.objects):
        raise ConfigError(f"{args.features}: no {args.split} images with ground-truth objects to ask about")
    every = [o for i in range(store.num_shards) for o in store.shard_strings(i)["objects"]]  # (N,) all splits
    results = evaluate_pope(detector, images, vocab, dataset_stats(vocab, every), pope)
    print(f"POPE on {args.split} ({len(images)} images):")
    print(format_pope(results))
    if args.out:
        write_json(args.out, {"split": args.split, "features": str(args.features), "pope": results})
    return 0
