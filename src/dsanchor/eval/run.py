"""Evaluate every retrieval method on the same features and heads (the rows of results.json)."""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import torch

from dsanchor.align.heads import AlignmentHeads
from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.eval.compare import query_clusters, query_records
from dsanchor.eval.hardneg import store_hard_negatives
from dsanchor.eval.methods import (
    EvalConfig,
    MethodG,
    controller_g,
    fixed_g,
    g_grid,
    hallucination_rates,
    oracle_g,
    pair_method,
    pair_method_states,
    retrieval_metrics,
    select_fixed_g,
)
from dsanchor.eval.views import SplitView, prepare_view, rerank_compose
from dsanchor.features.store import FeatureStore
from dsanchor.gate import GateConfig, train_gate
from dsanchor.hallucination.matrices import guess_vocabulary, hallucination_matrices
from dsanchor.metrics.retrieval import chance_recall, recall_at_k
from dsanchor.pairs import PairController, PairControllerConfig, PairGateConfig, pair_g, train_pair_gate
from dsanchor.relations import RelationConfig
from dsanchor.retrieval import anchored_scores, pair_terms, two_stage_scores
from dsanchor.state import StateConfig, query_states, text_to_image_states

__all__ = ["RetrievalEval", "evaluate_retrieval", "timing_per_query", "pair_timing"]

log = logging.getLogger(__name__)


@dataclass
class RetrievalEval:
    """What :func:`evaluate_retrieval` returns."""

    methods: dict  # method name -> results.json row (retrieval part)
    g: dict[str, MethodG]  # method name -> g of every test query
    val_curve: list  # fixed-g R@K on val (selects fixed_best)
    test_curve: list  # fixed-g R@K on test (for the plot)
    two_stage: dict  # exact vs two-stage R@K at M
    records: dict  # method name -> {"exact.t2i": (T,) ranks, ...} per-query first-positive ranks
    clusters: dict  # {"t2i": (T,), "i2t": (N,)} the test image of every query (the bootstrap's unit)
    extra: dict = field(default_factory=dict)  # gate training info, vocabulary, ...


def _ms_per_query(fn, repeats: int, queries: int) -> float:
    """The best of ``repeats`` runs of ``fn`` (which scores ``queries`` text queries), in ms per query."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * min(times) / max(queries, 1)


@torch.no_grad()
def timing_per_query(view: SplitView, heads: AlignmentHeads, controller: GranularityController | None,
                     state: StateConfig, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per text query to score the whole test gallery, for each kind of method."""
    s = heads.pool_s.item()
    best_of = functools.partial(_ms_per_query, repeats=repeats, queries=len(view.texts))

    coarse = best_of(lambda: view.text @ view.joint.coarse.T)
    terms = best_of(lambda: anchored_scores(pair_terms(view.text, view.joint, s), 0.5))
    out = {"coarse": coarse, "fine": terms, "fixed": terms}
    if state.state_kind == "query":
        st = best_of(lambda: query_states(view.texts.embeddings, view.images.coarse[:0]))
    else:
        st = best_of(lambda: text_to_image_states(view.text, view.joint, view.terms, s, state))
    out["state"] = st
    if controller is not None:
        out["controller"] = best_of(lambda: controller(view.states_t2i))
        out["dsa"] = terms + st + out["controller"]
    return out


@torch.no_grad()
def pair_timing(view: SplitView, controller: PairController, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per text query of the per-pair controller: its state (top-M of the first stage and the pair
    features) and its network, and the whole query scored with it (``pair_dsa``)."""
    best_of = functools.partial(_ms_per_query, repeats=repeats, queries=len(view.texts))

    states = pair_method_states(view, controller.config)
    st = best_of(lambda: pair_method_states(view, controller.config))
    net = best_of(lambda: controller(states))
    score = best_of(lambda: anchored_scores(view.terms, pair_g(controller(states), states.cand, len(view.images),
                                                               controller.config.base_g)))
    return {"pair_state": st, "pair_controller": net, "pair_dsa": score + st}


def _two_stage(view: SplitView, heads: AlignmentHeads, g: MethodG, config: EvalConfig) -> dict:
    ks = config.ks
    exact = recall_at_k(anchored_scores(view.terms, g.t2i.view(-1, 1)), view.relevant, ks)
    two = recall_at_k(two_stage_scores(view.text, view.joint, heads.pool_s.item(), g.t2i, config.two_stage_m,
                                       compose=rerank_compose(view)), view.relevant, ks)
    return {"M": config.two_stage_m, "exact": exact, "two_stage": two,
            "loss": {k: exact[k] - two[k] for k in exact}}


def evaluate_retrieval(store: FeatureStore, heads: AlignmentHeads, config: EvalConfig, state: StateConfig,
                       controller: GranularityController | None = None, gate: GateConfig | None = None,
                       split: str = "test", pair_controller: PairController | None = None,
                       pair_gate: PairGateConfig | None = None) -> RetrievalEval:
    """All methods on ``split``; fixed_best, the gradient gate and the per-pair gate are fit on val.

    ``pair_controller`` (PPO, :mod:`dsanchor.pairs`) adds ``dsa_pair``; ``gate_pair``, the same network trained by
    gradient descent on val, is always added (with ``pair_gate``'s settings)."""
    single = None if config.relations else RelationConfig()  # the ablation: every caption by the single pool
    val = prepare_view(heads, store.images("val"), store.texts("val"), state, store.encode_texts, single)
    test = prepare_view(heads, store.images(split), store.texts(split), state, store.encode_texts, single)
    vocabulary = guess_vocabulary(test.images)
    # without object labels every named object would count as hallucinated: the rates are left out
    hall = hallucination_matrices(test.texts, test.images, vocabulary) if any(test.images.objects) else None
    g_best, val_curve = select_fixed_g(val, config)
    gate_cfg = ControllerConfig(state_dim=val.states_t2i.shape[1], codebook=state.codebook, text_dim=val.text_dim)
    gate_ctrl, gate_info = train_gate(val, gate_cfg, gate or GateConfig())
    gs: dict[str, MethodG] = {"coarse": fixed_g(test, 0.0), "fine": fixed_g(test, 1.0),
                              "fixed_best": fixed_g(test, g_best), "gate_grad": controller_g(test, gate_ctrl)}
    if controller is not None:
        gs["dsa_ppo"] = controller_g(test, controller)
    pair_cfg = PairControllerConfig(text_dim=val.text_dim, base_g=g_best)
    t0 = time.perf_counter()
    pair_gate_ctrl, pair_info = train_pair_gate(val.terms, val.relevant, pair_method_states(val, pair_cfg),
                                                val.logit_scale, pair_cfg, pair_gate or PairGateConfig())
    pair_info["train_time_s"] = time.perf_counter() - t0
    gs["gate_pair"], _ = pair_method(test, pair_gate_ctrl, g_best)
    pair_controllers = {"gate_pair": pair_gate_ctrl}
    if pair_controller is not None:
        gs["dsa_pair"], _ = pair_method(test, pair_controller, g_best)
        pair_controllers["dsa_pair"] = pair_controller
    gs["oracle"] = oracle_g(test, config.grid)
    timing = timing_per_query(test, heads, controller or gate_ctrl, state)  # both are the same network
    timing.update(pair_timing(test, pair_controller or pair_gate_ctrl))
    ms = {"coarse": timing["coarse"], "fine": timing["fine"], "fixed_best": timing["fixed"],
          "gate_grad": timing["dsa"], "dsa_ppo": timing["dsa"], "gate_pair": timing["pair_dsa"],
          "dsa_pair": timing["pair_dsa"]}
    methods = {}
    for name, g in gs.items():
        row = retrieval_metrics(test, g, config.ks)
        if hall is not None:
            row.update(hallucination_rates(test, g, hall))
        if ms.get(name) is not None:
            row["ms_per_query"] = ms[name]
        methods[name] = row
    methods["fixed_best"]["g"] = g_best
    methods["oracle"]["upper_bound"] = True
    test_curve = []
    for g in g_grid(config.grid).tolist():
        m = retrieval_metrics(test, fixed_g(test, g), config.ks)
        test_curve.append({"g": g, **{k: m[k] for k in ("t2i", "i2t", "exact") if k in m}})
    ref = "dsa_ppo" if "dsa_ppo" in gs else "fixed_best"
    two = {"method": ref, **_two_stage(test, heads, gs[ref], config)}
    records = {name: query_records(test, g) for name, g in gs.items()}
    protocols = {"paired": "a caption's only positive is its own image (COCO / CLIP_benchmark)"}
    if test.exact is not None:
        protocols["exact"] = ("every test image the caption is true of (t2i) and every caption true of the "
                              "image (i2t), from the scene graphs; fixed_best, the gate, the oracle and the "
                              "PPO reward use it")
    else:
        protocols["note"] = "no scene graphs: the paired protocol only; fixed_best, gate and oracle use it"
    extra = {"vocabulary": vocabulary, "gate": gate_info, "gate_pair": pair_info, "timing_ms": timing,
             "protocols": protocols, "n_images": len(test.images), "n_captions": len(test.texts),
             "mean_positives_t2i": {k: float(v.sum(1).double().mean()) for k, v in test.protocols.items()},
             "chance": {k: {"t2i": chance_recall(v, config.ks), "i2t": chance_recall(v.T, config.ks)}
                        for k, v in test.protocols.items()},
             "relations": {"mix": test.relation.mix, "weight": test.relation.weight, "tau": test.relation.tau}}
    if config.hard_negatives:
        hard = store_hard_negatives(store, heads, test, gs, pair_controllers, config)
        if hard is not None:
            extra["hard_negatives"] = hard
    return RetrievalEval(methods, gs, val_curve, test_curve, two, records, query_clusters(test), extra)
