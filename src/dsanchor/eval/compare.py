"""Is one method really better than another? Paired bootstrap over the test queries.

Every method is scored on the same test queries, so two methods are compared query by query: the
difference of their hit@K (1 if the query's first positive is in the top K, else 0) is averaged, and its
95% interval comes from resampling the queries with replacement (the paired percentile bootstrap of
Koehn 2004, "Statistical significance tests for machine translation evaluation").

With several seeds the test split is the same for all of them, so the queries are resampled once per
bootstrap draw and the difference is averaged over the seeds as well: the interval then covers the
sampling of the queries, and the mean over seeds removes part of the training noise. The seed-to-seed
spread is reported separately (``diff_std`` in ``results.json``); the interval does not include it.
"""

from __future__ import annotations

import torch

from dsanchor.eval.methods import MethodG
from dsanchor.eval.views import SplitView
from dsanchor.metrics.retrieval import ranks_of_first_positive
from dsanchor.retrieval import anchored_scores

__all__ = ["DEFAULT_PAIRS", "query_hits", "paired_bootstrap", "compare_methods", "save_hits", "load_hits"]

# (a, b): report a - b. The RL controller against every baseline, and the gradient gate against fine-only.
DEFAULT_PAIRS = (("dsa_ppo", "fine"), ("dsa_ppo", "coarse"), ("dsa_ppo", "fixed_best"), ("dsa_ppo", "gate_grad"),
                 ("gate_grad", "fine"))


@torch.no_grad()
def query_hits(view: SplitView, g: MethodG, k: int) -> dict[str, torch.Tensor]:
    """hit@k of every query: ``{"t2i": (T,) bool, "i2t": (N,) bool}``."""
    s_t2i = anchored_scores(view.terms, g.t2i.view(-1, 1))
    s_i2t = anchored_scores(view.terms.t(), g.i2t.view(-1, 1))
    return {"t2i": ranks_of_first_positive(s_t2i, view.positives) <= k,
            "i2t": ranks_of_first_positive(s_i2t, view.positives.T) <= k}


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` with a percentile bootstrap interval over queries.

    Args:
        a, b: (Q,) or (S, Q) per-query scores of two methods (S seeds sharing the same Q queries).
        n_boot: bootstrap draws. seed: seeds the draws. level: coverage of the interval.
    Returns:
        ``diff`` (mean over seeds and queries), ``lo`` / ``hi`` (the interval), ``p_le_0`` (share of
        draws whose mean difference is <= 0: a one-sided bootstrap p-value for "a is better than b"),
        ``n_queries`` and, with several seeds, ``diff_std`` (the spread of the per-seed differences).
    """
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("paired_bootstrap needs at least one query")
    d = (a.double() - b.double()).reshape(-1, a.shape[-1])  # (S, Q)
    q = d.shape[1]
    per_query = d.mean(0)  # (Q,) mean over seeds
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(n_boot, dtype=torch.float64)
    chunk = max(1, 2_000_000 // q)
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        idx = torch.randint(q, (n, q), generator=gen)
        means[start:start + n] = per_query[idx].mean(1)
    tail = (1.0 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    out = {"diff": float(per_query.mean()), "lo": lo, "hi": hi, "p_le_0": float((means <= 0).double().mean()),
           "n_queries": q}
    if d.shape[0] > 1:
        out["diff_std"] = float(d.mean(1).std(unbiased=False))
    return out


def compare_methods(hits: dict[str, dict[str, torch.Tensor]], k: int, pairs=DEFAULT_PAIRS, n_boot: int = 10_000,
                    seed: int = 0, level: float = 0.95) -> dict:
    """The ``paired`` section of ``results.json``.

    Args:
        hits: method -> {"t2i": (Q,) or (S, Q), "i2t": ...} per-query hit@k.
        pairs: (a, b) method pairs; a pair with a missing method is skipped.
    Returns:
        ``{"k", "level", "n_boot", "pairs": {"a-b": {"t2i": {...}, "i2t": {...}}}}`` with the fields of
        :func:`paired_bootstrap` (differences of R@k, as fractions).
    """
    out = {}
    for a, b in pairs:
        if a in hits and b in hits:
            out[f"{a}-{b}"] = {d: paired_bootstrap(hits[a][d], hits[b][d], n_boot, seed, level) for d in ("t2i", "i2t")}
    return {"k": k, "level": level, "n_boot": n_boot, "pairs": out}


def save_hits(path, hits: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write per-query hits (``{method: {"t2i": (T,), "i2t": (N,)}}``) as safetensors."""
    from safetensors.torch import save_file

    save_file({f"{m}.{d}": v.to(torch.uint8).contiguous() for m, dirs in hits.items() for d, v in dirs.items()},
              str(path))


def load_hits(paths) -> dict[str, dict[str, torch.Tensor]]:
    """Stack the hits of several seeds' evaluations: ``{method: {"t2i": (S, T), "i2t": (S, N)}}``.

    Only methods present in every file are kept.
    """
    from safetensors.torch import load_file

    files = [load_file(str(p)) for p in paths]
    if not files:
        raise ValueError("load_hits needs at least one file")
    keys = set.intersection(*(set(f) for f in files))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(keys):
        method, d = key.rsplit(".", 1)
        out.setdefault(method, {})[d] = torch.stack([f[key] for f in files]).bool()
    return out
