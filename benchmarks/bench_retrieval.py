"""Benchmark: retrieval throughput, exact search and DSA scoring (``make bench`` runs it).

On random unit vectors (D = 256), all in the same run so the ratios hold on a loaded machine:

1. exact top-k search, ``queries`` x ``gallery`` (default 5k x 25k, k = 10): our chunked
   ``topk_search(backend="torch")`` against faiss ``IndexFlatIP`` (``backend="faiss"``, index building
   included, faiss on as many threads as torch). Queries/s of each, their ratio, and whether they return
   the same neighbours (same set per query; same order; largest score difference);
2. dense DSA scoring: :func:`pair_terms` + :func:`anchored_scores` (per-query g) + top-k for
   ``dsa_queries`` text queries x ``dsa_gallery`` images with R regions (default 500 x 5k x 10);
3. two-stage DSA: coarse top-M (M = 100) re-ranked with DSA, :func:`two_stage_scores`, for
   ``two_stage_queries`` queries over the ``gallery`` images, run ``chunk`` queries at a time so that
   the (Q, N) score matrix never exists whole.

Run alone: ``python benchmarks/bench_retrieval.py [--queries 5000] [--gallery 25000]``.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.retrieval import anchored_scores, pair_terms, topk_search, two_stage_scores

RATIO_TARGET = 0.5  # torch queries/s over faiss queries/s: ours, no worse than half of faiss
TIE_TOL = 1e-5  # two neighbour lists agree when their sorted exact scores differ by less than this
POOL_S = 10.0  # attention-pool scale, the heads' initial value


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """Random unit vectors along the last dim, normalised in place (no second copy of a large gallery)."""
    x = torch.randn(*shape, generator=gen)
    return x.div_(x.norm(dim=-1, keepdim=True))


def _images(n: int, regions: int, dim: int, gen: torch.Generator) -> JointFeatures:
    """``n`` images of random unit vectors with 2..R valid regions each (zero where masked)."""
    mask = torch.arange(regions).unsqueeze(0) < torch.randint(2, regions + 1, (n, 1), generator=gen)  # (N, R)
    regs = _unit(n, regions, dim, gen=gen).mul_(mask.unsqueeze(-1))  # (N, R, D)
    return JointFeatures(_unit(n, dim, gen=gen), regs, mask).precompute()  # a fixed gallery caches its products


def _status_mb(key: str) -> float:
    """A /proc/self/status memory field in MB (Linux), else the process's peak RSS."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_growth(fn):
    """(fn(), MB the peak RSS rose above the RSS before the call). Linux resets the peak first."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    before = _status_mb("VmRSS:")
    out = fn()
    return out, max(_status_mb("VmHWM:") - before, 0.0)


def _agree_up_to_ties(q: torch.Tensor, g: torch.Tensor, i_a: torch.Tensor, i_b: torch.Tensor) -> float:
    """Share of queries whose two neighbour lists have the same exact (float64) scores within TIE_TOL."""
    rows = (i_a.sort(dim=1).values != i_b.sort(dim=1).values).any(dim=1).nonzero().flatten()  # differing sets
    if rows.numel() == 0:
        return 1.0
    qd = q[rows].double()  # (r, D)
    sa = torch.einsum("rd,rkd->rk", qd, g[i_a[rows]].double()).sort(dim=1).values  # (r, k)
    sb = torch.einsum("rd,rkd->rk", qd, g[i_b[rows]].double()).sort(dim=1).values
    ties = ((sa - sb).abs() < TIE_TOL).all(dim=1)  # (r,)
    return 1.0 - (~ties).sum().item() / q.shape[0]


def _timed(fn, repeats: int = 1):
    """(best seconds, last result) of ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def exact_search(queries: int, gallery: int, dim: int, k: int, repeats: int, seed: int) -> dict:
    """torch vs faiss exact inner-product top-k on the same vectors."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(seed)
    q, g = _unit(queries, dim, gen=gen), _unit(gallery, dim, gen=gen)
    topk_search(q[:64], g, k)  # warm-up
    topk_search(q[:64], g, k, backend="faiss")
    t_torch = t_faiss = float("inf")
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        t, (s_t, i_t) = _timed(lambda: topk_search(q, g, k, backend="torch"))
        t_torch = min(t_torch, t)
        t, (s_f, i_f) = _timed(lambda: topk_search(q, g, k, backend="faiss"))
        t_faiss = min(t_faiss, t)
    same_set = (i_t.sort(dim=1).values == i_f.sort(dim=1).values).all(dim=1).float().mean().item()
    return {"search_queries": queries, "search_gallery": gallery, "k": k,
            "torch_qps": queries / t_torch, "faiss_qps": queries / t_faiss, "torch_over_faiss": t_faiss / t_torch,
            "agreement_set": same_set, "agreement_order": (i_t == i_f).all(dim=1).float().mean().item(),
            "agreement_ties": _agree_up_to_ties(q, g, i_t, i_f), "max_score_diff": (s_t - s_f).abs().max().item()}


def dense_dsa(queries: int, gallery: int, regions: int, dim: int, k: int, repeats: int, seed: int) -> dict:
    """pair_terms + anchored_scores + top-k of every query against every image."""
    gen = torch.Generator().manual_seed(seed + 1)
    text, images = _unit(queries, dim, gen=gen), _images(gallery, regions, dim, gen)
    g = torch.rand(queries, 1, generator=gen)  # (Q, 1) per-query granularity

    @torch.no_grad()
    def terms_only():
        return pair_terms(text, images, POOL_S)  # (Q, G) each

    with torch.no_grad():
        pair_terms(text[:8], images, POOL_S)  # warm-up
    t_terms = t_rank = float("inf")
    for _ in range(repeats):
        t, terms = _timed(terms_only)
        t_terms = min(t_terms, t)
        t, _ = _timed(lambda terms=terms: anchored_scores(terms, g).topk(k, dim=1))
        t_rank = min(t_rank, t)
    t_all = t_terms + t_rank
    return {"dsa_queries": queries, "dsa_gallery": gallery, "regions": regions,
            "dsa_dense_qps": queries / t_all, "dsa_pair_terms_s": t_terms, "dsa_score_topk_s": t_rank,
            "dsa_dense_s": t_all}


def two_stage(queries: int, gallery: int, regions: int, dim: int, k: int, m: int, chunk: int, seed: int) -> dict:
    """Coarse top-M then DSA re-rank, ``chunk`` queries at a time (only a (chunk, N) matrix at once)."""
    gen = torch.Generator().manual_seed(seed + 2)
    text, images = _unit(queries, dim, gen=gen), _images(gallery, regions, dim, gen)
    g = torch.rand(queries, generator=gen)  # (Q,)
    two_stage_scores(text[:4], images, POOL_S, g[:4], m)  # warm-up

    def run():
        top = []
        for start in range(0, queries, chunk):
            sl = slice(start, start + chunk)
            top.append(two_stage_scores(text[sl], images, POOL_S, g[sl], m).topk(k, dim=1).indices)  # (c, k)
        return torch.cat(top)

    t, _ = _timed(run)
    return {"two_stage_queries": queries, "two_stage_gallery": gallery, "two_stage_m": m,
            "two_stage_qps": queries / t, "two_stage_s": t,
            "two_stage_chunk_mb": chunk * gallery * 4 / 2**20}


def main(queries: int = 5000, gallery: int = 25000, dim: int = 256, k: int = 10, dsa_queries: int = 500,
         dsa_gallery: int = 5000, regions: int = 10, two_stage_queries: int = 5000, m: int = 100,
         chunk: int = 256, repeats: int = 2, seed: int = 0) -> dict:
    """Run the three measurements, print a table, return the figures."""
    search, search_mb = _peak_growth(lambda: exact_search(queries, gallery, dim, k, repeats, seed))
    dense, dense_mb = _peak_growth(lambda: dense_dsa(dsa_queries, dsa_gallery, regions, dim, k, repeats, seed))
    staged, staged_mb = _peak_growth(lambda: two_stage(two_stage_queries, gallery, regions, dim, k, m, chunk, seed))
    peaks = {"search_peak_mb": search_mb, "dense_peak_mb": dense_mb, "two_stage_peak_mb": staged_mb}
    result = {"name": "retrieval", "dim": dim, "threads": torch.get_num_threads(), **search, **dense, **staged,
              **peaks, "gallery_regions_mb": gallery * regions * dim * 4 / 2**20, "ratio_target": RATIO_TARGET,
              "meets_target": search["torch_over_faiss"] >= RATIO_TARGET, "agrees": search["agreement_ties"] == 1.0}
    rows = [
        (f"exact top-{k}, {queries} x {gallery}: torch, queries/s", f"{search['torch_qps']:.0f}"),
        ("  faiss IndexFlatIP (index build included), queries/s", f"{search['faiss_qps']:.0f}"),
        ("  torch / faiss throughput", f"{search['torch_over_faiss']:.2f}  (target >= {RATIO_TARGET})"),
        ("  same top-k set / same order / same up to float ties, share of queries",
         f"{100 * search['agreement_set']:.2f} % / {100 * search['agreement_order']:.2f} % / "
         f"{100 * search['agreement_ties']:.2f} %"),
        ("  largest score difference", f"{search['max_score_diff']:.2e}"),
        (f"dense DSA, {dsa_queries} x {dsa_gallery} x R={regions}, queries/s", f"{dense['dsa_dense_qps']:.1f}"),
        ("  pair_terms s + anchored_scores and top-k s",
         f"{dense['dsa_pair_terms_s']:.2f} + {dense['dsa_score_topk_s']:.3f}"),
        (f"two-stage (coarse top-{m}, DSA re-rank), {two_stage_queries} x {gallery}, queries/s",
         f"{staged['two_stage_qps']:.1f}"),
        (f"  score matrix per chunk of {chunk} queries, MB", f"{staged['two_stage_chunk_mb']:.0f}"),
        ("peak RSS growth (inputs included): search / dense DSA / two-stage, MB",
         f"{peaks['search_peak_mb']:.0f} / {peaks['dense_peak_mb']:.0f} / {peaks['two_stage_peak_mb']:.0f}"),
        (f"  (of which the {gallery}-image region tensor, MB)", f"{result['gallery_regions_mb']:.0f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench_retrieval (D={dim}, {result['threads']} threads)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--gallery", type=int, default=25000)
    ap.add_argument("--dsa-queries", type=int, default=500)
    ap.add_argument("--dsa-gallery", type=int, default=5000)
    ap.add_argument("--two-stage-queries", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    main(a.queries, a.gallery, dsa_queries=a.dsa_queries, dsa_gallery=a.dsa_gallery,
         two_stage_queries=a.two_stage_queries)
