"""report.md of ``dsanchor mllm eval --questions``: the methods per question family, and two plots.

Every number is read from ``results.json``; an absent number is an empty cell (—), never 0. Plots (when
matplotlib is there): test accuracy against fixed g, one line per family (``accuracy_vs_g.png``), and the mean g
each method chose per family (``g_per_family.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsanchor.files import atomic_write_text
from dsanchor.report.mllm import cell, pope_table

__all__ = ["write_items_report", "family_table", "caption_table"]

LABELS = {"base": "base (unmodified model)", "fixed_best": "fixed_best (one g, chosen on val)",
          "family_best": "family_best (one g per family, chosen on val; reads the true family: a reference)",
          "router_loss": "router_loss (AVG-LLaVA's supervised router)", "dsa_ppo": "dsa_ppo",
          "oracle": "oracle (best grid g per item on its own answer: an optimistic upper bound)"}


def _interval(v: dict[str, Any] | None) -> str:
    if v is None:
        return "—"
    return f"{v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" + ("" if v["excludes_zero"] else " (n.s.)")


def family_table(results: dict[str, Any]) -> list[str]:
    """Accuracy per question family (rows) and method (columns), the overall accuracy and the false-yes rate."""
    methods = results["methods"]
    families = sorted({f for r in methods.values() for f in r.get("by_family", {})})
    lines = ["| family | n | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for f in families:
        n = results["n_items_by_family"].get(f, 0)
        lines.append(f"| {f} | {n} | " + " | ".join(cell(r.get("by_family", {}).get(f, {}), "accuracy")
                                                     for r in methods.values()) + " |")
    lines.append("| **all questions** | | " + " | ".join(cell(r, "accuracy") for r in methods.values()) + " |")
    lines.append("| false yes (absent object) | | " + " | ".join(cell(r, "false_yes") for r in methods.values()) + " |")
    lines.append("| ms / item | | " + " | ".join(cell(r, "ms_per_item", 1) for r in methods.values()) + " |")
    return lines


def g_table(results: dict[str, Any]) -> list[str]:
    """The mean g each method chose per family (questions and caption prompts)."""
    methods = {m: r for m, r in results["methods"].items() if m != "base"}
    families = sorted(results["n_items_by_family"])
    lines = ["| family | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for f in families:
        cells = [cell({**r.get("by_family", {}), **r.get("captions", {})}.get(f, {}), "g_mean", 2)
                 for r in methods.values()]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return lines


def caption_table(results: dict[str, Any]) -> list[str]:
    """CIDEr-D, CHAIR_i and CHAIR_s per caption prompt and method (on synth also with negated mentions left out)."""
    ref = results.get("chair_vocabulary") == "synth"
    head = "| prompt | method | n | CIDEr-D | CHAIR_i | CHAIR_s |" + (" CHAIR_i (negated out) | CHAIR_s (negated out) |"
                                                                    if ref else "")
    lines = [head, "|---|---|---|---|---|---|" + ("---|---|" if ref else "")]
    for name, r in results["methods"].items():
        for prompt, c in sorted(r.get("captions", {}).items()):
            row = (f"| {prompt} | {name} | {c.get('n', '—')} | {cell(c, 'CIDEr')} | {cell(c, 'CHAIR_i')} | "
                   f"{cell(c, 'CHAIR_s')} |")
            if ref:
                row += f" {cell(c, 'CHAIR_i_no_negated')} | {cell(c, 'CHAIR_s_no_negated')} |"
            lines.append(row)
    return lines if len(lines) > 2 else []


def _differences(results: dict[str, Any]) -> list[str]:
    lines = ["| difference | accuracy | CIDEr-D | false yes | POPE F1 |", "|---|---|---|---|---|"]
    for name, d in results.get("differences", {}).items():
        lines.append(f"| {name} | " + " | ".join(_interval(d.get(k)) for k in ("accuracy", "CIDEr", "false_yes",
                                                                                 "POPE_F1")) + " |")
    diffs = results.get("differences", {})
    families = sorted({f for d in diffs.values() for f in d["by_family"]})
    if families:  # accuracy per family: one column per difference
        lines += ["", "| family | " + " | ".join(diffs) + " |", "|---|" + "---|" * len(diffs)]
        lines += [f"| {f} | " + " | ".join(_interval(d["by_family"].get(f)) for d in diffs.values()) + " |"
                  for f in families]
    return lines


def _plots(results: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for family, curve in sorted(results["test_accuracy_by_g"].items()):
        ax.plot(results["grid"], curve, "o-", ms=3, label=family)
    ax.set_xlabel("fixed g")
    ax.set_ylabel("test accuracy (CIDEr-D for caption prompts)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths = [out / "accuracy_vs_g.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    methods = {m: r for m, r in results["methods"].items() if m != "base"}
    families = sorted(results["n_items_by_family"])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(families)), 3.6))
    width = 0.8 / max(len(methods), 1)
    for k, (m, r) in enumerate(methods.items()):
        cells = {**r.get("by_family", {}), **r.get("captions", {})}
        ax.bar([i + k * width for i in range(len(families))],
               [cells.get(f, {}).get("g_mean", float("nan")) for f in families], width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mean g chosen")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "g_per_family.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write_items_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/report.md`` (and the two plots) from an ``mllm eval --questions`` results.json; returns its path."""
    out = Path(out)
    lines = [f"# DSA inside {results['model_type']} ({results['model_path']}): questions per family", "",
             f"{results['n_items']} items about {results['n_images']} test images of {results['data']} "
             f"({results['dataset']}; {results['split_note']}), from {results['questions']}. fixed_best g = "
             f"{results['fixed_best_g']:.2f}; {results['oracle_note']}.", "",
             "## Accuracy per question family", "", "Exact match of the normalised answer.", ""]
    lines += family_table(results)
    lines += ["", "## Mean g per family", ""] + g_table(results)
    caps = caption_table(results)
    if caps:
        note = ("CHAIR judges no image: the CHAIR vocabulary names none of the dataset's objects, so its cells "
                "are empty." if not results["chair_vocabulary_matches"] else
                f"CHAIR ({results['chair_vocabulary']} vocabulary): {results['chair_negation']}.")
        lines += ["", "## Caption prompts", "", f"CIDEr-D on its {results['cider_scale']} scale. {note}", ""] + caps
    lines += pope_table(results)
    lines += ["", "## Differences (95% bootstrap interval over test images and PPO seeds)", ""] + _differences(results)
    if results.get("overhead"):
        o = results["overhead"]
        lines += ["", "## Inference overhead", "", f"base {o['base_ms_per_item']:.1f} ms / item, dsa_ppo "
                  f"{o['dsa_ppo_ms_per_item']:.1f} ms / item; the state and controller take "
                  f"{o['controller_ms_per_item']:.2f} ms / item, {100 * o['controller_share']:.2f}% of dsa_ppo's time."]
    plots = _plots(results, out)
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Methods: " + "; ".join(f"{m}: {LABELS.get(m, m)}" for m in results["methods"]) + "."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
