"""report.md of the demo: Table 1 layout, per-granularity recall, POPE, timings, plots, and a reading."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dsanchor.report.results import caption_table, granularity_table, main_table, paired_table

__all__ = ["write_report", "reading"]


def _get(row: dict, *keys: str) -> float | None:
    for k in keys:
        if not isinstance(row, dict) or k not in row:
            return None
        row = row[k]
    return row


def _std(row: dict, *keys: str) -> float:
    *path, last = keys
    parent = _get(row, *path) if path else row
    return float(parent.get(f"{last}_std", 0.0)) if isinstance(parent, dict) else 0.0


def _compare(results: dict, a: str, b: str, *keys: str) -> str:
    """'a vs b: +d (exceeds / within the spread over training seeds)'."""
    ra, rb = results["methods"].get(a), results["methods"].get(b)
    va, vb = _get(ra, *keys) if ra else None, _get(rb, *keys) if rb else None
    if va is None or vb is None:
        return f"{a} vs {b}: not available"
    d = va - vb
    spread = _std(ra, *keys) + _std(rb, *keys)
    verdict = ""
    if len(results.get("seeds", [])) > 1:
        verdict = (" — exceeds the spread over training seeds" if abs(d) > spread
                   else " — within the spread over training seeds (not significant)")
    return f"{a} {va:.3f} vs {b} {vb:.3f} ({d:+.3f}{verdict})"


def _proto(results: dict) -> str:
    return "exact" if any("exact" in r for r in results["methods"].values()) else "paired"


def _keys(results: dict, d: str = "t2i") -> tuple[str, ...]:
    return ("exact", d) if _proto(results) == "exact" else (d,)


def _paired(results: dict, a: str, b: str, metric: str = "R@1") -> str:
    """'a − b: +d, 95% CI [lo, hi]: verdict' from results["paired"] (image-level bootstrap)."""
    paired = results.get("paired", {})
    r = paired.get("pairs", {}).get(f"{a}-{b}", {}).get(_proto(results), {}).get("t2i", {}).get(metric)
    if r is None:
        return ""
    verdict = ("the interval is above 0" if r["lo"] > 0 else
               "the interval is below 0" if r["hi"] < 0 else "the interval contains 0 (no significant difference)")
    level = int(round(100 * paired["level"]))
    return f"{a} − {b} {r['diff']:+.3f}, {level}% CI [{r['lo']:+.3f}, {r['hi']:+.3f}]: {verdict}"


def _above(d: float) -> str:
    """'0.020 below' / '0.015 above' / 'level with'."""
    if abs(d) < 5e-4:
        return "level with"
    return f"{abs(d):.3f} {'above' if d > 0 else 'below'}"


def _oracle_line(results: dict) -> str:
    """Where PPO and the per-query oracle stand against the best fixed g, in R@1 points (no ratio of gains)."""
    m, proto, k = results["methods"], _proto(results), _keys(results)
    fb, pp, orc = (_get(m.get(x, {}), *k, "R@1") for x in ("fixed_best", "dsa_ppo", "oracle"))
    if None in (fb, pp, orc):
        return ""
    g = _get(m["fixed_best"], "g")
    best = f"the best fixed g ({fb:.3f}" + (f" at g = {g:.2f}, chosen on val)" if g is not None else ")")
    return (f"Text→image R@1 ({proto}): PPO ({pp:.3f}) is {_above(pp - fb)} {best}, while the per-query oracle "
            f"({orc:.3f}) is {_above(orc - fb)} it. The oracle picks g on each test query after seeing the "
            "answer: an upper bound on what choosing g per query could give, not a method.")


def reading(results: dict) -> list[str]:
    """Plain statements computed from the numbers (no hand-written claims)."""
    m, proto, k = results["methods"], _proto(results), _keys(results)
    lines = [
        f"Text→image R@1 ({proto} protocol): " + _compare(results, "dsa_ppo", "coarse", *k, "R@1") + "; "
        + _compare(results, "dsa_ppo", "fine", *k, "R@1") + ".",
        "Against the strong baselines: " + _compare(results, "dsa_ppo", "fixed_best", *k, "R@1") + "; "
        + _compare(results, "dsa_ppo", "gate_grad", *k, "R@1") + ".",
    ]
    tests = [s for s in (_paired(results, "dsa_ppo", b) for b in ("coarse", "fine", "fixed_best", "gate_grad")) if s]
    if tests:
        lines.append(f"Image-level bootstrap (text→image R@1, {proto}): " + "; ".join(tests) + ".")
    if "dsa_pair" in m:
        lines.append("Per-pair controller (g per text query and candidate image): "
                     + "; ".join(_compare(results, "dsa_pair", b, *k, "R@1") for b in ("fixed_best", "gate_pair",
                                                                                      "dsa_ppo") if b in m) + ".")
        tests = [s for s in (_paired(results, "dsa_pair", b) for b in ("fixed_best", "gate_pair", "dsa_ppo")) if s]
        if tests:
            lines.append(f"Image-level bootstrap (text→image R@1, {proto}): " + "; ".join(tests) + ".")
    oracle = _oracle_line(results)
    if oracle:
        lines.append(oracle)
    gp = _get(m.get("dsa_ppo", {}), "by_granularity")
    if gp:
        parts = [f"{x} {v['mean_g']:.2f}" for x, v in gp.items() if "mean_g" in v]
        lines.append("Mean g picked by PPO per caption granularity: " + ", ".join(parts) + ".")
    if "CIDEr" in m.get("dsa_ppo", {}):
        lines.append("Captioning CIDEr (raw scale): " + _compare(results, "dsa_ppo", "fixed_best", "CIDEr")
                     + "; CHAIR_i " + _compare(results, "dsa_ppo", "fixed_best", "CHAIR_i") + ".")
    ov = results.get("overhead")
    if ov:
        lines.append(f"Controller overhead: state + MLP {ov['controller_ms']:.4f} ms per query vs "
                     f"{ov['encoder_ms']:.3f} ms to encode the query text: {100 * ov['ratio']:.2f}% "
                     f"(the DSA proposal asks for under 5%).")
    return lines


def _pope_table(pope: dict) -> str:
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    lines = ["| sampling | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for s, row in pope.items():
        lines.append(f"| {s} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def _timing_table(t: dict) -> str:
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    return "\n".join(lines)


def _plots(out: Path, results: dict) -> list[tuple[str, str]]:
    from dsanchor.features.store import FeatureStore
    from dsanchor.report.plots import plot_examples, plot_g_distribution, plot_learning_curve, plot_recall_vs_g

    seed_dir = out / "seed0"
    details = json.loads((seed_dir / "eval" / "eval_details.json").read_text())
    g = load_file(str(seed_dir / "eval" / "g.safetensors"))
    store = FeatureStore(out / "features")
    texts, images = store.texts("test"), store.images("test")
    made = []
    if "dsa_ppo.t2i" in g:
        made.append(("g per caption granularity (dsa_ppo, seed 0)", plot_g_distribution(
            g["dsa_ppo.t2i"], texts.granularity, out / "g_by_granularity.png", "PPO controller: g by granularity")))
    made.append(("text→image R@1 against fixed g (seed 0, test)", plot_recall_vs_g(
        details["test_curve"], results["methods"], out / "recall_vs_g.png")))
    curve = seed_dir / "ppo" / "learning_curve.json"
    if curve.is_file():
        made.append(("PPO learning curve (seed 0)", plot_learning_curve(curve, out / "ppo_curve.png")))
    tuning = seed_dir / "tune" / "objective.png"
    if tuning.is_file():
        shutil.copyfile(tuning, out / "tuning_objective.png")
        made.append(("tuning objective over the searched space (seed 0)", out / "tuning_objective.png"))
    if "dsa_ppo.t2i" in g:
        examples, protocol = _examples(store, texts, images, g["dsa_ppo.t2i"], seed_dir)
        made.append((f"example queries (seed 0; frames by the {protocol} protocol)",
                     plot_examples(examples, out / "examples.png", protocol)))
    return [(title, p.name) for title, p in made]


def _examples(store, texts, images, g_t2i: torch.Tensor, seed_dir: Path,
              per_kind: int = 1) -> tuple[list[dict], str]:
    """(examples for :func:`~dsanchor.report.plots.plot_examples`, their protocol): each top image is relevant
    under the exact protocol where the data has scene graphs (the caption is true of it), else the paired one
    (the caption's own image)."""
    from dsanchor.align.heads import AlignmentHeads
    from dsanchor.align.train import embed_images
    from dsanchor.features.types import GRANULARITY_CODES, exact_relevance
    from dsanchor.retrieval import anchored_scores, pair_terms

    heads = AlignmentHeads.from_pretrained(seed_dir / "heads")
    with torch.no_grad():
        t = heads.encode_text(texts.embeddings.float())
        terms = pair_terms(t, embed_images(heads, images), heads.pool_s.item())
        scores = anchored_scores(terms, g_t2i.view(-1, 1))
    root = Path(store.manifest["source"]["root"])
    paths = store.image_paths("test")
    groups = {name: (texts.granularity == code).nonzero().flatten()[:per_kind].tolist()
              for name, code in GRANULARITY_CODES.items()}
    if not any(groups.values()):  # captions without a granularity label (real data): the first few
        groups = {"caption": list(range(min(3 * per_kind, len(texts))))}
    own = texts.image_ids[:, None] == images.image_ids[None, :]  # (T, N)
    exact = exact_relevance(texts, images)  # (T, N) or None
    relevant = own if exact is None else exact
    out = []
    for name, idx in groups.items():
        for q in idx:
            top = scores[q].topk(min(3, len(images))).indices.tolist()
            out.append({"caption": texts.captions[q], "granularity": name, "g": float(g_t2i[q]),
                        "top": [(root / paths[j], bool(relevant[q, j]), bool(own[q, j])) for j in top]})
    return out, "paired" if exact is None else "exact"


def regions_note(regions, test_images) -> str:
    """Which boxes the numbers use, and what a new file gets (``regions``: the store's RegionConfig)."""
    from dsanchor.domain import region_source

    used = region_source(regions, test_images)
    new = (f"the boxes of the detector {regions.detector}" if regions.detector else
           "the same grid cells" if not regions.components else "class-agnostic proposals")
    text = (f"Regions: the heads were trained and every number here measured on **{used}** (V_fine pools "
            f"them). A new image without annotations (`dsanchor search --image`, `dsanchor caption`, an upload "
            f"on the page, `dsanchor index` of a folder) gets {new}.")
    if used == "annotation boxes":
        return text + (" So the image→text numbers below are measured on other boxes than new files get and "
                       "overstate what a new file gets; run with `--region-source proposals` to train and "
                       "measure on what new files get.")
    if used in ("proposals", "grid cells") or used.startswith("detector"):
        return text + " These numbers are measured on the boxes new files get."
    return text


def _regions(out: Path) -> str:
    from dsanchor.config import config_from_dict
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.store import FeatureStore

    store = FeatureStore(out / "features")
    regions = config_from_dict(RegionConfig, store.manifest["regions"], where="features/manifest.json")
    return regions_note(regions, store.images("test"))


def _protocol_note(results: dict) -> str:
    p = results.get("protocols", {})
    if "exact" in p:
        return ("Two relevance protocols. **exact**: " + p["exact"] + ". **paired**: " + p["paired"] + ", as in "
                "the literature; a synthetic caption is true of many images, so paired recall undercounts.")
    return "Relevance: **paired** only (" + p.get("paired", "own image") + "); " + p.get("note", "")


def _caption_granularity_lines(results: dict) -> list[str]:
    """Captions by granularity: the mix of generated captions next to the references', and CHAIR per
    granularity asked for (``caption_mix`` / ``caption_by_granularity`` of
    :func:`dsanchor.captioning.evaluate_captioning`); empty when the results have none."""
    rows = {k: r for k, r in results["methods"].items() if "caption_mix" in r}
    if not rows:
        return []
    shares = ("scene", "object", "relation", "other")
    kinds = list(dict.fromkeys(k for r in rows.values() for k in r.get("caption_by_granularity", {})))
    f = "{:.2f}".format
    lines = ["| captions | mix " + " / ".join(shares) + " | " + " | ".join(
        f"{k}: CHAIR_i / CHAIR_s / on target" for k in kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    refs = next(iter(rows.values()))["caption_mix"]["references"]
    lines.append("| references | " + " / ".join(f(refs.get(k, 0.0)) for k in shares) + " |" + " – |" * len(kinds))
    for name, r in rows.items():
        by = r.get("caption_by_granularity", {})
        cells = [" / ".join([f(by[k]["CHAIR_i"]), f(by[k]["CHAIR_s"]),
                             f(by[k]["on_target"]) if "on_target" in by[k] else "–"]) if k in by else "–"
                 for k in kinds]
        mix = " / ".join(f(r["caption_mix"]["generated"].get(k, 0.0)) for k in shares)
        lines.append(f"| {name} | {mix} | " + " | ".join(cells) + " |")
    return ["### Captions by granularity", "",
            "Share of each granularity among the reference captions (their labels) and among each method's "
            "generated captions (what their text reads as); then, per granularity the decoder was asked for, "
            "CHAIR_i / CHAIR_s of those captions and the share that read as that granularity. CHAIR counts "
            "an object in a negated statement (\"there are no cubes\") as a mention.", "", *lines, ""]


def _objects_note(results: dict) -> str:
    """Where the objects of the hallucination numbers come from (``results["object_labels"]``)."""
    labels = results.get("object_labels", "annotations")
    if labels == "none":
        return ("Object labels: **none** (the dataset has no object annotations and its captions name fewer than "
                "two COCO objects), so there is no hallucination detector and no hallucination number ('–').")
    if labels.startswith("captions"):
        return ("Object labels: the dataset has no object annotations, so an image's objects are the COCO "
                "categories its reference captions name (CHAIR's synonym table, Rohrbach et al. 2018). The "
                "hallucination detector is trained on these labels, and the hallucination rates, CHAIR and POPE "
                "are measured against them: an object that no reference caption names counts as absent.")
    return ""


def _baseline_lines(results: dict) -> list[str]:
    """Captioning rows without a decoder (``results["captioning"]["baselines"]``), beside the methods."""
    base = results.get("captioning", {}).get("baselines")
    if not base:
        return []
    def f(v) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = ["| baseline | BLEU-4 | CIDEr (raw) | CHAIR_i | CHAIR_s |", "|---|---|---|---|---|"]
    labels = {"nearest_neighbour": "nearest neighbour (a training image's caption, coarse view; Devlin et al. "
                                   "2015)", "human_leave_one_out": "human (each reference vs the other references)"}
    for name, label in labels.items():
        if name in base:
            r = base[name]
            lines.append(f"| {label} | " + " | ".join(f(r.get(k)) for k in ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s"))
                         + " |")
    return ["Baselines without a decoder, scored the same way. The human row scores each reference against the "
            "other references (one fewer than the methods get) and judges its CHAIR against the objects those "
            "name: the floor of CHAIR with these labels.", "", *lines, ""]


def _chair_note(results: dict) -> str:
    cap = results.get("captioning", {})
    vocabulary = cap.get("vocabulary", "synth")
    if vocabulary == "coco" and results.get("object_labels", "").startswith("captions"):
        return ("CHAIR_i / CHAIR_s use the COCO vocabulary and synonyms of Rohrbach et al. (2018); an image's "
                "ground truth is the objects its reference captions name (no instance annotations), and images "
                "whose captions name none are not judged.")
    if vocabulary == "coco":
        judged = next((r["CHAIR_images"] for r in results["methods"].values() if "CHAIR_images" in r), None)
        return ("CHAIR_i / CHAIR_s use the COCO vocabulary and synonyms of Rohrbach et al. (2018); an image's "
                "ground truth is its instance categories plus the objects its reference captions name, and only "
                "images with instance annotations are judged" + (f" ({judged:.0f} test images)." if judged else "."))
    return "CHAIR_i / CHAIR_s use the synth vocabulary (colour + shape names, CLEVR's synonyms)."


def _hard_negative_lines(out: Path, results: dict) -> list[str]:
    """The hard-negative section: the compositional scorer in force, the accuracy table and its plot."""
    from dsanchor.eval.hardneg import accuracy_table
    from dsanchor.report.plots import plot_hard_negatives

    lines = []
    rel = results.get("relations")
    if rel:
        lines += [f"Multi-phrase captions are scored with one region pool per object phrase and the stated relation "
                  f"from box geometry (`dsanchor.relations`), mixed in with weight {rel['mix']:.2f} and relation "
                  f"weight {rel['weight']:.2f}, both fit on val (0 and 0 would be the single pool).", ""]
    hard = results.get("hard_negatives")
    if not hard:
        return lines
    seeds = hard.get("seeds", 1)
    plot = plot_hard_negatives(hard, out / "hard_negatives.png")
    return lines + [
        "## Compositional hard negatives", "",
        f"{hard['n_items']} items on {hard['n_images']} test scenes (`dsanchor.data.hardneg`; each negative checked "
        "false of its scene): for each item a method scores the image against its true text and the negative, "
        "and is right when the true text scores higher (chance 0.5). A method uses the g it gives the image as a "
        "query; the per-pair methods the g of each (text, image) pair. Accuracy [95% interval over test images"
        + (f" and {seeds} training seeds" if seeds > 1 else "") + "].", "",
        *accuracy_table(hard), "", f"![hard negatives]({plot.name})", ""]


def write_report(out: Path, results: dict, config) -> Path:
    """Write report.md (and its plots) next to results.json."""
    plots = _plots(out, results)
    seeds = results.get("seeds", [])
    data = (f"{config.scenes} synthetic scenes (data seed {config.data_seed})" if hasattr(config, "scenes")
            else f"dataset {results.get('dataset', '?')}")
    ch = results.get("chance", {})
    chance = "".join(f" Chance level (a random ranking) of text→image {p} R@1: {ch[p]['t2i']['R@1']:.3f}; of R@10: "
                     f"{ch[p]['t2i']['R@10']:.3f}." for p in ("exact", "paired") if p in ch and "t2i" in ch[p])
    lines = [
        "# DSA run report", "",
        f"Run on {time.strftime('%Y-%m-%d')} on {platform.machine()} with {torch.get_num_threads()} torch threads, "
        f"{data} ({results['n_images']} test images, {results['n_captions']} test "
        f"captions), seeds {seeds}." + (" Numbers are mean ± std over seeds." if len(seeds) > 1 else "") + chance, "",
        "## Retrieval (Table 1)", "",
        _protocol_note(results), "",
        _regions(out), "",
        *([_objects_note(results), ""] if _objects_note(results) else []),
        "Recalls are fractions in [0, 1]; MeanR is the mean rank of the first true image. 'hall t2i' is the "
        "share of object-naming text queries whose top-1 image lacks a named object (coverage: the share of "
        "text queries that name an object); 'hall i2t' the share of image queries, among those whose top-1 "
        "caption names an object (coverage), where that caption names an absent object (ground truth). "
        "ms/query scores one text query against the whole test gallery; overhead % is the controller's extra "
        "time (state + MLP) over the time to encode the query text. The oracle chooses g on each test query "
        "itself: an upper bound for one g per query, not a method; it does not bound gate_pair and dsa_pair, "
        "which choose a g per text query and candidate image.", "",
        main_table(results), "",
    ]
    if granularity_table(results):
        lines += ["## Text→image retrieval per caption granularity", "", granularity_table(results), ""]
    lines += ["## Captioning", "", "The caption decoder over V'(g). CIDEr is CIDEr-D on its raw scale (papers "
              "often print ×100). " + _chair_note(results), "", caption_table(results), ""]
    lines += _baseline_lines(results)
    lines += _caption_granularity_lines(results)
    if "paired" in results:
        lines += ["## Differences between methods", "",
                  "Per-query scores of two methods on the same test queries, differenced and averaged over the "
                  "queries and the seeds. The interval resamples test images (each with all its captions) and "
                  "training seeds (`dsanchor.eval.compare`).", "", paired_table(results), ""]
    lines += _hard_negative_lines(out, results)
    if "pope" in results:
        lines += ["## Hallucination detector (POPE, test images)", "", _pope_table(results["pope"]), ""]
    lines += ["## Reading", ""] + [f"- {s}" for s in reading(results)] + [""]
    lines += ["## Training time per stage", "", _timing_table(results.get("timing_s", {})), ""]
    if results.get("extract_images_per_s"):
        lines += [f"Feature extraction: {results['extract_images_per_s']:.1f} images/s (encoder time per image, "
                  f"{torch.get_num_threads()} torch threads).", ""]
    for title, name in plots:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

