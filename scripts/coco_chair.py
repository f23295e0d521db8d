"""CHAIR on captions of real COCO photos, with their instance annotations as ground truth.

Rows:

* every method of a ``dsanchor run`` on the photos (its caption decoder over V'(g) on the test split, mean ±
  std over the run's seeds; from its results.json);
* the human captions, each judged leave-one-out: against the photo's instance categories plus the objects
  its *other* reference captions name. That is CHAIR's own floor on these photos: a human mention that the
  annotations do not support (an object outside COCO's 80 classes that a synonym maps in, or an object the
  annotators did not box) counts as a hallucination.

Only photos with instance annotations are judged, as in Rohrbach et al. (2018).

Usage:

    dsanchor run --data ../shared/data/real/coco --format coco --out runs/real_coco --seeds 3
    python scripts/coco_chair.py --coco ../shared/data/real/coco --run runs/real_coco
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def human_chair(coco: Path) -> dict:
    from dsanchor.metrics.chair import caption_objects, chair

    inst = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    caps = json.loads((coco / "annotations" / "captions_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objects: dict[int, list[str]] = {}
    for a in inst["annotations"]:
        objects.setdefault(a["image_id"], []).append(names[a["category_id"]])
    refs: dict[int, list[str]] = {}
    for a in caps["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    captions, gt = {}, {}
    for iid, rs in refs.items():
        if iid not in objects:
            continue
        for k, r in enumerate(rs):
            key = f"{iid}/{k}"
            captions[key] = r
            gt[key] = objects[iid] + [o for j, other in enumerate(rs) if j != k for o in caption_objects(other)]
    res = chair(captions, gt, "coco")
    return {"CHAIR_i": res.chair_i, "CHAIR_s": res.chair_s, "images": len({k.split('/')[0] for k in captions}),
            "captions": res.num_captions, "mentions": res.num_mentions}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco", required=True, help="COCO root (annotations/, val2017/)")
    p.add_argument("--run", default=None, help="a finished `dsanchor run` on those photos")
    args = p.parse_args(argv)
    out = {"human (leave-one-out)": human_chair(Path(args.coco))}
    lines = ["| captions | judged images | CHAIR_i | CHAIR_s | BLEU-4 | CIDEr (raw) |", "|---|---|---|---|---|---|"]
    if args.run:
        res = json.loads((Path(args.run) / "results.json").read_text())
        for name, row in res["methods"].items():
            if "CHAIR_i" not in row:
                continue
            out[name] = {k: row.get(k) for k in ("CHAIR_i", "CHAIR_i_std", "CHAIR_s", "CHAIR_s_std", "CHAIR_images",
                                                   "BLEU-4", "CIDEr")}

            def f(key, r=row):
                return f"{r[key]:.3f}" + (f" ± {r[key + '_std']:.3f}" if f"{key}_std" in r else "")

            label = name + (" (upper bound)" if name == "oracle" else "")
            lines.append(f"| decoder, {label} (test) | {row.get('CHAIR_images', 0):.0f} | {f('CHAIR_i')} | "
                         f"{f('CHAIR_s')} | {f('BLEU-4')} | {f('CIDEr')} |")
    h = out["human (leave-one-out)"]
    lines.append(f"| human references, leave-one-out | {h['images']} | {h['CHAIR_i']:.3f} | {h['CHAIR_s']:.3f} "
                 "| – | – |")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
