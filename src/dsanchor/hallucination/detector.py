"""The hallucination detector: P(an object phrase is present in an image) from the image's stored features.

Inputs are one image's features (the scene vector, the region vectors with their boxes and the region
mask) and the text-encoder embedding of an object phrase ("red cube", "dog"). Each goes through its own
projection into a space of dimension D (unit norm); then

* the phrase attends over the image's regions: ``w = softmax(s * cos(q, r_j))`` over valid regions,
  ``p = sum_j w_j r_j`` (the same text-queried pooling the alignment heads use);
* ``m = max_j cos(q, r_j)`` is the best single-region match;
* an MLP over ``[q, p, c, q * p, q * c, m]`` gives the logit of "present".

The training data and protocol follow POPE (Li et al. 2023, "Evaluating Object Hallucination in Large
Vision-Language Models"); see :mod:`dsanchor.hallucination.negatives` and :mod:`dsanchor.hallucination.train`.

Saved as safetensors + JSON config (``save_pretrained`` / ``from_pretrained``); loading never unpickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from dsanchor.align.heads import BOX_FEATS
from dsanchor.align.heads import projection_mlp as _mlp
from dsanchor.checkpoint import PretrainedMixin
from dsanchor.errors import ConfigError
from dsanchor.features.types import ImageFeatures, ObjectVocabulary

__all__ = ["DetectorConfig", "HallucinationDetector", "ObjectVocabulary"]

CONFIG_NAME = "detector_config.json"
WEIGHTS_NAME = "detector.safetensors"


@dataclass
class DetectorConfig:
    coarse_dim: int = field(default=0, metadata={"help": "input size of the coarse vector (set from the store)"})
    region_dim: int = field(default=0, metadata={"help": "input size of a region vector (set from the store)"})
    text_dim: int = field(default=0, metadata={"help": "input size of a phrase embedding (set from the store)"})
    dim: int = field(default=128, metadata={"help": "width D of the shared projection space"})
    hidden: int = field(default=256, metadata={"help": "hidden width of the projections and the classifier"})
    dropout: float = field(default=0.1, metadata={"help": "dropout while training"})
    init_pool_scale: float = field(default=10.0, metadata={"help": "initial scale s of the attention-pool softmax"})
    chunk_pairs: int = field(default=8192, metadata={"help": "image-phrase pairs scored at once (bounds memory)"})




class HallucinationDetector(PretrainedMixin, nn.Module):
    """Object-presence classifier over stored image features (see module docstring; POPE, Li et al. 2023)."""

    config_class = DetectorConfig
    config_name = CONFIG_NAME
    weights_name = WEIGHTS_NAME
    display_name = "hallucination detector"
    made_by = "dsanchor hallucination train"

    def __init__(self, config: DetectorConfig):
        super().__init__()
        for name in ("coarse_dim", "region_dim", "text_dim"):
            if getattr(config, name) <= 0:
                raise ConfigError(f"DetectorConfig.{name} must be positive (take it from the feature store)")
        self.config = config
        c = config
        self.phrase_proj = _mlp(c.text_dim, c.hidden, c.dim, c.dropout)
        self.region_proj = _mlp(c.region_dim + BOX_FEATS, c.hidden, c.dim, c.dropout)
        self.coarse_proj = _mlp(c.coarse_dim, c.hidden, c.dim, c.dropout)
        self.pool_scale = nn.Parameter(torch.tensor(float(c.init_pool_scale)).log())
        self.classifier = nn.Sequential(nn.LayerNorm(5 * c.dim + 1), nn.Linear(5 * c.dim + 1, c.hidden), nn.GELU(),
                                        nn.Dropout(c.dropout), nn.Linear(c.hidden, 1))

    @property
    def device(self) -> torch.device:
        return self.pool_scale.device

    def encode_phrases(self, phrases: torch.Tensor) -> torch.Tensor:
        """(P, Dt) -> (P, D), unit norm."""
        return F.normalize(self.phrase_proj(phrases.float()), dim=-1)

    def encode_images(self, coarse: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project coarse (N, Dc), regions (N, R, Dr) with boxes (N, R, 4); returns (c, r, mask), unit norm."""
        boxes = boxes.float()
        area = (boxes[..., 2] * boxes[..., 3]).unsqueeze(-1)  # (N, R, 1)
        r_in = torch.cat([regions.float(), boxes, area], dim=-1)  # (N, R, Dr + 5)
        mask = mask.bool()
        r = F.normalize(self.region_proj(r_in), dim=-1) * mask.unsqueeze(-1)  # (N, R, D)
        return F.normalize(self.coarse_proj(coarse.float()), dim=-1), r, mask

    def _head(self, c: torch.Tensor, r: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Logits of phrases q (N, P, D) against images c (N, D), r (N, R, D), mask (N, R); returns (N, P)."""
        cos = torch.einsum("nrd,npd->npr", r, q)  # (N, P, R)
        valid = mask.unsqueeze(1)  # (N, 1, R)
        # a finite fill keeps gradients finite; the product with ``valid`` zeroes an image without regions
        w = torch.softmax((self.pool_scale.exp() * cos).masked_fill(~valid, -1e9), dim=-1) * valid  # (N, P, R)
        pooled = torch.einsum("npr,nrd->npd", w, r)  # (N, P, D)
        best = cos.masked_fill(~valid, -1.0).amax(dim=-1, keepdim=True) if r.shape[1] else \
            q.new_full(q.shape[:2] + (1,), -1.0)  # (N, P, 1)
        ce = c.unsqueeze(1).expand_as(q)  # (N, P, D)
        x = torch.cat([q, pooled, ce, q * pooled, q * ce, best], dim=-1)  # (N, P, 5D + 1)
        return self.classifier(x).squeeze(-1)  # (N, P)

    def forward(self, coarse: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                phrases: torch.Tensor, image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of (image, phrase) pairs; each image is encoded once however many pairs ask about it.

        Args:
            coarse: (N, Dc). regions: (N, R, Dr). boxes: (N, R, 4) normalised xywh. mask: (N, R).
            phrases: (B, Dt) phrase embeddings, one per pair.
            image_index: (B,) the image of each pair (rows of the image tensors); ``None`` pairs
                image b with phrase b (then B = N).

        Returns:
            (B,) logits of "the phrase's object is in the image".
        """
        c, r, m = self.encode_images(coarse, regions, boxes, mask)
        if image_index is not None:
            c, r, m = c[image_index], r[image_index], m[image_index]  # (B, D), (B, R, D), (B, R)
        q = self.encode_phrases(phrases).unsqueeze(1)  # (B, 1, D)
        return self._head(c, r, m, q).squeeze(1)

    @torch.no_grad()
    def presence(self, coarse: torch.Tensor, regions: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                 phrases: torch.Tensor) -> torch.Tensor:
        """P(present) of every phrase in every image, ``config.chunk_pairs`` pairs at a time.

        Args:
            coarse: (N, Dc). regions: (N, R, Dr). boxes: (N, R, 4). mask: (N, R). phrases: (P, Dt).

        Returns:
            (N, P) probabilities on the CPU.
        """
        was_training = self.training
        self.eval()
        dev = self.device
        q_all = self.encode_phrases(phrases.to(dev))  # (P, D)
        n_img = max(1, self.config.chunk_pairs // max(1, q_all.shape[0]))
        out = []
        for s in range(0, coarse.shape[0], n_img):
            sl = slice(s, s + n_img)
            c, r, m = self.encode_images(coarse[sl].to(dev), regions[sl].to(dev), boxes[sl].to(dev), mask[sl].to(dev))
            q = q_all.unsqueeze(0).expand(c.shape[0], -1, -1)  # (n, P, D)
            out.append(torch.sigmoid(self._head(c, r, m, q)).cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, phrases.shape[0])

    def presence_matrix(self, images: ImageFeatures, phrases: torch.Tensor,
                        rows: torch.Tensor | None = None) -> torch.Tensor:
        """P(present) of every phrase (P, Dt) in (the ``rows`` of) ``images``; returns (N, P)."""
        sel = slice(None) if rows is None else rows
        return self.presence(images.coarse[sel], images.regions[sel], images.boxes[sel], images.mask[sel], phrases)

    @torch.no_grad()
    def presence_pairs(self, images: ImageFeatures, image_rows: torch.Tensor, phrases: torch.Tensor) -> torch.Tensor:
        """P(present) of given pairs, ``config.chunk_pairs`` at a time: phrase b in image ``image_rows[b]``.

        Args:
            images: the image features.
            image_rows: (B,) rows of ``images``.
            phrases: (B, Dt) one phrase embedding per pair.

        Returns:
            (B,) probabilities on the CPU.
        """
        was_training = self.training
        self.eval()
        dev = self.device
        out = torch.zeros(len(image_rows))
        for s in range(0, len(image_rows), self.config.chunk_pairs):
            uniq, local = torch.unique(image_rows[s:s + self.config.chunk_pairs], return_inverse=True)
            logits = self(images.coarse[uniq].to(dev), images.regions[uniq].to(dev), images.boxes[uniq].to(dev),
                          images.mask[uniq].to(dev), phrases[s:s + self.config.chunk_pairs].to(dev),
                          image_index=local.to(dev))  # (b,)
            out[s:s + len(local)] = torch.sigmoid(logits).cpu()
        self.train(was_training)
        return out
