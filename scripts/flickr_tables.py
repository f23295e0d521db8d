"""The Flickr8k tables of docs/real-data.md from a finished `dsanchor run` folder: retrieval (R@1/5/10 and median
rank, both directions, every method) beside published rows, the DSA differences with their bootstrap intervals,
mean g per caption length, and captioning beside its baselines.

Usage::

    dsanchor run --data /work/shared/data/real/flickr8k --format flickr8k --out /work/runs/f8k3 --seeds 3
    python scripts/flickr_tables.py /work/runs/f8k3

The published rows are two of the 2014 generation (Flickr8k's standard 1,000 test images and 5,000
captions, whereas a run without the test list is scored on dev), R@K in [0, 1].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

METHODS = ("coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "gate_pair", "dsa_pair", "oracle")
# The 2014 generation of published Flickr8k results (ImageNet CNN image features + a trained sentence encoder), on
# Flickr8k's standard 1,000 test images and 5,000 captions, R@K as fractions. Transcribed from the papers' tables
# (row, t2i R@1, R@5, R@10, MedR, i2t R@1, R@5, R@10, MedR, source); the offline machine could not re-check them.
PUBLISHED = (
    ("Karpathy & Fei-Fei 2015, BRNN", "0.118", "0.321", "0.447", "12.4", "0.165", "0.406", "0.542", "7.6",
     "CVPR 2015, Table 1"),
    ("Kiros et al. 2014, OxfordNet", "0.125", "0.370", "0.515", "10", "0.180", "0.409", "0.550", "8",
     "arXiv 1411.2539, Table 1"),
)


def _cell(row: dict, d: str, k: str, digits: int = 3) -> str:
    r = row.get(d, {})
    if k not in r:
        return "–"
    s = f"{r[k]:.{digits}f}"
    return s + (f" ± {r[k + '_std']:.{digits}f}" if f"{k}_std" in r else "")


def retrieval_table(res: dict) -> str:
    head = "| method | t2i R@1 | R@5 | R@10 | MedR | i2t R@1 | R@5 | R@10 | MedR | source |"
    lines = [head, "|" + "---|" * 10]
    for name in METHODS:
        row = res["methods"].get(name)
        if row is None:
            continue
        label = name + (" (upper bound)" if name == "oracle" else "") + (
            f" (g={row['g']:.2f})" if name == "fixed_best" else "")
        cells = [_cell(row, d, k, 1 if k == "MedR" else 3) for d in ("t2i", "i2t") for k in ("R@1", "R@5", "R@10",
                                                                                            "MedR")]
        lines.append(f"| {label} | " + " | ".join(cells) + " | this run |")
    for label, *vals, src in PUBLISHED:
        cells = list(vals)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {src} |")
    return "\n".join(lines)


def differences_table(res: dict) -> str:
    pairs = res.get("paired", {}).get("pairs", {})
    lines = ["| comparison | t2i R@1 | t2i R@10 | i2t R@1 | i2t R@10 |", "|---|---|---|---|---|"]
    for name in ("dsa_ppo-fixed_best", "dsa_ppo-fine", "dsa_ppo-coarse", "dsa_ppo-gate_grad", "gate_grad-fine",
                 "dsa_pair-fixed_best", "gate_pair-fixed_best", "dsa_pair-gate_pair"):
        p = pairs.get(name, {}).get("paired")
        if not p:
            continue
        cells = []
        for d in ("t2i", "i2t"):
            for k in ("R@1", "R@10"):
                r = p[d][k]
                star = "**" if r["lo"] > 0 or r["hi"] < 0 else ""
                cells.append(f"{star}{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]{star}".replace("-", "−"))
        lines.append(f"| {name.replace('-', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def g_by_length(run: Path, bins=((0, 8), (9, 11), (12, 14), (15, 1000))) -> str:
    from safetensors.torch import load_file

    from dsanchor.features.store import FeatureStore

    texts = FeatureStore(run / "features").texts("test")
    lengths = torch.tensor([len(c.split()) for c in texts.captions])
    seeds = sorted(run.glob("seed*/eval/g.safetensors"))
    gs = [load_file(str(p)) for p in seeds]
    methods = [m for m in ("dsa_ppo", "gate_grad", "fixed_best") if f"{m}.t2i" in gs[0]]
    lines = ["| caption words | captions | " + " | ".join(f"mean g {m}" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for lo, hi in bins:
        sel = (lengths >= lo) & (lengths <= hi)
        cells = []
        for m in methods:
            vals = torch.stack([g[f"{m}.t2i"][sel].float().mean() for g in gs])
            cells.append(f"{vals.mean():.3f}" + (f" ± {vals.std(unbiased=False):.3f}" if len(gs) > 1 else ""))
        label = f"{lo}–{hi}" if hi < 1000 else f"≥ {lo}"
        lines.append(f"| {label} | {int(sel.sum())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n({len(gs)} seed(s); text→image queries of the test split)"


def caption_table(res: dict) -> str:
    lines = ["| method | BLEU-4 | CIDEr-D (raw) | CHAIR_i | CHAIR_s |", "|---|---|---|---|---|"]
    for name in METHODS:
        row = res["methods"].get(name, {})
        if "CIDEr" in row:
            lines.append(f"| decoder, {name} | " + " | ".join(
                f"{row[k]:.3f}" + (f" ± {row[k + '_std']:.3f}" if f"{k}_std" in row else "")
                for k in ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s")) + " |")
    for name, row in res.get("captioning", {}).get("baselines", {}).items():
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(
            f"{row[k]:.3f}" + (f" ± {row[k + '_std']:.3f}" if f"{k}_std" in row else "")
            for k in ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s")) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished `dsanchor run` folder")
    args = p.parse_args(argv)
    run = Path(args.run)
    res = json.loads((run / "results.json").read_text())
    print(f"## {res['dataset']} {res['split']}: {res['n_images']} images, {res['n_captions']} captions, "
          f"seeds {res['seeds']}\n")
    print("### Retrieval (paired protocol)\n\n" + retrieval_table(res) + "\n")
    print("### DSA differences (image-level bootstrap, 95%)\n\n" + differences_table(res) + "\n")
    print("### Mean g per caption length\n\n" + g_by_length(run) + "\n")
    print("### Captioning\n\n" + caption_table(res) + "\n")
    if "timing_s" in res:
        print("### Stage times (s)\n\n" + " | ".join(f"{k} {v:.0f}" for k, v in res["timing_s"].items()))
    if "extract_images_per_s" in res:
        print(f"\nextraction: {res['extract_images_per_s']:.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
