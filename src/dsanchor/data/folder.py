"""A plain folder of images -> :class:`Sample` records without captions or boxes (format ``images``).

Every JPEG, PNG or WebP file under the root (recursively, extensions in any case) is one sample, in sorted path
order, with ids 0, 1, ... in that order; files of other image types are left out with a warning that counts them.
Sizes come from each file's header (the pixels are not read), so a file that is not an image is a one-line error
naming it, or with the option ``skip_bad`` is left out and listed in the loader's ``skipped``. Nothing has a
split: a folder is what ``dsanchor index`` searches, not training data.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsanchor.data.base import DatasetLoader, image_root
from dsanchor.data.records import Sample
from dsanchor.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "FolderLoader", "image_files", "image_samples"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# image types PIL may read but a folder index leaves out (each left-out file is counted in a warning)
OTHER_IMAGE_SUFFIXES = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif")

log = logging.getLogger(__name__)


def image_files(root: str | Path) -> list[Path]:
    """The JPEG, PNG and WebP files under ``root`` (recursive), sorted by their path relative to it."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = [p for p in root.rglob("*") if p.is_file()]
    others = Counter(p.suffix.lower() for p in files if p.suffix.lower() in OTHER_IMAGE_SUFFIXES)
    if others:
        log.warning("%s: left out %s (only %s files are read)", root,
                    ", ".join(f"{n} {suffix} file{'s' * (n > 1)}" for suffix, n in sorted(others.items())),
                    "/".join(s.lstrip(".").upper() for s in IMAGE_SUFFIXES if s != ".jpeg"))
    return sorted((p for p in files if p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.relative_to(root).as_posix())


class FolderLoader(DatasetLoader):
    format = "images"

    @dataclass
    class Options:
        skip_bad: bool = False  # leave out files whose header cannot be read (listed in ``skipped``)

    def __init__(self, path: str | Path, **options):
        super().__init__(path, **options)
        self.skipped: list[str] = []  # "path: why" of each file left out (skip_bad)

    @property
    def root(self) -> Path:
        return image_root(self.path)

    def load(self, split: str | None = None) -> list[Sample]:
        if split is not None:
            raise DataError(self.path, f"a plain image folder has no splits (asked for {split!r})")
        files = image_files(self.path)
        if not files:
            raise DataError(self.path, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        return image_samples(files, self.relative_image_path, skipped=self.skipped if self.options.skip_bad else None)


def image_samples(files: list[Path], name=lambda f: str(Path(f).resolve()),
                  skipped: list[str] | None = None) -> list[Sample]:
    """One caption-less Sample per image file, ids 0.. in order, sizes from the file headers; ``name(file)`` is
    the sample's image path (default: absolute). A missing or unreadable file is a one-line error naming it;
    given a ``skipped`` list, it is left out and "path: why" is appended there instead."""
    samples = []
    for f in files:
        try:
            with Image.open(f) as im:
                width, height = im.size
        except FileNotFoundError:
            why = "image file not found"
        except (UnidentifiedImageError, OSError) as exc:
            why = f"not a readable image ({exc.__class__.__name__})"
        else:
            samples.append(Sample(len(samples), name(Path(f)), width, height))
            continue
        if skipped is None:
            raise DataError(f, f"{why}; fix or remove the file, or pass --skip-bad (skip_bad=True) to leave it out")
        skipped.append(f"{f}: {why}")
    return samples
