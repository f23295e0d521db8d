"""How well heads trained on the synthetic generator transfer to real CLEVR renders.

Three ways to get heads, all scored on the same real test renders under exact relevance (every test render
the caption is true of, from the official scene records), text→image:

* ``synth``: trained on the synth store only (its train split, early stopping on its val split);
* ``real``: trained on the real train renders (early stopping on the real val renders);
* ``synth+ft``: the ``synth`` heads fine-tuned on the real train renders (early stopping on real val).

Each is scored coarse-only (g = 0), fine-only (g = 1) and at the fixed g that is best on the val split of
the data it was trained (or fine-tuned) on. The ``synth`` heads are also scored on the synth test split, the
number that transfer is measured against. Every head is trained with :func:`dsanchor.stages.align_stage`,
the function ``dsanchor align`` runs (``--init`` for the fine-tuning). Differences between rows come with a
95% interval from the bootstrap over real test renders (each with all its captions) and training seeds.

Usage (the stores must come from the same encoder config):

    dsanchor demo --out runs/demo                                  # or any synth store
    dsanchor run --data ../shared/data/real/clevr --format clevr --out runs/real_clevr
    python scripts/clevr_transfer.py --synth runs/demo/features --real runs/real_clevr/features \\
        --seeds 3 --out runs/clevr_transfer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dsanchor.files import write_json

ROWS = ("synth", "real", "synth+ft")
SCORINGS = ("coarse", "fine", "fixed_best")


def _view(heads, store, split):
    from dsanchor.eval.views import prepare_view
    from dsanchor.state import StateConfig

    return prepare_view(heads, store.images(split), store.texts(split), StateConfig())


def _score(heads, test_view, val_view) -> tuple[dict[str, torch.Tensor], float]:
    """Per-query exact t2i first ranks of each scoring on the test view, and the fixed g chosen on val."""
    from dsanchor.eval.methods import EvalConfig, fixed_g, query_ranks, select_fixed_g

    g_best, _ = select_fixed_g(val_view, EvalConfig())
    gs = {"coarse": 0.0, "fine": 1.0, "fixed_best": g_best}
    if test_view.exact is None:
        raise SystemExit("the test store has no scene graphs; exact relevance needs CLEVR scenes")
    return {name: query_ranks(test_view, fixed_g(test_view, g), test_view.exact)["t2i"] for name, g in gs.items()}, \
        g_best


def _kinds(view) -> dict[str, torch.Tensor]:
    """(T,) masks of the test captions by the kind of fact they state (object, count, relation, ...)."""
    types = [f.get("type", "?") if f else "?" for f in view.texts.facts]
    return {k: torch.tensor([t == k for t in types]) for k in sorted(set(types))}


def _same_size(heads, store, n: int, val_view, seed: int, draws: int = 20) -> dict[str, float]:
    """fixed_best on galleries of ``n`` synth test images (``draws`` random subsets): a reference at the
    real test split's gallery size, since recall falls as the gallery grows."""
    from dsanchor.eval.methods import EvalConfig, fixed_g, query_ranks, select_fixed_g
    from dsanchor.eval.views import prepare_view, subset
    from dsanchor.metrics.retrieval import chance_recall
    from dsanchor.state import StateConfig

    g, _ = select_fixed_g(val_view, EvalConfig())
    images, texts = store.images("test"), store.texts("test")
    gen = torch.Generator().manual_seed(1000 + seed)
    r1, r10, ch = [], [], []
    for _ in range(draws):
        keep = torch.zeros(len(images), dtype=torch.bool)
        keep[torch.randperm(len(images), generator=gen)[:n]] = True
        view = prepare_view(heads, *subset(images, texts, keep), StateConfig())
        r = query_ranks(view, fixed_g(view, g), view.exact)["t2i"]
        r1.append(float(r.eq(1).double().mean()))
        r10.append(float(r.le(10).double().mean()))
        ch.append(chance_recall(view.exact, (1,))["R@1"])
    return {"R@1": sum(r1) / draws, "R@10": sum(r10) / draws, "chance_R@1": sum(ch) / draws}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", required=True, help="synth feature store (e.g. runs/demo/features)")
    p.add_argument("--real", required=True, help="real CLEVR feature store with train/val/test splits")
    p.add_argument("--out", required=True, help="folder for the heads, transfer.json and transfer.md")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=24, help="maximum epochs of each head training")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--against", default=None, help="another finished --out on the same real store: adds this run "
                                                    "minus that one per row (fixed_best), with its interval")
    return p


def _synth_at_synth(heads, synth, real_test, val, seed: int, ranks: dict, same_size: list, by_kind: dict) -> None:
    """The synth heads on the synth test split (and on a subset the size of the real test), added to the tallies."""
    synth_test = _view(heads, synth, "test")
    r, _ = _score(heads, synth_test, val)
    for s in SCORINGS:
        ranks["synth@synth"][s].append(r[s])
    same_size.append(_same_size(heads, synth, len(real_test.images), val, seed))
    hits_s = ranks["synth@synth"]["fixed_best"][-1].eq(1).double()
    for kind, sel in _kinds(synth_test).items():
        if sel.any():
            by_kind.setdefault("synth@synth", {}).setdefault(kind, []).append(float(hits_s[sel].mean()))


def _save_ranks(out: Path, ranks: dict, real_test) -> None:
    from safetensors.torch import save_file

    from dsanchor.eval.compare import query_clusters

    save_file({**{f"{row}.{sc}": torch.stack(rs).to(torch.int32) for row, by in ranks.items() for sc, rs in by.items()},
               "cluster": query_clusters(real_test)["t2i"]}, str(out / "ranks.safetensors"))


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from dsanchor.align.heads import AlignConfig, AlignmentHeads
    from dsanchor.align.train import AlignTrainConfig
    from dsanchor.features.store import FeatureStore
    from dsanchor.run import quiet_progress
    from dsanchor.stages import align_stage

    quiet_progress()
    out = Path(args.out)
    synth, real = FeatureStore(args.synth), FeatureStore(args.real)
    if synth.dims != real.dims:
        raise SystemExit(f"the stores have different feature sizes ({synth.dims} vs {real.dims}); extract both "
                         "with the same encoder config")
    ranks: dict[str, dict[str, list[torch.Tensor]]] = {r: {s: [] for s in SCORINGS} for r in (*ROWS, "synth@synth")}
    chosen: dict[str, list[float]] = {r: [] for r in ROWS}
    real_test, same_size, by_kind, kind_n = None, [], {}, {}
    for seed in range(args.seeds):
        sd = out / f"seed{seed}"
        train = AlignTrainConfig(epochs=args.epochs, seed=seed)
        folders = {"synth": (args.synth, None), "real": (args.real, None), "synth+ft": (args.real, sd / "synth")}
        for row, (feats, init) in folders.items():
            print(f"seed {seed}: training {row} heads", file=sys.stderr, flush=True)
            align_stage(feats, sd / row, AlignConfig(), train, init=init)
        for row in ROWS:
            heads = AlignmentHeads.from_pretrained(sd / row)
            real_test = _view(heads, real, "test")
            val = _view(heads, synth if row == "synth" else real, "val")
            r, g = _score(heads, real_test, val)
            chosen[row].append(g)
            for s in SCORINGS:
                ranks[row][s].append(r[s])
            if row == "synth":
                _synth_at_synth(heads, synth, real_test, val, seed, ranks, same_size, by_kind)
            hits = ranks[row]["fixed_best"][-1].eq(1).double()  # (Q,) real test, this seed
            for kind, sel in _kinds(real_test).items():
                by_kind.setdefault(row, {}).setdefault(kind, []).append(float(hits[sel].mean()))
                kind_n[kind] = int(sel.sum())
    table = summarise(ranks, chosen, same_size, by_kind, kind_n, synth, real, real_test, args.seeds)
    _save_ranks(out, ranks, real_test)
    if args.against:
        table["against"] = {"run": args.against, **against(out, Path(args.against))}
    write_json(out / "transfer.json", table)
    md = markdown(table)
    (out / "transfer.md").write_text(md)
    print(md)
    return table


def against(this: Path, other: Path) -> dict:
    """Per row, this run's fixed_best minus the other run's on the same real test queries (R@1, R@10), with
    the bootstrap over test images and seeds; e.g. two generator versions."""
    from safetensors.torch import load_file

    from dsanchor.eval.compare import cluster_bootstrap, query_metric

    a, b = load_file(str(this / "ranks.safetensors")), load_file(str(other / "ranks.safetensors"))
    if not torch.equal(a["cluster"], b["cluster"]):
        raise SystemExit(f"{other} was scored on other test queries; compare runs on the same real store")
    out = {}
    for row in ("synth", "synth+ft"):
        for m in ("R@1", "R@10"):
            key = f"{row}.fixed_best"
            out[f"{row}.{m}"] = cluster_bootstrap(query_metric(a[key], m) - query_metric(b[key], m), a["cluster"])
    return out


def summarise(ranks, chosen, same_size, by_kind, kind_n, synth, real, real_test, seeds: int) -> dict:
    """transfer.json: recalls per row and scoring (mean and std over seeds), the references and the
    differences with their image-level intervals."""
    from dsanchor.eval.compare import cluster_bootstrap, query_clusters, query_metric
    from dsanchor.metrics.retrieval import chance_recall

    table: dict = {"n_test_images": len(real_test.images), "n_test_captions": len(real_test.texts),
                   "n_train_images": len(real.images("train")), "n_val_images": len(real.images("val")),
                   "n_synth_train_images": len(synth.images("train")), "seeds": seeds,
                   "chance": chance_recall(real_test.exact, (1, 10)), "rows": {}, "differences": {}}
    for row, by in ranks.items():
        table["rows"][row] = {}
        for s, rs in by.items():
            st = torch.stack(rs)  # (S, Q)
            cell = {}
            for m in ("R@1", "R@10"):
                per_seed = query_metric(st, m).mean(1)
                cell[m] = float(per_seed.mean())
                cell[f"{m}_std"] = float(per_seed.std(unbiased=False)) if seeds > 1 else 0.0
            table["rows"][row][s] = cell
        if row in chosen:
            table["rows"][row]["g"] = chosen[row]
    table["synth_same_size"] = {m: sum(d[m] for d in same_size) / len(same_size) for m in ("R@1", "R@10", "chance_R@1")}
    table["by_fact_type"] = {row: {k: sum(v) / len(v) for k, v in kinds.items()} for row, kinds in by_kind.items()}
    table["fact_type_n"] = kind_n
    cluster = query_clusters(real_test)["t2i"]
    for a, b in (("synth+ft", "real"), ("synth+ft", "synth"), ("real", "synth")):
        for m in ("R@1", "R@10"):
            diff = query_metric(torch.stack(ranks[a]["fixed_best"]), m) - query_metric(
                torch.stack(ranks[b]["fixed_best"]), m)
            table["differences"][f"{a} − {b}.{m}"] = cluster_bootstrap(diff, cluster)
    return table


def markdown(t: dict) -> str:
    def cell(c: dict, m: str) -> str:
        return f"{c[m]:.3f} ± {c[m + '_std']:.3f}"

    names = {"synth": "trained on synth, tested on real", "real": "trained on real, tested on real",
             "synth+ft": "synth, then fine-tuned on real; tested on real",
             "synth@synth": "trained on synth, tested on synth (reference)"}
    lines = [f"Real CLEVR test split: {t['n_test_images']} renders, {t['n_test_captions']} captions (exact "
             f"relevance, text→image); real train {t['n_train_images']}, val {t['n_val_images']} renders; synth "
             f"train {t['n_synth_train_images']} scenes; mean ± std over {t['seeds']} training seeds. "
             f"Chance (random ranking) on the real test split: R@1 {t['chance']['R@1']:.3f}, R@10 "
             f"{t['chance']['R@10']:.3f}.", "",
             "| heads | coarse R@1 | fine R@1 | fixed_best R@1 | coarse R@10 | fine R@10 | fixed_best R@10 |",
             "|---|---|---|---|---|---|---|"]
    for row, r in t["rows"].items():
        lines.append(f"| {names[row]} | " + " | ".join(cell(r[s], m) for m in ("R@1", "R@10") for s in SCORINGS)
                     + " |")
    ss = t["synth_same_size"]
    lines += ["", f"On galleries of {t['n_test_images']} synth test scenes (20 random draws per seed), the synth "
              f"heads' fixed_best reaches R@1 {ss['R@1']:.3f} and R@10 {ss['R@10']:.3f} (chance R@1 "
              f"{ss['chance_R@1']:.3f}): the reference at the real test split's gallery size.", ""]
    kinds = list(t["fact_type_n"])
    lines += ["fixed_best R@1 on the real test split by the kind of fact a caption states:", "",
              "| heads | " + " | ".join(f"{k} (n={t['fact_type_n'][k]})" for k in kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for row, by in t["by_fact_type"].items():
        lines.append(f"| {row} | " + " | ".join(f"{by[k]:.3f}" if k in by else "–" for k in kinds) + " |")
    diffs = dict(t["differences"])
    diffs.update({f"this run − {t['against']['run']}: {k}": v for k, v in t.get("against", {}).items() if k != "run"})
    lines += ["", "| difference (fixed_best, real test) | value [95% CI] |", "|---|---|"]
    for k, d in diffs.items():
        star = "**" if d["lo"] > 0 or d["hi"] < 0 else ""
        lines.append(f"| {k} | {star}{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{star} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
