"""`dsanchor eval`: every method on the same features and heads -> results.json + a markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from dsanchor.commands._common import add_common, set_threads, yaml_of
from dsanchor.config import add_config_args, resolve_config


def add_parser(sub) -> None:
    from dsanchor.commands._common import add_overwrite
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.gate import GateConfig
    from dsanchor.state import StateConfig

    p = sub.add_parser("eval", help="evaluate coarse, fine, fixed_best, gate_grad, dsa_ppo, gate_pair, dsa_pair and "
                                    "the oracle, and the compositional hard negatives")
    p.add_argument("--features", required=True, help="feature store")
    p.add_argument("--heads", required=True, help="alignment heads run (dsanchor align)")
    p.add_argument("--controller", default=None, help="PPO controllers (dsanchor train --out DIR); adds dsa_ppo, and "
                                                     "dsa_pair when the run has a per-pair controller")
    p.add_argument("--captioning", default=None, help="caption run with caption_metrics.json (adds caption columns)")
    p.add_argument("--hall-detector", default=None, help="hallucination detector run (adds POPE)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--out", required=True, help="output directory for results.json and results.md")
    add_overwrite(p)
    add_common(p)
    add_config_args(p, EvalConfig)
    add_config_args(p, StateConfig)
    add_config_args(p, GateConfig, prefix="gate_")
    p.set_defaults(func=run)


def run(args) -> int:
    from dsanchor.commands._common import accept_command_out
    from dsanchor.eval.methods import EvalConfig
    from dsanchor.gate import GateConfig
    from dsanchor.report.results import granularity_table, main_table, paired_table
    from dsanchor.stages import eval_stage
    from dsanchor.state import StateConfig

    set_threads(args)
    y = yaml_of(args)
    config = resolve_config(EvalConfig, args, y, section="eval")
    state = resolve_config(StateConfig, args, y, section="state")
    gate = resolve_config(GateConfig, args, y, prefix="gate_", section="gate")
    accept_command_out(args, "eval")  # before anything is written
    results = eval_stage(args.features, args.heads, args.out, args.controller, args.captioning, args.hall_detector,
                         config, state, gate, args.split)
    table = main_table(results) + "\n\n" + granularity_table(results) + "\n\n" + paired_table(results)
    if results.get("hard_negatives"):
        from dsanchor.eval.hardneg import accuracy_table

        table += "\n\ncompositional hard negatives (accuracy [95% interval over test images]):\n\n" + "\n".join(
            accuracy_table(results["hard_negatives"]))
    (Path(args.out) / "results.md").write_text(table + "\n")
    print(table)
    ts = json.loads((Path(args.out) / "eval_details.json").read_text())["two_stage"]
    print(f"\ntwo-stage (coarse top-{ts['M']} + {ts['method']} re-rank) vs exact, t2i: " +
          ", ".join(f"{k} {ts['exact'][k]:.3f} -> {ts['two_stage'][k]:.3f}" for k in ts["exact"]))
    return 0
