"""Pool comparisons over independent benchmarks (demo runs with different ``--data-seed``).

Each run's per-query ranks (``seed*/eval/hits.safetensors``) are read with the test image of every query;
the runs' queries are concatenated (image ids kept distinct per run) and the image-level bootstrap over
images and seeds (:func:`dsanchor.eval.compare.cluster_bootstrap`) is run on each run and on the pool.
Usage:

    dsanchor demo --out runs/fresh3 --data-seed 3 --seeds 3
    python scripts/pool_benchmarks.py --runs runs/fresh3 runs/fresh4 --metric R@1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, help="finished `dsanchor demo` output folders")
    p.add_argument("--pairs", nargs="+", default=["dsa_ppo-fixed_best", "dsa_ppo-gate_grad", "dsa_ppo-fine",
                                                   "dsa_ppo-coarse", "gate_grad-fine"])
    p.add_argument("--protocol", default="exact", choices=("exact", "paired"))
    p.add_argument("--direction", default="t2i", choices=("t2i", "i2t"))
    p.add_argument("--metric", default="R@1", help="R@K or MRR")
    args = p.parse_args(argv)
    from dsanchor.eval.compare import cluster_bootstrap, load_hits, query_metric

    key = f"{args.protocol}.{args.direction}"
    per_run = []
    for run in map(Path, args.runs):
        files = sorted(run.glob("seed*/eval/hits.safetensors"))
        if not files:
            raise SystemExit(f"{run}: no seed*/eval/hits.safetensors (run `dsanchor demo --out {run}` first)")
        per_run.append((run, *load_hits(files)))
    if len({r[1][next(iter(r[1]))][key].shape[0] for r in per_run}) != 1:
        raise SystemExit("the runs have different numbers of seeds; pool runs made with the same --seeds")
    out = {}
    head = f"| {args.protocol} {args.direction} {args.metric} | " + " | ".join(str(r) for r, *_ in per_run)
    print(head + " | pooled |\n|---|" + "---|" * (len(per_run) + 1))
    for pair in args.pairs:
        a, b = pair.split("-", 1)
        cells, diffs, clusters, offset = [], [], [], 0
        for _, records, cl in per_run:
            d = query_metric(records[a][key], args.metric) - query_metric(records[b][key], args.metric)  # (S, Q)
            r = cluster_bootstrap(d, cl[args.direction], 4000)
            cells.append(f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
            diffs.append(d)
            clusters.append(cl[args.direction].long() + offset)
            offset += int(cl[args.direction].max()) + 1
        pooled = cluster_bootstrap(torch.cat(diffs, 1), torch.cat(clusters), 4000)
        out[pair] = pooled
        star = "**" if pooled["lo"] > 0 or pooled["hi"] < 0 else ""  # bold: the interval excludes 0
        cells.append(f"{star}{pooled['diff']:+.3f} [{pooled['lo']:+.3f}, {pooled['hi']:+.3f}]{star} "
                     f"({pooled['n_images']} images, {pooled['n_seeds']} seeds)")
        print(f"| {a} − {b} | " + " | ".join(cells) + " |")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
