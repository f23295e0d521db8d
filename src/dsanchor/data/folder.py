"""A plain folder of images -> :class:`Sample` records without captions or boxes (format ``images``).

Every JPEG or PNG file under the root (recursively, extensions in any case) is one sample, in sorted path
order, with ids 0, 1, ... in that order. Sizes come from each file's header (the pixels are not read), so a
file that is not an image is a one-line error naming it. Nothing has a split: a folder is what
``dsanchor index`` searches, not training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsanchor.data.base import DatasetLoader, image_root
from dsanchor.data.records import Sample
from dsanchor.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "FolderLoader", "image_files", "image_samples"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_files(root: str | Path) -> list[Path]:
    """The JPEG and PNG files under ``root`` (recursive), sorted by their path relative to it."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                  key=lambda p: p.relative_to(root).as_posix())


class FolderLoader(DatasetLoader):
    format = "images"

    @dataclass
    class Options:
        pass

    @property
    def root(self) -> Path:
        return image_root(self.path)

    def load(self, split: str | None = None) -> list[Sample]:
        if split is not None:
            raise DataError(self.path, f"a plain image folder has no splits (asked for {split!r})")
        files = image_files(self.path)
        if not files:
            raise DataError(self.path, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        return image_samples(files, self.relative_image_path)


def image_samples(files: list[Path], name=lambda f: str(Path(f).resolve())) -> list[Sample]:
    """One caption-less Sample per image file, ids 0.. in order, sizes from the file headers; ``name(file)`` is
    the sample's image path (default: absolute). A missing or unreadable file is a one-line error naming it."""
    samples = []
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                width, height = im.size
        except FileNotFoundError:
            raise DataError(f, "image file not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f, f"not a readable image ({exc.__class__.__name__})") from None
        samples.append(Sample(i, name(Path(f)), width, height))
    return samples
