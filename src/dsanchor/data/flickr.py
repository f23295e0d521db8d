"""Flickr8k (and Flickr30k) in the layouts people download -> :class:`Sample` records (formats ``flickr8k``,
``flickr30k``).

Files, each found under the dataset root (or in its ``Flickr8k_text/`` folder) unless given as an option:

* captions: ``Flickr8k.token.txt``, one ``image#k<TAB>caption`` per line (Flickr30k's ``results_20130124.token``
  has the same format), or the widely shared ``captions.txt`` CSV variant with an ``image,caption`` header.
* splits: the standard lists ``Flickr_8k.trainImages.txt``, ``Flickr_8k.devImages.txt`` and
  ``Flickr_8k.testImages.txt``, one file name per line; dev is the validation split. A Karpathy
  ``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` (``images[].filename`` and ``split``) is read instead when
  no list is present or when given as ``splits=``. Without either, images have no split.
* images: the ``image_dir`` option, else the first of ``Flicker8k_Dataset/`` (the dataset's own spelling),
  ``Flickr8k_Dataset/``, ``Images/``, ``images/``, ``flickr30k-images/``, ``flickr30k_images/`` and the root that
  holds the first captioned image.

When split lists are present, the samples are the images they list; captions of images in no list are left out
(the public token file has captions for ``2258277193_586949ec62.jpg.1``, a file that is not in the image folder).
Without split lists, every captioned image is a sample. A listed image missing from disk, a listed name with no
captions, a list naming an image twice or in two splits, and a malformed caption line are one-line errors naming
the file and the line.

**Missing test list.** Some copies hold the train and dev lists only (the project's shared copy keeps the standard
test list back). With ``test_from="dev"`` (the default, ``"auto"``, does this only when the test list is absent)
the dev images become the test split and the last ``val_size`` images of the train list become validation;
:attr:`FlickrLoader.notes` says so, and ``dsanchor run`` prints it.

Image ids are the images' positions in the captions file (first appearance), so they are the same whichever
split is loaded. Sizes are read from the image headers (the pixels are not decoded). Flickr has no boxes: samples
have no objects.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dsanchor.data.base import DatasetLoader, filter_split, read_json, safe_relpath
from dsanchor.data.records import Caption, Sample
from dsanchor.errors import DataError

__all__ = ["FlickrOptions", "FlickrLoader", "Flickr30kLoader", "read_token_file", "read_captions_csv",
           "read_split_list"]

TOKEN_FILES = ("Flickr8k.token.txt", "results_20130124.token", "results.token", "captions.txt")
TEXT_DIRS = (".", "Flickr8k_text", "flickr30k", "Flickr30k_text")
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images", "flickr30k-images", "flickr30k_images")
LIST_SPLITS = (("train", "Flickr_8k.trainImages.txt"), ("val", "Flickr_8k.devImages.txt"),
               ("test", "Flickr_8k.testImages.txt"))
KARPATHY_FILES = ("dataset_flickr8k.json", "dataset_flickr30k.json")
_TOKEN_KEY = re.compile(r"(?P<name>[^#\t]+)#(?P<k>\d+)")


@dataclass
class FlickrOptions:
    """Explicit file locations (each found under the root when left out) and the missing-test-list rule."""

    captions: str | None = field(default=None, metadata={"help": "Flickr8k.token.txt or captions.txt"})
    splits: str | None = field(default=None, metadata={"help": "a Karpathy dataset_flickr8k.json split file"})
    image_dir: str | None = field(default=None, metadata={"help": "folder holding the image files"})
    test_from: str = field(default="auto", metadata={
        "help": "'auto': when the test list is absent, dev is the test split and validation comes from train; "
                "'none': dev stays validation and there is no test split"})
    val_size: int = field(default=500, metadata={
        "help": "images taken from the end of the train list as validation when dev becomes the test split"})


def read_token_file(path: Path) -> dict[str, list[str]]:
    """``image#k<TAB>caption`` lines -> image name -> captions, in file order; blank lines are skipped."""
    return _read_token_lines(path)[0]


def _read_token_lines(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Image name -> captions, and image name -> the line of its first caption."""
    out: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            key, tab, text = line.partition("\t")
            match = _TOKEN_KEY.fullmatch(key.strip())
            if not tab or match is None:
                raise DataError(path, f"expected 'image#k<TAB>caption', found {line[:80]!r}", f"line {n}")
            if not text.strip():
                raise DataError(path, f"empty caption for {key.strip()!r}; every caption needs text", f"line {n}")
            out.setdefault(match["name"], []).append(text.strip())
            first.setdefault(match["name"], n)
    return out, first


def read_captions_csv(path: Path) -> dict[str, list[str]]:
    """The ``captions.txt`` CSV variant (header ``image,caption``) -> image name -> captions."""
    return _read_csv_lines(path)[0]


def _read_csv_lines(path: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    out: dict[str, list[str]] = {}
    first: dict[str, int] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise DataError(path, f"expected the header 'image,caption', found {header!r}", "line 1")
        for n, row in enumerate(rows, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2:
                raise DataError(path, f"expected 'image,caption', found {','.join(row)[:80]!r}", f"line {n}")
            name, text = row[0].strip(), ",".join(row[1:]).strip()
            if not name or not text:
                raise DataError(path, "empty image name or caption", f"line {n}")
            out.setdefault(name, []).append(text)
            first.setdefault(name, n)
    return out, first


def read_split_list(path: Path) -> list[tuple[int, str]]:
    """(line number, image name) of each non-blank line of a split list."""
    with open(path, encoding="utf-8") as fh:
        return [(n, line.strip()) for n, line in enumerate(fh, 1) if line.strip()]


class FlickrLoader(DatasetLoader):
    """Flickr8k's token file or captions CSV, its split lists and its image folder; see the module docstring."""

    format = "flickr8k"
    Options = FlickrOptions

    def __init__(self, path: str | Path, **options):
        super().__init__(path, **options)
        if self.options.test_from not in ("auto", "none"):
            raise DataError(self.path, f"test_from must be 'auto' or 'none', found {self.options.test_from!r}")
        if not isinstance(self.options.val_size, int) or self.options.val_size < 0:
            raise DataError(self.path, f"val_size must be an integer >= 0, found {self.options.val_size!r}")
        self.notes: list[str] = []  # what the loader decided that a user should be told (printed by `run`)

    @property
    def root(self) -> Path:
        return self.path.parent if self.path.is_file() else self.path

    # ---- file discovery ----------------------------------------------------------------------------------
    def _find(self, names: tuple[str, ...]) -> Path | None:
        for d in TEXT_DIRS:
            for name in names:
                p = self.root / d / name
                if p.is_file():
                    return p
        return None

    def captions_file(self) -> Path:
        if self.options.captions:
            p = Path(self.options.captions)
            if not p.is_file():
                raise DataError(p, "captions file not found")
            return p
        if self.path.is_file():
            return self.path
        found = self._find(TOKEN_FILES)
        if found is None:
            raise DataError(self.root, f"no captions file: expected one of {list(TOKEN_FILES)} in the folder (or "
                                       "its Flickr8k_text/); pass --captions to name it")
        return found

    def image_dir(self, names: list[str]) -> Path:
        """The image folder: the option, else the first known folder holding one of ``names``."""
        if self.options.image_dir:
            d = Path(self.options.image_dir)
            if not d.is_dir():
                raise DataError(d, "image folder not found")
            return d
        for d in (*(self.root / n for n in IMAGE_DIRS), self.root):
            if any((d / name).is_file() for name in names):
                return d
        raise DataError(self.root, f"images such as {names[0]!r} not found in any of {list(IMAGE_DIRS)} or the "
                                   "root; pass --image-dir to name the image folder")

    # ---- splits --------------------------------------------------------------------------------------------
    def _list_splits(self, captions: dict[str, list[str]], image_dir: Path) -> dict[str, str] | None:
        """Image name -> split from the standard lists, checked line by line; None when there is no list."""
        lists = {split: self._find((name,)) for split, name in LIST_SPLITS}
        if not any(lists.values()):
            return None
        out: dict[str, str] = {}
        for split, path in lists.items():
            if path is None:
                continue
            for n, name in read_split_list(path):
                safe_relpath(name, path, f"line {n}")
                if name not in captions:
                    raise DataError(path, f"image {name!r} has no captions in the captions file", f"line {n}")
                if name in out:
                    raise DataError(path, f"image {name!r} is listed twice (already in {out[name]!r})", f"line {n}")
                if not (image_dir / name).is_file():
                    raise DataError(path, f"image {name!r} not found in {image_dir}", f"line {n}")
                out[name] = split
        if lists["test"] is None and lists["val"] is not None and self.options.test_from == "auto":
            self._dev_as_test(out)
        return out

    def _dev_as_test(self, splits: dict[str, str]) -> None:
        train = [name for name, s in splits.items() if s == "train"]
        held = train[len(train) - min(self.options.val_size, max(len(train) - 1, 0)):] if train else []
        for name, s in list(splits.items()):
            if s == "val":
                splits[name] = "test"
        for name in held:
            splits[name] = "val"
        self.notes.append(f"there is no test list: the {sum(s == 'test' for s in splits.values())} dev images are "
                          f"the test split, and the last {len(held)} images of the train list are validation")

    def _karpathy_splits(self) -> dict[str, str] | None:
        path = Path(self.options.splits) if self.options.splits else self._find(KARPATHY_FILES)
        if path is None:
            return None
        data = read_json(path, dict)
        images = data.get("images")
        if not isinstance(images, list):
            raise DataError(path, "must hold a list 'images' of {filename, split}", "images")
        out = {}
        for k, im in enumerate(images):
            if not isinstance(im, dict) or not isinstance(im.get("filename"), str) or "split" not in im:
                raise DataError(path, "each image needs a 'filename' and a 'split'", f"images[{k}]")
            split = {"restval": "train", "dev": "val"}.get(im["split"], im["split"])
            if split not in ("train", "val", "test"):
                raise DataError(path, f"unknown split {im['split']!r}", f"images[{k}].split")
            out[im["filename"]] = split
        return out

    # ---- loading -------------------------------------------------------------------------------------------
    def load(self, split: str | None = None) -> list[Sample]:
        self.notes.clear()
        cap_path = self.captions_file()
        captions, first = _read_csv_lines(cap_path) if _is_csv(cap_path) else _read_token_lines(cap_path)
        if not captions:
            raise DataError(cap_path, "no captions in the file")
        image_dir = self.image_dir(list(captions)[:20])
        splits = None if self.options.splits else self._list_splits(captions, image_dir)
        if splits is None:
            splits = self._karpathy_splits()
        names = [n for n in captions if splits is None or n in splits]
        if not names:
            raise DataError(cap_path, "no captioned image is named in the split file")
        keep, samples = set(names), []
        for image_id, name in enumerate(captions):
            if name in keep:
                where = f"line {first[name]}"
                samples.append(self._sample(image_id, name, image_dir, captions[name], cap_path, where,
                                            splits.get(name) if splits else None))
        return filter_split(samples, split, cap_path)

    def _sample(self, image_id: int, name: str, image_dir: Path, texts: list[str], cap_path: Path, where: str,
                split: str | None) -> Sample:
        path = image_dir / name
        try:
            with Image.open(path) as im:
                width, height = im.size
        except FileNotFoundError:
            raise DataError(cap_path, f"image {name!r} not found in {image_dir}", where) from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(path, f"not a readable image ({exc.__class__.__name__})") from None
        return Sample(image_id, self.relative_image_path(path), width, height,
                      captions=[Caption(t) for t in texts], split=split)


class Flickr30kLoader(FlickrLoader):
    """Flickr30k: the same token format (``results_20130124.token``) and a Karpathy split file."""

    format = "flickr30k"


def _is_csv(path: Path) -> bool:
    """A ``captions.txt`` whose first line is the CSV header rather than a token line."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    return "\t" not in first and first.replace(" ", "").lower().startswith("image,caption")
