"""The granularity controller for captioning, and every captioning method's choice of g.

**State** (one per image, "the image side plus the prompt"): ``[c | r_mean | stats]`` of size
``2 * D + N_STATS`` in the heads' joint space, with c the scene vector, r_mean the mean of the valid
region vectors and stats = (number of valid regions, mean pairwise cosine of the regions, mean and min
cosine between the scene and each region, total box area, spread of the box centres). They say how
many objects there are, how alike they are and how well the scene vector already covers them, which
is what the choice between object tokens and scene tokens trades off. An image is captioned once per
granularity (its scene, object and relation captions, each from its own start token,
:mod:`dsanchor.captioning.decode`) and one g serves the whole set, so the state has no prompt term:
the start tokens are the same for every image.

**Reward** (DESIGN.md "Captioning"): ``clip(alpha * CIDEr - beta * hallucination)`` through
:class:`~dsanchor.rl.env.GranularityEnv`. To keep PPO fast the decoder is not run inside the
environment: every training image is decoded once at each g of a grid (default 11 values,
:func:`~dsanchor.captioning.evaluate.score_grid`) and :class:`CaptionRewardModel` returns the values of
the grid point nearest to the chosen g. The reward is therefore piecewise constant in g with steps at
the midpoints between grid values; the exported controller's g is still continuous and is decoded
exactly at evaluation. CIDEr is the mean CIDEr-D of the image's caption set, each caption against all
the image's references (IDF over the split), the hallucination term the mean over the set of the
estimator's share of named objects that the image lacks.

**Methods** (DESIGN.md "Evaluation and report"), all fit on val (the decoder was fit on train):
``coarse`` g = 0, ``fine`` g = 1, ``fixed_best`` the grid g with the best val CIDEr, ``gate_grad``
the same controller network trained by gradient descent on the teacher-forced caption loss of the val
captions (g = controller mean, differentiable through ``anchor``), ``dsa_ppo`` the PPO controller
(:func:`dsanchor.rl.ppo.train_ppo`), and ``oracle``, per test image the grid g with its best CIDEr: an
upper bound chosen on the test references themselves, not a method.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from dsanchor.anchoring import choose_fixed_g, choose_g_per_item, g_grid
from dsanchor.captioning.decode import DecodeConfig
from dsanchor.captioning.decoder import CaptionDecoder
from dsanchor.captioning.evaluate import GridOutcomes, HallucinationEstimator, score_grid
from dsanchor.captioning.tokenizer import Vocabulary
from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.captioning.train import caption_examples, caption_loss
from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.errors import ConfigError
from dsanchor.features.types import ImageFeatures
from dsanchor.files import write_json
from dsanchor.hallucination.mentions import caption_objects, hallucination_share
from dsanchor.rl.env import RewardConfig
from dsanchor.rl.ppo import PPOConfig, train_ppo

__all__ = ["N_STATS", "CaptionRLConfig", "CaptionGateConfig", "CaptionRewardModel", "CaptionMethods",
           "DetectorHallucination",
           "caption_states", "caption_state_dim", "train_caption_ppo", "train_caption_gate", "select_fixed_g",
           "oracle_g", "fit_caption_methods"]

log = logging.getLogger(__name__)

N_STATS = 6


@dataclass
class CaptionRLConfig:
    grid: int = field(default=11, metadata={"help": "g grid on which captions are precomputed and scored"})
    alpha: float = field(default=1.0, metadata={"help": "weight of the per-image CIDEr-D reward"})
    beta: float = field(default=1.0, metadata={"help": "weight of the hallucination penalty"})
    clip_low: float = field(default=-10.0, metadata={"help": "lower clip of the reward (CIDEr-D is raw scale)"})
    clip_high: float = field(default=10.0, metadata={"help": "upper clip of the reward"})

    def reward_config(self) -> RewardConfig:
        return RewardConfig(alpha=self.alpha, beta=self.beta, clip_low=self.clip_low, clip_high=self.clip_high)


@dataclass
class CaptionGateConfig:
    steps: int = field(default=100, metadata={"help": "gradient steps"})
    batch_size: int = field(default=128, metadata={"help": "val captions per step"})
    lr: float = field(default=3e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    seed: int = field(default=0, metadata={"help": "random seed"})


def caption_state_dim(dim: int) -> int:
    """State size for joint dimension D."""
    return 2 * dim + N_STATS


@torch.no_grad()
def caption_states(split: CaptionSplit) -> torch.Tensor:
    """Controller states of a split's images (module docstring). Returns (N, 2D + N_STATS)."""
    m = split.mask.float()  # (N, R)
    n_valid = m.sum(1)  # (N,)
    r = F.normalize(split.regions, dim=-1) * m.unsqueeze(-1)  # (N, R, D)
    r_mean = r.sum(1) / n_valid.clamp_min(1).unsqueeze(1)  # (N, D)
    sim = torch.einsum("nrd,nsd->nrs", r, r)  # (N, R, R)
    pairs = (n_valid * (n_valid - 1)).clamp_min(1)
    pair_sim = (sim.sum((1, 2)) - (sim.diagonal(dim1=1, dim2=2)).sum(1)) / pairs  # (N,) off-diagonal mean
    cs = torch.einsum("nd,nrd->nr", F.normalize(split.coarse, dim=-1), r)  # (N, R)
    cs_mean = (cs * m).sum(1) / n_valid.clamp_min(1)
    cs_min = cs.masked_fill(~split.mask, float("inf")).min(1).values
    cs_min = torch.where(n_valid > 0, cs_min, torch.zeros_like(cs_min))
    area = (split.boxes[..., 2] * split.boxes[..., 3] * m).sum(1)  # (N,)
    centre = split.boxes[..., :2] + split.boxes[..., 2:] / 2  # (N, R, 2)
    c_mean = (centre * m.unsqueeze(-1)).sum(1) / n_valid.clamp_min(1).unsqueeze(1)  # (N, 2)
    spread = (((centre - c_mean.unsqueeze(1)) ** 2).sum(-1) * m).sum(1) / n_valid.clamp_min(1)
    stats = torch.stack([n_valid, pair_sim, cs_mean, cs_min, area, spread.sqrt()], dim=1)  # (N, N_STATS)
    return torch.cat([split.coarse, r_mean, stats], dim=1)


class DetectorHallucination:
    """The hallucination estimate of the reward, from the detector (:mod:`dsanchor.hallucination`).

    For image n and its caption: the objects the caption names (CHAIR's mention extraction over
    ``vocabulary``) and the mean of 1 - P(present) over them (:func:`hallucination_share`); 0 when the
    caption names no object the detector's vocabulary can score. Presence probabilities are computed
    once per split.

    Args:
        detector: a trained :class:`~dsanchor.hallucination.HallucinationDetector`.
        images: the split's store features, in the order of the captions to come.
        objects: the detector's object vocabulary (names and phrase embeddings).
        vocabulary: ``"synth"`` or ``"coco"``.
    """

    def __init__(self, detector, images: ImageFeatures, objects, vocabulary: str):
        self.presence = detector.presence_matrix(images, objects.embeddings.float())  # (N, V)
        self.index = objects.index()
        self.vocabulary = vocabulary
        self._named: dict[str, list[str]] = {}

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(captions))
        for n, cap in enumerate(captions):
            if cap not in self._named:
                self._named[cap] = caption_objects(cap, self.vocabulary)
            share = hallucination_share(self.presence[n], self._named[cap], self.index, self.vocabulary)
            out[n] = 0.0 if share is None else share
        return out


class CaptionRewardModel:
    """(R_acc, R_hall) = (CIDEr-D, -hallucination) of image q at the grid point nearest to g."""

    def __init__(self, outcomes: GridOutcomes):
        self.outcomes = outcomes
        self._cider = outcomes.cider.double().numpy()  # (N, G)
        self._hall = outcomes.hallucination.double().numpy()

    def __call__(self, q: int, g: float) -> tuple[float, float]:
        j = int(self.outcomes.nearest(float(g)))
        return float(self._cider[q, j]), -float(self._hall[q, j])


def train_caption_ppo(states: torch.Tensor, outcomes: GridOutcomes, rl: CaptionRLConfig, ppo: PPOConfig,
                      out_dir: str | Path, progress: bool = False) -> tuple[GranularityController, dict]:
    """PPO on the precomputed grid rewards; exports the controller to ``out_dir/controller``."""
    if states.shape[0] != outcomes.cider.shape[0]:
        raise ConfigError(f"{states.shape[0]} states but {outcomes.cider.shape[0]} images in the caption grid")
    return train_ppo(states, CaptionRewardModel(outcomes), rl.reward_config(), ppo, out_dir, progress=progress)


def train_caption_gate(decoder: CaptionDecoder, vocab: Vocabulary, split: CaptionSplit, states: torch.Tensor,
                       controller: ControllerConfig, config: CaptionGateConfig) -> tuple[GranularityController, dict]:
    """The controller trained by gradient descent on the teacher-forced loss of ``split``'s captions.

    The decoder is frozen (eval mode, no gradients); g = controller mean enters V' through ``anchor``.
    """
    torch.manual_seed(config.seed)
    ctrl = GranularityController(controller)
    ctrl.set_normalization(states.mean(0), states.std(0))
    data = caption_examples(split, vocab)
    opt = torch.optim.Adam(ctrl.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    flags = [p.requires_grad for p in decoder.parameters()]
    decoder.eval().requires_grad_(False)
    t0, losses = time.perf_counter(), []
    try:
        ctrl.train()
        for _ in range(config.steps):
            b = torch.randint(len(data), (min(config.batch_size, len(data)),), generator=gen)
            batch = data.index(b)
            loss = caption_loss(decoder, split, batch, ctrl(states[batch.rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for p, f in zip(decoder.parameters(), flags, strict=True):
            p.requires_grad_(f)
    ctrl.eval()
    return ctrl, {"train_time_s": time.perf_counter() - t0, "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1)}


def select_fixed_g(outcomes: GridOutcomes) -> tuple[float, list[dict]]:
    """The grid g with the best mean per-image CIDEr-D (= corpus CIDEr-D), and the whole curve."""
    curve = [{"g": float(g), "CIDEr": float(outcomes.cider[:, j].mean()),
              "hallucination": float(outcomes.hallucination[:, j].mean())} for j, g in enumerate(outcomes.grid)]
    return choose_fixed_g(outcomes.cider.double().mean(0), outcomes.grid), curve


def oracle_g(outcomes: GridOutcomes) -> torch.Tensor:
    """Per image, the grid g with its best CIDEr-D (ties: lower hallucination, then g nearest 0.5). (N,)"""
    return choose_g_per_item(outcomes.cider.double() - 1e-4 * outcomes.hallucination.double(), outcomes.grid)


@dataclass
class CaptionMethods:
    """Every captioning method's g on the test split, and what was fit on val."""

    g: dict[str, torch.Tensor]  # method -> (N_test,) g per test image
    val_grid: GridOutcomes  # val captions and scores on the grid (the PPO reward table)
    test_grid: GridOutcomes  # test captions and scores on the grid (the oracle; reused by evaluation)
    ppo: GranularityController
    gate: GranularityController
    info: dict  # fixed_best g and curve, training times


def fit_caption_methods(decoder: CaptionDecoder, vocab: Vocabulary, val: CaptionSplit, test: CaptionSplit,
                        rl: CaptionRLConfig, ppo: PPOConfig, gate: CaptionGateConfig, decode: DecodeConfig,
                        out_dir: str | Path, hallucination: HallucinationEstimator | None = None) -> CaptionMethods:
    """Fit fixed_best, gate_grad and dsa_ppo on ``val`` and give every method's g on ``test``.

    Writes ``ppo/controller``, ``gate/controller``, ``val_grid.json``, ``test_grid.json`` and
    ``methods.json`` (fixed g, val curve, times) under ``out_dir``.

    Args:
        hallucination: the estimator for ``val``'s images; without it the penalty term is 0 and a
            warning is logged.
    """
    out = Path(out_dir)
    if hallucination is None:
        log.warning("no hallucination estimator: the captioning reward is alpha * CIDEr only")
    grid = g_grid(rl.grid)
    t0 = time.perf_counter()
    val_grid = score_grid(decoder, vocab, val, grid, decode, hallucination)
    test_grid = score_grid(decoder, vocab, test, grid, decode)
    grid_s = time.perf_counter() - t0
    s_val, s_test = caption_states(val), caption_states(test)
    fixed, curve = select_fixed_g(val_grid)
    ctrl_ppo, ppo_info = train_caption_ppo(s_val, val_grid, rl, ppo, out / "ppo")
    ctrl_cfg = ControllerConfig(state_dim=s_val.shape[1], hidden=ppo.hidden, layers=ppo.layers)
    ctrl_gate, gate_info = train_caption_gate(decoder, vocab, val, s_val, ctrl_cfg, gate)
    ctrl_gate.save_pretrained(out / "gate" / "controller")
    n = len(test)
    with torch.no_grad():
        g = {"coarse": torch.zeros(n), "fine": torch.ones(n), "fixed_best": torch.full((n,), fixed),
             "gate_grad": ctrl_gate(s_test), "dsa_ppo": ctrl_ppo(s_test), "oracle": oracle_g(test_grid)}
    info = {"fixed_best_g": fixed, "val_curve": curve, "grid_time_s": grid_s, "ppo": ppo_info, "gate": gate_info,
            "oracle": "upper bound: best grid g per test image, chosen on that image's references"}
    val_grid.save(out / "val_grid.json")
    test_grid.save(out / "test_grid.json")
    write_json(out / "methods.json", info)
    return CaptionMethods(g, val_grid, test_grid, ctrl_ppo, ctrl_gate, info)
