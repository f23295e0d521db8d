"""Glue between stages that several commands share: views of a store's splits, hallucination matrices,
training the retrieval controller with PPO, and the tuning objective.

Everything here reads the feature store and saved models only; nothing touches images.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from dsanchor.eval.methods import MethodG, controller_g, retrieval_metrics
from dsanchor.eval.views import SplitView
from dsanchor.features.types import ImageFeatures, TextFeatures
from dsanchor.retrieval import anchored_scores
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig, train_ppo
from dsanchor.rl.reward import AccuracyConfig, RetrievalReward

__all__ = ["HallMatrices", "guess_vocabulary", "rl_view", "subset", "split_halves", "hallucination_matrices",
           "hallucination_rates", "train_retrieval_controller", "tune_objective"]

_SYNTH_NAME = re.compile(r"^(gray|red|blue|green|brown|purple|cyan|yellow) (cube|sphere|cylinder)$")


@dataclass
class HallMatrices:
    """Per (caption, image) hallucination facts of a split."""

    gt: torch.Tensor  # (T, N) bool: caption names an object the image lacks (ground truth)
    est: torch.Tensor | None  # (T, N) detector's estimated share of named objects the image lacks
    names_object: torch.Tensor  # (T,) bool: the caption names at least one object of the vocabulary


def guess_vocabulary(images: ImageFeatures) -> str:
    """"synth" when every object name is a CLEVR colour + shape, else "coco"."""
    names = {n for objs in images.objects for n in objs}
    return "synth" if names and all(_SYNTH_NAME.match(n) for n in names) else "coco"


def subset(images: ImageFeatures, texts: TextFeatures, keep: torch.Tensor) -> tuple[ImageFeatures, TextFeatures]:
    """The images where ``keep`` (N,) is True, with their captions."""
    idx = keep.nonzero().flatten()
    ids = images.image_ids[idx]
    t_idx = torch.isin(texts.image_ids, ids).nonzero().flatten()
    img = ImageFeatures(ids, images.coarse[idx], images.regions[idx], images.boxes[idx], images.mask[idx],
                        [images.objects[i] for i in idx.tolist()], [images.splits[i] for i in idx.tolist()])
    txt = TextFeatures(texts.embeddings[t_idx], texts.image_ids[t_idx], texts.granularity[t_idx],
                       [texts.captions[i] for i in t_idx.tolist()])
    return img, txt


def split_halves(images: ImageFeatures, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of the images, as (N,) bool masks."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    a = torch.zeros(len(images), dtype=torch.bool)
    a[perm[: len(images) // 2]] = True
    return a, ~a


def hallucination_matrices(view: SplitView, vocabulary: str, detector=None, object_vocab=None) -> HallMatrices:
    """Ground-truth and (with a detector) estimated hallucination of every (caption, image) pair.

    A mention is grounded as CHAIR grounds it (synth: a bare "cube" by any "<colour> cube").
    """
    from dsanchor.hallucination.mentions import caption_objects, hallucination_shares
    from dsanchor.metrics.chair import get_vocabulary

    vocab = get_vocabulary(vocabulary)
    named = [caption_objects(c, vocabulary) for c in view.texts.captions]
    t, n = len(view.texts), len(view.images)
    gt = torch.zeros(t, n, dtype=torch.bool)
    present = [vocab.canonical_objects(objs) for objs in view.images.objects]
    for m, objs in enumerate(named):
        if objs:
            gt[m] = torch.tensor([not all(vocab.grounded(o, present[j]) for o in objs) for j in range(n)])
    est = None
    if detector is not None:
        index = object_vocab.index()
        prob = detector.presence_matrix(view.images, object_vocab.embeddings.float())  # (N, V)
        est = torch.zeros(t, n)
        for m, objs in enumerate(named):
            shares = hallucination_shares(prob, objs, index, vocabulary) if objs else None
            if shares is not None:
                est[m] = shares
    return HallMatrices(gt, est, torch.tensor([bool(o) for o in named]))


def rl_view(store, heads, state, detector, images: ImageFeatures, texts: TextFeatures):
    """(view, hallucination matrices) of some images and their captions, for RL training or tuning.

    Args:
        store: the feature store (for the object vocabulary). heads: alignment heads. state: StateConfig.
        detector: a hallucination detector, or None (then only the ground-truth matrix is filled).
    """
    from dsanchor.eval.views import prepare_view

    view = prepare_view(heads, images, texts, state)
    vocab = store.object_vocabulary() if detector is not None else None
    return view, hallucination_matrices(view, guess_vocabulary(images), detector, vocab)


@torch.no_grad()
def hallucination_rates(view: SplitView, g: MethodG, hall: HallMatrices) -> dict[str, float]:
    """Ground-truth hallucination of the top-1 results.

    ``hall_t2i``: among caption queries that name an object, the share whose top-1 image lacks one of them.
    ``hall_i2t``: among image queries, the share whose top-1 caption names an object the image lacks.
    """
    top_img = anchored_scores(view.terms, g.t2i.view(-1, 1)).argmax(1)  # (T,)
    top_cap = anchored_scores(view.terms.t(), g.i2t.view(-1, 1)).argmax(1)  # (N,)
    rows = torch.arange(len(view.texts))
    t2i = hall.gt[rows, top_img][hall.names_object].float()
    i2t = hall.gt[top_cap, torch.arange(len(view.images))].float()
    return {"hall_t2i": float(t2i.mean()) if t2i.numel() else 0.0, "hall_i2t": float(i2t.mean())}


def train_retrieval_controller(view: SplitView, hall: HallMatrices | None, reward: RewardConfig,
                               accuracy: AccuracyConfig, ppo: PPOConfig, out_dir, progress: bool = True):
    """PPO on the split's caption and image queries; returns (controller, info)."""
    states = torch.cat([view.states_t2i, view.states_i2t])
    est = None if hall is None else hall.est
    model = RetrievalReward(view.terms, view.positives, est, accuracy)
    return train_ppo(states, model, reward, ppo, out_dir, progress=progress, codebook=view.state.codebook,
                     text_dim=view.text_dim)


def _objective_value(view: SplitView, g: MethodG, hall: HallMatrices, k: int) -> float:
    m = retrieval_metrics(view, g, (k,))
    h = hallucination_rates(view, g, hall)
    return (m["t2i"][f"R@{k}"] + m["i2t"][f"R@{k}"]) / 2 - (h["hall_t2i"] + h["hall_i2t"]) / 2


def tune_objective(fit: tuple[SplitView, HallMatrices], select: tuple[SplitView, HallMatrices],
                   accuracy: AccuracyConfig, ppo: PPOConfig, work_dir):
    """The documented tuning objective for a reward: train PPO on ``fit``, then on ``select`` return

        mean(t2i R@K, i2t R@K) - mean(hall_t2i, hall_i2t)

    (ground-truth hallucination rates of the top-1 results; K = ``accuracy.k``).
    """
    return functools.partial(_run_trial, fit, select, accuracy, ppo, str(work_dir))


def _run_trial(fit, select, accuracy, ppo, work_dir, reward: RewardConfig) -> float:
    import tempfile

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        ctrl, _ = train_retrieval_controller(fit[0], fit[1], reward, accuracy, ppo, tmp, progress=False)
    return _objective_value(select[0], controller_g(select[0], ctrl), select[1], accuracy.k)

