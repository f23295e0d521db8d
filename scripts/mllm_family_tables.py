"""Issue-style tables of several ``dsanchor mllm eval --questions`` runs side by side (data seeds, real renders).

    python scripts/mllm_family_tables.py "seed 0=runs/s0/eval" "seed 1=runs/s1/eval" "CLEVR=runs/clevr/eval"

Prints, in markdown:

1. accuracy per question family and overall for every method of each run (dsa_ppo: mean over PPO seeds);
2. per family the differences ``dsa_ppo − fixed_best`` and ``dsa_ppo − router_loss`` with their 95% bootstrap
   intervals over test images and PPO seeds (bold: the interval excludes 0), for each run;
3. the headroom: ``family_best − fixed_best`` and ``oracle − fixed_best`` the same way (the oracle picks the best
   of the grid's answers per item on its own answer, so it is optimistic);
4. the chosen g: fixed_best's, family_best's per family and dsa_ppo's mean per family.

Runs from before ``oracle − fixed_best`` was computed show an empty cell there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("base", "fixed_best", "family_best", "router_loss", "dsa_ppo", "oracle")


def _cell(d: dict | None) -> str:
    if not d:
        return ""
    s = f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    return f"**{s}**" if d.get("excludes_zero") else s


def _load(spec: str) -> tuple[str, dict]:
    label, _, path = spec.partition("=")
    p = Path(path)
    return label, json.loads((p / "results.json" if p.is_dir() else p).read_text())


def _families(runs: list[tuple[str, dict]]) -> list[str]:
    return sorted({f for _, r in runs for f in r["methods"]["fixed_best"]["by_family"]})


def accuracy_tables(runs: list[tuple[str, dict]]) -> list[str]:
    lines = []
    for label, r in runs:
        methods = [m for m in METHODS if m in r["methods"]]
        lines += [f"**{label}** ({r['n_images']} test images, {r['n_items']} items; fixed_best g = "
                  f"{r['fixed_best_g']:.1f})", "", "| family | n | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for f in _families([(label, r)]):
            n = r["methods"]["fixed_best"]["by_family"][f]["n"]
            lines.append(f"| {f} | {n} | " + " | ".join(
                f"{r['methods'][m]['by_family'][f]['accuracy']:.3f}" for m in methods) + " |")
        lines.append("| **all questions** | | " + " | ".join(
            f"{r['methods'][m]['accuracy']:.3f}" for m in methods) + " |")
        lines.append("")
    return lines


def difference_table(runs: list[tuple[str, dict]], names: tuple[str, ...]) -> list[str]:
    head = [f"{label}: {n}" for label, _ in runs for n in names]
    lines = ["| family | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for f in [*_families(runs), "all questions", "CIDEr-D (caption prompts)", "POPE F1"]:
        cells = []
        for _, r in runs:
            for n in names:
                d = r["differences"].get(n, {})
                key = {"all questions": "accuracy", "CIDEr-D (caption prompts)": "CIDEr", "POPE F1": "POPE_F1"}
                cells.append(_cell(d.get(key[f]) if f in key else d.get("by_family", {}).get(f)))
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return lines


def g_table(runs: list[tuple[str, dict]]) -> list[str]:
    head = [f"{label}: {m}" for label, _ in runs for m in ("family_best", "dsa_ppo")]
    lines = ["| family | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for f in _families(runs):
        cells = []
        for _, r in runs:
            cells.append(f"{r['family_best_g'].get(f, float('nan')):.1f}")
            cell = r["methods"]["dsa_ppo"]["by_family"].get(f, {})
            cells.append(f"{cell['g_mean']:.2f}" if "g_mean" in cell else "")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append("| fixed_best g | " + " | ".join(f"{r['fixed_best_g']:.1f} | " for _, r in runs) + "|")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=DIR (an `mllm eval --questions` output) or LABEL=results.json")
    runs = [_load(s) for s in ap.parse_args().runs]
    print("\n".join(["## Accuracy per family", "", *accuracy_tables(runs),
                     "## dsa_ppo against fixed_best and router_loss (95% bootstrap over test images and PPO seeds)",
                     "", *difference_table(runs, ("dsa_ppo - fixed_best", "dsa_ppo - router_loss")), "",
                     "## Headroom", "", *difference_table(runs, ("family_best - fixed_best", "oracle - fixed_best")),
                     "", "## g chosen per family", "", *g_table(runs)]))


if __name__ == "__main__":
    main()
