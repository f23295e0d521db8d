"""A split of the feature store projected into the joint space, with everything retrieval needs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsanchor.align.heads import AlignmentHeads, JointFeatures
from dsanchor.align.train import embed_images
from dsanchor.features.types import ImageFeatures, TextFeatures, exact_relevance
from dsanchor.relations import Compositions, RelationConfig, compose_fine, compositions
from dsanchor.retrieval import PairTerms, pair_terms, positives_matrix
from dsanchor.state import StateConfig, image_to_text_states, query_states, text_to_image_states

__all__ = ["SplitView", "prepare_view", "with_relations", "rerank_compose", "subset", "split_halves"]


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
    pool_s: float = 10.0  # the heads' attention-pool scale
    single_terms: PairTerms | None = None  # ``terms`` with every caption scored by the single pool
    compositions: Compositions | None = None  # the multi-phrase captions, embedded (None: not parsed)
    relation: RelationConfig = dataclasses.field(default_factory=RelationConfig)  # what ``terms`` used

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
def prepare_view(heads: AlignmentHeads, images: ImageFeatures, texts: TextFeatures, state: StateConfig,
                 encode_texts: Callable[[list[str]], torch.Tensor] | None = None,
                 relation: RelationConfig | None = None, parse: bool = False) -> SplitView:
    """Project a split and score every (caption, image) pair once.

    Args:
        encode_texts: the store's text encoder (:meth:`~dsanchor.features.store.FeatureStore.encode_texts`), to
            embed the object phrases of multi-phrase captions (:mod:`dsanchor.relations`). Without it every
            caption is scored by the single pool, whatever the heads' relation config.
        relation: the compositional scorer; defaults to the heads' own (:attr:`AlignmentHeads.relation_config`).
        parse: parse the captions even when the scorer leaves them out (mix 0), so that :func:`with_relations`
            can try other scorers on this view (fitting one); otherwise they are parsed only when it mixes them in.
    """
    heads.eval()
    joint = embed_images(heads, images).precompute()  # the gallery is scored by every query
    text = heads.encode_text(texts.embeddings.float())
    s = heads.pool_s.item()
    single = pair_terms(text, joint, s)
    relation = relation if relation is not None else heads.relation_config
    comp = None
    if encode_texts is not None and (parse or relation.mix > 0):
        comp = compositions(texts.captions).embed(lambda ps: heads.encode_text(encode_texts(ps).float()))
    terms = _composed(single, comp, joint, s, relation)
    if state.state_kind == "query":
        states_t2i, states_i2t = query_states(texts.embeddings, images.coarse)
    else:
        states_t2i = text_to_image_states(text, joint, terms, s, state)
        states_i2t = image_to_text_states(text, joint, terms.t(), s, state)
    return SplitView(
        images=images, texts=texts, joint=joint, text=text, terms=terms,
        positives=positives_matrix(texts.image_ids, images.image_ids), exact=exact_relevance(texts, images),
        states_t2i=states_t2i, states_i2t=states_i2t,
        logit_scale=float(heads.logit_scale.exp().clamp(max=100.0)), state=state, pool_s=s, single_terms=single,
        compositions=comp, relation=relation if comp is not None else RelationConfig(),
    )


def _composed(single: PairTerms, comp: Compositions | None, joint: JointFeatures, pool_s: float,
              relation: RelationConfig) -> PairTerms:
    if comp is None or relation.mix == 0.0:
        return single
    fine = compose_fine(single.fine, comp, joint, joint.boxes, pool_s, relation)
    return single._replace(fine=fine)


def rerank_compose(view: SplitView):
    """The :data:`~dsanchor.retrieval.Compose` of this view's captions (rows: the view's texts), or None."""
    comp, relation = view.compositions, view.relation
    if comp is None or relation.mix == 0.0:
        return None
    return lambda terms, cand: terms._replace(
        fine=compose_fine(terms.fine, comp, view.joint, view.joint.boxes, view.pool_s, relation, cand=cand))


@torch.no_grad()
def with_relations(view: SplitView, relation: RelationConfig) -> SplitView:
    """The same view scored with another compositional scorer (the query states are the text's own, unchanged
    for the query state; a summary state is rebuilt)."""
    if view.compositions is None:
        raise ValueError("this view's captions were not parsed (prepare it with a text encoder and parse=True)")
    terms = _composed(view.single_terms, view.compositions, view.joint, view.pool_s, relation)
    out = dataclasses.replace(view, terms=terms, relation=relation)
    if view.state.state_kind != "query":
        out.states_t2i = text_to_image_states(view.text, view.joint, terms, view.pool_s, view.state)
        out.states_i2t = image_to_text_states(view.text, view.joint, terms.t(), view.pool_s, view.state)
    return out


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
