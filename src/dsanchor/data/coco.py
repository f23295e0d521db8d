"""COCO captions (+ optional instances and splits) -> :class:`Sample` records.

How files are found under the dataset root (each can be given explicitly instead):

* captions: ``root/captions.json`` (the synth layout), else every ``root/annotations/captions_*.json``,
  else every ``root/captions_*.json``. ``path`` may also be one captions file.
* instances: ``root/instances.json`` next to ``captions.json``, else ``instances_<suffix>.json`` beside each
  ``captions_<suffix>.json`` (e.g. ``instances_val2017.json``). Optional: without it samples have no objects.
* splits: ``root/splits.json`` (``{"train": [ids], "val": [...], "test": [...]}``, written by the
  generator), else Karpathy's ``dataset_coco.json`` in the root or ``root/annotations``. Without a split
  file, the split comes from the captions file name ("captions_val2017.json" -> "val"), else it is None.
* images: the ``image_dir`` option, else the first of ``root/images/<suffix>/``, ``root/images/``,
  ``root/<suffix>/`` (e.g. ``root/val2017/``) and ``root/`` that holds the first image's ``file_name``.

Objects are named by their category ("dog"; "red cube" for synth) with the annotation's optional
``attributes`` list (the generator writes [size, material]). A caption annotation may carry
``granularity`` ("scene", "object", "relation"); real COCO captions have none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsanchor.data.base import (
    DatasetLoader,
    check_caption,
    check_granularity,
    filter_split,
    read_json,
    read_splits,
    require_keys,
    safe_relpath,
    split_from_name,
)
from dsanchor.data.facts import check_fact
from dsanchor.data.records import Caption, ObjectAnnotation, Sample
from dsanchor.errors import DataError

__all__ = ["CocoOptions", "CocoLoader", "SynthLoader"]


@dataclass
class CocoOptions:
    """Explicit file locations (each found under the root when left out) and check tolerances."""

    captions: str | None = field(default=None, metadata={"help": "a COCO captions JSON file"})
    instances: str | None = field(default=None, metadata={"help": "a COCO instances JSON file"})
    splits: str | None = field(default=None, metadata={"help": "splits.json or Karpathy dataset_coco.json"})
    image_dir: str | None = field(default=None, metadata={"help": "folder holding the images' file_name paths"})
    bbox_tolerance: float = field(default=1.0, metadata={"help": "pixels a box may extend past the image edge"})


def _list_of(data: dict, key: str, path: Path) -> list:
    if key not in data:
        raise DataError(path, f"missing required key {key!r}")
    if not isinstance(data[key], list):
        raise DataError(path, f"must be a list, found {type(data[key]).__name__}", key)
    return data[key]


class CocoLoader(DatasetLoader):
    """COCO captions format; see the module docstring for file discovery."""

    format = "coco"
    Options = CocoOptions

    @property
    def root(self) -> Path:
        if self.path.is_file():
            parent = self.path.parent
            return parent.parent if parent.name == "annotations" else parent
        return self.path

    def _captions_files(self, split: str | None) -> list[Path]:
        if self.options.captions:
            return [Path(self.options.captions)]
        if self.path.is_file():
            return [self.path]
        if (self.root / "captions.json").is_file():
            return [self.root / "captions.json"]
        found = sorted((self.root / "annotations").glob("captions_*.json")) or sorted(self.root.glob("captions_*.json"))
        if not found:
            raise DataError(self.root, "no COCO captions file: expected captions.json or annotations/captions_*.json "
                                       "under it; or give the captions file itself as the dataset path (--data "
                                       "FILE, or captions=PATH in Python)")
        picked = [p for p in found if split_from_name(p.stem[len("captions_"):]) == split]
        return picked if split and picked and not self._splits_file() else found

    def _instances_file(self, captions: Path) -> Path | None:
        if self.options.instances:
            return Path(self.options.instances)
        if captions.name == "captions.json":
            cand = captions.parent / "instances.json"
        else:
            cand = captions.parent / captions.name.replace("captions_", "instances_", 1)
        return cand if cand.is_file() and cand != captions else None

    def _splits_file(self) -> Path | None:
        if self.options.splits:
            return Path(self.options.splits)
        cands = (self.root / "splits.json", self.root / "dataset_coco.json",
                 self.root / "annotations" / "dataset_coco.json")
        return next((c for c in cands if c.is_file()), None)

    def _image_dir(self, suffix: str, first_file: str | None) -> Path:
        if self.options.image_dir:
            return Path(self.options.image_dir)
        cands = [self.root / "images" / suffix, self.root / "images", self.root / suffix, self.root]
        cands = [c for c in cands if c.is_dir()]
        for c in cands:
            if first_file and (c / first_file).is_file():
                return c
        return cands[0] if cands else self.root

    def load(self, split: str | None = None) -> list[Sample]:
        samples: dict[int, Sample] = {}
        for cap_path in self._captions_files(split):
            self._read_captions(cap_path, samples)
            inst = self._instances_file(cap_path)
            if inst is not None:
                self._read_instances(inst, samples, cap_path)
        splits_path = self._splits_file()
        if splits_path is not None:
            by_id = read_splits(splits_path)
            for s in samples.values():
                s.split = by_id.get(s.image_id)
        return filter_split(list(samples.values()), split, self.root)

    def _add_images(self, images: list, path: Path, samples: dict[int, Sample]) -> None:
        """Samples for the ``images`` list of ``path``; ids seen in an earlier file are kept as they are."""
        suffix = path.stem.split("_", 1)[1] if "_" in path.stem else ""  # "val2017" in captions_val2017.json
        first = images[0].get("file_name") if images and isinstance(images[0], dict) else None
        image_dir = self._image_dir(suffix, first if isinstance(first, str) else None)
        split = split_from_name(suffix) if suffix else None
        new: set[int] = set()
        for k, im in enumerate(images):
            where = f"images[{k}]"
            require_keys(im, ("id", "file_name", "width", "height"), path, where, ints=("id", "width", "height"))
            if im["id"] in new:
                raise DataError(path, f"duplicate image id {im['id']}", where)
            name = safe_relpath(im["file_name"], path, where + ".file_name")
            w, h = im["width"], im["height"]
            if w <= 0 or h <= 0:
                raise DataError(path, f"width and height must be positive, found {w}x{h}", where)
            if im["id"] not in samples:  # the instances file lists the captions file's images again
                samples[im["id"]] = Sample(im["id"], self.relative_image_path(image_dir / name), w, h, split=split)
                new.add(im["id"])

    def _read_captions(self, path: Path, samples: dict[int, Sample]) -> None:
        data = read_json(path, dict)
        self._add_images(_list_of(data, "images", path), path, samples)
        anns = _list_of(data, "annotations", path)
        for k, a in enumerate(anns):
            where = f"annotations[{k}]"
            require_keys(a, ("image_id", "caption"), path, where, ints=("image_id",))
            if a["image_id"] not in samples:
                raise DataError(path, f"image_id {a['image_id']!r} is not in 'images'", where)
            text = check_caption(a["caption"], path, where + ".caption")
            gran = check_granularity(a.get("granularity"), path, where + ".granularity")
            fact = check_fact(a.get("fact"), path, where + ".fact")
            samples[a["image_id"]].captions.append(Caption(text, gran, fact))

    def _read_instances(self, path: Path, samples: dict[int, Sample], captions: Path) -> None:
        data = read_json(path, dict)
        anns = _list_of(data, "annotations", path)
        cats = {}
        for k, c in enumerate(_list_of(data, "categories", path)):
            require_keys(c, ("id", "name"), path, f"categories[{k}]", ints=("id",))
            cats[c["id"]] = str(c["name"])
        if isinstance(data.get("images"), list):
            self._add_images(data["images"], path, samples)
        for k, a in enumerate(anns):
            where = f"annotations[{k}]"
            require_keys(a, ("image_id", "category_id", "bbox"), path, where, ints=("image_id", "category_id"))
            s = samples.get(a["image_id"])
            if s is None:
                raise DataError(path, f"image_id {a['image_id']!r} is not an image of {captions.name} or this file",
                                where)
            if a["category_id"] not in cats:
                raise DataError(path, f"category_id {a['category_id']!r} is not in 'categories'", where)
            box = self.check_box(a["bbox"], s.width, s.height, path, where + ".bbox")
            attrs = a.get("attributes") or []
            if not isinstance(attrs, list) or not all(isinstance(t, str) for t in attrs):
                raise DataError(path, "attributes must be a list of strings", where + ".attributes")
            s.objects.append(ObjectAnnotation(cats[a["category_id"]], box, tuple(attrs)))


class SynthLoader(CocoLoader):
    """The generator's output (``dsanchor data synth``) read through its COCO files, with each image's scene
    graph from ``scenes.json`` (so that exact relevance is defined, as for the CLEVR loader)."""

    format = "synth"

    def load(self, split: str | None = None) -> list[Sample]:
        if not self.path.is_dir() or not (self.path / "captions.json").is_file():
            raise DataError(self.path, "not a synth dataset folder (no captions.json); create one with "
                                       "'dsanchor data synth --out DIR'")
        samples = super().load(split)
        scenes_file = self.path / "scenes.json"
        if not scenes_file.is_file():
            return samples
        data = read_json(scenes_file, dict)
        by_id = {sc.get("image_index"): sc for sc in _list_of(data, "scenes", scenes_file) if isinstance(sc, dict)}
        for s in samples:
            if s.image_id not in by_id:
                raise DataError(scenes_file, f"no scene for image id {s.image_id} of captions.json", "scenes")
            s.scene = {**by_id[s.image_id], "width": s.width, "height": s.height}
        return samples
