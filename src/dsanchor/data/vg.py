"""Visual Genome -> :class:`Sample` records.

Files under the root (each can be given explicitly; ``<name>_v1_*.json`` is also found, e.g.
``objects_v1_2.json``):

* ``image_data.json`` (required): ``[{"image_id" (v1.4) or "id" (v1.2), "url", "width", "height", ...}]``.
* ``region_descriptions.json``: ``[{"id": image id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
  "width", "height"}]}]``; each region phrase becomes a caption with granularity "object".
* ``objects.json``: ``[{"image_id" or "id", "objects": [{"object_id" or "id", "x", "y", "w", "h", "names": [...]
  (v1.2/v1.4) or "name", "merged_object_ids": [...]}]}]``. An object whose id is listed in another
  object's ``merged_object_ids`` is a duplicate and is skipped. The first name is the object name.
* ``attributes.json`` (optional): same shape as objects, each object with ``attributes: [...]``, joined
  to the objects by ``object_id``.
* ``splits.json`` (optional): ``{"train": [ids], "val": [...], "test": [...]}``; VG has no official split.

At least one of region_descriptions and objects must exist. Images: ``image_dir/<file>``, else the
url's last folder and file under the root (``root/VG_100K_2/1.jpg``), else ``root/images/<file>``, else
``root/<file>``; the first that exists (the url form when none does).

Boxes: real VG boxes often reach a pixel or two past the image edge (x = -1, x + w = width + 2). A box
(object or region) past an edge by at most ``bbox_tolerance`` pixels (default 8) is clipped to the image
and counted; one further out is an error. Measured on 50 real VG v1.4 records (6,306 boxes: 4,781 regions,
1,525 objects), 9 object boxes overshoot, 8 by 1 px and 1 by 2 px, and no region does; on the full v1.2
release, 5,654 of 5.4M regions have a negative coordinate, mostly -1 or -2, a few hundreds of pixels off
(y = -904; visual_genome_python_driver issue 21). 8 px is 4x the largest slip seen and 1% of VG's 800-px
long side (about 2 px at a 224-px encoder input): clipping moves no edge noticeably, and a box that is
really wrong is still reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsanchor.data.base import (
    DatasetLoader,
    check_caption,
    filter_split,
    read_json,
    read_splits,
    require_keys,
    safe_relpath,
)
from dsanchor.data.records import Caption, ObjectAnnotation, Sample
from dsanchor.errors import DataError

__all__ = ["VisualGenomeOptions", "VisualGenomeLoader"]


@dataclass
class VisualGenomeOptions:
    """Explicit file locations (each found under the root when left out) and check tolerances."""

    image_data: str | None = field(default=None, metadata={"help": "image_data.json"})
    region_descriptions: str | None = field(default=None, metadata={"help": "region_descriptions.json"})
    objects: str | None = field(default=None, metadata={"help": "objects.json (v1.2 or v1.4)"})
    attributes: str | None = field(default=None, metadata={"help": "attributes.json"})
    splits: str | None = field(default=None, metadata={"help": "splits.json {split: [image ids]}"})
    image_dir: str | None = field(default=None, metadata={"help": "folder holding the images"})
    bbox_tolerance: float = field(default=8.0, metadata={
        "help": "pixels a box may reach past the image edge; such boxes are clipped to the image and counted"})


def _image_id(entry: Any, path: Path, where: str) -> int:
    if not isinstance(entry, dict):
        raise DataError(path, f"must be an object, found {type(entry).__name__}", where)
    image_id = entry.get("image_id", entry.get("id"))
    if not isinstance(image_id, int):
        raise DataError(path, "missing required key 'image_id' (or 'id')", where)
    return image_id


class VisualGenomeLoader(DatasetLoader):
    """Visual Genome v1.2 / v1.4; see the module docstring for files and layout."""

    format = "vg"
    Options = VisualGenomeOptions

    @property
    def root(self) -> Path:
        return self.path.parent if self.path.is_file() else self.path

    def _file(self, name: str, required: bool = False) -> Path | None:
        explicit = getattr(self.options, name)
        if explicit:
            return Path(explicit)
        cands = [self.root / f"{name}.json"] + sorted(self.root.glob(f"{name}_v1_*.json"), reverse=True)
        found = next((c for c in cands if c.is_file()), None)
        if found is None and required:
            raise DataError(self.root, f"no Visual Genome {name}.json under it; put it there (or pass {name}=PATH "
                                       "in Python)")
        return found

    def load(self, split: str | None = None) -> list[Sample]:
        samples = self._read_images(self._file("image_data", required=True))
        regions, objects = self._file("region_descriptions"), self._file("objects")
        if regions is None and objects is None:
            raise DataError(self.root, "no region_descriptions.json or objects.json under it; one is needed")
        if regions is not None:
            self._read_regions(regions, samples)
        if objects is not None:
            attrs = self._file("attributes")
            self._read_objects(objects, samples, self._read_attributes(attrs) if attrs else {})
        splits = self._file("splits")
        if splits is not None:
            by_id = read_splits(splits)
            for s in samples.values():
                s.split = by_id.get(s.image_id)
        return filter_split(list(samples.values()), split, self.root)

    def _image_file(self, entry: dict, image_id: int, path: Path, where: str) -> Path:
        url = entry.get("url")
        parts = url.rstrip("/").split("/")[-2:] if isinstance(url, str) and url else [f"{image_id}.jpg"]
        rel = safe_relpath("/".join(parts), path, where + ".url")
        base = parts[-1]
        cands = ([Path(self.options.image_dir) / base] if self.options.image_dir else []) + [
            self.root / rel, self.root / "images" / base, self.root / base]
        return next((c for c in cands if c.is_file()), cands[0])

    def _read_images(self, path: Path) -> dict[int, Sample]:
        samples: dict[int, Sample] = {}
        for k, im in enumerate(read_json(path, list)):
            where = f"[{k}]"
            image_id = _image_id(im, path, where)
            require_keys(im, ("width", "height"), path, where, ints=("width", "height"))
            if image_id in samples:
                raise DataError(path, f"duplicate image id {image_id}", where)
            w, h = im["width"], im["height"]
            if w <= 0 or h <= 0:
                raise DataError(path, f"width and height must be positive, found {w}x{h}", where)
            image = self._image_file(im, image_id, path, where)
            samples[image_id] = Sample(image_id, self.relative_image_path(image), w, h)
        return samples

    def _sample_for(self, image_id: Any, samples: dict[int, Sample], path: Path, where: str) -> Sample:
        if not isinstance(image_id, int) or image_id not in samples:
            raise DataError(path, f"image id {image_id!r} is not in image_data.json", where)
        return samples[image_id]

    def _read_regions(self, path: Path, samples: dict[int, Sample]) -> None:
        for k, entry in enumerate(read_json(path, list)):
            require_keys(entry, ("regions",), path, f"[{k}]")
            if not isinstance(entry["regions"], list):
                raise DataError(path, "must be a list of regions", f"[{k}].regions")
            for r, reg in enumerate(entry["regions"]):
                where = f"[{k}].regions[{r}]"
                require_keys(reg, ("phrase", "x", "y", "width", "height"), path, where)
                s = self._sample_for(reg.get("image_id", entry.get("id", entry.get("image_id"))), samples, path, where)
                self.check_box([reg["x"], reg["y"], reg["width"], reg["height"]], s.width, s.height, path, where)
                s.captions.append(Caption(check_caption(reg["phrase"], path, where + ".phrase"), "object"))

    def _read_attributes(self, path: Path) -> dict[int, tuple[str, ...]]:
        out: dict[int, tuple[str, ...]] = {}
        for k, entry in enumerate(read_json(path, list)):
            require_keys(entry, ("attributes",), path, f"[{k}]")
            if not isinstance(entry["attributes"] or [], list):
                raise DataError(path, "must be a list of objects", f"[{k}].attributes")
            for j, obj in enumerate(entry["attributes"] or []):
                where = f"[{k}].attributes[{j}]"
                require_keys(obj, (), path, where)
                oid = obj.get("object_id", obj.get("id"))
                names = obj.get("attributes") or []
                if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
                    raise DataError(path, "attributes must be a list of strings", where + ".attributes")
                if isinstance(oid, int):
                    out[oid] = tuple(t.strip() for t in names if t.strip())
        return out

    @staticmethod
    def _object_name(obj: dict, path: Path, where: str) -> str:
        names = obj.get("names")
        name = names[0] if isinstance(names, list) and names else obj.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(path, "object has no name (needs 'names': [...] or 'name')", where)
        return name.strip()

    def _read_objects(self, path: Path, samples: dict[int, Sample], attributes: dict[int, tuple[str, ...]]) -> None:
        for k, entry in enumerate(read_json(path, list)):
            s = self._sample_for(_image_id(entry, path, f"[{k}]"), samples, path, f"[{k}]")
            require_keys(entry, ("objects",), path, f"[{k}]")
            objs = entry["objects"]
            if not isinstance(objs, list):
                raise DataError(path, "must be a list of objects", f"[{k}].objects")
            merged = {m for o in objs if isinstance(o, dict) and isinstance(o.get("merged_object_ids"), list)
                      for m in o["merged_object_ids"] if isinstance(m, int)}
            for j, obj in enumerate(objs):
                where = f"[{k}].objects[{j}]"
                require_keys(obj, ("x", "y", "w", "h"), path, where)
                oid = obj.get("object_id", obj.get("id"))
                if isinstance(oid, int) and oid in merged:
                    continue
                box = self.check_box([obj["x"], obj["y"], obj["w"], obj["h"]], s.width, s.height, path, where)
                attrs = attributes.get(oid, ()) if isinstance(oid, int) else ()
                s.objects.append(ObjectAnnotation(self._object_name(obj, path, where), box, attrs))
