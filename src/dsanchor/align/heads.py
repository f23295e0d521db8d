"""Alignment heads: project coarse, region and text features into one joint space of dimension D.

Two scorings come out of the same space (DESIGN.md "Alignment heads"):

* coarse score ``cos(t, c)`` with the scene vector c;
* fine score ``cos(t, p(t))`` with ``p(t) = sum_j w_j r_j``, an attention pool of the region vectors
  r_j whose weights ``w = softmax(s * cos(t, r_j))`` use the text as the query.

Both are trained with symmetric multi-positive InfoNCE (:mod:`dsanchor.align.loss`; Oord et al. 2018; CLIP,
Radford et al. 2021) so that each retrieves on its own and the choice of g matters. Region inputs are the RoI
features concatenated with their normalised box (x, y, w, h, area), so relations such as "left of" are
expressible. Optionally (``region_context``) a pre-norm Transformer encoder (Vaswani et al. 2017) runs over each
image's projected regions before they are normalised, so a region vector can also say what lies around it
("a cube with a sphere to its left"); a relation caption then needs no second region in the pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from dsanchor.checkpoint import PretrainedMixin

__all__ = ["AlignConfig", "AlignmentHeads", "JointFeatures", "projection_mlp", "BOX_FEATS"]

CONFIG_NAME = "heads_config.json"
WEIGHTS_NAME = "heads.safetensors"
BOX_FEATS = 5  # x, y, w, h, area


@dataclass
class AlignConfig:
    coarse_dim: int = field(default=0, metadata={"help": "input size of the coarse vector (from the store)"})
    region_dim: int = field(default=0, metadata={"help": "input size of a region vector (from the store)"})
    text_dim: int = field(default=0, metadata={"help": "input size of a text vector (from the store)"})
    dim: int = field(default=256, metadata={"help": "joint space dimension D"})
    hidden: int = field(default=256, metadata={"help": "hidden width of each projection MLP"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the projections while training"})
    init_temperature: float = field(default=0.07, metadata={"help": "initial InfoNCE temperature"})
    init_pool_scale: float = field(default=10.0, metadata={"help": "initial scale s of the attention-pool softmax"})
    region_context: int = field(default=1, metadata={
        "help": "self-attention layers over each image's projected regions (boxes included), so that a region "
                "vector can describe its neighbours, as relation captions need; 0: regions stay independent"})
    context_heads: int = field(default=4, metadata={"help": "attention heads of each region-context layer"})
    relation_mix: float = field(default=0.0, metadata={
        "help": "compositional scoring of multi-phrase captions (dsanchor.relations): share of the per-phrase "
                "score in the fine score; fit on val after training (0: the single pool)"})
    relation_weight: float = field(default=0.0, metadata={
        "help": "weight of the stated relation's geometric truth in the compositional score; fit on val"})
    relation_tau: float = field(default=0.05, metadata={"help": "scale of the relation kernel, in image widths"})


def projection_mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Module:
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear: the projection used by the heads and the detector."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


@dataclass
class JointFeatures:
    """Features in the joint space, unit-normalised."""

    coarse: torch.Tensor  # (N, D)
    regions: torch.Tensor  # (N, R, D), zero where masked
    mask: torch.Tensor  # (N, R) bool
    gram: torch.Tensor | None = None  # (N, R, R) region-region products, cached by precompute()
    rc: torch.Tensor | None = None  # (N, R) region-scene products, cached by precompute()
    boxes: torch.Tensor | None = None  # (N, R, 4) x, y, w, h in [0, 1], for relations (dsanchor.relations)

    def precompute(self) -> JointFeatures:
        """Cache the per-image products that every query reuses (for a gallery scored many times)."""
        with torch.no_grad():
            self.gram = torch.einsum("nrd,nkd->nrk", self.regions, self.regions)  # (N, R, R)
            self.rc = torch.einsum("nrd,nd->nr", self.regions, self.coarse)  # (N, R)
        return self


class AlignmentHeads(PretrainedMixin, nn.Module):
    """Projection heads for coarse, regions and text (see module docstring)."""

    config_class = AlignConfig
    config_name = CONFIG_NAME
    weights_name = WEIGHTS_NAME
    display_name = "alignment-heads run"
    made_by = "dsanchor align"

    def __init__(self, config: AlignConfig):
        super().__init__()
        self.config = config
        c = config
        self.coarse_proj = projection_mlp(c.coarse_dim, c.hidden, c.dim, c.dropout)
        self.region_proj = projection_mlp(c.region_dim + BOX_FEATS, c.hidden, c.dim, c.dropout)
        self.text_proj = projection_mlp(c.text_dim, c.hidden, c.dim, c.dropout)
        self.region_context = None if not c.region_context else nn.TransformerEncoder(
            nn.TransformerEncoderLayer(c.dim, c.context_heads, c.hidden, c.dropout, batch_first=True, norm_first=True),
            c.region_context, enable_nested_tensor=False)
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / c.init_temperature).log())
        self.pool_scale = nn.Parameter(torch.tensor(float(c.init_pool_scale)).log())

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(M, Dt) -> (M, D), unit norm."""
        return F.normalize(self.text_proj(text), dim=-1)

    def encode_images(self, coarse: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor,
                      mask: torch.Tensor) -> JointFeatures:
        """Project image features: coarse (N, Dc), regions (N, R, Dr), boxes (N, R, 4), mask (N, R)."""
        area = (boxes[..., 2] * boxes[..., 3]).unsqueeze(-1)  # (N, R, 1)
        mask = mask.bool()
        r_in = torch.cat([regions[mask], boxes[mask], area[mask]], dim=-1)  # (V, Dr + 5), valid regions only
        r = regions.new_zeros(*mask.shape, self.config.dim)  # (N, R, D), zero where masked
        r[mask] = self.region_proj(r_in)
        if self.region_context is not None:
            pad = ~mask & mask.any(dim=1, keepdim=True)  # (N, R); an image without regions attends over zeros
            r = self.region_context(r, src_key_padding_mask=pad) * mask.unsqueeze(-1)  # (N, R, D)
        return JointFeatures(F.normalize(self.coarse_proj(coarse), dim=-1), F.normalize(r, dim=-1), mask,
                             boxes=boxes)

    @property
    def pool_s(self) -> torch.Tensor:
        return self.pool_scale.exp()

    @property
    def relation_config(self):
        """The compositional scorer of multi-phrase captions (:class:`dsanchor.relations.RelationConfig`)."""
        from dsanchor.relations import RelationConfig

        c = self.config
        return RelationConfig(c.relation_mix, c.relation_weight, c.relation_tau)
