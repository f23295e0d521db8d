"""How much can any controller that learns g from the val split gain over fine-only on this benchmark?

For every seed of a finished demo run (its heads and its evaluation), on text->image R@K of the test split:

* ``fine`` and ``fixed_best_t2i`` (one g for all queries, chosen on val t2i R@K);
* ``gran_val``: one g per caption granularity (scene / object / relation), each chosen on val. It reads
  the ground-truth granularity label, which no method sees: it is the simplest policy a text-reading
  controller could learn, fit on the same val data that PPO is trained on;
* ``gran_oof`` (with ``--folds F``): the same, chosen on out-of-fold train queries instead (F heads,
  each trained without one fold of train and scored on it), then on those plus val: does more
  controller-training data change the picture?
* ``gran_test``: one g per granularity chosen on test itself: in-sample, an upper bound for any
  granularity-level policy;
* ``dsa_ppo`` (from the run's ``hits.safetensors``) and ``oracle`` (best g per test query).

Each is compared with fine by a paired bootstrap over the test queries (averaged over seeds).
Usage (after ``dsanchor demo --out runs/demo --seeds 3``):

    python scripts/controller_headroom.py --run runs/demo --seeds 3 --folds 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _hits_by_g(view, grid: torch.Tensor, k: int) -> torch.Tensor:
    """(T, G) t2i hit@k of every query at every g of the grid."""
    from dsanchor.eval.compare import query_hits
    from dsanchor.eval.methods import fixed_g

    return torch.stack([query_hits(view, fixed_g(view, float(g)), k)["t2i"] for g in grid], 1)


def _per_granularity_g(hits: torch.Tensor, gran: torch.Tensor, grid: torch.Tensor) -> dict[int, int]:
    """Grid index maximising R@k within each granularity (ties: the larger g, i.e. towards fine)."""
    out = {}
    for c in gran.unique().tolist():
        curve = hits[gran == c].double().mean(0)
        out[c] = int(torch.nonzero(curve == curve.max()).max())
    return out


def _apply(hits_test: torch.Tensor, gran_test: torch.Tensor, choice: dict[int, int]) -> torch.Tensor:
    """(T,) hits of the test queries under a per-granularity choice of grid index."""
    idx = torch.tensor([choice.get(c, hits_test.shape[1] - 1) for c in gran_test.tolist()])
    return hits_test[torch.arange(len(idx)), idx]


def _oof_hits(store, heads, seed: int, folds: int, grid, k: int, state):
    """Out-of-fold (hits by g, granularity) of the train queries: F heads, each blind to its fold."""
    from dsanchor.align.train import AlignTrainConfig, train_heads
    from dsanchor.eval.views import prepare_view
    from dsanchor.experiment import subset

    tr_i, tr_t = store.images("train"), store.texts("train")
    va_i, va_t = store.images("val"), store.texts("val")
    perm = torch.randperm(len(tr_i), generator=torch.Generator().manual_seed(100 + seed))
    fold = torch.empty(len(tr_i), dtype=torch.long)
    fold[perm] = torch.arange(len(tr_i)) % folds
    parts = []
    for f in range(folds):
        fit_i, fit_t = subset(tr_i, tr_t, fold != f)
        h, _ = train_heads(fit_i, fit_t, va_i, va_t, heads.config, AlignTrainConfig(seed=seed))
        view = prepare_view(h, *subset(tr_i, tr_t, fold == f), state)
        parts.append((_hits_by_g(view, grid, k), view.granularity))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="a finished `dsanchor demo` output folder")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=0, help="cross-fit F train folds for gran_oof (0: skip)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--grid", type=int, default=21)
    p.add_argument("--out", default=None, help="JSON output (default RUN/headroom.json)")
    args = p.parse_args(argv)
    from safetensors.torch import load_file

    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.compare import paired_bootstrap
    from dsanchor.eval.methods import g_grid
    from dsanchor.eval.views import prepare_view
    from dsanchor.features.store import FeatureStore
    from dsanchor.state import StateConfig

    run = Path(args.run)
    store = FeatureStore(run / "features")
    grid, state = g_grid(args.grid), StateConfig()
    rows: dict[str, list[torch.Tensor]] = {}
    chosen: list[dict] = []
    names = {0: "scene", 1: "object", 2: "relation"}
    for seed in range(args.seeds):
        heads = AlignmentHeads.from_pretrained(run / f"seed{seed}" / "heads")
        val = prepare_view(heads, store.images("val"), store.texts("val"), state)
        test = prepare_view(heads, store.images("test"), store.texts("test"), state)
        hv, ht = _hits_by_g(val, grid, args.k), _hits_by_g(test, grid, args.k)
        gv, gt = val.granularity, test.granularity
        fixed = int(torch.nonzero(hv.double().mean(0) == hv.double().mean(0).max()).max())
        choices = {"gran_val": _per_granularity_g(hv, gv, grid), "gran_test": _per_granularity_g(ht, gt, grid)}
        if args.folds:
            ho, go = _oof_hits(store, heads, seed, args.folds, grid, args.k, state)
            choices["gran_oof"] = _per_granularity_g(ho, go, grid)
            choices["gran_oof+val"] = _per_granularity_g(torch.cat([ho, hv]), torch.cat([go, gv]), grid)
        seed_rows = {"fine": ht[:, -1], "fixed_best_t2i": ht[:, fixed]}
        seed_rows.update({name: _apply(ht, gt, c) for name, c in choices.items()})
        seed_rows["oracle"] = ht.any(1)
        hits_file = run / f"seed{seed}" / "eval" / "hits.safetensors"
        if hits_file.exists():
            seed_rows["dsa_ppo"] = load_file(str(hits_file))["dsa_ppo.t2i"].bool()
        for name, h in seed_rows.items():
            rows.setdefault(name, []).append(h)
        chosen.append({"seed": seed, "fixed_best_t2i": float(grid[fixed]),
                       **{n: {names[c]: float(grid[i]) for c, i in ch.items()} for n, ch in choices.items()}})
        print(f"seed {seed}: " + ", ".join(f"{n} {float(h.double().mean()):.3f}" for n, h in seed_rows.items()),
              flush=True)
    table = {}
    fine = torch.stack(rows["fine"])
    for name, hs in rows.items():
        h = torch.stack(hs)
        per_seed = h.double().mean(1)
        table[name] = {"R@k": float(per_seed.mean()), "R@k_std": float(per_seed.std(unbiased=False)),
                       "vs_fine": paired_bootstrap(h, fine, n_boot=10_000)}
    out = {"run": str(run), "k": args.k, "seeds": args.seeds, "folds": args.folds, "methods": table,
           "chosen_g": chosen}
    print(f"\n| policy | t2i R@{args.k} (mean ± std over seeds) | − fine [95% CI, paired bootstrap] |\n|---|---|---|")
    for name, r in table.items():
        v = r["vs_fine"]
        print(f"| {name} | {r['R@k']:.3f} ± {r['R@k_std']:.3f} | {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] |")
    print("\nchosen g per seed:", json.dumps(chosen))
    path = Path(args.out) if args.out else run / "headroom.json"
    path.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
