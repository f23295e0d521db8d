"""Captions of a small LLaVA from ``dsanchor mllm build`` on a test split, against a constant-caption baseline.

Rows: the constant caption (the most frequent training caption, for every test image), the unmodified model
(``base``: V_fine at the seam) and the model with DSA attached at fixed g values. Columns: BLEU-4, CIDEr-D on
its raw scale, CHAIR_i and CHAIR_s (the synth vocabulary for CLEVR-style data, COCO's otherwise).

Usage:

    dsanchor mllm build --data runs/demo/data --format synth --out runs/llava_small
    python scripts/mllm_build_eval.py --model runs/llava_small --data runs/demo/data --format synth
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--g", type=float, nargs="*", default=[0.0, 0.5, 1.0])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    from dsanchor.data import load_dataset
    from dsanchor.integrations import attach_dsa
    from dsanchor.integrations.captioning import (
        CHAIR_VOCABULARY,
        caption_samples,
        load_mllm,
        processor_fns,
        score_captions,
    )

    samples = load_dataset(args.format, args.data)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == args.split][: args.limit]
    vocabulary = CHAIR_VOCABULARY[args.format]
    root = Path(args.data)
    constant = Counter(c.text for s in train for c in s.captions).most_common(1)[0][0]
    rows = {f"constant caption ({constant!r})": score_captions({s.image_id: constant for s in test}, test, vocabulary)}
    model, processor = load_mllm("llava", args.model)
    prepare, decode = processor_fns("llava", processor)
    base = caption_samples(model, prepare, decode, test, root)
    rows["base (no DSA)"] = {**score_captions(base.captions, test, vocabulary), "s_per_image": base.seconds / len(test)}
    examples = {"base (no DSA)": list(base.captions.values())[:3]}
    for g in args.g:
        handle = attach_dsa(model, g)
        run = caption_samples(model, prepare, decode, test, root)
        handle.detach()
        rows[f"DSA g = {g:g}"] = {**score_captions(run.captions, test, vocabulary),
                                  "s_per_image": run.seconds / len(test)}
        examples[f"DSA g = {g:g}"] = list(run.captions.values())[:3]
    print(f"{len(test)} {args.split} images of {args.data}; CIDEr-D on its raw scale\n")
    print("| captions | BLEU-4 | CIDEr | CHAIR_i | CHAIR_s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['BLEU-4']:.3f} | {r['CIDEr']:.3f} | {r['CHAIR_i']:.3f} | {r['CHAIR_s']:.3f} |")
    base_cider = next(iter(rows.values()))["CIDEr"]
    print(f"\nbase / constant CIDEr: {rows['base (no DSA)']['CIDEr'] / max(base_cider, 1e-9):.1f}x")
    for name, caps in examples.items():
        print(f"{name}: {caps}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "examples": examples}, indent=2))
    return rows


if __name__ == "__main__":
    main()
