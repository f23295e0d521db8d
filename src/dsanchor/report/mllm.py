"""report.md of ``dsanchor mllm eval`` (and of the demo's MLLM part): the paper's Table 1 layout for one MLLM.

Every number is read from ``results.json``; the reading at the end is computed from the intervals, never
written by hand. A plot of the val and test objective against fixed g is added when matplotlib is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dsanchor.files import atomic_write_text

__all__ = ["write_mllm_report", "mllm_table", "chair_notes", "pope_table", "fmt", "cell"]

LABELS = {"base": "base (unmodified model)", "fixed_best": "fixed_best (g chosen on val)", "dsa_ppo": "dsa_ppo",
          "oracle": "oracle (upper bound of CIDEr-D − hallucinated share: g per test image on its own references)"}


def fmt(x: Any, nd: int = 3) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def cell(d: dict[str, Any], key: str, nd: int = 3) -> str:
    """A cell: the value, with ``± std`` over training seeds where there are several."""
    v, sd = d.get(key), d.get(f"{key}_std")
    return fmt(v, nd) if sd is None else f"{fmt(v, nd)} ± {sd:.{nd}f}"


def mllm_table(results: dict[str, Any]) -> list[str]:
    """The main table: one row per method of ``results["methods"]``, the paper's Table 1 columns."""
    lines = ["| method | g | BLEU-4 | CIDEr-D | CHAIR_i | CHAIR_s | POPE acc | POPE F1 | POPE yes | "
             "t2i R@1 | t2i R@10 | i2t R@1 | i2t R@10 | ms / image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["methods"].items():
        pope = r.get("pope", {}).get("all", {})
        ret = r.get("retrieval", {})
        g = "—" if "g_mean" not in r else (f"{r['g_mean']:.2f}" if r.get("g_std", 0) < 1e-9 else
                                           f"{r['g_mean']:.2f} ± {r['g_std']:.2f}")
        lines.append(
            f"| {LABELS.get(name, name)} | {g} | {cell(r, 'BLEU-4')} | {cell(r, 'CIDEr')} | {cell(r, 'CHAIR_i')} | "
            f"{cell(r, 'CHAIR_s')} | {cell(pope, 'accuracy')} | {cell(pope, 'f1')} | {cell(pope, 'yes_ratio')} | "
            f"{cell(ret.get('t2i', {}), 'R@1')} | {cell(ret.get('t2i', {}), 'R@10')} | "
            f"{cell(ret.get('i2t', {}), 'R@1')} | {cell(ret.get('i2t', {}), 'R@10')} | {cell(r, 'ms_per_image', 1)} |")
    return lines


def chair_notes(results: dict[str, Any]) -> list[str]:
    """Why CHAIR cells are empty (a vocabulary that names none of the objects), and on synth CHAIR with negated
    mentions left out beside the published count of the table."""
    if results.get("chair_vocabulary_matches") is False:
        return ["", f"CHAIR judges no image: the {results['chair_vocabulary']} vocabulary names none of the dataset's "
                    "objects, so its cells are empty (not 0)."]
    kept = [(n, r) for n, r in results["methods"].items() if "CHAIR_i_no_negated" in r]
    if not kept:
        return []
    return ["", "CHAIR with negated mentions left out (\"there are no cubes\" claims no cube; the table has the "
                "published count): " + "; ".join(f"{n} CHAIR_i {cell(r, 'CHAIR_i_no_negated')}, CHAIR_s "
                                                  f"{cell(r, 'CHAIR_s_no_negated')}" for n, r in kept) + "."]


def pope_table(results: dict[str, Any]) -> list[str]:
    """The "POPE by sampling" section: one row per method and sampling (empty when no method has POPE)."""
    rows = [(n, r["pope"]) for n, r in results["methods"].items() if "pope" in r]
    if not rows:
        return []
    lines = ["", "## POPE by sampling", "", "| method | sampling | accuracy | precision | recall | F1 | yes-ratio |",
             "|---|---|---|---|---|---|---|"]
    for n, p in rows:
        for s, m in p.items():
            lines.append(f"| {n} | {s} | {fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                         f"{fmt(m['f1'])} | {fmt(m['yes_ratio'])} |")
    return lines


def _differences(results: dict[str, Any]) -> list[str]:
    lines = ["| difference | CIDEr-D | CHAIR_i | POPE F1 |", "|---|---|---|---|"]
    for name, d in results.get("differences", {}).items():
        cells = []
        for key in ("CIDEr", "CHAIR_i", "POPE_F1"):
            v = d.get(key)
            cells.append("—" if v is None else f"{v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
                         + ("" if v["excludes_zero"] else " (n.s.)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _reading(results: dict[str, Any]) -> list[str]:
    out = []
    for name, d in results.get("differences", {}).items():
        for key, better in (("CIDEr", "higher"), ("CHAIR_i", "lower"), ("POPE_F1", "higher")):
            v = d.get(key)
            if v is None:
                continue
            if not v["excludes_zero"]:
                out.append(f"- {name}, {key}: {v['diff']:+.3f}, interval [{v['low']:+.3f}, {v['high']:+.3f}] "
                           "includes zero: no resolved difference.")
            else:
                good = (v["diff"] > 0) == (better == "higher")
                out.append(f"- {name}, {key}: {v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}], resolved; "
                           f"{'better' if good else 'worse'} ({better} is better).")
    return out


def _plot(results: dict[str, Any], out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(results["grid"], results["val_objective_by_g"], "o-", label="val")
    if "test_objective_by_g" in results:
        ax.plot(results["grid"], results["test_objective_by_g"], "s--", label="test")
    ax.axvline(results["fixed_best_g"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("fixed g")
    ax.set_ylabel("CIDEr-D − hallucinated share")
    ax.legend()
    fig.tight_layout()
    path = out / "objective_vs_g.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_mllm_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``out/report.md`` (and the objective plot) from an ``mllm eval`` results.json; returns its path."""
    out = Path(out)
    lines = [f"# DSA inside {results['model_type']} ({results['model_path']})", "",
             f"{results['n_test_images']} test images of {results['data']} ({results['dataset']}); "
             f"{results['split_note']}.", "",
             "## Table 1 layout", "",
             f"CIDEr-D on its {results['cider_scale']} scale; CHAIR as {results['chair_scale']}s over "
             f"{results['n_judged_chair']} images with annotated objects; POPE over all three samplings "
             f"({sum(results['n_pope_questions'].values())} questions); retrieval with the MLLM's own E5-V embeddings, "
             f"{results['retrieval_protocol'] or 'not run'} relevance over {results['n_captions']} captions.", ""]
    lines += mllm_table(results)
    lines += chair_notes(results)
    if results.get("n_controller_seeds", 1) > 1:
        lines += ["", f"dsa_ppo: mean ± std over {results['n_controller_seeds']} PPO training seeds (one model, "
                      "one grid cache)."]
    lines += ["", "The DSA paper's Table 1 reports LLaVA-1.5, BLIP-2 and Flamingo at 7B+ scale on COCO; those "
              "numbers are not reproduced here. This table has the same rows and columns for the model above, "
              "so the same command on `llava-1.5-7b-hf` gives the comparable row set.", "",
              "## Differences (95% bootstrap interval over test images)", ""]
    lines += _differences(results)
    lines += ["", "## Reading", ""] + (_reading(results) or ["- no differences computed (no controller given)."])
    if results.get("overhead"):
        o = results["overhead"]
        lines += ["", "## Inference overhead", "",
                  f"Captioning: base {o['base_ms_per_image']:.1f} ms / image, dsa_ppo {o['dsa_ppo_ms_per_image']:.1f} "
                  f"ms / image in the same run; the state and controller take {o['controller_ms_per_image']:.2f} ms "
                  f"/ image, {100 * o['controller_share']:.2f}% of dsa_ppo's generation time."]
    lines += pope_table(results)
    plot = _plot(results, out)
    if plot is not None:
        lines += ["", "## Objective against fixed g", "", f"![objective vs g]({plot.name})"]
    t = results.get("timing_s", {})
    lines += ["", "## Time", "", ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) +
              f"; grid generation: val {results['val_grid_seconds']:.1f} s, test {results['test_grid_seconds']:.1f} s."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
