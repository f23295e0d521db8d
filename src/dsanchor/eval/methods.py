"""Retrieval evaluation of every method on one split (DESIGN.md "Evaluation and report").

Each method is a choice of g per query, in both directions:

* ``coarse`` g = 0; ``fine`` g = 1;
* ``fixed_best``: the g of a grid that maximises the val selection score, applied to test;
* ``gate_grad``: a controller trained by gradient descent (:mod:`dsanchor.gate`);
* ``dsa_ppo``: a controller trained by PPO (:mod:`dsanchor.rl`);
* ``oracle``: the best g of the grid for each test query, chosen on the query itself. An upper bound,
  not a method.

Two relevance protocols (DESIGN.md "Relevance"): ``paired`` (a caption's only positive is its own image,
as COCO and CLIP_benchmark count) and ``exact`` (every image the caption is true of, from the scene
graphs; every caption true of the image for image-to-text). ``fixed_best``, the oracle, the gate and the
PPO reward use ``exact`` where it exists (:attr:`SplitView.relevant`).

The selection score is the mean reciprocal rank of the first relevant item, averaged over both
directions: under exact relevance R@10 is nearly saturated, while the reciprocal rank still separates
methods, and it is the PPO reward's accuracy term too, so every method is fit to the same target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dsanchor.anchoring import choose_fixed_g, choose_g_per_item, g_grid
from dsanchor.controller import GranularityController
from dsanchor.eval.views import SplitView
from dsanchor.features.types import GRANULARITY_CODES
from dsanchor.metrics.retrieval import ranks_of_first_positive
from dsanchor.pairs import PairController, PairControllerConfig, PairStates, pair_g, pair_states
from dsanchor.relations import RelationConfig
from dsanchor.retrieval import anchored_scores

__all__ = ["EvalConfig", "MethodG", "g_grid", "retrieval_metrics", "fixed_g", "controller_g", "oracle_g",
           "select_fixed_g", "fit_relations", "pair_method", "pair_method_states", "query_ranks", "rank_metrics",
           "selection_score", "hallucination_rates"]


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = field(default=(1, 5, 10), metadata={"help": "Recall@K cut-offs"})
    grid: int = field(default=21, metadata={"help": "points of the g grid for fixed_best and the oracle"})
    two_stage_m: int = field(default=100, metadata={"help": "first-stage depth of the two-stage comparison"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap draws of the image-level intervals"})
    hard_negatives: bool = field(default=True, metadata={
        "help": "score compositional hard negatives made from the test scenes (where the data has scene graphs)"})
    relations: bool = field(default=True, metadata={
        "help": "score multi-phrase captions with the heads' compositional scorer (dsanchor.relations); "
                "off: every caption by the single region pool (the ablation)"})


@dataclass
class MethodG:
    """g for every query of a split: one per query, or for a per-pair controller (:mod:`dsanchor.pairs`) one per
    (caption, image) pair, with ``cand`` the candidates it chose a g for (the others have its base g)."""

    t2i: torch.Tensor  # (T,) one g per caption query, or (T, N) one per pair
    i2t: torch.Tensor  # (N,) one g per image query
    cand: torch.Tensor | None = None  # (T, M) with a per-pair t2i: the candidates of each caption query

    def t2i_grid(self) -> torch.Tensor:
        """g broadcastable to the (T, N) text-to-image scores."""
        return self.t2i if self.t2i.dim() == 2 else self.t2i.view(-1, 1)

    def t2i_chosen(self) -> torch.Tensor:
        """(T,) the g each caption query chose: its own, or the mean over its candidates for a per-pair g."""
        return self.t2i if self.t2i.dim() == 1 else self.t2i.gather(1, self.cand).mean(1)


def pair_method_states(view: SplitView, config: PairControllerConfig) -> PairStates:
    """:func:`~dsanchor.pairs.pair_states` of a view's caption queries."""
    return pair_states(view.terms, view.text, view.texts.embeddings, view.joint, view.pool_s, config.base_g,
                       config.top_m, view.compositions)


def pair_method(view: SplitView, controller: PairController, g_i2t: float) -> tuple[MethodG, PairStates]:
    """The per-pair controller's g on ``view``: its own g on each caption query's top-M, its base g elsewhere;
    image queries get ``g_i2t``."""
    c = controller.config
    states = pair_method_states(view, c)
    with torch.no_grad():
        g = pair_g(controller(states), states.cand, len(view.images), c.base_g)
    return MethodG(g, torch.full((len(view.images),), float(g_i2t)), states.cand), states


def fixed_g(view: SplitView, g: float) -> MethodG:
    return MethodG(torch.full((len(view.texts),), g), torch.full((len(view.images),), g))


@torch.no_grad()
def controller_g(view: SplitView, controller: GranularityController) -> MethodG:
    controller.eval()
    return MethodG(controller(view.states_t2i), controller(view.states_i2t))


@torch.no_grad()
def query_ranks(view: SplitView, g: MethodG, positives: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """1-based rank of the first positive of every query: ``{"t2i": (T,), "i2t": (N,)}``.

    Args:
        positives: (T, N) bool; defaults to :attr:`SplitView.relevant`.
    """
    pos = view.relevant if positives is None else positives
    s_t2i = anchored_scores(view.terms, g.t2i_grid())  # (T, N)
    s_i2t = anchored_scores(view.terms.t(), g.i2t.view(-1, 1))  # (N, T)
    return {"t2i": ranks_of_first_positive(s_t2i, pos), "i2t": ranks_of_first_positive(s_i2t, pos.T)}


def rank_metrics(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict:
    """Recall@K (a query hits when its first positive is in the top K), MRR, mean and median first rank.

    MedR is floored as VSE++ and SCAN compute it; ``MeanR`` is the mean rank of the first positive.
    """
    r = ranks.double()
    out = {f"R@{k}": float((ranks <= k).double().mean()) for k in ks}
    out.update(MRR=float((1.0 / r).mean()), MeanR=float(r.mean()), MedR=float(np.floor(np.median(r.numpy()))))
    return out


def selection_score(view: SplitView, g: MethodG) -> float:
    """Mean reciprocal rank of the first relevant item, averaged over both directions."""
    ranks = query_ranks(view, g)
    return float((1.0 / ranks["t2i"].double()).mean() + (1.0 / ranks["i2t"].double()).mean()) / 2


@torch.no_grad()
def oracle_g(view: SplitView, grid: int) -> MethodG:
    """Per query, the grid g with the best rank of its first relevant item (ties: the g closest to 0.5)."""
    gs = g_grid(grid)
    per_g = [query_ranks(view, fixed_g(view, float(g))) for g in gs]
    best = {d: choose_g_per_item(-torch.stack([r[d] for r in per_g], 1).double(), gs) for d in ("t2i", "i2t")}
    return MethodG(best["t2i"], best["i2t"])


@torch.no_grad()
def select_fixed_g(view: SplitView, config: EvalConfig) -> tuple[float, list[dict]]:
    """The grid g maximising :func:`selection_score` on ``view``; also returns the whole curve."""
    gs = g_grid(config.grid)
    curve = [{"g": g, "score": selection_score(view, fixed_g(view, g))} for g in gs.tolist()]
    return choose_fixed_g(torch.tensor([c["score"] for c in curve]), gs), curve


@torch.no_grad()
def fit_relations(view: SplitView, config: EvalConfig) -> tuple[RelationConfig, dict]:
    """The compositional scorer (:mod:`dsanchor.relations`) that maximises :func:`selection_score` at the best fixed
    g on ``view`` (validation), with its grid: ``(config, {"grid": [{"mix", "weight", "score", "g"}], ...})``."""
    from dsanchor.eval.views import with_relations
    from dsanchor.relations import fit_relation_config

    best_g: dict[tuple[float, float], float] = {}

    def score(cfg: RelationConfig) -> float:
        g, curve = select_fixed_g(with_relations(view, cfg), config)
        best_g[(cfg.mix, cfg.weight)] = g
        return max(c["score"] for c in curve)

    chosen, grid = fit_relation_config(score, tau=view.relation.tau)
    for row in grid:
        row["g"] = best_g[(row["mix"], row["weight"])]
    n_comp = len(view.compositions) if view.compositions is not None else 0
    return chosen, {"mix": chosen.mix, "weight": chosen.weight, "tau": chosen.tau, "grid": grid,
                    "compositional_captions": n_comp, "captions": len(view.texts)}


def _by_granularity(view: SplitView, g: MethodG, ranks: dict[str, dict], ks: tuple[int, ...]) -> dict:
    out = {}
    for name, code in GRANULARITY_CODES.items():
        sel = view.granularity == code
        if not sel.any():
            continue
        row = {f"t2i_R@{k}": float((ranks["paired"]["t2i"][sel] <= k).double().mean()) for k in ks}
        if "exact" in ranks:
            row.update({f"exact_t2i_R@{k}": float((ranks["exact"]["t2i"][sel] <= k).double().mean()) for k in ks})
            row["exact_t2i_MRR"] = float((1.0 / ranks["exact"]["t2i"][sel].double()).mean())
        chosen = g.t2i_chosen()[sel]
        row.update(n=int(sel.sum()), mean_g=float(chosen.mean()), std_g=float(chosen.std(unbiased=False)))
        out[name] = row
    return out


@torch.no_grad()
def retrieval_metrics(view: SplitView, g: MethodG, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Both protocols in both directions, per caption granularity, and the g statistics.

    ``t2i`` / ``i2t`` are the paired protocol (comparable with the literature); ``exact`` holds the same
    keys under exact relevance, where the data has scene graphs.
    """
    ranks = {name: query_ranks(view, g, pos) for name, pos in view.protocols.items()}
    out: dict = {d: rank_metrics(ranks["paired"][d], ks) for d in ("t2i", "i2t")}
    if "exact" in ranks:
        out["exact"] = {d: rank_metrics(ranks["exact"][d], ks) for d in ("t2i", "i2t")}
    out["by_granularity"] = _by_granularity(view, g, ranks, ks)
    out["mean_g"] = {"t2i": float(g.t2i_chosen().mean()), "i2t": float(g.i2t.mean())}
    return out


@torch.no_grad()
def hallucination_rates(view: SplitView, g: MethodG, hall) -> dict[str, float]:
    """Ground-truth hallucination of the top-1 results, with its coverage.

    * ``hall_t2i``: among caption queries that name an object, the share whose top-1 image lacks one of them;
      ``coverage_t2i``: the share of caption queries that name an object.
    * ``hall_i2t``: among image queries whose top-1 caption names an object, the share where the image lacks
      one of them; ``coverage_i2t``: the share of image queries whose top-1 caption names an object.
    * ``grounded_i2t``: the mean of :func:`~dsanchor.hallucination.matrices.grounded_score` over all image
      queries, the reward's hallucination term (+1 correct, 0 names nothing, -1 wrong): a method cannot
      improve it by ranking captions that name nothing first, as it can improve ``hall_i2t`` alone.

    Args:
        hall: :class:`~dsanchor.hallucination.matrices.HallMatrices` of the split.
    """
    from dsanchor.hallucination.matrices import grounded_score

    top_img = anchored_scores(view.terms, g.t2i_grid()).argmax(1)  # (T,)
    top_cap = anchored_scores(view.terms.t(), g.i2t.view(-1, 1)).argmax(1)  # (N,)
    cols = torch.arange(len(view.images))
    t2i = hall.gt[torch.arange(len(view.texts)), top_img][hall.names_object].double()
    named = hall.names_object[top_cap]  # (N,)
    i2t = hall.gt[top_cap, cols][named].double()
    grounded = grounded_score(hall.gt_share[top_cap, cols], named).double()
    return {"hall_t2i": float(t2i.mean()) if t2i.numel() else 0.0,
            "coverage_t2i": float(hall.names_object.double().mean()),
            "hall_i2t": float(i2t.mean()) if i2t.numel() else 0.0,
            "coverage_i2t": float(named.double().mean()), "grounded_i2t": float(grounded.mean())}
