"""A split of the feature store projected into the joint space, with everything retrieval needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsanchor.align.heads import AlignmentHeads, JointFeatures
from dsanchor.align.train import embed_images
from dsanchor.features.types import ImageFeatures, TextFeatures
from dsanchor.retrieval import PairTerms, pair_terms, positives_matrix
from dsanchor.state import StateConfig, image_to_text_states, query_states, text_to_image_states

__all__ = ["SplitView", "prepare_view"]


@dataclass
class SplitView:
    """One split, projected, scored once; every method reads it."""

    images: ImageFeatures  # the store's images of this split
    texts: TextFeatures  # the store's captions of this split
    joint: JointFeatures  # (N, ...) images in the joint space
    text: torch.Tensor  # (T, D) caption vectors in the joint space
    terms: PairTerms  # (T, N) rows texts, columns images
    positives: torch.Tensor  # (T, N) bool
    states_t2i: torch.Tensor  # (T, S) controller states of text queries
    states_i2t: torch.Tensor  # (N, S) controller states of image queries
    logit_scale: float  # the heads' InfoNCE scale, for losses on anchored scores
    state: StateConfig  # how the states were built

    @property
    def text_dim(self) -> int:
        """Size of the text part of a query state (the encoder's text vector)."""
        return int(self.texts.embeddings.shape[1])

    @property
    def granularity(self) -> torch.Tensor:
        return self.texts.granularity  # (T,)


@torch.no_grad()
def prepare_view(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures,
                 state: StateConfig) -> SplitView:
    heads.eval()
    joint = embed_images(heads, images).precompute()  # the gallery is scored by every query
    text = heads.encode_text(texts.embeddings.float())
    s = heads.pool_s.item()
    terms = pair_terms(text, joint, s)
    if state.state_kind == "query":
        states_t2i, states_i2t = query_states(texts.embeddings, images.coarse)
    else:
        states_t2i = text_to_image_states(text, joint, terms, s, state)
        states_i2t = image_to_text_states(text, joint, terms.t(), s, state)
    return SplitView(
        images=images, texts=texts, joint=joint, text=text, terms=terms,
        positives=positives_matrix(texts.image_ids, images.image_ids),
        states_t2i=states_t2i, states_i2t=states_i2t,
        logit_scale=float(heads.logit_scale.exp().clamp(max=100.0)), state=state,
    )
