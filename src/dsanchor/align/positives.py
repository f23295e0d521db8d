"""Which captions of a split are true of which of its images: the positives of contrastive training.

Two rules (``AlignTrainConfig.positives``):

* ``exact``: caption t is a positive of image n when its fact holds for n's scene graph
  (:func:`dsanchor.data.facts.holds`), or n is its own image; the same relation as
  :func:`dsanchor.features.types.exact_relevance`, the evaluation's exact protocol. Used where the data has
  scene graphs (:func:`~dsanchor.features.types.has_scene_graphs`), else the rule falls back to ``paired``.
* ``paired``: its own image, and any image that has a caption with the identical string.

Training asks for one (batch captions x batch images) block at a time. Under ``exact`` each distinct fact is
decided once for every image of the split and kept (a bool row of N), while the split's distinct facts times
images stay under :data:`MAX_CACHED_CELLS`; past that each block is decided on its own. A fact about an object
(or a relation between two) cannot hold for a scene without an object of that description, so those scenes are
ruled out by a set lookup before :func:`~dsanchor.data.facts.holds` is called (the same answer, about 30x
faster on relation captions).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from dsanchor.features.types import ImageFeatures, TextFeatures, has_scene_graphs

__all__ = ["POSITIVE_RULES", "MAX_CACHED_CELLS", "Relevance"]

POSITIVE_RULES: tuple[str, ...] = ("exact", "paired")
MAX_CACHED_CELLS = 50_000_000  # distinct facts x images kept as bool rows (50 MB)
_ATTRIBUTES = ("size", "color", "material", "shape")


def _describes(desc) -> tuple | None:
    """The (size, color, material, shape) key of a full object description, else None (no shortcut)."""
    if isinstance(desc, dict) and set(desc) == set(_ATTRIBUTES):
        return tuple(desc[a] for a in _ATTRIBUTES)
    return None


class Relevance:
    """Positives of one split's captions among its images, by blocks (see the module docstring).

    Args:
        texts: the split's captions. images: the split's images.
        rule: ``exact`` or ``paired``; ``exact`` without scene graphs falls back to ``paired``.
    """

    def __init__(self, texts: TextFeatures, images: ImageFeatures, rule: str = "exact"):
        if rule not in POSITIVE_RULES:
            raise ValueError(f"unknown positives rule {rule!r}; valid: {list(POSITIVE_RULES)}")
        self.texts, self.images = texts, images
        self.exact = rule == "exact" and has_scene_graphs(images, texts)
        self.rule = "exact" if self.exact else "paired"
        if self.exact:
            keys: dict[str, int] = {}
            self._fact_id = np.array([keys.setdefault(json.dumps(f, sort_keys=True), len(keys))
                                      for f in texts.facts])  # (T,)
            self._facts = [None] * len(keys)
            for t, fid in enumerate(self._fact_id.tolist()):
                self._facts[fid] = texts.facts[t]
            self._present = [{tuple(o.get(a) for a in _ATTRIBUTES) for o in s["objects"]} for s in images.scenes]
            self._rows: dict[int, np.ndarray] = {}
            self._cache = len(keys) * len(images) <= MAX_CACHED_CELLS
        else:
            ids: dict[str, int] = {}
            self._string_id = [ids.setdefault(c, len(ids)) for c in texts.captions]
            row_of = {int(i): r for r, i in enumerate(images.image_ids.tolist())}
            self._strings_of: list[set[int]] = [set() for _ in range(len(images))]
            for sid, iid in zip(self._string_id, texts.image_ids.tolist(), strict=True):
                if iid in row_of:
                    self._strings_of[row_of[iid]].add(sid)

    def _holds(self, fid: int, rows: list[int]) -> np.ndarray:
        """(len(rows),) bool: fact ``fid`` holds for the scenes of those image rows."""
        from dsanchor.data.facts import holds

        fact = self._facts[fid]
        need = [_describes(fact.get(k)) for k in ("object", "subject")] if fact["type"] in ("object", "relation") \
            else []
        need = [k for k in need if k is not None]
        scenes = self.images.scenes
        return np.fromiter((all(k in self._present[r] for k in need) and holds(fact, scenes[r]) for r in rows),
                           dtype=bool, count=len(rows))

    def _fact_block(self, fids: np.ndarray, rows: torch.Tensor) -> np.ndarray:
        r = rows.tolist()
        if not self._cache:
            return np.stack([self._holds(int(f), r) for f in fids]) if len(fids) else np.zeros((0, len(r)), bool)
        every = list(range(len(self.images)))
        for f in set(fids.tolist()) - set(self._rows):
            self._rows[f] = self._holds(f, every)
        return np.stack([self._rows[int(f)][r] for f in fids]) if len(fids) else np.zeros((0, len(r)), bool)

    def block(self, captions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, U) bool: caption ``captions[i]`` (indices into texts) is a positive of image row ``rows[j]``."""
        own = self.texts.image_ids[captions].view(-1, 1) == self.images.image_ids[rows].view(1, -1)  # (B, U)
        if self.exact:
            return own | torch.from_numpy(self._fact_block(self._fact_id[captions.numpy()], rows))
        sids = [self._string_id[i] for i in captions.tolist()]
        same = torch.tensor([[s in self._strings_of[r] for r in rows.tolist()] for s in sids],
                            dtype=torch.bool).view(len(sids), len(rows))  # (B, U)
        return own | same

    def matrix(self) -> torch.Tensor:
        """(T, N) bool: the whole split."""
        return self.block(torch.arange(len(self.texts)), torch.arange(len(self.images)))
