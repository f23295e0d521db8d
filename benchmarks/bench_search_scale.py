"""Benchmark: DSA search at gallery scale, and the controller's share of one query's latency (``make bench``).

(a) Scale. A gallery of ``gallery`` images (default 100,000) of random unit vectors with R = 10 regions
    each (all valid) in the default heads' joint dimension (``AlignConfig().dim``), and ``queries`` random
    text queries (default 256), each with its own g in [0, 1]:

    * exact DSA: :func:`~dsanchor.retrieval.pair_terms` + :func:`~dsanchor.retrieval.anchored_scores` of
      every query against every image, ``QUERY_CHUNK`` queries x ``GALLERY_CHUNK`` images at a time (a
      running top-k, so no (Q, N) matrix exists), then the top-k;
    * two-stage: the faiss coarse top-M (``IndexFlatIP``, built once and reused) re-ranked with DSA,
      :func:`~dsanchor.retrieval.two_stage_search`, at M = 100 and M = 1,000.

    Milliseconds per query of each (all queries at once, best of ``repeats``), and the recall the two-stage
    search loses against exact DSA: the share of the exact top-10 (top-1) it misses, split into misses of
    the first stage (not among the coarse top-M) and of the re-rank (among them, yet ranked out; zero up
    to float ties, since the re-rank computes the same scores). Random vectors are a worst case for a
    coarse first stage: a caption's coarse and fine scores are independent here, while trained heads
    correlate them.
(b) End to end. One text query at a time against an index of ``index_size`` images (default 10,000),
    ``single_queries`` different captions: the real default text encoder (``create_encoder("effnet-minilm")``,
    MiniLM) -> the heads' text projection (randomly initialised, default config) -> the controller's state
    (the default :class:`~dsanchor.state.StateConfig`: :func:`~dsanchor.state.query_states`) -> the
    controller (default :class:`~dsanchor.controller.ControllerConfig` with the default k-type codebook,
    fit on random states; inference reads g from its table) -> faiss first stage (prebuilt index) + DSA
    re-rank -> top-k. The median time of each part over the queries, and the controller's share
    (state + controller) of the median whole. Target: at most 1 %.

Run alone: ``python benchmarks/bench_search_scale.py [--gallery 100000] [--queries 256] [--index-size 10000]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import torch

from dsanchor.align.heads import AlignConfig, AlignmentHeads, JointFeatures
from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.retrieval import anchored_scores, faiss_index, pair_terms, topk_search, two_stage_search
from dsanchor.state import StateConfig, query_states

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the encoder is built in main()

SHARE_TARGET = 0.01  # controller (state + MLP) over the whole query, at most
QUERY_CHUNK, GALLERY_CHUNK = 128, 10_000  # exact DSA block: pair terms of (128, 10k, R) floats at a time
E2E_M = 100  # first-stage depth of the end-to-end query (EvalConfig's two_stage_m)
TIE_TOL = 1e-5  # a re-rank "miss" whose exact score ties the two-stage k-th within this is a float tie
CHECK_QUERIES = 4  # queries whose chunked exact top-k is checked against one unchunked (Q, N) scoring

COLOURS = ["red", "blue", "green", "yellow", "purple", "gray", "cyan", "brown"]
SHAPES = ["cube", "sphere", "cylinder"]
TEMPLATES = ["a {c} {s}", "a small {c} metal {s} to the left of a large rubber {s2}", "two {c} {s}s",
             "the {c} {s} behind the {c2} {s2}", "there is no {c} object", "a large shiny {c} {s} in the middle"]


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Random unit vectors along the last dim, normalised in place (no second copy of a large gallery)."""
    x = torch.randn(*shape, generator=gen)
    return x.div_(x.norm(dim=-1, keepdim=True))


def random_gallery(n: int, regions: int, dim: int, gen: torch.Generator) -> JointFeatures:
    """``n`` images of random unit vectors, every region valid, with the cached products of a fixed gallery."""
    regs = _unit(n, regions, dim, gen=gen)  # (N, R, D)
    return JointFeatures(_unit(n, dim, gen=gen), regs, torch.ones(n, regions, dtype=torch.bool)).precompute()


def _rows(images: JointFeatures, rows: slice | torch.Tensor) -> JointFeatures:
    """The gallery images ``rows`` (a slice or an index tensor), cached products included."""
    return JointFeatures(images.coarse[rows], images.regions[rows], images.mask[rows], images.gram[rows],
                         images.rc[rows])


@torch.no_grad()
def exact_dsa_topk(text: torch.Tensor, images: JointFeatures, pool_s: float, g: torch.Tensor,
                   k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact DSA top-k of every query over the whole gallery, one (query chunk, gallery chunk) block at a time.

    Returns scores (Q, k) and gallery indices (Q, k), best first.
    """
    n = images.coarse.shape[0]
    scores, idx = [], []
    for qa in range(0, text.shape[0], QUERY_CHUNK):
        t, gq = text[qa:qa + QUERY_CHUNK], g[qa:qa + QUERY_CHUNK].view(-1, 1)  # (q, D), (q, 1)
        best_s = torch.full((t.shape[0], 0), float("-inf"))
        best_i = torch.zeros(t.shape[0], 0, dtype=torch.long)
        for a in range(0, n, GALLERY_CHUNK):
            block = anchored_scores(pair_terms(t, _rows(images, slice(a, a + GALLERY_CHUNK)), pool_s), gq)
            s, i = block.topk(min(k, block.shape[1]), dim=1)  # (q, k) within the block
            best_s, pos = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, i + a], 1).gather(1, pos)
        scores.append(best_s)
        idx.append(best_i)
    return torch.cat(scores), torch.cat(idx)


def _chunking_agrees(text: torch.Tensor, images: JointFeatures, pool_s: float, g: torch.Tensor,
                     exact_s: torch.Tensor, exact_i: torch.Tensor) -> bool:
    """Whether the chunked top-k equals the top-k of one unchunked scoring (same images, or float ties)."""
    with torch.no_grad():
        s, i = anchored_scores(pair_terms(text, images, pool_s), g.view(-1, 1)).topk(exact_i.shape[1], dim=1)
    same = (i.sort(1).values == exact_i.sort(1).values).all(1)
    return bool((same | ((s - exact_s).abs() < TIE_TOL).all(1)).all())


def _timed(fn, repeats: int):
    """(best seconds, last result) of ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _misses(exact_s: torch.Tensor, exact_i: torch.Tensor, two_s: torch.Tensor, two_i: torch.Tensor,
            cand: torch.Tensor, kk: int) -> dict[str, torch.Tensor]:
    """Per query (Q,), the share of the exact top-``kk`` that the two-stage top-``kk`` misses, and where.

    Args:
        exact_s, exact_i: exact DSA top-k scores and indices (Q, k). two_i: the two-stage top-k (Q, k) and
            two_s their exact DSA scores. cand: the first stage's candidates (Q, M).
    A miss among ``cand`` is a re-rank miss unless its exact score ties the two-stage kk-th within TIE_TOL.
    """
    e_i = exact_i[:, :kk]  # (Q, kk)
    missed = ~(e_i.unsqueeze(2) == two_i[:, :kk].unsqueeze(1)).any(2)  # (Q, kk)
    in_cand = (e_i.unsqueeze(2) == cand.unsqueeze(1)).any(2)  # (Q, kk)
    tie = (exact_s[:, :kk] - two_s[:, kk - 1:kk]).abs() < TIE_TOL
    parts = {"": missed, "_first_stage": missed & ~in_cand, "_rerank": missed & in_cand & ~tie,
             "_ties": missed & in_cand & tie}
    return {f"lost_top{kk}{name}": v.float().mean(1) for name, v in parts.items()}


def _returned_scores(text: torch.Tensor, images: JointFeatures, pool_s: float, g: torch.Tensor,
                     idx: torch.Tensor) -> torch.Tensor:
    """(Q, k) DSA scores of each query's returned images ``idx``, computed as exact DSA computes them."""
    return torch.cat([anchored_scores(pair_terms(text[q:q + 1], _rows(images, idx[q]), pool_s), g[q])
                      for q in range(text.shape[0])])


def scale(gallery: int, queries: int, regions: int, dim: int, pool_s: float, ms: tuple[int, ...], k: int,
          repeats: int, seed: int) -> dict:
    """(a): exact DSA vs two-stage at each M over a large random gallery."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(seed)
    images = random_gallery(gallery, regions, dim, gen)
    text, g = _unit(queries, dim, gen=gen), torch.rand(queries, generator=gen)  # (Q, D), (Q,)
    t_index, index = _timed(lambda: faiss_index(images.coarse), 1)
    exact_dsa_topk(text[:2], _rows(images, slice(0, 2 * GALLERY_CHUNK)), pool_s, g[:2], k)  # warm-up
    t_exact, (exact_s, exact_i) = _timed(lambda: exact_dsa_topk(text, images, pool_s, g, k), 1)
    out = {"gallery": gallery, "queries": queries, "regions": regions, "dim": dim, "k": k, "ms": list(ms),
           "index_build_ms": 1e3 * t_index, "exact_ms_per_query": 1e3 * t_exact / queries,
           "exact_chunking_ok": _chunking_agrees(text[:CHECK_QUERIES], images, pool_s, g[:CHECK_QUERIES],
                                                 exact_s[:CHECK_QUERIES], exact_i[:CHECK_QUERIES])}
    for m in ms:
        two_stage_search(text[:2], images, pool_s, g[:2], m, k, "faiss", index)  # warm-up
        t, (_, two_i) = _timed(lambda m=m: two_stage_search(text, images, pool_s, g, m, k, "faiss", index), repeats)
        _, cand = topk_search(text, images.coarse, m, "faiss", index=index)  # (Q, M) the first stage's candidates
        two_s = _returned_scores(text, images, pool_s, g, two_i)
        lost = {**_misses(exact_s, exact_i, two_s, two_i, cand, 1), **_misses(exact_s, exact_i, two_s, two_i, cand, k)}
        out[f"m{m}"] = {"ms_per_query": 1e3 * t / queries, "speedup": t_exact / t,
                        **{name: v.mean().item() for name, v in lost.items()},
                        "lost_top10_g_below_half": lost[f"lost_top{k}"][g <= 0.5].mean().item(),
                        "lost_top10_g_above_half": lost[f"lost_top{k}"][g > 0.5].mean().item()}
    return out


def _captions(n: int) -> list[str]:
    """``n`` different captions of the synth kind (colours, shapes, counts, relations, negations)."""
    out = []
    for i in range(n):
        c, c2 = COLOURS[i % len(COLOURS)], COLOURS[(i // len(COLOURS) + 3) % len(COLOURS)]
        s, s2 = SHAPES[i % len(SHAPES)], SHAPES[(i // len(SHAPES) + 1) % len(SHAPES)]
        out.append(TEMPLATES[i % len(TEMPLATES)].format(c=c, c2=c2, s=s, s2=s2))
    return out


def _default_controller(text_dim: int, coarse_dim: int, seed: int) -> GranularityController:
    """The default controller (query state, default codebook), codebook and standardisation fit on random states."""
    gen = torch.Generator().manual_seed(seed)
    s_t, s_i = query_states(torch.randn(256, text_dim, generator=gen), torch.randn(64, coarse_dim, generator=gen))
    ctrl = GranularityController(ControllerConfig(state_dim=s_t.shape[1], codebook=StateConfig().codebook,
                                                  text_dim=text_dim))
    ctrl.fit_inputs(torch.cat([s_t, s_i]), seed)
    return ctrl.eval()


PARTS = ("encode", "project", "state", "controller", "search")


@torch.no_grad()
def end_to_end(enc, index_size: int, regions: int, n_queries: int, k: int, seed: int) -> dict:
    """(b): median ms of each part of one text query, one query at a time."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    dims = enc.dims
    heads = AlignmentHeads(AlignConfig(coarse_dim=dims.coarse, region_dim=dims.region, text_dim=dims.text)).eval()
    pool_s = heads.pool_s.item()
    images = random_gallery(index_size, regions, heads.config.dim, torch.Generator().manual_seed(seed + 1))
    ctrl = _default_controller(dims.text, dims.coarse, seed)
    no_images = torch.zeros(0, dims.coarse)
    t_index, index = _timed(lambda: faiss_index(images.coarse), 1)

    def query(caption: str) -> dict[str, float]:
        t = [time.perf_counter()]
        raw = enc.encode_texts([caption])  # (1, Dt)
        t.append(time.perf_counter())
        text = heads.encode_text(raw)  # (1, D)
        t.append(time.perf_counter())
        state = query_states(raw, no_images)[0]  # (1, Dt + Dc + 1)
        t.append(time.perf_counter())
        g = ctrl(state)  # (1,)
        t.append(time.perf_counter())
        two_stage_search(text, images, pool_s, g, E2E_M, k, "faiss", index)  # (1, k) scores and indices
        t.append(time.perf_counter())
        topk_search(text, images.coarse, E2E_M, "faiss", index=index)  # the first stage again alone, for scale
        t.append(time.perf_counter())
        two_stage_search(text, images, pool_s, g, E2E_M, k, "faiss")  # without the prebuilt index
        t.append(time.perf_counter())
        times = dict(zip((*PARTS, "first_stage", "search_rebuilding_index"),
                         (1e3 * (b - a) for a, b in itertools.pairwise(t)), strict=True))
        times["total"] = sum(times[p] for p in PARTS)
        return times

    captions = _captions(n_queries)
    for caption in captions[:3]:  # warm-up
        query(caption)
    runs = [query(caption) for caption in captions]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    share = (med["state"] + med["controller"]) / med["total"]
    return {"index_size": index_size, "single_queries": n_queries, "m": E2E_M, "e2e_index_build_ms": 1e3 * t_index,
            **{f"{key}_ms": v for key, v in med.items()}, "controller_share": share,
            "controller_share_per_query_median": statistics.median(
                (r["state"] + r["controller"]) / r["total"] for r in runs),
            "share_target": SHARE_TARGET, "meets_target": share <= SHARE_TARGET}


def _print(scaled: dict, e2e: dict, threads: int, repeats: int) -> None:
    n, q, k = scaled["gallery"], scaled["queries"], scaled["k"]
    rows = [(f"exact DSA, {q} queries x {n:,} images x R={scaled['regions']}, ms/query",
             f"{scaled['exact_ms_per_query']:.2f}"),
            (f"  chunked top-{k} = one unchunked scoring ({CHECK_QUERIES} queries)",
             "yes" if scaled["exact_chunking_ok"] else "NO"),
            (f"faiss IndexFlatIP build, {n:,} images (once), ms", f"{scaled['index_build_ms']:.0f}")]
    for m in scaled["ms"]:
        r = scaled[f"m{m}"]
        rows += [(f"two-stage M={m:,} (faiss + DSA re-rank), ms/query (speed-up over exact)",
                  f"{r['ms_per_query']:.3f} ({r['speedup']:.0f}x)"),
                 (f"  top-{k} / top-1 of exact DSA lost",
                  f"{100 * r[f'lost_top{k}']:.1f} % / {100 * r['lost_top1']:.1f} %"),
                 ("  of the top-10 lost: first stage / re-rank / float ties",
                  f"{100 * r[f'lost_top{k}_first_stage']:.1f} % / {100 * r[f'lost_top{k}_rerank']:.2f} % / "
                  f"{100 * r[f'lost_top{k}_ties']:.2f} %"),
                 ("  top-10 lost for g <= 0.5 / g > 0.5",
                  f"{100 * r['lost_top10_g_below_half']:.1f} % / {100 * r['lost_top10_g_above_half']:.1f} %")]
    rows += [(f"one text query, {e2e['index_size']:,}-image index (median of {e2e['single_queries']}), ms", ""),
             ("  MiniLM text encoding", f"{e2e['encode_ms']:.2f}"),
             ("  heads' text projection", f"{e2e['project_ms']:.3f}"),
             ("  controller state (query_states)", f"{e2e['state_ms']:.3f}"),
             ("  controller (codebook + g table)", f"{e2e['controller_ms']:.3f}"),
             (f"  faiss top-{e2e['m']} + DSA re-rank + top-{k}", f"{e2e['search_ms']:.3f}"),
             ("    (of which the faiss first stage alone)", f"{e2e['first_stage_ms']:.3f}"),
             ("  whole query", f"{e2e['total_ms']:.2f}"),
             ("controller share (state + controller) of the whole query",
              f"{100 * e2e['controller_share']:.2f} %  (target <= {100 * SHARE_TARGET:.0f} %)"),
             ("  (median of the per-query shares)", f"{100 * e2e['controller_share_per_query_median']:.2f} %"),
             ("  (the search if it built its faiss index per call, ms; the one build here, ms)",
              f"{e2e['search_rebuilding_index_ms']:.2f}; {e2e['e2e_index_build_ms']:.2f}")]
    width = max(len(r[0]) for r in rows)
    print(f"bench_search_scale (D={scaled['dim']}, {threads} threads, two-stage best of {repeats})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print("  note: random vectors are a worst case for a coarse first stage (coarse and fine scores are independent;"
          " trained heads correlate them), so the recall lost is an upper bound.")


def main(gallery: int = 100_000, queries: int = 256, index_size: int = 10_000, single_queries: int = 50,
         regions: int = 10, ms: tuple[int, ...] = (100, 1000), k: int = 10, repeats: int = 2, seed: int = 0) -> dict:
    """Run (a) and (b), print a table, return the figures (times in ms, shares as fractions)."""
    from dsanchor.encoders import create_encoder

    default = AlignConfig()
    scaled = scale(gallery, queries, regions, default.dim, default.init_pool_scale, ms, k, repeats, seed)
    e2e = end_to_end(create_encoder("effnet-minilm"), index_size, regions, single_queries, k, seed)
    result = {"name": "search_scale", "threads": torch.get_num_threads(), **scaled, **e2e}
    _print(scaled, e2e, result["threads"], repeats)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=256)
    ap.add_argument("--index-size", type=int, default=10_000)
    ap.add_argument("--single-queries", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    main(a.gallery, a.queries, a.index_size, a.single_queries)
