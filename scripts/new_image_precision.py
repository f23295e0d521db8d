"""How well a trained pipeline answers image queries on NEW demo-style files, measured the way
`dsanchor search --image`, `dsanchor caption` and the page see them (a file path, no annotations).

Generates fresh synthetic scenes with another data seed, then for each fresh image ranks a caption bank (the
unique captions, with their facts, of the pipeline's dataset test split) with ``DSAPipeline.rank_captions`` at the
controller's g, and asks the scene graph whether the top caption is true of the image (``dsanchor.data.holds``).
Reports the top-1 exact precision with a bootstrap interval over images, how many distinct captions come first,
the most frequent first caption's share (a collapsed ranking puts one sentence first for many images), and over
the top k the share of true captions and of distinct facts, with and without collapsing near-duplicate captions
(the default of user-facing lists, dsanchor.duplicates).

Usage:
    python scripts/new_image_precision.py --pipeline runs/demo/pipeline --data runs/demo/data --images 100 \
        --data-seed 1234 [--out precision.json] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dsanchor.data import SynthConfig, generate_synth, holds, load_dataset
from dsanchor.pipeline import load


def caption_bank(data: Path, split: str = "test") -> tuple[list[str], list[dict]]:
    """The unique captions (with a fact) of ``split`` of the synth dataset at ``data``."""
    seen: dict[str, dict] = {}
    for s in load_dataset("synth", data, split):
        for c in s.captions:
            if c.fact is not None and c.text not in seen:
                seen[c.text] = c.fact
    return list(seen), list(seen.values())


def _share_true(ranked, facts_of: dict, scene: dict) -> float:
    return sum(holds(facts_of[c], scene) for c, _ in ranked) / len(ranked)


def precision(pipe, images: list[Path], scenes: list[dict], texts: list[str], facts: list[dict], g=None,
              k: int = 5) -> dict:
    """Top-1 exact precision (with a bootstrap interval over images), how many distinct captions come first,
    and, over the top ``k``: the share of true captions and of distinct facts, with and without collapsing
    near-duplicates (:mod:`dsanchor.duplicates`; the top-1 is the same either way)."""
    from dsanchor.duplicates import fact_key

    emb = pipe.encode_texts(texts)
    facts_of = dict(zip(texts, facts, strict=True))
    top, correct, topk = [], [], {"raw": [], "collapsed": []}
    for path, scene in zip(images, scenes, strict=True):
        feats = pipe.encode_images([path])  # once for both rankings
        for name, collapse in (("raw", False), ("collapsed", True)):
            ranked, _ = pipe.rank_captions_embedded(feats, emb, texts, g, k, collapse, facts)
            distinct = len({fact_key(facts_of[c]) for c, _ in ranked}) / len(ranked)
            topk[name].append((_share_true(ranked, facts_of, scene), distinct))
        best = ranked[0][0]
        top.append(best)
        correct.append(holds(facts_of[best], scene))
    x = np.array(correct, dtype=float)
    rng = np.random.default_rng(0)
    boots = [x[rng.integers(0, len(x), len(x))].mean() for _ in range(2000)]
    counts = Counter(top)
    return {"images": len(x), "top1_exact_precision": float(x.mean()),
            "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "distinct_first_captions": len(counts), "most_frequent_first": counts.most_common(1)[0][0],
            "most_frequent_share": counts.most_common(1)[0][1] / len(x),
            **{f"top{k}_{name}": {"exact_precision": float(np.mean([a for a, _ in v])),
                                  "distinct_fact_share": float(np.mean([b for _, b in v]))}
               for name, v in topk.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", required=True)
    p.add_argument("--data", required=True, help="the synth dataset the pipeline was trained on (caption bank)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--data-seed", type=int, default=1234)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--g", type=float, default=None)
    p.add_argument("--k", type=int, default=5, help="top-k for the share of true captions and distinct facts")
    p.add_argument("--out")
    args = p.parse_args(argv)
    pipe = load(args.pipeline)
    texts, facts = caption_bank(Path(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        generate_synth(tmp, SynthConfig(scenes=args.images, seed=args.data_seed, image_size=args.image_size,
                                        split_fractions=(1.0, 0.0, 0.0), workers=1), progress=False)
        samples = load_dataset("synth", tmp)
        images = [Path(tmp) / s.image_path for s in samples]
        res = precision(pipe, images, [s.scene for s in samples], texts, facts, args.g, args.k)
    res.update({"pipeline": args.pipeline, "data_seed": args.data_seed, "bank": len(texts)})
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
