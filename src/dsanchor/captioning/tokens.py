"""The visual tokens of captioning: V_fine and V_coarse as token sequences of the same shape.

For an image with R region slots (the store's padding size) and joint dimension D:

* ``V_fine`` (N, R, D) is the alignment heads' projected region tokens: region j is the joint-space
  vector of its RoI feature and its box (the heads already see the box), zero at masked slots.
* ``V_coarse`` (N, R, D) is the heads' projected scene vector c repeated at every region slot, plus a
  learned box-position term: ``V_coarse[j] = c + P(box_j)`` with ``P`` a small linear map of
  (x, y, w, h, area) owned by the decoder (:class:`ScenePositions`). Token j is thus "the scene view
  at region j's position": it says where the objects are, but what is there only through the scene
  vector. Masked slots are zero.
* Both use the same mask, so ``V' = anchor(V_fine, V_coarse, g)`` (:func:`dsanchor.anchoring.anchor`) is a
  token sequence the decoder cross-attends to; g = 1 gives exactly V_fine and g = 0 exactly V_coarse.

An image without any valid region keeps slot 0 unmasked (a zero fine token, the scene vector as its
coarse token), so cross-attention always has a key.

The decoder is trained with g drawn uniformly from [0, 1] per image (:mod:`dsanchor.captioning.train`),
so it captions from any mix and g is a meaningful knob at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dsanchor.align.heads import AlignmentHeads
from dsanchor.align.train import embed_images
from dsanchor.anchoring import anchor
from dsanchor.features.types import ImageFeatures, TextFeatures

__all__ = ["TokenPair", "CaptionSplit", "ScenePositions", "build_token_pair", "prepare_caption_split",
           "box_features"]


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(N, R, 4) normalised x, y, w, h -> (N, R, 5) with the area appended."""
    return torch.cat([boxes, (boxes[..., 2] * boxes[..., 3]).unsqueeze(-1)], dim=-1)


class ScenePositions(nn.Module):
    """The box-position term P of V_coarse (module docstring): a linear map of (x, y, w, h, area)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(5, dim)
        nn.init.normal_(self.proj.weight, std=0.1)
        nn.init.zeros_(self.proj.bias)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        """(N, R, 4) -> (N, R, D)."""
        return self.proj(box_features(boxes))


@dataclass
class TokenPair:
    """The two token sequences of N images (module docstring)."""

    fine: torch.Tensor  # (N, R, D) V_fine, zero where masked
    coarse: torch.Tensor  # (N, R, D) V_coarse, zero where masked
    mask: torch.Tensor  # (N, R) bool, True for a slot the decoder attends to

    def mix(self, g: float | torch.Tensor) -> torch.Tensor:
        """V' = g V_fine + (1 - g) V_coarse, (N, R, D); g is a scalar or (N,)."""
        return anchor(self.fine, self.coarse, g)

    def index(self, idx: torch.Tensor | slice) -> TokenPair:
        return TokenPair(self.fine[idx], self.coarse[idx], self.mask[idx])

    def __len__(self) -> int:
        return int(self.mask.shape[0])


def _attendable(mask: torch.Tensor) -> torch.Tensor:
    """Unmask slot 0 of rows without any valid region. (N, R) -> (N, R)."""
    mask = mask.bool().clone()
    empty = ~mask.any(1)
    mask[empty, 0] = True
    return mask


def build_token_pair(coarse: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                     positions: ScenePositions) -> TokenPair:
    """V_fine and V_coarse from joint-space features.

    Args:
        coarse: (N, D) joint scene vectors.
        regions: (N, R, D) joint region vectors, zero where masked.
        boxes: (N, R, 4) normalised boxes.
        mask: (N, R) valid regions.
        positions: the decoder's box-position term.
    """
    keep = _attendable(mask)
    m = keep.unsqueeze(-1).to(regions.dtype)  # (N, R, 1)
    fine = regions * mask.unsqueeze(-1).to(regions.dtype)  # (N, R, D)
    scene = coarse.unsqueeze(1).expand_as(regions) + positions(boxes) * mask.unsqueeze(-1).to(regions.dtype)
    return TokenPair(fine, scene * m, keep)  # (N, R, D) each


@dataclass
class CaptionSplit:
    """One split's images in the joint space, with their references: everything captioning reads."""

    image_ids: torch.Tensor  # (N,) int64
    coarse: torch.Tensor  # (N, D) joint scene vectors
    regions: torch.Tensor  # (N, R, D) joint region vectors, zero where masked
    boxes: torch.Tensor  # (N, R, 4) normalised boxes
    mask: torch.Tensor  # (N, R) bool valid regions
    references: list[list[str]]  # per image: its captions (raw text)
    objects: list[list[str]]  # per image: ground-truth object names (for CHAIR)
    granularity: list[list[int]] | None = None  # per image: each reference's GRANULARITY_CODES code, -1
    # unknown; None: all unknown

    def __post_init__(self) -> None:
        if self.granularity is None:
            self.granularity = [[-1] * len(refs) for refs in self.references]
        if [len(r) for r in self.references] != [len(c) for c in self.granularity]:
            raise ValueError("CaptionSplit.granularity needs one code per reference caption")

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def subset(self, idx: torch.Tensor) -> CaptionSplit:
        rows = idx.tolist()
        return CaptionSplit(self.image_ids[idx], self.coarse[idx], self.regions[idx], self.boxes[idx],
                            self.mask[idx], [self.references[i] for i in rows], [self.objects[i] for i in rows],
                            [self.granularity[i] for i in rows])

    def references_by_id(self) -> dict[int, list[str]]:
        return {int(i): refs for i, refs in zip(self.image_ids.tolist(), self.references, strict=True)}


@torch.no_grad()
def prepare_caption_split(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures) -> CaptionSplit:
    """Project a split into the joint space with frozen heads and group its captions by image."""
    heads.eval()
    joint = embed_images(heads, images)
    refs: dict[int, list[str]] = {}
    codes: dict[int, list[int]] = {}
    for iid, cap, code in zip(texts.image_ids.tolist(), texts.captions, texts.granularity.tolist(), strict=True):
        refs.setdefault(int(iid), []).append(cap)
        codes.setdefault(int(iid), []).append(int(code))
    ids = images.image_ids.tolist()
    return CaptionSplit(images.image_ids.clone(), joint.coarse, joint.regions, images.boxes.float(), joint.mask,
                        [refs.get(int(i), []) for i in ids], [list(o) for o in images.objects],
                        [codes.get(int(i), []) for i in ids])
