"""The feature store: sharded safetensors + JSON sidecars + a manifest (DESIGN.md "Feature store").

Layout of a store directory::

    FEATS/
      extract.json               the plan: what is being extracted (written first)
      shards/shard-00000.json    strings of shard 0: image paths, splits, object names, captions, and where the
                                 data has scene graphs the scene of each image and the fact of each caption
      shards/shard-00000.safetensors
                                 image_ids (N,) int64, coarse (N, Dc), regions (N, R, Dr), boxes (N, R, 4),
                                 mask (N, R) bool, text_embeddings (M, Dt), text_image_ids (M,) int64,
                                 text_granularity (M,) int64; header metadata: fingerprint, counts
      objects.json               every distinct object name (V,), sorted
      objects.safetensors        embeddings (V, Dt): those names through the text encoder
      manifest.json              written last: the plan plus the shard list and counts
      timing.json                encoder cost per item of the run (not part of the content)
      config.yaml                the resolved config of the run (written by the CLI)

Every file is written to a temporary name and moved into place with ``os.replace``, so a file that
exists is complete. A shard is finished when its ``.safetensors`` file exists (its sidecar is written
before it) and carries the plan's fingerprint; the store is finished when ``manifest.json`` exists.
An interrupted extraction therefore resumes by skipping the finished shards.

Reading is lazy: :class:`FeatureStore` reads the manifest on open and memory-maps a shard only when
its tensors are asked for.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from dsanchor.errors import ConfigError, DataError
from dsanchor.features.types import ImageFeatures, ObjectVocabulary, TextFeatures
from dsanchor.files import atomic_write_bytes, write_json

__all__ = ["FORMAT_VERSION", "FeatureStore", "ShardData", "StoreWriter"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "extract.json"
SHARDS = "shards"
OBJECTS_TENSORS = "objects.safetensors"  # embeddings of every distinct object name (V, Dt)
OBJECTS_NAMES = "objects.json"  # the V names, in the same order
TIMING = "timing.json"  # encoder cost per item of the extraction run
_STORE_FILES = (MANIFEST, PLAN, "config.yaml", OBJECTS_TENSORS, OBJECTS_NAMES, TIMING)


def _shard_stem(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class ShardData:
    """The content of one shard: N images with R region slots and the M captions of those images."""

    image_ids: torch.Tensor  # (N,) int64
    coarse: torch.Tensor  # (N, Dc) float32
    regions: torch.Tensor  # (N, R, Dr) float32
    boxes: torch.Tensor  # (N, R, 4) float32, normalised xywh
    mask: torch.Tensor  # (N, R) bool
    text_embeddings: torch.Tensor  # (M, Dt) float32
    text_image_ids: torch.Tensor  # (M,) int64
    text_granularity: torch.Tensor  # (M,) int64
    image_paths: list[str]  # (N,)
    splits: list[str | None]  # (N,)
    objects: list[list[str]]  # (N,) names of the annotated objects
    captions: list[str]  # (M,)
    scenes: list[dict[str, Any] | None] | None = None  # (N,) scene graphs, where the data has them
    facts: list[dict[str, Any] | None] | None = None  # (M,) the fact each caption states, where known

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("image_ids", "coarse", "regions", "boxes", "mask", "text_embeddings", "text_image_ids",
                 "text_granularity")
        return {n: getattr(self, n).contiguous() for n in names}

    def strings(self) -> dict[str, Any]:
        out = {"image_paths": self.image_paths, "splits": self.splits, "objects": self.objects,
               "captions": self.captions}
        if self.scenes is not None and any(x is not None for x in self.scenes):
            out["scenes"] = self.scenes
        if self.facts is not None and any(x is not None for x in self.facts):
            out["facts"] = self.facts
        return out


class StoreWriter:
    """Writes one store: checks or starts the plan, writes shards atomically, then the manifest.

    Args:
        path: the store directory.
        plan: JSON-ready description of the extraction; ``plan["fingerprint"]`` identifies it.
        overwrite: replace an existing store made with a different plan.
    """

    def __init__(self, path: str | Path, plan: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        self.plan = plan
        self.fingerprint = str(plan["fingerprint"])
        self.overwrite = overwrite
        self.shard_dir = self.path / SHARDS

    def _existing_plan(self) -> dict[str, Any] | None:
        for name in (MANIFEST, PLAN):
            f = self.path / name
            if f.is_file():
                try:
                    return json.loads(f.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    raise DataError(f, "not valid JSON; pass --overwrite or a new --out") from None
        return None

    def _clear(self) -> None:
        for name in _STORE_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.shard_dir, ignore_errors=True)

    def conflict(self) -> str | None:
        """Why this plan cannot go into the folder as it is, or None (nothing is written): "holds features of
        another extraction (...)", which ``overwrite`` replaces, or a path that is not a store, which it never does."""
        if self.path.exists() and not self.path.is_dir():
            return "is a file, not a folder"
        try:
            existing = self._existing_plan()
        except DataError as exc:
            return f"holds features of an unreadable extraction ({exc.message.split(';')[0]})"
        if existing is not None and existing.get("fingerprint") != self.fingerprint:
            return f"holds features of another extraction ({_plan_diff(existing, self.plan)})"
        if existing is None and self.path.is_dir() and any(self.path.iterdir()):
            return "is not empty and is not a feature store"
        return None

    def accept(self) -> None:
        """Raise ConfigError, writing nothing, if :meth:`prepare` would have to refuse the folder."""
        why = self.conflict()
        replaceable = why is not None and why.startswith("holds features")
        if why is not None and not (replaceable and self.overwrite):
            hint = ("pass a new --out, or --overwrite to replace it" if replaceable else
                    "pass a new --out (--overwrite replaces only a feature store)")
            raise ConfigError(f"{self.path} {why}; {hint}")

    def prepare(self) -> bool:
        """Start a new store or check the one there (call on one process). Returns True if already finished."""
        self.accept()  # before anything is written
        if self.conflict() is not None:  # another extraction, and overwrite
            self._clear()
        existing = self._existing_plan()
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if existing is None:
            write_json(self.path / PLAN, self.plan, indent=1)
        for tmp in self.shard_dir.glob(".*.tmp-*"):  # leftovers of an interrupted write
            tmp.unlink(missing_ok=True)
        return (self.path / MANIFEST).is_file()

    def check(self) -> None:
        """Verify the plan on disk is this one (for processes other than the one that prepared)."""
        existing = self._existing_plan()
        if existing is None or existing.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.path}: the extraction plan differs between processes; "
                              "every rank must get the same arguments")

    def is_done(self, index: int) -> bool:
        """Whether shard ``index`` was written completely by this plan."""
        f = self.shard_dir / f"{_shard_stem(index)}.safetensors"
        if not f.is_file() or not (self.shard_dir / f"{_shard_stem(index)}.json").is_file():
            return False
        with safe_open(str(f), framework="pt") as sf:
            return (sf.metadata() or {}).get("fingerprint") == self.fingerprint

    def write_shard(self, index: int, data: ShardData) -> None:
        """Write shard ``index``: sidecar first, tensors last, each atomically."""
        stem = _shard_stem(index)
        sidecar = {"fingerprint": self.fingerprint, **data.strings()}
        write_json(self.shard_dir / f"{stem}.json", sidecar, indent=None)
        meta = {"fingerprint": self.fingerprint, "n_images": str(len(data.image_paths)),
                "n_texts": str(len(data.captions))}
        atomic_write_bytes(self.shard_dir / f"{stem}.safetensors", save(data.tensors(), metadata=meta))

    def finish(self, n_shards: int) -> dict[str, Any]:
        """Write the manifest (call on one process, after every shard is written). Returns it."""
        shards, splits = [], {}
        for i in range(n_shards):
            if not self.is_done(i):
                raise DataError(self.shard_dir / f"{_shard_stem(i)}.safetensors",
                                "shard missing or unfinished; rerun the same extract command to resume")
            stem = _shard_stem(i)
            with safe_open(str(self.shard_dir / f"{stem}.safetensors"), framework="pt") as sf:
                meta = sf.metadata()
            side = json.loads((self.shard_dir / f"{stem}.json").read_text(encoding="utf-8"))
            for s in side["splits"]:
                splits[str(s)] = splits.get(str(s), 0) + 1
            shards.append({"tensors": f"{SHARDS}/{stem}.safetensors", "strings": f"{SHARDS}/{stem}.json",
                           "n_images": int(meta["n_images"]), "n_texts": int(meta["n_texts"])})
        manifest = {**self.plan, "shards": shards, "n_images": sum(s["n_images"] for s in shards),
                    "n_texts": sum(s["n_texts"] for s in shards), "split_counts": splits}
        write_json(self.path / MANIFEST, manifest, indent=1)
        return manifest


def _plan_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in new if k != "fingerprint" and old.get(k) != new.get(k)]
    return "different " + ", ".join(keys) if keys else "different fingerprint"


class FeatureStore:
    """Lazy reader of a finished store.

    Example:
        ``store = FeatureStore("runs/feats"); img = store.images("test"); txt = store.texts("test")``
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        f = self.path / MANIFEST
        if not f.is_file():
            hint = (" (an extraction was started here; rerun the same extract command to finish it)"
                    if (self.path / PLAN).is_file() else "; make one with `dsanchor extract --out DIR`")
            raise DataError(self.path, f"not a finished feature store: no {MANIFEST}{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise DataError(f, "not valid JSON; re-extract with --overwrite") from None
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise DataError(f, f"store format {self.manifest.get('format_version')} is not the supported "
                               f"{FORMAT_VERSION}; re-extract with --overwrite", field="format_version")

    def __len__(self) -> int:
        return int(self.manifest["n_images"])

    @property
    def dims(self) -> dict[str, int]:
        """Widths ``{"coarse": Dc, "region": Dr, "text": Dt}``."""
        return dict(self.manifest["encoder"]["dims"])

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """(T, Dt) vectors of new texts from the store's own text encoder (phrases of captions, hard negatives),
        so they are comparable with the stored captions."""
        from dsanchor.encoders import encoder_from_spec

        if not texts:
            return torch.zeros(0, self.dims["text"])
        return encoder_from_spec(self.manifest["encoder"], where=str(self.path / MANIFEST)).encode_texts(
            list(texts)).float()

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """The tensors of one shard, memory-mapped."""
        f = self.path / self.manifest["shards"][index]["tensors"]
        if not f.is_file():
            raise DataError(f, "shard file missing from the store; re-extract with --overwrite")
        return load_file(str(f))

    def shard_strings(self, index: int) -> dict[str, Any]:
        """The JSON sidecar of one shard: image_paths, splits, objects, captions."""
        f = self.path / self.manifest["shards"][index]["strings"]
        if not f.is_file():
            raise DataError(f, "shard sidecar missing from the store; re-extract with --overwrite")
        return json.loads(f.read_text(encoding="utf-8"))

    def _image_keep(self, strings: dict[str, Any], split: str | None) -> torch.Tensor:
        return torch.tensor([split is None or s == split for s in strings["splits"]], dtype=torch.bool)

    def images(self, split: str | None = None) -> ImageFeatures:
        """Image features of every image, or of the images of ``split``, in store order."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("image_ids", "coarse", "regions", "boxes", "mask")}
        objects: list[list[str]] = []
        splits: list[str | None] = []
        scenes: list[dict[str, Any] | None] = []
        for i in range(self.num_shards):
            tensors, strings = self.shard_tensors(i), self.shard_strings(i)
            keep = self._image_keep(strings, split)  # (N,)
            for k in parts:
                parts[k].append(tensors[k] if bool(keep.all()) else tensors[k][keep])
            flags = keep.tolist()
            objects += [o for o, k in zip(strings["objects"], flags, strict=True) if k]
            splits += [s for s, k in zip(strings["splits"], flags, strict=True) if k]
            scenes += [s for s, k in zip(strings.get("scenes") or [None] * len(flags), flags, strict=True) if k]
        cat = {k: _cat(v, self._empty(k)) for k, v in parts.items()}
        return ImageFeatures(cat["image_ids"], cat["coarse"], cat["regions"], cat["boxes"], cat["mask"],
                             objects, splits, scenes if any(s is not None for s in scenes) else None)

    def texts(self, split: str | None = None) -> TextFeatures:
        """Text features of every caption, or of the captions whose image is in ``split``."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("text_embeddings", "text_image_ids",
                                                                "text_granularity")}
        captions: list[str] = []
        facts: list[dict[str, Any] | None] = []
        for i in range(self.num_shards):
            tensors, strings = self.shard_tensors(i), self.shard_strings(i)
            ids = tensors["image_ids"][self._image_keep(strings, split)]  # (n,)
            keep = torch.isin(tensors["text_image_ids"], ids)  # (M,)
            for k in parts:
                parts[k].append(tensors[k] if bool(keep.all()) else tensors[k][keep])
            flags = keep.tolist()
            captions += [c for c, k in zip(strings["captions"], flags, strict=True) if k]
            facts += [f for f, k in zip(strings.get("facts") or [None] * len(flags), flags, strict=True) if k]
        cat = {k: _cat(v, self._empty(k)) for k, v in parts.items()}
        return TextFeatures(cat["text_embeddings"], cat["text_image_ids"], cat["text_granularity"], captions,
                            facts if any(f is not None for f in facts) else None)

    def _empty(self, key: str) -> torch.Tensor:
        """A zero-length tensor of the right shape and dtype for ``key`` (a store without shards)."""
        d, R = self.dims, int(self.manifest["regions"]["max_regions"])
        shapes = {"image_ids": (0,), "coarse": (0, d["coarse"]), "regions": (0, R, d["region"]),
                  "boxes": (0, R, 4), "mask": (0, R), "text_embeddings": (0, d["text"]),
                  "text_image_ids": (0,), "text_granularity": (0,)}
        dtype = {"image_ids": torch.int64, "text_image_ids": torch.int64, "text_granularity": torch.int64,
                 "mask": torch.bool}.get(key, torch.float32)
        return torch.zeros(shapes[key], dtype=dtype)

    def object_vocabulary(self) -> ObjectVocabulary:
        """Every distinct object name of the dataset and its text-encoder embedding ``(V, Dt)``."""
        names_f, emb_f = self.path / OBJECTS_NAMES, self.path / OBJECTS_TENSORS
        if not names_f.is_file() or not emb_f.is_file():
            raise DataError(self.path, f"no object vocabulary ({OBJECTS_NAMES}); re-extract with --overwrite")
        return ObjectVocabulary(json.loads(names_f.read_text()), load_file(str(emb_f))["embeddings"])

    @property
    def timing(self) -> dict[str, Any]:
        """Encoder cost per item of the extraction run (empty if it was not recorded)."""
        f = self.path / TIMING
        return json.loads(f.read_text()) if f.is_file() else {}

    def image_paths(self, split: str | None = None) -> list[str]:
        """Image paths (relative to the dataset root in ``manifest["source"]``), in store order."""
        out: list[str] = []
        for i in range(self.num_shards):
            strings = self.shard_strings(i)
            pairs = zip(strings["image_paths"], strings["splits"], strict=True)
            out += [p for p, s in pairs if split is None or s == split]
        return out


def _cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Concatenate; a single part stays memory-mapped instead of being copied."""
    if not parts:
        return empty
    return parts[0] if len(parts) == 1 else torch.cat(parts)
