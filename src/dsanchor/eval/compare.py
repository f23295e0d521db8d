"""Is one method really better than another? An image-level bootstrap, combined with the spread over seeds.

Every method is scored on the same test queries, so two methods are compared query by query. The queries
are not independent: an image's five captions share the image, and under exact relevance they share its
gallery neighbours too. So the unit that is resampled is the **test image, with all of its queries** (its
captions as text-to-image queries and the image itself as the image-to-text query): a cluster bootstrap
(Field & Welsh 2007, "Bootstrapping clustered data"). Resampling captions independently, as a
per-query bootstrap does, makes the intervals too narrow.

Training seeds are a second source of variation: each bootstrap draw also resamples the seeds with
replacement (a two-level, hierarchical bootstrap), so the interval covers both the choice of test images
and the training noise. With one seed only the images are resampled, and the report says so.

Each comparison reports a 95% percentile interval. Many comparisons are made (pairs x directions x
metrics x protocols); ``n_comparisons`` counts them, and ``lo_bonf`` / ``hi_bonf`` give the Bonferroni
interval at level 1 - 0.05 / n_comparisons, which holds for all of them at once.

Two entry points share this design (image clusters, then seeds, 95% percentile interval):

* :func:`cluster_bootstrap` for a mean of per-query differences (retrieval hits), where both methods have the
  same seeds and one draw reweights clusters and seeds at once (vectorised);
* :func:`bootstrap_diff` for any statistic of per-image values (a ratio of sums such as CHAIR_i, an F1 of
  summed counts) of two methods with their own numbers of seeds (``dsanchor mllm eval``: a deterministic row
  has one, the PPO controller one per training seed): each draw resamples the images, shared by both, and
  each method's seeds with replacement. Its draws come from numpy's generator, so its intervals are the ones
  ``mllm eval`` has always reported.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dsanchor.eval.methods import MethodG, query_ranks
from dsanchor.eval.views import SplitView

__all__ = ["DEFAULT_PAIRS", "COMPARED_METRICS", "query_records", "query_clusters", "query_metric",
           "cluster_bootstrap", "bootstrap_diff", "compare_methods", "save_hits", "load_hits"]

# (a, b): report a - b. The RL controller against every baseline, and the gradient gate against fine-only.
# The per-pair controller (dsanchor.pairs) against the same baselines, its gradient-trained twin and the
# query-only controller.
DEFAULT_PAIRS = (("dsa_ppo", "fine"), ("dsa_ppo", "coarse"), ("dsa_ppo", "fixed_best"), ("dsa_ppo", "gate_grad"),
                 ("gate_grad", "fine"), ("dsa_pair", "fixed_best"), ("dsa_pair", "fine"), ("dsa_pair", "gate_pair"),
                 ("dsa_pair", "dsa_ppo"), ("gate_pair", "fixed_best"))
COMPARED_METRICS = ("R@1", "R@10")


@torch.no_grad()
def query_records(view: SplitView, g: MethodG) -> dict[str, torch.Tensor]:
    """Per-query first-positive ranks of a method, for each protocol and direction.

    Returns:
        ``{"paired.t2i": (T,), "paired.i2t": (N,), "exact.t2i": ..., "exact.i2t": ...}`` int32 ranks
        (``exact`` only where the data has scene graphs).
    """
    out = {}
    for name, pos in view.protocols.items():
        for d, r in query_ranks(view, g, pos).items():
            out[f"{name}.{d}"] = r.to(torch.int32)
    return out


def query_clusters(view: SplitView) -> dict[str, torch.Tensor]:
    """The test image (its index in the split) each query belongs to: ``{"t2i": (T,), "i2t": (N,)}``."""
    index = {int(i): k for k, i in enumerate(view.images.image_ids.tolist())}
    t2i = torch.tensor([index[int(i)] for i in view.texts.image_ids.tolist()], dtype=torch.int32)
    return {"t2i": t2i, "i2t": torch.arange(len(view.images), dtype=torch.int32)}


def query_metric(ranks: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-query score from first-positive ranks: ``"R@K"`` (hit) or ``"MRR"`` (reciprocal rank)."""
    if metric == "MRR":
        return 1.0 / ranks.double()
    return (ranks <= int(metric.removeprefix("R@"))).double()


def cluster_bootstrap(diff: torch.Tensor, cluster: torch.Tensor, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95, bonferroni: int = 1) -> dict[str, float]:
    """Mean of per-query differences with an interval from resampling clusters and seeds.

    Args:
        diff: (S, Q) per-query differences of S seeds on the same Q queries.
        cluster: (Q,) the cluster (test image) of each query, in 0..C-1.
        n_boot: bootstrap draws. seed: seeds the draws. level: coverage of each interval.
        bonferroni: the number of comparisons made; also returns the interval at 1 - (1 - level) / bonferroni.
    Returns:
        ``diff`` (mean over seeds and queries), ``lo`` / ``hi``, ``lo_bonf`` / ``hi_bonf``, ``p_le_0`` (the
        share of draws <= 0), ``n_queries``, ``n_images``, ``n_seeds`` and ``diff_std`` (spread of the seeds).
    """
    if diff.dim() != 2 or diff.shape[1] != cluster.shape[0] or diff.numel() == 0:
        raise ValueError(f"need (seeds, queries) differences and one cluster per query, got {tuple(diff.shape)} "
                         f"and {tuple(cluster.shape)}")
    s, _ = diff.shape
    c = int(cluster.max()) + 1
    sums = torch.zeros(s, c, dtype=torch.float64).index_add_(1, cluster.long(), diff.double())  # (S, C)
    counts = torch.bincount(cluster.long(), minlength=c).double()  # (C,)
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n_boot, dtype=torch.float64)
    chunk = max(1, 4_000_000 // (c * s))
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        img = torch.randint(c, (n, c), generator=gen)
        w = torch.zeros(n, c, dtype=torch.float64).scatter_add_(1, img, torch.ones(n, c, dtype=torch.float64))
        seeds = torch.randint(s, (n, s), generator=gen) if s > 1 else torch.zeros(n, 1, dtype=torch.long)
        u = torch.zeros(n, s, dtype=torch.float64).scatter_add_(1, seeds, torch.ones_like(seeds, dtype=torch.float64))
        num = torch.einsum("bs,sc,bc->b", u, sums, w) / s  # (n,) seed-weighted, image-weighted sums
        means[start:start + n] = num / (w @ counts)
    tail = (1.0 - level) / 2
    tail_b = tail / max(bonferroni, 1)
    q = torch.tensor([tail, 1 - tail, tail_b, 1 - tail_b], dtype=torch.float64)
    lo, hi, lo_b, hi_b = torch.quantile(means, q).tolist()
    per_seed = diff.double().mean(1)
    return {"diff": float(per_seed.mean()), "lo": lo, "hi": hi, "lo_bonf": lo_b, "hi_bonf": hi_b,
            "p_le_0": float((means <= 0).double().mean()), "n_queries": int(diff.shape[1]), "n_images": c,
            "n_seeds": s, "diff_std": float(per_seed.std(unbiased=False)) if s > 1 else 0.0}


def bootstrap_diff(stat: Callable[[np.ndarray], float], a: np.ndarray, b: np.ndarray, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, float]:
    """``stat(a) - stat(b)`` with a 95% percentile interval from a bootstrap over images and training seeds.

    Args:
        stat: maps an (m, ...) array of per-image values to a number (a mean, a ratio of sums, an F1).
        a, b: per-image values of the two methods, ``(S, n, ...)``: one slice per training seed (a deterministic
            method has S = 1). Images are aligned between the methods and resampled together (the cluster); each
            method's seeds are resampled with replacement in every draw, so the interval carries the spread over
            seeds as well as over images.

    Returns:
        ``diff``, ``low`` / ``high``, ``excludes_zero`` and ``seeds`` (S of each method).
    """
    if a.ndim < 2 or b.ndim < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"bootstrap_diff needs (seeds, images, ...) arrays with the same images; got "
                         f"{a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]

    def flat(x: np.ndarray, seeds: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return x[seeds][:, idx].reshape(-1, *x.shape[2:])  # (S * n, ...)

    diffs = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        sa, sb = rng.integers(0, a.shape[0], a.shape[0]), rng.integers(0, b.shape[0], b.shape[0])
        diffs[k] = stat(flat(a, sa, idx)) - stat(flat(b, sb, idx))
    d = float(stat(a.reshape(-1, *a.shape[2:])) - stat(b.reshape(-1, *b.shape[2:])))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": d, "low": float(lo), "high": float(hi), "excludes_zero": bool(lo > 0 or hi < 0),
            "seeds": [int(a.shape[0]), int(b.shape[0])]}


def compare_methods(records: dict[str, dict[str, torch.Tensor]], clusters: dict[str, torch.Tensor],
                    pairs=DEFAULT_PAIRS, metrics=COMPARED_METRICS, n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> dict:
    """The ``paired`` section of ``results.json``: differences between methods with image-level intervals.

    Args:
        records: method -> {"paired.t2i": (S, T) ranks, ...} (see :func:`query_records`, stacked by seed).
        clusters: {"t2i": (T,), "i2t": (N,)} the test image of every query.
        pairs: (a, b) method pairs; a pair with a missing method is skipped.
    Returns:
        ``{"level", "n_boot", "unit", "n_seeds", "n_comparisons", "bonferroni_level",
        "pairs": {"a-b": {"exact": {"t2i": {"R@1": {...}, ...}, "i2t": ...}, "paired": ...}}}``.
    """
    pairs = [(a, b) for a, b in pairs if a in records and b in records]
    keys = sorted(set.intersection(*(set(records[m]) for p in pairs for m in p))) if pairs else []
    n_comp = len(pairs) * len(keys) * len(metrics)
    out: dict = {}
    for a, b in pairs:
        row: dict = {}
        for key in keys:
            protocol, d = key.split(".")
            for m in metrics:
                diff = query_metric(records[a][key], m) - query_metric(records[b][key], m)  # (S, Q)
                row.setdefault(protocol, {}).setdefault(d, {})[m] = cluster_bootstrap(
                    diff.reshape(-1, diff.shape[-1]), clusters[d], n_boot, seed, level, n_comp)
        out[f"{a}-{b}"] = row
    n_seeds = next((int(v.reshape(-1, v.shape[-1]).shape[0]) for r in records.values() for v in r.values()), 0)
    return {"level": level, "n_boot": n_boot, "unit": "test image with all its queries, and training seed",
            "n_seeds": n_seeds, "n_comparisons": n_comp, "bonferroni_level": 1 - (1 - level) / max(n_comp, 1),
            "metrics": list(metrics), "pairs": out}


def save_hits(path, records: dict[str, dict[str, torch.Tensor]], clusters: dict[str, torch.Tensor]) -> None:
    """Write per-query ranks (``{method: {"exact.t2i": (T,), ...}}``) and the query clusters as safetensors."""
    from safetensors.torch import save_file

    tensors = {f"{m}.{k}": v.to(torch.int32).contiguous() for m, r in records.items() for k, v in r.items()}
    tensors.update({f"_cluster.{d}": v.to(torch.int32).contiguous() for d, v in clusters.items()})
    save_file(tensors, str(path))


def load_hits(paths) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Stack several seeds' evaluations: ``({method: {"exact.t2i": (S, T), ...}}, clusters)``.

    Only methods present in every file are kept; the files must share their test queries.
    """
    from safetensors.torch import load_file

    files = [load_file(str(p)) for p in paths]
    if not files:
        raise ValueError("load_hits needs at least one file")
    keys = set.intersection(*(set(f) for f in files))
    records: dict[str, dict[str, torch.Tensor]] = {}
    clusters: dict[str, torch.Tensor] = {}
    for key in sorted(keys):
        method, rest = key.split(".", 1)
        if method == "_cluster":
            clusters[rest] = files[0][key]
            if any(not torch.equal(f[key], files[0][key]) for f in files):
                raise ValueError(f"the evaluations in {list(map(str, paths))} are on different test queries")
        else:
            records.setdefault(method, {})[rest] = torch.stack([f[key] for f in files])
    return records, clusters
