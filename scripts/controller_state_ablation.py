"""Which controller state lets PPO generalise from val to test? Train one PPO controller per state variant.

For every seed of a finished demo run (its heads, detector and tuned alpha, beta), and for every state
variant, PPO is trained on the val split exactly as the demo does (65,536 steps, reciprocal-rank
accuracy) and scored on val (what it was fit on) and test. A variant is ``KIND:K``:

* ``summary:0``: joint-space query vector + first-stage candidate summaries (3 D + 11 values);
* ``query:0``: the query's own encoder features, read by the MLP directly;
* ``query:K``: the same through a K-type codebook (the default is ``query:8``).

Usage (after ``dsanchor demo --out runs/demo --seeds 3``):

    python scripts/controller_state_ablation.py --run runs/demo --seeds 3 \
        --variants summary:0 query:0 query:8 query:24
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="a finished `dsanchor demo` output folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["summary:0", "query:0", "query:8", "query:24"])
    p.add_argument("--timesteps", type=int, default=65_536)
    p.add_argument("--out", default=None, help="JSON output (default RUN/state_ablation.json)")
    args = p.parse_args(argv)
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.compare import paired_bootstrap, query_hits
    from dsanchor.eval.methods import controller_g, fixed_g, retrieval_metrics
    from dsanchor.experiment import rl_view, train_retrieval_controller
    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import HallucinationDetector
    from dsanchor.rl.ppo import PPOConfig
    from dsanchor.rl.reward import AccuracyConfig
    from dsanchor.rl.tune import read_best
    from dsanchor.state import StateConfig

    run = Path(args.run)
    store = FeatureStore(run / "features")
    hits: dict[str, list[torch.Tensor]] = {}
    rows = []
    for seed in range(args.seeds):
        sd = run / f"seed{seed}"
        heads = AlignmentHeads.from_pretrained(sd / "heads")
        det = HallucinationDetector.from_pretrained(sd / "detector")
        reward = read_best(sd / "tune")
        for variant in ["fine", *args.variants]:
            kind, k = ("query", 0) if variant == "fine" else (variant.split(":")[0], int(variant.split(":")[1]))
            state = StateConfig(state_kind=kind, codebook=k)
            val, hall = rl_view(store, heads, state, det, store.images("val"), store.texts("val"))
            test, _ = rl_view(store, heads, state, None, store.images("test"), store.texts("test"))
            if variant == "fine":
                g_val, g_test = fixed_g(val, 1.0), fixed_g(test, 1.0)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    ctrl, _ = train_retrieval_controller(val, hall, reward, AccuracyConfig(dense=True),
                                                         PPOConfig(timesteps=args.timesteps, seed=seed), tmp,
                                                         progress=False)
                g_val, g_test = controller_g(val, ctrl), controller_g(test, ctrl)
            m_val, m_test = retrieval_metrics(val, g_val, (10,)), retrieval_metrics(test, g_test, (10,))
            std_g = {n: round(r["std_g"], 3) for n, r in m_test["by_granularity"].items()}
            row = {"seed": seed, "variant": variant, "val_t2i_R@10": m_val["t2i"]["R@10"],
                   "test_t2i_R@10": m_test["t2i"]["R@10"], "test_i2t_R@10": m_test["i2t"]["R@10"],
                   "mean_g": {n: round(r["mean_g"], 3) for n, r in m_test["by_granularity"].items()},
                   "std_g_within_granularity": std_g}
            rows.append(row)
            hits.setdefault(variant, []).append(query_hits(test, g_test, 10)["t2i"])
            print(json.dumps(row), flush=True)
    fine = torch.stack(hits["fine"])
    summary = {}
    print("\n| state | val t2i R@10 | test t2i R@10 | − fine [95% CI] | g std within a granularity |")
    print("|---|---|---|---|---|")
    for variant in ["fine", *args.variants]:
        rs = [r for r in rows if r["variant"] == variant]
        h = torch.stack(hits[variant])
        v = paired_bootstrap(h, fine)
        summary[variant] = {"val": sum(r["val_t2i_R@10"] for r in rs) / len(rs),
                            "test": sum(r["test_t2i_R@10"] for r in rs) / len(rs), "vs_fine": v,
                            "std_g": sum(sum(r["std_g_within_granularity"].values()) / 3 for r in rs) / len(rs)}
        s = summary[variant]
        print(f"| {variant} | {s['val']:.3f} | {s['test']:.3f} | {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] "
              f"| {s['std_g']:.2f} |")
    out = {"run": str(run), "seeds": args.seeds, "timesteps": args.timesteps, "rows": rows, "summary": summary}
    path = Path(args.out) if args.out else run / "state_ablation.json"
    path.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
