"""Validate a dataset completely, images included, and summarise it (``dsanchor data check``).

Loading already checks every annotation file (see :mod:`dsanchor.data.base`) and clips the boxes that
reach past the image edge by at most ``bbox_tolerance`` pixels; the summary counts them. The check also
opens every image: it must exist, decode, and have the width and height the annotations say. Missing image
files are an error that gives their number and a few names; with ``allow_missing`` the check goes on with
the images that are there and the summary counts the missing ones (Visual Genome's annotation files, for
one, are often used without the images).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dsanchor.data.base import missing_images
from dsanchor.data.formats import LOADERS, create_loader
from dsanchor.data.records import Sample
from dsanchor.errors import DataError

__all__ = ["DatasetSummary", "summarize", "verify_images", "check_dataset", "format_summary"]

NAMES_SHOWN = 3  # missing image files named in an error or a summary


@dataclass
class DatasetSummary:
    """Counts of one checked dataset."""

    format: str  # the loader's format name
    root: str  # the dataset folder
    images: int
    captions: int
    captions_by_granularity: dict[str, int]  # "scene", "object", "relation" and "unknown"
    objects: int
    categories: int  # distinct object names
    splits: dict[str, int] = field(default_factory=dict)  # images per split ("none" when unassigned)
    missing_images: int = 0  # image files not found (only non-zero with allow_missing)
    missing_examples: list[str] = field(default_factory=list)  # the first few of them, relative to the root
    clipped_boxes: int = 0  # boxes past the image edge by at most bbox_tolerance, clipped to the image
    bbox_tolerance: float | None = None  # the loader's limit in pixels (None when it has none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: list[Sample], format: str, root: str | Path) -> DatasetSummary:
    """Counts of images, captions (per granularity), objects, categories and splits."""
    by_gran = Counter(c.granularity or "unknown" for s in samples for c in s.captions)
    return DatasetSummary(
        format=format, root=str(root), images=len(samples), captions=sum(by_gran.values()),
        captions_by_granularity=dict(sorted(by_gran.items())),
        objects=sum(len(s.objects) for s in samples),
        categories=len({o.name for s in samples for o in s.objects}),
        splits=dict(sorted(Counter(s.split or "none" for s in samples).items())),
    )


def _verify_one(path: Path, sample: Sample) -> str | None:
    """What is wrong with one image file, or None."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return "not an image file" if isinstance(exc, UnidentifiedImageError) else f"unreadable image ({exc})"
    if size != (sample.width, sample.height):
        return (f"image is {size[0]}x{size[1]} but the annotations say {sample.width}x{sample.height} "
                f"(image id {sample.image_id})")
    return None


def _some(names: list[str], total: int) -> str:
    """The first few ``names`` of ``total``: "a.jpg, b.jpg, c.jpg and 47 more"."""
    more = total - min(len(names), NAMES_SHOWN)
    return ", ".join(names[:NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


def verify_images(samples: list[Sample], root: str | Path, allow_missing: bool = False) -> list[str]:
    """Open every image that exists; returns the missing files, relative to ``root``.

    Missing files are an error (their number and a few names) unless ``allow_missing``.
    """
    root = Path(root)
    missing = missing_images(samples, root)
    names = [s.image_path for s in missing]
    if missing and not allow_missing:
        raise DataError(root, f"{len(names)} of {len(samples)} image files missing: {_some(names, len(names))}; "
                              "add them, or pass --allow-missing (allow_missing=True) to check those that are there")
    absent = {id(s) for s in missing}
    bad = [(s.image_path, why) for s in samples if id(s) not in absent
           and (why := _verify_one(root / s.image_path, s)) is not None]
    if len(bad) == 1:
        raise DataError(root / bad[0][0], bad[0][1])
    if bad:
        shown = [f"{name} ({why})" for name, why in bad]
        raise DataError(root, f"{len(bad)} of {len(samples)} image files cannot be used: {_some(shown, len(bad))}")
    return names


def check_dataset(format: str, path: str | Path, split: str | None = None, allow_missing: bool = False,
                  **options: Any) -> DatasetSummary:
    """Load (validating every file) and open every image; raises DataError at the first annotation problem, or
    naming every image that cannot be used (their number and a few names).

    Args:
        allow_missing: count missing image files instead of failing, and check the images that are there.
        **options: loader options, e.g. ``bbox_tolerance=`` (see each loader's ``Options``).
    """
    loader_cls = LOADERS.get(format)  # an unknown format: create_loader says which are valid
    if loader_cls is not None and "skip_bad" in {f.name for f in fields(loader_cls.Options)}:
        options = {"skip_bad": True, **options}  # it reads image headers: gather every bad file, report them all
    loader = create_loader(format, path, **options)
    samples = loader.load(split)
    skipped = getattr(loader, "skipped", [])
    if skipped:
        total = len(samples) + len(skipped)
        raise DataError(loader.root, f"{len(skipped)} of {total} image files cannot be used: "
                                     f"{_some(skipped, len(skipped))}")
    summary = summarize(samples, format, loader.root)
    missing = verify_images(samples, loader.root, allow_missing)
    summary.missing_images, summary.missing_examples = len(missing), missing[:NAMES_SHOWN]
    summary.clipped_boxes = loader.clipped_boxes
    summary.bbox_tolerance = getattr(loader.options, "bbox_tolerance", None)
    return summary


def format_summary(s: DatasetSummary) -> str:
    """The human-readable summary ``dsanchor data check`` prints."""
    gran = ", ".join(f"{k} {v}" for k, v in s.captions_by_granularity.items())
    splits = ", ".join(f"{'no split' if k == 'none' else k} {v}" for k, v in s.splits.items())
    if set(s.splits) == {"none"}:
        splits = "no splits"
    return "\n".join([
        f"dataset: {s.format} at {s.root}",
        f"images: {s.images}" + (f" ({splits})" if splits else ""),
        f"captions: {s.captions}" + (f" ({gran})" if gran else ""),
        f"objects: {s.objects}",
        f"categories: {s.categories}",
        f"boxes clipped to the image: {s.clipped_boxes}"
        + (f" (up to {s.bbox_tolerance:g} px past an edge)" if s.bbox_tolerance is not None else ""),
        f"missing image files: {s.missing_images}"
        + (f" ({_some(s.missing_examples, s.missing_images)})" if s.missing_images else ""),
    ])
