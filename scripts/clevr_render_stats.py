"""Compare the synthetic renders with real CLEVR renders, property by property.

Both datasets ship CLEVR scene records with ``pixel_coords`` (x, y, depth) for every object, so the same
measurements can be taken on both:

* colour: the median RGB of a small patch at each rubber object's centre (rubber is matte, so the patch
  shows the object's own shaded colour, not a reflection), per CLEVR colour name;
* ground: the median RGB of the top and bottom rows away from objects (the image's border rows);
* camera and size: object centres as fractions of the image width and height, the depth of the centre and
  the apparent radius of a large object (focal · 0.7 / depth) as a fraction of the image height; CLEVR's
  Blender camera has a 35 mm lens on a 32 mm sensor, so its focal length is 35 / 32 of the image width;
* aspect: the image's width / height; every image is resized to a square for the encoder, so a 3:2 render
  is squeezed horizontally by 1.5.

Usage:

    python scripts/clevr_render_stats.py --synth runs/demo/data --real ../shared/data/real/clevr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from dsanchor.files import write_json


def _scenes(root: Path) -> tuple[list[dict], Path]:
    if (root / "scenes.json").is_file():  # synth
        data = json.loads((root / "scenes.json").read_text())
        return data["scenes"], root / "images"
    files = sorted((root / "scenes").glob("*.json"))
    scenes = [s for f in files for s in json.loads(f.read_text())["scenes"]]
    return scenes, root / "images"


def _find(images: Path, scene: dict) -> Path:
    for p in (images / scene["image_filename"], images / scene.get("split", "") / scene["image_filename"]):
        if p.is_file():
            return p
    raise FileNotFoundError(scene["image_filename"])


def measure(root: Path, focal_of_width: float | None, limit: int = 400) -> dict:
    scenes, images = _scenes(root)
    colours: dict[str, list[np.ndarray]] = {}
    top, bottom, xs, ys, depth, radius, aspect = [], [], [], [], [], [], []
    for scene in scenes[:limit]:
        img = np.asarray(Image.open(_find(images, scene)).convert("RGB"), dtype=np.float32) / 255.0
        h, w = img.shape[:2]
        aspect.append(w / h)
        top.append(np.median(img[: max(2, h // 40)].reshape(-1, 3), axis=0))
        bottom.append(np.median(img[-max(2, h // 40):].reshape(-1, 3), axis=0))
        focal = focal_of_width * w if focal_of_width else None
        for obj in scene["objects"]:
            x, y, d = obj["pixel_coords"]
            xs.append(x / w)
            ys.append(y / h)
            depth.append(d)
            if focal:
                radius.append(focal * 0.7 / d / h)
            if obj["material"] == "rubber":
                r = max(1, round(h / 100))
                x0, y0 = int(round(x)), int(round(y))
                patch = img[max(0, y0 - r): y0 + r + 1, max(0, x0 - r): x0 + r + 1].reshape(-1, 3)
                if len(patch):
                    colours.setdefault(obj["color"], []).append(np.median(patch, axis=0))

    def stats(v):
        a = np.asarray(v)
        return {"mean": a.mean(0).round(3).tolist(), "std": a.std(0).round(3).tolist()}

    return {"images": min(limit, len(scenes)), "aspect": float(np.mean(aspect)),
            "ground_top": stats(top), "ground_bottom": stats(bottom), "x": stats(xs), "y": stats(ys),
            "depth": stats(depth), **({"large_radius_of_height": stats(radius)} if radius else {}),
            "rubber_colour": {k: {**stats(v), "n": len(v)} for k, v in sorted(colours.items())}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", required=True, help="synth dataset root (scenes.json, images/)")
    p.add_argument("--real", required=True, help="CLEVR root (scenes/*.json, images/<split>/)")
    p.add_argument("--synth-focal", type=float, default=None,
                   help="the generator's focal length as a fraction of the image width (default: from the camera "
                        "recorded in scenes.json: 516 / 224 for the default camera, 35 / 32 for clevr)")
    p.add_argument("--out", default=None, help="write the measurements here as JSON")
    args = p.parse_args(argv)
    focal = args.synth_focal
    if focal is None:
        info = json.loads((Path(args.synth) / "scenes.json").read_text()).get("info", {})
        focal = 35.0 / 32.0 if info.get("camera") == "clevr" else 516.0 / 224.0
    res = {"synth": measure(Path(args.synth), focal), "real": measure(Path(args.real), 35.0 / 32.0)}
    s, r = res["synth"], res["real"]
    print(f"aspect (w/h): synth {s['aspect']:.2f}, real {r['aspect']:.2f}")
    for key in ("ground_top", "ground_bottom"):
        print(f"{key}: synth {s[key]['mean']}, real {r[key]['mean']}")
    for key in ("x", "y", "depth", "large_radius_of_height"):
        print(f"{key}: synth {s[key]['mean']:.3f} ± {s[key]['std']:.3f}, real {r[key]['mean']:.3f} ± "
              f"{r[key]['std']:.3f}")
    print("rubber colour at the object centre (RGB 0-1), synth vs real, and the largest channel gap:")
    for name in sorted(set(s["rubber_colour"]) & set(r["rubber_colour"])):
        a, b = np.array(s["rubber_colour"][name]["mean"]), np.array(r["rubber_colour"][name]["mean"])
        print(f"  {name:>7}: synth {a.round(2).tolist()}, real {b.round(2).tolist()}, gap {np.abs(a - b).max():.2f}")
    if args.out:
        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
