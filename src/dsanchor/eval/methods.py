"""Retrieval evaluation of every method on one split (DESIGN.md "Evaluation and report").

Each method is a choice of g per query, in both directions:

* ``coarse`` g = 0; ``fine`` g = 1;
* ``fixed_best``: the g of a grid that maximises val R@10 (mean of both directions), applied to test;
* ``gate_grad``: a controller trained by gradient descent (:mod:`dsanchor.gate`);
* ``dsa_ppo``: a controller trained by PPO (:mod:`dsanchor.rl`);
* ``oracle``: the best g of the grid for each test query, chosen on the query itself. An upper bound,
  not a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dsanchor.controller import GranularityController
from dsanchor.eval.views import SplitView
from dsanchor.features.types import GRANULARITY_CODES
from dsanchor.metrics.retrieval import median_rank, ranks_of_first_positive, recall_at_k
from dsanchor.retrieval import anchored_scores

__all__ = ["EvalConfig", "MethodG", "g_grid", "retrieval_metrics", "fixed_g", "controller_g", "oracle_g",
           "select_fixed_g"]


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = field(default=(1, 5, 10), metadata={"help": "Recall@K cut-offs"})
    grid: int = field(default=21, metadata={"help": "points of the g grid for fixed_best and the oracle"})
    select_k: int = field(default=10, metadata={"help": "K of the val R@K that picks fixed_best"})
    two_stage_m: int = field(default=100, metadata={"help": "first-stage depth of the two-stage comparison"})


@dataclass
class MethodG:
    """g for every query of a split."""

    t2i: torch.Tensor  # (T,) one g per caption query
    i2t: torch.Tensor  # (N,) one g per image query


def g_grid(n: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, n)


def fixed_g(view: SplitView, g: float) -> MethodG:
    return MethodG(torch.full((len(view.texts),), g), torch.full((len(view.images),), g))


@torch.no_grad()
def controller_g(view: SplitView, controller: GranularityController) -> MethodG:
    controller.eval()
    return MethodG(controller(view.states_t2i), controller(view.states_i2t))


def _ranks(view: SplitView, g: MethodG) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based rank of the first positive for every t2i and i2t query."""
    s_t2i = anchored_scores(view.terms, g.t2i.view(-1, 1))  # (T, N)
    s_i2t = anchored_scores(view.terms.t(), g.i2t.view(-1, 1))  # (N, T)
    return ranks_of_first_positive(s_t2i, view.positives), ranks_of_first_positive(s_i2t, view.positives.T)


@torch.no_grad()
def oracle_g(view: SplitView, grid: int) -> MethodG:
    """Per query, the grid g with the best rank of its first positive (ties: the g closest to 0.5)."""
    gs = g_grid(grid)
    ranks_t, ranks_i = zip(*(_ranks(view, fixed_g(view, float(g))) for g in gs), strict=False)
    tie = (gs - 0.5).abs() * 1e-3  # prefer central g among equal ranks
    best_t = (torch.stack(ranks_t, 1).float() + tie).argmin(1)  # (T,)
    best_i = (torch.stack(ranks_i, 1).float() + tie).argmin(1)  # (N,)
    return MethodG(gs[best_t], gs[best_i])


@torch.no_grad()
def select_fixed_g(view: SplitView, config: EvalConfig) -> tuple[float, list[dict]]:
    """The grid g maximising mean (t2i, i2t) R@select_k on ``view``; also returns the whole curve."""
    curve = []
    for g in g_grid(config.grid).tolist():
        m = retrieval_metrics(view, fixed_g(view, g), (config.select_k,))
        key = f"R@{config.select_k}"
        curve.append({"g": g, "t2i": m["t2i"][key], "i2t": m["i2t"][key]})
    best = max(curve, key=lambda r: (r["t2i"] + r["i2t"]) / 2)
    return best["g"], curve


@torch.no_grad()
def retrieval_metrics(view: SplitView, g: MethodG, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@K and median rank in both directions, per caption granularity, and the g statistics."""
    s_t2i = anchored_scores(view.terms, g.t2i.view(-1, 1))
    s_i2t = anchored_scores(view.terms.t(), g.i2t.view(-1, 1))
    out = {
        "t2i": {**recall_at_k(s_t2i, view.positives, ks), "MedR": median_rank(s_t2i, view.positives)},
        "i2t": {**recall_at_k(s_i2t, view.positives.T, ks), "MedR": median_rank(s_i2t, view.positives.T)},
        "by_granularity": {}, "mean_g": {"t2i": float(g.t2i.mean()), "i2t": float(g.i2t.mean())},
    }
    for name, code in GRANULARITY_CODES.items():
        sel = view.granularity == code
        if sel.any():
            r = recall_at_k(s_t2i[sel], view.positives[sel], ks)
            out["by_granularity"][name] = {f"t2i_R@{k}": r[f"R@{k}"] for k in ks}
            out["by_granularity"][name]["n"] = int(sel.sum())
            out["by_granularity"][name]["mean_g"] = float(g.t2i[sel].mean())
            out["by_granularity"][name]["std_g"] = float(g.t2i[sel].std(unbiased=False))
    return out
