"""`dsanchor eval`: every method on the same features and heads -> results.json + a markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from dsanchor.commands._common import add_common, set_threads, write_json, yaml_of
from dsanchor.config import add_config_args, resolve_config, save_resolved


def add_parser(sub) -> None:
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.gate import GateConfig
    from dsanchor.state import StateConfig

    p = sub.add_parser("eval", help="evaluate coarse, fine, fixed_best, gate_grad, dsa_ppo and the oracle")
    p.add_argument("--features", required=True, help="feature store")
    p.add_argument("--heads", required=True, help="alignment heads run (dsanchor align)")
    p.add_argument("--controller", default=None, help="PPO controller (dsanchor train --out DIR); adds dsa_ppo")
    p.add_argument("--captioning", default=None, help="caption run with caption_metrics.json (adds caption columns)")
    p.add_argument("--detector", default=None, help="hallucination detector run (adds POPE)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--out", required=True, help="output directory for results.json and results.md")
    add_common(p)
    add_config_args(p, EvalConfig)
    add_config_args(p, StateConfig)
    add_config_args(p, GateConfig, prefix="gate_")
    p.set_defaults(func=run)


def load_controller(path: str | None):
    from dsanchor.controller import GranularityController

    if path is None:
        return None
    p = Path(path)
    return GranularityController.from_pretrained(p / "controller" if (p / "controller").is_dir() else p)


def run(args) -> int:
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.compare import compare_methods, save_hits
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.eval.run import evaluate_retrieval
    from dsanchor.features.store import FeatureStore
    from dsanchor.gate import GateConfig
    from dsanchor.report.results import build_results, granularity_table, main_table, paired_table
    from dsanchor.state import StateConfig

    set_threads(args)
    y = yaml_of(args)
    cfg = resolve_config(EvalConfig, args, y, section="eval")
    state = resolve_config(StateConfig, args, y, section="state")
    gate = resolve_config(GateConfig, args, y, prefix="gate_", section="gate")
    store = FeatureStore(args.features)
    heads = AlignmentHeads.from_pretrained(args.heads)
    res = evaluate_retrieval(store, heads, cfg, state, load_controller(args.controller), gate, args.split)
    captioning = pope = None
    if args.captioning:
        captioning = json.loads((Path(args.captioning) / "caption_metrics.json").read_text())["methods"]
    if args.detector:
        pope = json.loads((Path(args.detector) / "detector_metrics.json").read_text()).get("test")
    results = build_results(store.manifest.get("dataset", {}).get("name", "unknown"), args.split,
                            res.extra["n_images"], res.extra["n_captions"], [gate.seed], res.methods,
                            captioning, pope, paired=compare_methods(res.hits, cfg.select_k, seed=gate.seed))
    out = Path(args.out)
    save_resolved(out, eval=cfg, state=state, gate=gate, features=args.features, heads=args.heads,
                  controller=args.controller)
    write_json(out / "results.json", results)
    save_hits(out / "hits.safetensors", res.hits)
    write_json(out / "eval_details.json", {"val_curve": res.val_curve, "test_curve": res.test_curve,
                                           "two_stage": res.two_stage, **res.extra})
    table = main_table(results) + "\n\n" + granularity_table(results) + "\n\n" + paired_table(results)
    (out / "results.md").write_text(table + "\n")
    print(table)
    ts = res.two_stage
    print(f"\ntwo-stage (coarse top-{ts['M']} + {ts['method']} re-rank) vs exact, t2i: " +
          ", ".join(f"{k} {ts['exact'][k]:.3f} -> {ts['two_stage'][k]:.3f}" for k in ts["exact"]))
    return 0
