"""How much can a controller that learns g from the val split gain over fixed_best on this benchmark?

For every seed of a finished demo run (its heads and its evaluation), on text->image R@K of the test split
under the run's relevance protocol (``exact`` where the data has scene graphs):

* ``fine``, and ``fixed_best`` (the evaluation's own row: one g for all queries chosen on val);
* ``gran_val``: one g per caption granularity (scene / object / relation), each chosen on val by the same
  selection score as fixed_best (mean reciprocal rank). It reads the ground-truth granularity label,
  which no method sees: the simplest policy a text-reading controller could learn from val;
* ``gran_test``: one g per granularity chosen on test itself: in-sample, an upper bound for any
  granularity-level policy;
* ``dsa_ppo`` (from the run's ``hits.safetensors``) and ``oracle`` (best g per test query; an upper bound).

Each is compared with fixed_best by the image-level bootstrap over test images and seeds
(:func:`dsanchor.eval.compare.cluster_bootstrap`). The per-granularity table gives, for each caption kind,
R@K of fixed_best, gran_val and the oracle: where the oracle's headroom lies.

Usage (after ``dsanchor demo --out runs/demo --seeds 3``):

    python scripts/controller_headroom.py --run runs/demo --seeds 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dsanchor.files import write_json


def _ranks_by_g(view, grid: torch.Tensor) -> torch.Tensor:
    """(T, G) text-to-image first-relevant rank of every query at every g of the grid."""
    from dsanchor.eval.methods import fixed_g, query_ranks

    return torch.stack([query_ranks(view, fixed_g(view, float(g)))["t2i"] for g in grid], 1)


def _per_granularity_g(ranks: torch.Tensor, gran: torch.Tensor) -> dict[int, int]:
    """Grid index maximising the mean reciprocal rank within each granularity (ties: the larger g)."""
    out = {}
    for c in gran.unique().tolist():
        curve = (1.0 / ranks[gran == c].double()).mean(0)
        out[c] = int(torch.nonzero(curve == curve.max()).max())
    return out


def _apply(ranks: torch.Tensor, gran: torch.Tensor, choice: dict[int, int]) -> torch.Tensor:
    idx = torch.tensor([choice.get(c, ranks.shape[1] - 1) for c in gran.tolist()])
    return ranks[torch.arange(len(idx)), idx]


def _seed_rows(run: Path, seed: int, store, grid, state) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.views import prepare_view

    heads = AlignmentHeads.from_pretrained(run / f"seed{seed}" / "heads")
    val = prepare_view(heads, store.images("val"), store.texts("val"), state)
    test = prepare_view(heads, store.images("test"), store.texts("test"), state)
    rv, rt = _ranks_by_g(val, grid), _ranks_by_g(test, grid)
    protocol = "exact" if test.exact is not None else "paired"
    hits = load_file(str(run / f"seed{seed}" / "eval" / "hits.safetensors"))
    choices = {"gran_val": _per_granularity_g(rv, val.granularity),
               "gran_test": _per_granularity_g(rt, test.granularity)}
    rows = {"fine": rt[:, -1], "fixed_best": hits[f"fixed_best.{protocol}.t2i"].long()}
    rows.update({name: _apply(rt, test.granularity, c) for name, c in choices.items()})
    if f"dsa_ppo.{protocol}.t2i" in hits:
        rows["dsa_ppo"] = hits[f"dsa_ppo.{protocol}.t2i"].long()
    rows["oracle"] = rt.min(1).values
    names = {0: "scene", 1: "object", 2: "relation"}
    chosen = {n: {names.get(c, str(c)): float(grid[i]) for c, i in ch.items()} for n, ch in choices.items()}
    return rows, chosen, test.granularity, hits["_cluster.t2i"].long()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="a finished `dsanchor demo` output folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--k", type=int, default=1, help="K of text-to-image R@K")
    p.add_argument("--grid", type=int, default=21)
    p.add_argument("--out", default=None, help="JSON output (default RUN/headroom.json)")
    args = p.parse_args(argv)
    from dsanchor.eval.compare import cluster_bootstrap
    from dsanchor.eval.methods import g_grid
    from dsanchor.features.store import FeatureStore
    from dsanchor.state import StateConfig

    run = Path(args.run)
    store = FeatureStore(run / "features")
    grid = g_grid(args.grid)
    rows: dict[str, list[torch.Tensor]] = {}
    chosen = []
    for seed in range(args.seeds):
        seed_rows, ch, gran, cluster = _seed_rows(run, seed, store, grid, StateConfig())
        for name, r in seed_rows.items():
            rows.setdefault(name, []).append((r <= args.k).double())
        chosen.append({"seed": seed, **ch})
        print(f"seed {seed}: " + ", ".join(f"{n} {float((r <= args.k).double().mean()):.3f}"
                                           for n, r in seed_rows.items()), flush=True)
    base = torch.stack(rows["fixed_best"])
    table = {}
    for name, hs in rows.items():
        h = torch.stack(hs)  # (S, T)
        per_seed = h.mean(1)
        by_gran = {n: float(h[:, gran == c].mean()) for c, n in ((0, "scene"), (1, "object"), (2, "relation"))
                   if bool((gran == c).any())}
        table[name] = {"R@k": float(per_seed.mean()), "R@k_std": float(per_seed.std(unbiased=False)),
                       "by_granularity": by_gran, "vs_fixed_best": cluster_bootstrap(h - base, cluster, 4000)}
    out = {"run": str(run), "k": args.k, "seeds": args.seeds, "methods": table, "chosen_g": chosen}
    print(f"\n| policy | t2i R@{args.k} | − fixed_best [95% CI, images and seeds] | scene | object | relation |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        v, g = r["vs_fixed_best"], r["by_granularity"]
        print(f"| {name} | {r['R@k']:.3f} ± {r['R@k_std']:.3f} | {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] | "
              + " | ".join(f"{g.get(n, float('nan')):.3f}" for n in ("scene", "object", "relation")) + " |")
    print("\nchosen g per seed:", json.dumps(chosen))
    path = Path(args.out) if args.out else run / "headroom.json"
    write_json(path, out)
    return out


if __name__ == "__main__":
    main()
