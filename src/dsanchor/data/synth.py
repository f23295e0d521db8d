"""The built-in CLEVR-style dataset: procedural scenes, rendered in pure Python (numpy + PIL).

``generate_synth(out_dir, SynthConfig(...))`` writes::

    out_dir/
      images/synth_000000.png ...  the rendered scenes
      scenes.json                  CLEVR scenes schema (plus a "bbox" [x, y, w, h] per object, and the image
                                   "width"/"height" per scene)
      captions.json                COCO captions format; each annotation also has "granularity"
                                   ("scene", "object" or "relation") and "fact", the structured fact it
                                   states (dsanchor.data.facts; dsanchor.data.holds decides it for any scene)
      instances.json               COCO instances format; one category per colour + shape ("red cube"); each
                                   annotation also has "attributes" [size, material]
      splits.json                  {"train": [image ids], "val": [...], "test": [...]}

Image id = CLEVR ``image_index``. Each scene is a pure function of (seed, image index), so the output
does not depend on ``workers``. Captions come from :mod:`dsanchor.data.captioner`, the same one the
CLEVR loader uses, seeded with the same seed (stored in ``scenes.json`` ``info``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dsanchor.config import config_to_dict
from dsanchor.data.captioner import CaptionerConfig, caption_scene
from dsanchor.data.render import (
    DISPLAY_LOOK,
    LOOKS,
    Camera,
    Look,
    ObjectGeometry,
    SceneObject,
    project_object,
    render_scene,
)
from dsanchor.data.scene import DEFAULT_DIRECTIONS, clevr_vocabulary, compute_relationships, object_name
from dsanchor.errors import ConfigError
from dsanchor.files import write_json

__all__ = ["SynthConfig", "SynthResult", "generate_synth", "build_scene", "render_synth_image", "SPLITS"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SYNTH_VERSION = "dsanchor-synth-1.1"  # 1.1: CLEVR's linear colour pipeline (color_space)


@dataclass
class SynthConfig:
    """What the synth generator draws and how."""

    scenes: int = field(default=1000, metadata={"help": "number of images to generate"})
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same files"})
    image_size: int = field(default=224, metadata={"help": "image width in pixels (and height, unless image_height)"})
    image_height: int = field(default=0, metadata={"help": "image height in pixels; 0: square"})
    camera: str = field(default="default", metadata={
        "help": "default: the generator's camera (far, narrow view, 40 degrees down); clevr: CLEVR's (35 mm lens "
                "on a 32 mm sensor, about 11.3 units away, 28 degrees down), for 3:2 images as CLEVR's 480 x 320"})
    min_objects: int = field(default=3, metadata={"help": "fewest objects in a scene"})
    max_objects: int = field(default=10, metadata={"help": "most objects in a scene"})
    split_fractions: tuple[float, float, float] = field(
        default=(0.8, 0.1, 0.1), metadata={"help": "train, val and test shares of the images"})
    min_gap: float = field(default=0.25, metadata={"help": "least ground distance between two objects' surfaces"})
    max_occlusion: float = field(
        default=0.35, metadata={"help": "largest share of an object's box that nearer objects' boxes may cover"})
    supersample: int = field(default=2, metadata={"help": "render at this multiple of the size, then downsample"})
    workers: int = field(default=1, metadata={"help": "rendering processes; the output is the same for any value"})
    color_space: str = field(default="linear", metadata={
        "help": "linear: CLEVR's colour pipeline (palette as linear reflectance, sRGB output); display: the "
                "first version's saturated colours (dsanchor.data.render.Look)"})

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.color_space not in LOOKS:
            raise ValueError(f"color_space must be one of {', '.join(LOOKS)}, got {self.color_space!r}")
        if self.camera not in ("default", "clevr"):
            raise ValueError(f"camera must be default or clevr, got {self.camera!r}")
        if self.image_height and self.image_height < 32:
            raise ValueError("image_height must be 0 (square) or >= 32")
        if self.scenes < 1 or self.image_size < 32:
            raise ValueError("need scenes >= 1 and image_size >= 32")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError("split_fractions needs three non-negative shares (train, val, test)")


@dataclass
class SynthResult:
    """What :func:`generate_synth` wrote."""

    out_dir: Path
    n_images: int
    n_objects: int
    n_captions: int
    seconds: float


# ---- layout --------------------------------------------------------------------------------------------------

def _box_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _far_enough(obj: SceneObject, placed: list[ObjectGeometry], min_gap: float) -> bool:
    """At least ``min_gap`` between this object's surface and every placed one's, on the ground."""
    return all(math.hypot(obj.x - p.obj.x, obj.y - p.obj.y) - obj.radius - p.obj.radius >= min_gap for p in placed)


def _acceptable(g: ObjectGeometry, placed: list[ObjectGeometry], cfg: SynthConfig, cam: Camera) -> bool:
    """Inside the image, and no object's box more than ``max_occlusion`` covered by nearer ones."""
    margin = 1.0
    x0, y0, x1, y1 = g.bbox
    if x0 < margin or y0 < margin or x1 > cam.width - margin or y1 > cam.height - margin:
        return False
    everyone = placed + [g]
    for a in everyone:
        area = (a.bbox[2] - a.bbox[0]) * (a.bbox[3] - a.bbox[1])
        hidden = sum(_box_overlap(a.bbox, b.bbox) for b in everyone if b.pixel[2] < a.pixel[2])
        if hidden > cfg.max_occlusion * area:
            return False
    return True


def _sample_object(rng: np.random.Generator) -> dict[str, Any]:
    v = clevr_vocabulary()
    return {"shape": v.shapes[rng.integers(len(v.shapes))], "color": list(v.colors)[rng.integers(len(v.colors))],
            "size": list(v.sizes)[rng.integers(len(v.sizes))], "material": v.materials[rng.integers(len(v.materials))],
            "rotation": float(rng.uniform(0.0, 360.0))}


def _layout(rng: np.random.Generator, n: int, cfg: SynthConfig, cam: Camera) -> list[tuple[dict, ObjectGeometry]]:
    """Place ``n`` objects; each scene has its own spread, so some are crowded and some spread out."""
    v = clevr_vocabulary()
    for attempt in range(100):
        spread = float(rng.uniform(0.4, 1.0)) if attempt < 20 else 1.0  # half-width of the area, x 3 units
        centre = rng.uniform(-3 * (1 - spread), 3 * (1 - spread), size=2)
        placed: list[tuple[dict, ObjectGeometry]] = []
        for _ in range(n):
            attrs = _sample_object(rng)
            for _try in range(60):
                x, y = centre + rng.uniform(-3 * spread, 3 * spread, size=2)
                obj = SceneObject(attrs["shape"], v.colors[attrs["color"]], attrs["material"],
                                  v.sizes[attrs["size"]], float(x), float(y), attrs["rotation"])
                others = [p[1] for p in placed]
                if not _far_enough(obj, others, cfg.min_gap):
                    continue
                g = project_object(obj, cam)
                if _acceptable(g, others, cfg, cam):
                    placed.append((attrs, g))
                    break
            else:
                break  # this object found no place: start the scene again
        if len(placed) == n:
            return placed
    raise ConfigError(f"synth: could not place {n} objects without overlap in a {cam.width}x{cam.height}px image; "
                      "lower max_objects or min_gap, or raise max_occlusion")


def _object_record(attrs: dict[str, Any], g: ObjectGeometry) -> dict[str, Any]:
    """One object in the CLEVR schema, plus its box."""
    x0, y0, x1, y1 = g.bbox
    c = g.obj.center
    return {
        "color": attrs["color"], "size": attrs["size"], "shape": attrs["shape"], "material": attrs["material"],
        "3d_coords": [round(float(t), 4) for t in c], "rotation": round(attrs["rotation"], 3),
        "pixel_coords": [int(round(g.pixel[0])), int(round(g.pixel[1])), round(g.pixel[2], 4)],
        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
    }


CAMERAS = ("default", "clevr")


def make_camera(cfg: SynthConfig) -> Camera:
    """The camera of ``cfg``: the generator's own, or CLEVR's (focal length 35 / 32 of the width, the distance
    and elevation of CLEVR's Blender camera, ``clevr-dataset-gen`` base_scene.blend)."""
    height = cfg.image_height or cfg.image_size
    if cfg.camera == "clevr":
        return Camera(cfg.image_size, elevation_deg=28.3, distance=11.26, focal_224=224 * 35 / 32, target_y=0.0,
                      height=height)
    return Camera(cfg.image_size, height=height)


def build_scene(index: int, cfg: SynthConfig, split: str | None = None) -> tuple[dict[str, Any], list[ObjectGeometry]]:
    """Scene ``index`` as a CLEVR scene dict (deterministic for (seed, index)) and its projected objects."""
    cam = make_camera(cfg)
    rng = np.random.default_rng([cfg.seed, index])
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed = _layout(rng, n, cfg, cam)
    objects = [_object_record(a, g) for a, g in placed]
    coords = np.array([o["3d_coords"] for o in objects])
    dirs = {k: np.asarray(d) for k, d in DEFAULT_DIRECTIONS.items()}
    scene = {
        "split": split, "image_index": index, "image_filename": f"synth_{index:06d}.png",
        "width": cam.width, "height": cam.height, "objects": objects,
        "relationships": compute_relationships(coords, dirs),
        "directions": {k: list(d) for k, d in DEFAULT_DIRECTIONS.items()},
    }
    return scene, [g for _, g in placed]


def render_synth_image(geoms: list[ObjectGeometry], cfg: SynthConfig) -> Image.Image:
    """The PIL image of a built scene."""
    look = Look() if cfg.color_space == "linear" else DISPLAY_LOOK
    return render_scene(geoms, make_camera(cfg), cfg.supersample, look)


# ---- files ---------------------------------------------------------------------------------------------------

def _assign_splits(cfg: SynthConfig) -> list[str]:
    """Split of each image index: a seeded permutation cut by ``split_fractions`` (rounded)."""
    f = np.asarray(cfg.split_fractions, dtype=np.float64)
    f = f / f.sum()
    n_val, n_test = int(round(cfg.scenes * f[1])), int(round(cfg.scenes * f[2]))
    perm = np.random.default_rng([cfg.seed, 2**31 - 1]).permutation(cfg.scenes)
    splits = ["train"] * cfg.scenes
    for k in perm[:n_val]:
        splits[k] = "val"
    for k in perm[n_val:n_val + n_test]:
        splits[k] = "test"
    return splits


def _make_one(job: tuple[int, str, SynthConfig, CaptionerConfig, str]) -> tuple[dict[str, Any], list, list]:
    """Build, render and save one scene; returns the scene, its captions as (text, granularity, fact) and the
    objects' outlines as COCO polygons."""
    index, split, cfg, ccfg, image_dir = job
    scene, geoms = build_scene(index, cfg, split)
    render_synth_image(geoms, cfg).save(Path(image_dir) / scene["image_filename"], compress_level=1)
    caps = caption_scene(scene, ccfg, seed=cfg.seed)
    outlines = [[[round(float(t), 1) for t in g.silhouette.reshape(-1)]] for g in geoms]
    return scene, [(c.text, c.granularity, c.fact) for c in caps], outlines


def _coco_images(scenes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": s["image_index"], "file_name": s["image_filename"], "width": s["width"], "height": s["height"]}
            for s in scenes]


def _write_coco(out: Path, scenes: list[dict[str, Any]], captions: list[list], outlines: list[list]) -> int:
    """captions.json and instances.json; returns the number of captions."""
    info = {"description": "dsanchor synth: CLEVR-style scenes", "version": SYNTH_VERSION, "contributor": "dsanchor"}
    images = _coco_images(scenes)
    anns = [{"id": k, "image_id": s["image_index"], "caption": text, "granularity": gran, "fact": fact}
            for k, (s, (text, gran, fact)) in enumerate(((s, c) for s, caps in zip(scenes, captions, strict=True)
                                                    for c in caps), start=1)]
    write_json(out / "captions.json", {"info": info, "licenses": [], "images": images, "annotations": anns},
               compact=True)
    v = clevr_vocabulary()
    names = [f"{c} {s}" for s in v.shapes for c in v.colors]
    cat_id = {name: k for k, name in enumerate(names, start=1)}
    cats = [{"id": cat_id[n], "name": n, "supercategory": n.split()[1]} for n in names]
    inst, k = [], 1
    for s, polygons in zip(scenes, outlines, strict=True):
        for o, polygon in zip(s["objects"], polygons, strict=True):
            x, y, w, h = o["bbox"]
            inst.append({"id": k, "image_id": s["image_index"], "category_id": cat_id[object_name(o)],
                         "bbox": o["bbox"], "area": round(w * h, 2), "iscrowd": 0, "segmentation": polygon,
                         "attributes": [o["size"], o["material"]]})
            k += 1
    write_json(out / "instances.json", {"info": info, "licenses": [], "images": images, "annotations": inst,
                                         "categories": cats}, compact=True)
    return len(anns)


def _jobs(cfg: SynthConfig, ccfg: CaptionerConfig, image_dir: Path, progress: bool) -> Iterator[tuple]:
    """Scenes and captions in image order, made here or by a pool of ``cfg.workers`` processes."""
    splits = _assign_splits(cfg)
    jobs = [(i, splits[i], cfg, ccfg, str(image_dir)) for i in range(cfg.scenes)]
    bar = dict(total=cfg.scenes, desc="synth scenes", unit="scene", disable=not progress)
    if cfg.workers <= 1:
        yield from tqdm(map(_make_one, jobs), **bar)
        return
    with get_context("spawn").Pool(cfg.workers) as pool:
        yield from tqdm(pool.imap(_make_one, jobs, chunksize=8), **bar)


def generate_synth(out_dir: str | Path, config: SynthConfig | None = None,
                   captioner: CaptionerConfig | None = None, progress: bool = False) -> SynthResult:
    """Generate the synth dataset into ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: output folder; created if needed, existing files of the same names are replaced.
        config: the scenes to draw; defaults to :class:`SynthConfig`.
        captioner: the captions to write; defaults to :class:`CaptionerConfig`.
        progress: show a tqdm progress bar.
    """
    cfg, ccfg = config or SynthConfig(), captioner or CaptionerConfig()
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes, captions, outlines = [], [], []
    for scene, caps, polygons in _jobs(cfg, ccfg, out / "images", progress):
        scenes.append(scene)
        captions.append(caps)
        outlines.append(polygons)
    n_caps = _write_coco(out, scenes, captions, outlines)
    info = {"split": "all", "version": SYNTH_VERSION, "license": "CC BY 4.0", "seed": cfg.seed,
            "image_size": cfg.image_size, "image_height": cfg.image_height or cfg.image_size, "camera": cfg.camera,
            "color_space": cfg.color_space, "captioner": config_to_dict(ccfg)}
    write_json(out / "scenes.json", {"info": info, "scenes": scenes}, compact=True)
    write_json(out / "splits.json", {sp: [s["image_index"] for s in scenes if s["split"] == sp] for sp in SPLITS},
               compact=True)
    n_obj = sum(len(s["objects"]) for s in scenes)
    seconds = time.perf_counter() - start
    logger.debug("synth: %d images, %d objects, %d captions in %.1f s -> %s", len(scenes), n_obj, n_caps, seconds, out)
    return SynthResult(out, len(scenes), n_obj, n_caps, seconds)
