"""Summarise demo runs for the compositional scorer, the per-pair controller and the hard negatives.

For each run folder (``dsanchor demo --seeds S --data-seed D --out RUN``) this prints, over its training seeds:

* relation-caption text→image R@1 (exact) at the best fixed g with every caption scored by the single region
  pool (before, recomputed here from the stored features and heads) and with the compositional scorer (after),
  and object and scene captions likewise;
* text→image R@1 / R@10 (exact) of every method, mean ± std;
* ``dsa_pair − fixed_best``, ``dsa_pair − gate_pair``, ``dsa_pair − dsa_ppo`` (the query-only controller) and
  ``dsa_ppo − fixed_best`` with the run's bootstrap over test images and training seeds;
* hard-negative accuracy per type and method, with its interval.

With ``--pool RUN RUN``, the differences are also pooled over those runs (their test queries concatenated, each
image its own cluster; training seeds stacked).

    python scripts/relations_summary.py runs/rd0 runs/rd1 runs/rd2 --pool runs/rd1 runs/rd2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PAIRS = (("dsa_pair", "fixed_best"), ("dsa_pair", "gate_pair"), ("dsa_pair", "dsa_ppo"), ("dsa_ppo", "fixed_best"),
         ("gate_pair", "fixed_best"))
METHODS = ("coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "gate_pair", "dsa_pair", "oracle")


def _seeds(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("seed*") if (p / "eval" / "results.json").is_file())


@torch.no_grad()
def before_after(run: Path) -> dict:
    """Exact text→image R@1 per caption granularity at the best fixed g, single pool vs compositional scorer."""
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.eval.methods import EvalConfig, fixed_g, query_ranks, select_fixed_g
    from dsanchor.eval.views import prepare_view
    from dsanchor.features.store import FeatureStore
    from dsanchor.features.types import GRANULARITY_CODES
    from dsanchor.relations import RelationConfig
    from dsanchor.state import StateConfig

    store = FeatureStore(run / "features")
    out: dict = {"single": {}, "composed": {}}
    for sd in _seeds(run):
        heads = AlignmentHeads.from_pretrained(sd / "heads")
        for name, rel in (("single", RelationConfig()), ("composed", heads.relation_config)):
            val = prepare_view(heads, store.images("val"), store.texts("val"), StateConfig(), store.encode_texts, rel)
            test = prepare_view(heads, store.images("test"), store.texts("test"), StateConfig(), store.encode_texts,
                                rel)
            g, _ = select_fixed_g(val, EvalConfig())
            ranks = query_ranks(test, fixed_g(test, g))["t2i"]
            for gran, code in GRANULARITY_CODES.items():
                sel = test.granularity == code
                out[name].setdefault(gran, []).append(float((ranks[sel] <= 1).double().mean()))
            out[name].setdefault("all", []).append(float((ranks <= 1).double().mean()))
            out[name].setdefault("g", []).append(g)
    return out


def _ms(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _ci(c: dict) -> str:
    s = f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"
    return f"**{s}**" if c["lo"] > 0 or c["hi"] < 0 else s


def pooled(runs: list[Path], n_boot: int = 2000) -> dict:
    """Differences pooled over several benchmarks: queries concatenated, clusters offset, seeds stacked."""
    from dsanchor.eval.compare import compare_methods, load_hits

    recs, clus = [], []
    for run in runs:
        r, c = load_hits([sd / "eval" / "hits.safetensors" for sd in _seeds(run)])
        recs.append(r)
        clus.append(c)
    methods = set.intersection(*(set(r) for r in recs))
    records, clusters, offset = {m: {} for m in methods}, {}, {"t2i": 0, "i2t": 0}
    for r, c in zip(recs, clus, strict=True):
        for d in ("t2i", "i2t"):
            clusters.setdefault(d, []).append(c[d] + offset[d])
            offset[d] += int(c[d].max()) + 1
        for m in methods:
            for key, v in r[m].items():
                records[m].setdefault(key, []).append(v)
    records = {m: {k: torch.cat(v, dim=1) for k, v in keys.items()} for m, keys in records.items()}
    clusters = {d: torch.cat(v) for d, v in clusters.items()}
    return compare_methods(records, clusters, pairs=PAIRS, n_boot=n_boot)


def summarise(run: Path) -> tuple[dict, list[str]]:
    res = json.loads((run / "results.json").read_text())
    ba = before_after(run)
    lines = [f"## {run} ({len(_seeds(run))} training seeds)", ""]
    lines += ["| caption kind | exact t2i R@1, single pool | with the compositional scorer |", "|---|---|---|"]
    for gran in ("relation", "object", "scene", "all"):
        lines.append(f"| {gran} | {_ms(ba['single'][gran])} | {_ms(ba['composed'][gran])} |")
    rel = res.get("relations", {})
    lines += ["", f"compositional scorer fit on val: mix {rel.get('mix')}, weight {rel.get('weight')} (mean over "
              "seeds); fixed g single / composed: " + f"{_ms(ba['single']['g'])} / {_ms(ba['composed']['g'])}", ""]
    lines += ["| method | exact t2i R@1 | R@10 | exact i2t R@1 |", "|---|---|---|---|"]
    for m in METHODS:
        row = res["methods"].get(m)
        if row is None:
            continue
        et, ei = row["exact"]["t2i"], row["exact"]["i2t"]
        lines.append(f"| {m} | {et['R@1']:.3f} ± {et.get('R@1_std', 0):.3f} | {et['R@10']:.3f} ± "
                     f"{et.get('R@10_std', 0):.3f} | {ei['R@1']:.3f} ± {ei.get('R@1_std', 0):.3f} |")
    lines += ["", "| difference | exact t2i R@1 | exact t2i R@10 |", "|---|---|---|"]
    pairs = res.get("paired", {}).get("pairs", {})
    for a, b in PAIRS:
        p = pairs.get(f"{a}-{b}", {}).get("exact", {}).get("t2i")
        if p:
            lines.append(f"| {a} − {b} | {_ci(p['R@1'])} | {_ci(p['R@10'])} |")
    hard = res.get("hard_negatives")
    if hard:
        from dsanchor.eval.hardneg import accuracy_table

        lines += ["", f"hard negatives ({hard['n_items']} items, {hard['n_images']} test scenes):", "",
                  *accuracy_table(hard)]
    return {"results": {k: res[k] for k in ("methods", "paired", "hard_negatives", "relations") if k in res},
            "before_after": ba}, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--pool", nargs="*", type=Path, default=[])
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    out = {}
    for run in a.runs:
        out[str(run)], lines = summarise(run)
        print("\n".join(lines) + "\n")
    if a.pool:
        p = pooled(a.pool)
        out["pooled"] = p
        print(f"## pooled over {', '.join(map(str, a.pool))}\n\n| difference | exact t2i R@1 | exact t2i R@10 |\n"
              "|---|---|---|")
        for name, row in p["pairs"].items():
            t = row["exact"]["t2i"]
            print(f"| {name.replace('-', ' − ')} | {_ci(t['R@1'])} | {_ci(t['R@10'])} |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
