"""Pool paired comparisons over independent benchmarks (demo runs with different ``--data-seed``).

Each run's per-query hits (``seed*/eval/hits.safetensors``) are averaged over its seeds; the queries
of all runs are then concatenated and resampled together (a paired bootstrap over 1,000 x runs queries).
Usage:

    dsanchor demo --out runs/fresh1 --data-seed 1 --seeds 3
    python scripts/pool_benchmarks.py --runs runs/demo runs/fresh1 runs/fresh2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished `dsanchor demo` output folders")
    p.add_argument("--pairs", nargs="+", default=["dsa_ppo-fine", "dsa_ppo-coarse", "dsa_ppo-fixed_best",
                                                   "dsa_ppo-gate_grad", "gate_grad-fine"])
    p.add_argument("--direction", default="t2i", choices=("t2i", "i2t"))
    args = p.parse_args(argv)
    from dsanchor.eval.compare import load_hits, paired_bootstrap

    per_run = []
    for run in map(Path, args.runs):
        files = sorted(run.glob("seed*/eval/hits.safetensors"))
        if not files:
            raise SystemExit(f"{run}: no seed*/eval/hits.safetensors (run `dsanchor demo --out {run}` first)")
        per_run.append((run, load_hits(files)))
    out = {}
    print(f"| comparison ({args.direction} R@10) | " + " | ".join(str(r) for r, _ in per_run) + " | pooled |")
    print("|---|" + "---|" * (len(per_run) + 1))
    for pair in args.pairs:
        a, b = pair.split("-", 1)
        cells, xs, ys = [], [], []
        for _, hits in per_run:
            x = hits[a][args.direction].double().mean(0)  # (Q,) mean over seeds
            y = hits[b][args.direction].double().mean(0)
            r = paired_bootstrap(x, y)
            cells.append(f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
            xs.append(x)
            ys.append(y)
        pooled = paired_bootstrap(torch.cat(xs), torch.cat(ys))
        out[pair] = pooled
        cells.append(f"**{pooled['diff']:+.3f} [{pooled['lo']:+.3f}, {pooled['hi']:+.3f}]** (p(diff <= 0) "
                     f"{pooled['p_le_0']:.3f}, {pooled['n_queries']} queries)")
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
