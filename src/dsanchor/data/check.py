"""Validate a dataset completely, images included, and summarise it (``dsanchor data check``).

Loading already checks every annotation file (see :mod:`dsanchor.data.base`); the check also opens
every image: it must exist, decode, and have the width and height the annotations say.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from dsanchor.data.base import create_loader
from dsanchor.data.records import Sample
from dsanchor.errors import DataError

__all__ = ["DatasetSummary", "summarize", "verify_images", "check_dataset", "format_summary"]


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


def _verify_one(path: Path, sample: Sample) -> None:
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        kind = "not an image file" if isinstance(exc, UnidentifiedImageError) else f"unreadable image ({exc})"
        raise DataError(path, kind) from None
    if size != (sample.width, sample.height):
        raise DataError(path, f"image is {size[0]}x{size[1]} but the annotations say {sample.width}x{sample.height} "
                              f"(image id {sample.image_id})")


def verify_images(samples: list[Sample], root: str | Path, allow_missing: bool = False) -> int:
    """Open every image; returns the number of missing files (an error unless ``allow_missing``)."""
    root = Path(root)
    missing = [s for s in samples if not (root / s.image_path).is_file()]
    if missing and not allow_missing:
        first = root / missing[0].image_path
        raise DataError(first, f"image file missing (image id {missing[0].image_id}); {len(missing)} of "
                               f"{len(samples)} images are missing")
    absent = {id(s) for s in missing}
    for s in samples:
        if id(s) not in absent:
            _verify_one(root / s.image_path, s)
    return len(missing)


def check_dataset(format: str, path: str | Path, split: str | None = None, allow_missing: bool = False,
                  **options: Any) -> DatasetSummary:
    """Load (validating every file) and open every image; raises DataError at the first problem."""
    loader = create_loader(format, path, **options)
    samples = loader.load(split)
    summary = summarize(samples, format, loader.root)
    summary.missing_images = verify_images(samples, loader.root, allow_missing)
    return summary


def format_summary(s: DatasetSummary) -> str:
    """The human-readable summary ``dsanchor data check`` prints."""
    gran = ", ".join(f"{k} {v}" for k, v in s.captions_by_granularity.items())
    splits = ", ".join(f"{k} {v}" for k, v in s.splits.items())
    return "\n".join([
        f"dataset: {s.format} at {s.root}",
        f"images: {s.images}" + (f" ({splits})" if splits else ""),
        f"captions: {s.captions}" + (f" ({gran})" if gran else ""),
        f"objects: {s.objects}",
        f"categories: {s.categories}",
        f"missing image files: {s.missing_images}",
    ])
