"""Training the retrieval controller with PPO on a split's queries, and the tuning objective for its reward.

Everything here reads the feature store and saved models only; nothing touches images.
"""

from __future__ import annotations

import functools
import tempfile

import torch

from dsanchor.eval.methods import controller_g, hallucination_rates, selection_score
from dsanchor.eval.views import SplitView, prepare_view
from dsanchor.features.types import ImageFeatures, TextFeatures
from dsanchor.hallucination.matrices import HallMatrices, guess_vocabulary, hallucination_matrices
from dsanchor.pairs import PairPPOConfig
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig, train_ppo
from dsanchor.rl.reward import AccuracyConfig, RetrievalReward

__all__ = ["rl_view", "train_retrieval_controller", "train_pair_controller", "tune_objective", "objective_value"]


def rl_view(store, heads, state, detector, images: ImageFeatures, texts: TextFeatures
            ) -> tuple[SplitView, HallMatrices]:
    """(view, hallucination matrices) of some images and their captions, for RL training or tuning.

    Args:
        store: the feature store (for the object vocabulary). heads: alignment heads. state: StateConfig.
        detector: a hallucination detector, or None (then only the ground-truth matrices are filled).
    """
    view = prepare_view(heads, images, texts, state, encode_texts=store.encode_texts)
    vocab = store.object_vocabulary() if detector is not None else None
    return view, hallucination_matrices(texts, images, guess_vocabulary(images), detector, vocab)


def train_retrieval_controller(view: SplitView, hall: HallMatrices | None, reward: RewardConfig,
                               accuracy: AccuracyConfig, ppo: PPOConfig, out_dir, progress: bool = True):
    """PPO on the split's caption and image queries (relevance: exact where it exists); returns (controller, info)."""
    states = torch.cat([view.states_t2i, view.states_i2t])
    est = None if hall is None else hall.est
    names = None if hall is None else hall.names_object
    model = RetrievalReward(view.terms, view.relevant, est, accuracy, names)
    return train_ppo(states, model, reward, ppo, out_dir, progress=progress, codebook=view.state.codebook,
                     text_dim=view.text_dim)


def train_pair_controller(view: SplitView, hall: HallMatrices | None, reward: RewardConfig, accuracy: AccuracyConfig,
                          ppo: PairPPOConfig, out_dir, base_g: float, top_m: int = 20, progress: bool = True):
    """PPO of the per-pair controller (:mod:`dsanchor.pairs`) on the split's caption queries, with the same reward
    as the query-only controller; ``base_g``: the first stage's g (fixed_best on this split). Returns
    (controller, info)."""
    from dsanchor.eval.methods import pair_method_states
    from dsanchor.pairs import PairControllerConfig, train_pair_ppo

    est = None if hall is None else hall.est
    names = None if hall is None else hall.names_object
    model = RetrievalReward(view.terms, view.relevant, est, accuracy, names)
    config = PairControllerConfig(top_m=top_m, text_dim=view.text_dim, base_g=base_g)
    return train_pair_ppo(view.terms, pair_method_states(view, config), model, reward, config, ppo, out_dir,
                          progress=progress)


def objective_value(view: SplitView, g, hall: HallMatrices) -> float:
    """The tuning objective on a split: mean reciprocal rank of the first relevant item over both directions,
    minus the mean ground-truth top-1 hallucination (t2i over the queries that name an object, i2t over all
    image queries)."""
    h = hallucination_rates(view, g, hall)
    return selection_score(view, g) - (h["hall_t2i"] + h["hall_i2t"] * h["coverage_i2t"]) / 2


def tune_objective(folds: list[tuple[SplitView, HallMatrices]], accuracy: AccuracyConfig, ppo: PPOConfig, work_dir):
    """The documented 2-fold tuning objective of a reward: for each fold, train PPO on it and score the other
    fold with :func:`objective_value`; return the mean over the folds."""
    return functools.partial(_run_trial, folds, accuracy, ppo, str(work_dir))


def _run_trial(folds, accuracy, ppo, work_dir, reward: RewardConfig) -> float:
    values = []
    for k, (fit_view, fit_hall) in enumerate(folds):
        score_view, score_hall = folds[(k + 1) % len(folds)]
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            ctrl, _ = train_retrieval_controller(fit_view, fit_hall, reward, accuracy, ppo, tmp, progress=False)
        values.append(objective_value(score_view, controller_g(score_view, ctrl), score_hall))
    return sum(values) / len(values)
