"""The dataset loader extension point and the input checks every loader shares.

The registry (``load_dataset``, ``create_loader``, ``list_formats``) is in :mod:`dsanchor.data.formats`; it
imports the loaders, which import only this module. Each loader validates its files as it reads them and raises
:class:`~dsanchor.errors.DataError` (file, field, what is wrong) for malformed JSON, a wrong top-level
type, missing keys, unknown image ids, bad boxes, empty captions and file names that escape the root.
A box that reaches past the image edge by at most the loader's ``bbox_tolerance`` pixels is clipped to the
image and counted in :attr:`DatasetLoader.clipped_boxes`; one further out is an error. Loading never opens
images; :mod:`dsanchor.data.check` does, and :func:`missing_images` finds the samples whose file is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

from dsanchor.data.records import GRANULARITIES, Sample
from dsanchor.errors import ConfigError, DataError

__all__ = [
    "DatasetLoader", "read_json", "require_keys", "check_bbox", "box_overshoot", "clip_box", "missing_images",
    "image_root", "safe_relpath", "check_caption", "read_splits", "split_from_name", "filter_split", "SPLIT_NAMES",
]

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


class DatasetLoader(ABC):
    """Reads one dataset format into :class:`Sample` records.

    Subclasses set ``format``, ``Options`` (a dataclass of keyword options, each commented) and
    implement :meth:`load`. ``root`` is the dataset folder; image paths in the samples are relative to
    it (absolute only when an ``image_dir`` option points outside it). Loaders check boxes with
    :meth:`check_box`, which clips those within ``Options.bbox_tolerance`` pixels of the image and counts them
    in ``clipped_boxes``.
    """

    format: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, path: str | Path, **options: Any):
        names = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown {self.format} loader options {unknown}; valid options are {names}")
        self.options = self.Options(**options)
        tolerance = getattr(self.options, "bbox_tolerance", 0.0)
        if not tolerance >= 0:
            raise ConfigError(f"bbox_tolerance must be a number of pixels >= 0, got {tolerance!r}")
        self.clipped_boxes = 0  # boxes past the image edge by at most bbox_tolerance, clipped by check_box
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(self.path, f"{self.format} dataset not found (no such file or folder)")

    @property
    @abstractmethod
    def root(self) -> Path:
        """The dataset folder that image paths are relative to."""

    @abstractmethod
    def load(self, split: str | None = None) -> list[Sample]:
        """All samples, or those of ``split`` ("train", "val" or "test")."""

    def check_box(self, box: Any, width: float, height: float, path: Path, where: str) -> tuple[float, ...]:
        """:func:`check_bbox` with this loader's ``bbox_tolerance``; counts the boxes it clips."""
        checked = check_bbox(box, width, height, path, where, self.options.bbox_tolerance)
        if checked != tuple(float(v) for v in box):
            self.clipped_boxes += 1
        return checked

    def relative_image_path(self, path: Path) -> str:
        """``path`` relative to the root when it is inside it, else absolute."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path.resolve())


# ---- shared checks ------------------------------------------------------------------------------------------

def read_json(path: Path, expect: type = dict) -> Any:
    """Parse a JSON file whose top level must be ``expect`` (dict or list)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise DataError(path, "not a UTF-8 JSON text file") from None
    if not isinstance(data, expect):
        want = "an object {...}" if expect is dict else "a list [...]"
        raise DataError(path, f"top level must be {want}, found {type(data).__name__}")
    return data


def require_keys(obj: Any, keys: tuple[str, ...], path: Path, where: str, ints: tuple[str, ...] = ()) -> None:
    """``obj`` must be a JSON object holding all ``keys``; those in ``ints`` must be integers."""
    if not isinstance(obj, dict):
        raise DataError(path, f"must be an object, found {type(obj).__name__}", where)
    for k in keys:
        if k not in obj:
            raise DataError(path, f"missing required key {k!r}", where)
    for k in ints:
        if not isinstance(obj[k], int) or isinstance(obj[k], bool):
            raise DataError(path, f"{k!r} must be an integer, found {obj[k]!r}", where)


def box_overshoot(box: tuple[float, float, float, float], width: float, height: float) -> float:
    """Pixels that [x, y, w, h] reaches past a ``width`` x ``height`` image (its worst edge; 0 when inside)."""
    x, y, w, h = box
    return max(0.0, -x, -y, x + w - width, y + h - height)


def clip_box(box: tuple[float, float, float, float], width: float, height: float) -> tuple[float, float, float, float]:
    """[x, y, w, h] cut to the ``width`` x ``height`` image (a box wholly outside keeps zero width or height)."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, x0), width), min(max(y + h, y0), height)
    return (x0, y0, x1 - x0, y1 - y0)


def check_bbox(box: Any, width: float, height: float, path: Path, where: str, tolerance: float) -> tuple[float, ...]:
    """A valid [x, y, w, h] in a ``width`` x ``height`` image, clipped to it when it reaches past an edge by at most
    ``tolerance`` pixels; further out is an error."""
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise DataError(path, f"box must be four numbers [x, y, w, h], found {box!r}", where)
    xywh = tuple(float(v) for v in box)
    if xywh[2] < 0 or xywh[3] < 0:
        raise DataError(path, f"box {list(box)} has a negative width or height", where)
    over = box_overshoot(xywh, width, height)
    if over > tolerance:
        raise DataError(path, f"box {list(box)} lies outside the {width:g}x{height:g} image by {over:g} px; boxes "
                              f"up to bbox_tolerance={tolerance:g} px past an edge are clipped, so fix it or raise "
                              "the tolerance", where)
    return clip_box(xywh, width, height) if over > 0 else xywh


def image_root(path: str | Path) -> Path:
    """The folder a dataset given as ``path`` (a folder, or one file in it) holds its images under."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def missing_images(samples: list[Sample], root: str | Path) -> list[Sample]:
    """The samples whose image file does not exist under ``root`` (loaders never open images)."""
    root = Path(root)
    return [s for s in samples if not (root / s.image_path).is_file()]


def safe_relpath(name: Any, path: Path, where: str) -> str:
    """An image file name that stays inside the dataset root (relative, no '..')."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(path, f"image file name must be a non-empty string, found {name!r}", where)
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise DataError(path, f"image file name {name!r} is absolute; it must be relative to the dataset root", where)
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DataError(path, f"image file name {name!r} escapes the dataset root with '..'", where)
    return name


def check_caption(text: Any, path: Path, where: str) -> str:
    """A non-empty caption string, stripped."""
    if not isinstance(text, str):
        raise DataError(path, f"caption must be a string, found {type(text).__name__}", where)
    if not text.strip():
        raise DataError(path, "empty caption; every caption needs text", where)
    return text.strip()


def check_granularity(value: Any, path: Path, where: str) -> str | None:
    """``None`` or one of scene/object/relation."""
    if value is None or value in GRANULARITIES:
        return value
    raise DataError(path, f"granularity must be one of {list(GRANULARITIES)}, found {value!r}", where)


def split_from_name(name: str) -> str | None:
    """"train2017" -> "train", "CLEVR_val_scenes" -> "val"; None when the name says no split."""
    low = name.lower()
    for s in SPLIT_NAMES:
        if low.startswith(s) or f"_{s}" in low:
            return s
    return None


def read_splits(path: Path) -> dict[int, str]:
    """Image id -> split from ``{"train": [ids], "val": [...], "test": [...]}`` or a Karpathy file.

    Karpathy's ``dataset_coco.json`` lists ``images[]`` with ``cocoid`` (or ``imgid``) and ``split``;
    its "restval" images count as train, as in the Karpathy training recipe.
    """
    data = read_json(path, dict)
    out: dict[int, str] = {}
    if "images" in data:
        if not isinstance(data["images"], list):
            raise DataError(path, "must be a list of images", "images")
        for k, im in enumerate(data["images"]):
            require_keys(im, ("split",), path, f"images[{k}]")
            image_id = im.get("cocoid", im.get("imgid", im.get("id")))
            if not isinstance(image_id, int):
                raise DataError(path, "missing an integer 'cocoid' or 'imgid'", f"images[{k}]")
            if im["split"] not in (*SPLIT_NAMES, "restval"):
                raise DataError(path, f"split must be one of {[*SPLIT_NAMES, 'restval']}, found {im['split']!r}",
                                f"images[{k}].split")
            out[image_id] = "train" if im["split"] == "restval" else im["split"]
        return out
    unknown = sorted(set(data) - set(SPLIT_NAMES) - {"restval"})
    if unknown:
        raise DataError(path, f"unknown split names {unknown}; expected keys among {list(SPLIT_NAMES)}")
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DataError(path, "must be a list of integer image ids", name)
        out.update({i: "train" if name == "restval" else name for i in ids})
    return out


def filter_split(samples: list[Sample], split: str | None, path: Path) -> list[Sample]:
    """Samples of ``split`` (all when None); a split the data does not have is an error."""
    if split is None:
        return samples
    if split not in SPLIT_NAMES:
        raise DataError(path, f"unknown split {split!r}; valid splits are {list(SPLIT_NAMES)}")
    present = sorted({s.split for s in samples if s.split})
    if split not in present:
        have = f"the splits present are {present}" if present else "the dataset has no split information"
        raise DataError(path, f"no images in split {split!r}; {have}")
    return [s for s in samples if s.split == split]
