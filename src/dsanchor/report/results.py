"""results.json in the DESIGN.md schema, and the markdown tables made from it."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["METHOD_ORDER", "build_results", "merge_seeds", "main_table", "caption_table", "granularity_table",
           "paired_table"]

# gate_grad / dsa_ppo: one g per query (the query-only controller); gate_pair / dsa_pair: one g per text query
# and candidate image (dsanchor.pairs), trained by gradient descent / PPO
METHOD_ORDER = ("coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "gate_pair", "dsa_pair", "oracle")


def build_results(dataset: str, split: str, n_images: int, n_captions: int, seeds: list[int],
                  retrieval: dict, captioning: dict | None = None, pope: dict | None = None,
                  overhead: dict | None = None, timing_s: dict | None = None,
                  paired: dict | None = None) -> dict[str, Any]:
    """Assemble one seed's results. A method that did not run is absent, never zero-filled."""
    methods: dict[str, dict] = {}
    for name in METHOD_ORDER:
        row = dict(retrieval.get(name, {}))
        if captioning and name in captioning:  # g and mean_g of captioning get a caption_ prefix
            row.update({(f"caption_{k}" if k in ("g", "mean_g") else k): v for k, v in captioning[name].items()})
        if row:
            methods[name] = row
    out: dict[str, Any] = {"dataset": dataset, "split": split, "n_images": n_images, "n_captions": n_captions,
                           "seeds": seeds, "methods": methods}
    if pope:
        out["pope"] = pope
    if overhead:
        out["overhead"] = overhead
    if timing_s:
        out["timing_s"] = timing_s
    if paired:
        out["paired"] = paired
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _merge(items: list[Any]) -> Any:
    """Numbers: their mean; dicts: merged key by key; anything else, or numbers mixed with other values (a
    controller's g that is constant on one seed and per image on another): the first seed's."""
    first = items[0]
    if isinstance(first, dict):
        out = {}
        for k in first:
            vals = [it[k] for it in items if isinstance(it, dict) and k in it]
            if len(vals) != len(items):
                continue
            merged = _merge(vals)
            out[k] = merged
            if all(_number(v) for v in vals) and len(items) > 1:
                out[f"{k}_std"] = _mean_std([float(v) for v in vals])[1]
        return out
    if all(_number(v) for v in items):
        return _mean_std([float(v) for v in items])[0]
    return first


def merge_seeds(per_seed: list[dict], paired: dict | None = None) -> dict:
    """Mean over seeds, with a sibling ``<key>_std`` for every number (DESIGN.md results.json).

    Bootstrap intervals do not average: ``paired`` (from :func:`dsanchor.eval.compare.compare_methods` on
    the stacked per-seed hits) replaces the per-seed sections; without it they are dropped.
    """
    per_seed = [{k: v for k, v in r.items() if k != "paired"} for r in per_seed]
    merged = _merge(per_seed)
    if paired:
        merged["paired"] = paired
    merged["seeds"] = [s for r in per_seed for s in r["seeds"]]
    for key in ("n_images", "n_captions"):
        merged[key] = per_seed[0][key]
        merged.pop(f"{key}_std", None)
    return merged


def _fmt(row: dict, key: str, scale: float = 1.0, digits: int = 3) -> str:
    if key not in row or row[key] is None:
        return "–"
    s = f"{row[key] * scale:.{digits}f}"
    if f"{key}_std" in row:
        s += f" ± {row[f'{key}_std'] * scale:.{digits}f}"
    return s


def _exact(results: dict) -> bool:
    return any("exact" in row for row in results["methods"].values())


def _label(name: str, row: dict) -> str:
    return name + (" (per-query upper bound)" if name == "oracle" else "") + (
        f" (g={row['g']:.2f})" if name == "fixed_best" and "g" in row else "")


def _overhead(results: dict, name: str, row: dict) -> str:
    enc, ms = results.get("overhead", {}).get("encoder_ms"), row.get("ms_per_query")
    fine = results["methods"].get("fine", {}).get("ms_per_query")
    if enc and ms is not None and fine is not None and name in ("gate_grad", "dsa_ppo"):
        return f"{100.0 * (ms - fine) / enc:.2f}"
    return "–"


def main_table(results: dict) -> str:
    """Retrieval, methods as rows: the exact protocol first where it exists, then the paired (COCO) one."""
    exact = _exact(results)
    head = "| method | "
    if exact:
        head += "exact t2i R@1 | R@5 | R@10 | MeanR | exact i2t R@1 | R@10 | "
    head += ("paired t2i R@1 | R@10 | paired i2t R@1 | R@10 | hall t2i (cov.) | hall i2t (cov.) | ms/query | "
             "overhead % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in METHOD_ORDER:
        row = results["methods"].get(name)
        if row is None:
            continue
        cells = []
        if exact:
            et, ei = row.get("exact", {}).get("t2i", {}), row.get("exact", {}).get("i2t", {})
            cells += [_fmt(et, "R@1"), _fmt(et, "R@5"), _fmt(et, "R@10"), _fmt(et, "MeanR", digits=2),
                      _fmt(ei, "R@1"), _fmt(ei, "R@10")]
        t2i, i2t = row.get("t2i", {}), row.get("i2t", {})
        cells += [_fmt(t2i, "R@1"), _fmt(t2i, "R@10"), _fmt(i2t, "R@1"), _fmt(i2t, "R@10"),
                  f"{_fmt(row, 'hall_t2i')} ({_fmt(row, 'coverage_t2i', digits=2)})",
                  f"{_fmt(row, 'hall_i2t')} ({_fmt(row, 'coverage_i2t', digits=2)})",
                  _fmt(row, "ms_per_query", digits=4), _overhead(results, name, row)]
        lines.append(f"| {_label(name, row)} | " + " | ".join(cells) + " |")
    chance = results.get("chance")
    if chance:  # expected recall of a random ranking (dsanchor.metrics.retrieval.chance_recall); the same for
        # every seed, so no spread is shown
        chance = {p: {d: {k: v for k, v in r.items() if not k.endswith("_std")} for d, r in v.items()
                      if isinstance(r, dict)} for p, v in chance.items() if isinstance(v, dict)}
        cells = []
        if exact:
            et, ei = chance.get("exact", {}).get("t2i", {}), chance.get("exact", {}).get("i2t", {})
            cells += [_fmt(et, "R@1"), _fmt(et, "R@5"), _fmt(et, "R@10"), "–", _fmt(ei, "R@1"), _fmt(ei, "R@10")]
        pt, pi = chance.get("paired", {}).get("t2i", {}), chance.get("paired", {}).get("i2t", {})
        cells += [_fmt(pt, "R@1"), _fmt(pt, "R@10"), _fmt(pi, "R@1"), _fmt(pi, "R@10"), "–", "–", "–", "–"]
        lines.append("| chance (random ranking) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def caption_table(results: dict) -> str:
    """Captioning with the decoder over V'(g), methods as rows."""
    rows = [(n, results["methods"][n]) for n in METHOD_ORDER if "CIDEr" in results["methods"].get(n, {})]
    if not rows:
        return ""
    lines = ["| method | BLEU-4 | CIDEr (raw) | CHAIR_i | CHAIR_s |", "|---|---|---|---|---|"]
    for name, row in rows:
        label = name + (" (upper bound)" if name == "oracle" else "")
        lines.append(f"| {label} | {_fmt(row, 'BLEU-4')} | {_fmt(row, 'CIDEr')} | {_fmt(row, 'CHAIR_i')} | "
                     f"{_fmt(row, 'CHAIR_s')} |")
    return "\n".join(lines)


def granularity_table(results: dict) -> str:
    """Text-to-image recall and mean g per caption granularity (exact R@1 and R@10 where they exist); empty
    when no caption has a granularity label (real captions)."""
    grans = ("scene", "object", "relation")
    if not any(row.get("by_granularity", {}).get(g) for row in results["methods"].values() for g in grans):
        return ""
    keys = (("exact_t2i_R@1", "exact R@1"), ("exact_t2i_R@10", "exact R@10")) if _exact(results) else ()
    keys += (("t2i_R@10", "paired R@10"), ("mean_g", "mean g"))
    lines = ["| method | " + " | ".join(f"{g} {lab}" for g in grans for _, lab in keys) + " |",
             "|---|" + "---|" * (len(grans) * len(keys))]
    for name in METHOD_ORDER:
        row = results["methods"].get(name)
        if row is None:
            continue
        cells = [_fmt(row.get("by_granularity", {}).get(g, {}), k, digits=2 if k == "mean_g" else 3)
                 for g in grans for k, _ in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(r: dict) -> str:
    star = "**" if r["lo"] > 0 or r["hi"] < 0 else ""
    return f"{star}{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]{star}"


def paired_table(results: dict) -> str:
    """Differences between methods with their image-level bootstrap intervals (``results["paired"]``)."""
    paired = results.get("paired")
    if not paired or "pairs" not in paired or "unit" not in paired:
        return ""
    level = int(round(100 * paired["level"]))
    cols = [(p, d, m) for p in ("exact", "paired") for d in ("t2i", "i2t") for m in paired["metrics"]
            if any(p in v and d in v[p] for v in paired["pairs"].values())]
    lines = ["| comparison | " + " | ".join(f"{p} {d} {m} [{level}% CI]" for p, d, m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, row in paired["pairs"].items():
        cells = [_ci(row[p][d][m]) if p in row and d in row[p] else "–" for p, d, m in cols]
        lines.append(f"| {name.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    lines += ["", f"Bold: the {level}% interval excludes 0. Unit of the bootstrap: {paired['unit']} "
              f"({paired['n_boot']} draws, {paired['n_seeds']} seed(s)). {paired['n_comparisons']} comparisons are "
              f"made here; at a {level}% level each, about {paired['n_comparisons'] * (1 - paired['level']):.1f} of "
              f"them would exclude 0 by chance if no method differed. The Bonferroni interval "
              f"(level {100 * paired['bonferroni_level']:.2f}%, `lo_bonf`/`hi_bonf` in results.json) holds for "
              f"all of them at once."]
    return "\n".join(lines)
