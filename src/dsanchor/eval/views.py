"""A split of the feature store projected into the joint space, with everything retrieval needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsanchor.align.heads import AlignmentHeads, JointFeatures
from dsanchor.align.train import embed_images
from dsanchor.features.types import ImageFeatures, TextFeatures, exact_relevance
from dsanchor.retrieval import PairTerms, pair_terms, positives_matrix
from dsanchor.state import StateConfig, image_to_text_states, query_states, text_to_image_states

__all__ = ["SplitView", "prepare_view", "subset", "split_halves"]


@dataclass
class SplitView:
    """One split, projected, scored once; every method reads it."""

    images: ImageFeatures  # the store's images of this split
    texts: TextFeatures  # the store's captions of this split
    joint: JointFeatures  # (N, ...) images in the joint space
    text: torch.Tensor  # (T, D) caption vectors in the joint space
    terms: PairTerms  # (T, N) rows texts, columns images
    positives: torch.Tensor  # (T, N) bool, the paired protocol: a caption's own image only
    exact: torch.Tensor | None  # (T, N) bool, the exact protocol (every image the caption is true of), or None
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

    @property
    def relevant(self) -> torch.Tensor:
        """(T, N) the positives that rewards, fixed_best, the gate and the oracle use: exact where it exists."""
        return self.exact if self.exact is not None else self.positives

    @property
    def protocols(self) -> dict[str, torch.Tensor]:
        """Protocol name -> (T, N) positives: ``paired`` always, ``exact`` where the data has scene graphs."""
        return {"paired": self.positives, **({"exact": self.exact} if self.exact is not None else {})}


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
        positives=positives_matrix(texts.image_ids, images.image_ids), exact=exact_relevance(texts, images),
        states_t2i=states_t2i, states_i2t=states_i2t,
        logit_scale=float(heads.logit_scale.exp().clamp(max=100.0)), state=state,
    )


def subset(images: ImageFeatures, texts: TextFeatures, keep: torch.Tensor) -> tuple[ImageFeatures, TextFeatures]:
    """The images where ``keep`` (N,) is True, with their captions (scene graphs and facts included)."""
    idx = keep.nonzero().flatten()
    ids = images.image_ids[idx]
    t_idx = torch.isin(texts.image_ids, ids).nonzero().flatten()
    pick = idx.tolist()
    img = ImageFeatures(ids, images.coarse[idx], images.regions[idx], images.boxes[idx], images.mask[idx],
                        [images.objects[i] for i in pick], [images.splits[i] for i in pick],
                        None if images.scenes is None else [images.scenes[i] for i in pick])
    rows = t_idx.tolist()
    txt = TextFeatures(texts.embeddings[t_idx], texts.image_ids[t_idx], texts.granularity[t_idx],
                       [texts.captions[i] for i in rows],
                       None if texts.facts is None else [texts.facts[i] for i in rows])
    return img, txt


def split_halves(images: ImageFeatures, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of the images, as (N,) bool masks."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    a = torch.zeros(len(images), dtype=torch.bool)
    a[perm[: len(images) // 2]] = True
    return a, ~a
