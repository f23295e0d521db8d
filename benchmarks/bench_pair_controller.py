"""Benchmark: the per-pair controller's share of one text query end to end (``make bench`` runs it).

One text query against an index of ``index_size`` images (random unit vectors with up to R regions and random
boxes, D dimensions), batch 1, best of ``repeats`` runs interleaved so load changes hit every part alike:

1. encode the query with the real effnet-minilm text encoder (MiniLM) and project it (a 2-layer MLP);
2. first stage: exact inner-product top-``m`` of the scene vectors (torch);
3. the pair terms of the ``m`` candidates (:func:`dsanchor.retrieval.rerank_terms`);
4. the per-pair state (:func:`dsanchor.pairs.pair_states`: DSA at the base g over the ``m`` candidates, their
   top-M and each pair's features, including the attended box layout);
5. the per-pair controller network (:class:`dsanchor.pairs.PairController`);
6. re-rank with each pair's g and take the top ``k``.

The controller's share is (4 + 5) / (1 + ... + 6), the whole query; the aim is at most 1% at ``m`` = 100 on a
10,000-image index. Ratios are measured within one run, so they hold on a loaded machine.

Run alone: ``python benchmarks/bench_pair_controller.py [--index-size 10000] [--m 100] [--repeats 30]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.pairs import PairController, PairControllerConfig, pair_g, pair_states
from dsanchor.retrieval import anchored_scores, rerank_terms, topk_search

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARE_TARGET = 0.01
POOL_S = 10.0
TEXT_DIM = 384
QUERY = "a small red metal cube to the left of a large blue rubber sphere"


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)


def _index(n: int, regions: int, dim: int, seed: int) -> JointFeatures:
    gen = torch.Generator().manual_seed(seed)
    valid = torch.randint(2, regions + 1, (n, 1), generator=gen)
    mask = torch.arange(regions).unsqueeze(0) < valid
    boxes = torch.rand(n, regions, 4, generator=gen) * 0.5
    return JointFeatures(_unit(n, dim, gen=gen), _unit(n, regions, dim, gen=gen) * mask.unsqueeze(-1), mask,
                         boxes=boxes).precompute()


def main(index_size: int = 10_000, m: int = 100, top_m: int = 20, k: int = 10, regions: int = 10, dim: int = 256,
         repeats: int = 30, seed: int = 0) -> dict:
    """Per-part milliseconds of one text query and the controller's share."""
    from dsanchor.encoders import create_encoder

    enc = create_encoder("effnet-minilm")
    images = _index(index_size, regions, dim, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    proj = torch.nn.Sequential(torch.nn.Linear(TEXT_DIM, 256), torch.nn.GELU(), torch.nn.Linear(256, dim)).eval()
    ctrl = PairController(PairControllerConfig(top_m=top_m, text_dim=TEXT_DIM, base_g=0.5)).eval()
    ctrl.text_centroids.copy_(_unit(ctrl.config.codebook, TEXT_DIM, gen=gen))
    state: dict = {}

    def encode():
        with torch.no_grad():
            state["raw"] = enc.encode_texts([QUERY]).float()
            state["text"] = torch.nn.functional.normalize(proj(state["raw"]), dim=-1)

    def first_stage():
        _, state["cand"] = topk_search(state["text"], images.coarse, m)

    def terms():
        with torch.no_grad():
            state["terms"] = rerank_terms(state["text"], images, POOL_S, state["cand"])  # (1, m)

    def pair_state():
        state["states"] = pair_states(state["terms"], state["text"], state["raw"], images, POOL_S, 0.5, top_m,
                                      columns=state["cand"])

    def controller():
        with torch.no_grad():
            state["g"] = ctrl(state["states"])

    def rerank():
        g = pair_g(state["g"], state["states"].cand, m, 0.5)
        anchored_scores(state["terms"], g)[0].topk(k)

    parts = {"encode": encode, "first_stage": first_stage, "terms": terms, "pair_state": pair_state,
             "controller": controller, "rerank_topk": rerank}
    for _ in range(3):  # warm-up, in order (each part reads the one before)
        for fn in parts.values():
            fn()
    best = {name: float("inf") for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    ms = {name: 1e3 * v for name, v in best.items()}
    total = sum(ms.values())
    share = (ms["pair_state"] + ms["controller"]) / total
    result = {"name": "pair_controller", "index_size": index_size, "m": m, "top_m": top_m, "ms": ms,
              "total_ms": total, "controller_share": share, "target_share": SHARE_TARGET,
              "meets_target": share <= SHARE_TARGET}
    print(f"one text query on {index_size} images, m={m}, per-pair top-M={top_m}: "
          + ", ".join(f"{name} {v:.3f} ms" for name, v in ms.items())
          + f"; controller share {100 * share:.2f}% (aim <= {100 * SHARE_TARGET:.0f}%)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index-size", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=100)
    ap.add_argument("--top-m", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    main(a.index_size, a.m, a.top_m, repeats=a.repeats)
