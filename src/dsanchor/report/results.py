"""results.json in the DESIGN.md schema, and the markdown tables made from it."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["METHOD_ORDER", "build_results", "merge_seeds", "main_table", "granularity_table", "paired_table"]

METHOD_ORDER = ("coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "oracle")


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


def _merge(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, dict):
        out = {}
        for k in first:
            vals = [it[k] for it in items if isinstance(it, dict) and k in it]
            if len(vals) != len(items):
                continue
            merged = _merge(vals)
            out[k] = merged
            if isinstance(first[k], (int, float)) and not isinstance(first[k], bool) and len(items) > 1:
                out[f"{k}_std"] = _mean_std([float(v) for v in vals])[1]
        return out
    if isinstance(first, (int, float)) and not isinstance(first, bool):
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


def main_table(results: dict) -> str:
    """Table 1 layout: methods as rows."""
    enc = results.get("overhead", {}).get("encoder_ms")
    head = ("| method | t2i R@1 | t2i R@10 | i2t R@10 | BLEU-4 | CIDEr (raw) | CHAIR_i | CHAIR_s | "
            "hall t2i | hall i2t | ms/query | overhead % |")
    lines = [head, "|" + "---|" * 12]
    for name in METHOD_ORDER:
        row = results["methods"].get(name)
        if row is None:
            continue
        t2i, i2t = row.get("t2i", {}), row.get("i2t", {})
        ms = row.get("ms_per_query")
        over = f"{100.0 * (ms - results['methods']['fine']['ms_per_query']) / enc:.2f}" if (
            enc and ms is not None and name in ("gate_grad", "dsa_ppo")) else "–"
        label = name + (" (upper bound)" if name == "oracle" else "") + (
            f" (g={row['g']:.2f})" if name == "fixed_best" and "g" in row else "")
        lines.append(f"| {label} | {_fmt(t2i, 'R@1')} | {_fmt(t2i, 'R@10')} | {_fmt(i2t, 'R@10')} | "
                     f"{_fmt(row, 'BLEU-4')} | {_fmt(row, 'CIDEr')} | {_fmt(row, 'CHAIR_i')} | "
                     f"{_fmt(row, 'CHAIR_s')} | "
                     f"{_fmt(row, 'hall_t2i')} | {_fmt(row, 'hall_i2t')} | {_fmt(row, 'ms_per_query', digits=4)} | "
                     f"{over} |")
    return "\n".join(lines)


def granularity_table(results: dict) -> str:
    """Text-to-image R@10 and mean g per caption granularity."""
    grans = ("scene", "object", "relation")
    lines = ["| method | " + " | ".join(f"{g} R@10 | {g} mean g" for g in grans) + " |",
             "|---|" + "---|---|" * len(grans)]
    for name in METHOD_ORDER:
        row = results["methods"].get(name)
        if row is None:
            continue
        cells = []
        for g in grans:
            r = row.get("by_granularity", {}).get(g, {})
            cells += [_fmt(r, "t2i_R@10"), _fmt(r, "mean_g", digits=2)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(results: dict) -> str:
    """Paired differences of R@K with their bootstrap intervals (``results["paired"]``)."""
    paired = results.get("paired")
    if not paired:
        return ""
    k, level = paired["k"], int(round(100 * paired["level"]))
    lines = [f"| comparison | t2i R@{k} diff [{level}% CI] | p(diff <= 0) | "
             f"i2t R@{k} diff [{level}% CI] | p(diff <= 0) |",
             "|---|---|---|---|---|"]
    for name, dirs in paired["pairs"].items():
        cells = []
        for d in ("t2i", "i2t"):
            r = dirs[d]
            spread = f" (seed std {r['diff_std']:.3f})" if "diff_std" in r else ""
            cells += [f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]{spread}", f"{r['p_le_0']:.3f}"]
        lines.append(f"| {name.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
