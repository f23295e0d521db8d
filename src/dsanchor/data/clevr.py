"""CLEVR scenes -> :class:`Sample` records, with captions from the scene graph.

Two layouts are found under the root (``path`` may also be one scenes file):

* real CLEVR v1.0: ``root/scenes/CLEVR_{split}_scenes.json`` with images in ``root/images/{split}/``;
* the generator's output: ``root/scenes.json`` with images in ``root/images/``.

CLEVR has no captions, so they come from :func:`dsanchor.data.captioner.caption_scene`, seeded per
image with (caption seed, image_index); the caption seed and captioner settings default to those stored
in the generator's ``info`` (so synth data gets the same captions through both loaders), else 0 and the
defaults. Each caption carries the fact it states and each sample its scene graph, so that
:func:`dsanchor.data.holds` gives exact relevance. Objects are named colour + shape ("red cube") with
attributes (size, material).

Boxes: the object's ``bbox`` [x, y, w, h] when present (the generator writes it). Real CLEVR scenes have
no boxes, so one is estimated around ``pixel_coords`` from the object's size and depth with CLEVR's
camera (``focal_px``, about 525 px for a 35 mm lens on a 32 mm sensor at 480 px), clipped to the image.

Image ids: ``image_index``; in the real layout, where every split counts from 0, val adds 1,000,000
and test 2,000,000 so that ids stay unique when splits are loaded together. Image size: the scene's
``width``/``height`` when present, else the image file's header, else CLEVR's 480 x 320.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from dsanchor.data.base import (
    DatasetLoader,
    filter_split,
    read_json,
    require_keys,
    safe_relpath,
    split_from_name,
)
from dsanchor.data.captioner import CLEVR_IMAGE_WIDTH, CaptionerConfig, caption_scene
from dsanchor.data.records import ObjectAnnotation, Sample
from dsanchor.data.scene import RELATIONS, clevr_vocabulary, object_attributes, object_name
from dsanchor.errors import DataError

__all__ = ["ClevrOptions", "ClevrLoader", "SPLIT_ID_OFFSETS"]

CLEVR_IMAGE_HEIGHT = 320
SPLIT_ID_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # real layout only
_OBJECT_KEYS = ("color", "size", "shape", "material", "3d_coords", "pixel_coords")


@dataclass
class ClevrOptions:
    """Explicit file locations, caption settings and the box estimate for real CLEVR."""

    scenes: str | None = field(default=None, metadata={"help": "a CLEVR scenes JSON file"})
    image_dir: str | None = field(default=None, metadata={"help": "folder holding the images"})
    captioner: CaptionerConfig | None = field(default=None, metadata={"help": "caption settings"})
    caption_seed: int | None = field(default=None, metadata={"help": "base seed of the captions"})
    focal_px: float = field(default=525.0, metadata={"help": "CLEVR camera focal length at 480 px, for box estimates"})
    bbox_tolerance: float = field(default=1.0, metadata={"help": "pixels a box may extend past the image edge"})


class ClevrLoader(DatasetLoader):
    """CLEVR scenes; see the module docstring for layouts, captions, boxes and ids."""

    format = "clevr"
    Options = ClevrOptions

    @property
    def root(self) -> Path:
        if self.path.is_file():
            parent = self.path.parent
            return parent.parent if parent.name == "scenes" else parent
        return self.path

    def _scene_files(self, split: str | None) -> list[Path]:
        if self.options.scenes:
            return [Path(self.options.scenes)]
        if self.path.is_file():
            return [self.path]
        if (self.root / "scenes.json").is_file():
            return [self.root / "scenes.json"]
        pattern = "CLEVR_*_scenes.json"
        found = sorted((self.root / "scenes").glob(pattern)) or sorted(self.root.glob(pattern))
        if not found:
            raise DataError(self.root, "no CLEVR scenes: expected scenes/CLEVR_<split>_scenes.json or scenes.json "
                                       "under it; or give the scenes file itself as the dataset path (--data FILE, "
                                       "or scenes=PATH in Python)")
        picked = [p for p in found if split_from_name(p.stem) == split]
        return picked or found

    def load(self, split: str | None = None) -> list[Sample]:
        samples: list[Sample] = []
        seen: dict[int, Path] = {}
        for path in self._scene_files(split):
            for s in self._read_scenes(path):
                if s.image_id in seen:
                    raise DataError(path, f"image id {s.image_id} also comes from {seen[s.image_id].name}")
                seen[s.image_id] = path
                samples.append(s)
        return filter_split(samples, split, self.root)

    def _caption_settings(self, info: Any, path: Path) -> tuple[CaptionerConfig, int]:
        info = info if isinstance(info, dict) else {}
        cfg = self.options.captioner
        if cfg is None and isinstance(info.get("captioner"), dict):
            known = {f.name for f in dataclasses.fields(CaptionerConfig)}
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in info["captioner"].items() if k in known}
            numbers = [x for v in values.values() for x in (v if isinstance(v, tuple) else (v,))]
            try:
                if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers):
                    raise ValueError("every setting must be a number or a list of numbers")
                cfg = CaptionerConfig(**values)
            except (TypeError, ValueError) as exc:
                raise DataError(path, f"invalid captioner settings: {exc}", "info.captioner") from None
        seed = self.options.caption_seed if self.options.caption_seed is not None else info.get("seed", 0)
        if not isinstance(seed, int):
            raise DataError(path, f"caption seed must be an integer, found {seed!r}", "info.seed")
        return cfg or CaptionerConfig(), seed

    def _read_scenes(self, path: Path) -> list[Sample]:
        data = read_json(path, dict)
        if not isinstance(data.get("scenes"), list):
            raise DataError(path, "missing required key 'scenes' (a list)" if "scenes" not in data
                            else "must be a list of scenes", None if "scenes" not in data else "scenes")
        real_layout = path.name != "scenes.json"
        file_split = split_from_name(path.stem) if real_layout else None
        ccfg, seed = self._caption_settings(data.get("info"), path)
        return [self._sample(scene, path, f"scenes[{k}]", real_layout, file_split, ccfg, seed)
                for k, scene in enumerate(data["scenes"])]

    def _image_path(self, name: str, split: str | None, real_layout: bool) -> Path:
        if self.options.image_dir:
            return Path(self.options.image_dir) / name
        if real_layout and split and (self.root / "images" / split).is_dir():
            return self.root / "images" / split / name
        return self.root / "images" / name

    def _image_size(self, scene: dict, image: Path, path: Path, where: str) -> tuple[int, int]:
        w, h = scene.get("width"), scene.get("height")
        if w is None and h is None:
            if not image.is_file():
                return CLEVR_IMAGE_WIDTH, CLEVR_IMAGE_HEIGHT
            try:
                with Image.open(image) as im:
                    return im.size
            except OSError:
                raise DataError(image, "not a readable image file") from None
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise DataError(path, f"width and height must be positive integers, found {w!r}x{h!r}", where)
        return w, h

    def _sample(self, scene: Any, path: Path, where: str, real_layout: bool, file_split: str | None,
                ccfg: CaptionerConfig, seed: int) -> Sample:
        require_keys(scene, ("image_index", "image_filename", "objects"), path, where)
        index = scene["image_index"]
        if not isinstance(index, int) or index < 0:
            raise DataError(path, f"image_index must be a non-negative integer, found {index!r}", where)
        name = safe_relpath(scene["image_filename"], path, where + ".image_filename")
        split = scene.get("split") if isinstance(scene.get("split"), str) else None
        split = split if split in SPLIT_ID_OFFSETS else file_split
        image = self._image_path(name, split, real_layout)
        width, height = self._image_size(scene, image, path, where)
        if not isinstance(scene["objects"], list):
            raise DataError(path, "must be a list of objects", where + ".objects")
        objects = [self._object(o, path, f"{where}.objects[{j}]", width, height)
                   for j, o in enumerate(scene["objects"])]
        self._check_scene_graph(scene, path, where)
        image_id = index + (SPLIT_ID_OFFSETS.get(split or "train", 0) if real_layout else 0)
        graph = {**scene, "width": width, "height": height}  # holds() reads the width for left/right-half facts
        captions = caption_scene(graph, ccfg, seed=seed)
        return Sample(image_id, self.relative_image_path(image), width, height, captions, objects, split, graph)

    def _object(self, obj: Any, path: Path, where: str, width: int, height: int) -> ObjectAnnotation:
        require_keys(obj, _OBJECT_KEYS, path, where)
        v = clevr_vocabulary()
        for key, valid in (("color", v.colors), ("size", v.sizes), ("shape", v.shapes), ("material", v.materials)):
            if not isinstance(obj[key], str) or obj[key] not in valid:
                raise DataError(path, f"unknown {key} {obj[key]!r}; valid values are {sorted(valid)}", f"{where}.{key}")
        for key in ("3d_coords", "pixel_coords"):
            if not (isinstance(obj[key], list) and len(obj[key]) == 3
                    and all(isinstance(t, (int, float)) for t in obj[key])):
                raise DataError(path, f"{key} must be three numbers", f"{where}.{key}")
        box = obj["bbox"] if "bbox" in obj else self._estimate_box(obj, width, height)
        box = self.check_box(box, width, height, path, where + ".bbox")
        return ObjectAnnotation(object_name(obj), box, object_attributes(obj))

    def _estimate_box(self, obj: dict, width: int, height: int) -> list[float]:
        """A square around the projected centre, sized by radius and depth (real CLEVR has no boxes)."""
        x, y, depth = obj["pixel_coords"]
        half = 1.1 * self.options.focal_px * (width / CLEVR_IMAGE_WIDTH) * clevr_vocabulary().sizes[obj["size"]] / max(
            float(depth), 1e-3)
        x0, y0 = max(x - half, 0.0), max(y - half, 0.0)
        x1, y1 = min(x + half, float(width)), min(y + half, float(height))
        return [round(x0, 2), round(y0, 2), round(max(x1 - x0, 0.0), 2), round(max(y1 - y0, 0.0), 2)]

    @staticmethod
    def _check_scene_graph(scene: dict, path: Path, where: str) -> None:
        """``relationships`` (one list of object indices per object) and ``directions`` (3-vectors), if present."""
        n = len(scene["objects"])
        for key in ("relationships", "directions"):
            if key in scene and not isinstance(scene[key], dict):
                raise DataError(path, "must be an object keyed by relation name", f"{where}.{key}")
        rels, dirs = scene.get("relationships") or {}, scene.get("directions") or {}
        for rel in RELATIONS:
            if rel in dirs and not (isinstance(dirs[rel], list) and len(dirs[rel]) == 3 and all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) for t in dirs[rel])):
                raise DataError(path, "must be three numbers", f"{where}.directions.{rel}")
            if rel not in rels:
                continue
            table = rels[rel]
            if not isinstance(table, list) or len(table) != n:
                raise DataError(path, f"needs one list per object ({n})", f"{where}.relationships.{rel}")
            for i, row in enumerate(table):
                if not isinstance(row, list) or any(not isinstance(j, int) or not 0 <= j < n for j in row):
                    raise DataError(path, f"object indices must lie in 0..{n - 1}", f"{where}.relationships.{rel}[{i}]")
