"""Several PPO training seeds of one ``mllm train --seeds N`` run, as ``mllm eval`` reads them: their controller
folders, and the mean ± std of their numbers (both ``mllm eval`` paths: captions and ``--questions``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["resolve_controllers", "mean_over_seeds"]


def resolve_controllers(path: str | None) -> list[Path]:
    """The controller folders of ``--controller``: a controller, a ``mllm train --out`` folder, or one with
    a ``seed*/controller`` per training seed (``mllm train --seeds N``)."""
    if path is None:
        return []
    p = Path(path)
    if (p / "controller").is_dir():
        return [p / "controller"]
    seeds = sorted(q / "controller" for q in p.glob("seed*") if (q / "controller").is_dir())
    return seeds or [p]


def mean_over_seeds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over training seeds of every number (nested dicts too), with ``<key>_std`` beside it."""
    if len(entries) == 1:
        return entries[0]
    out: dict[str, Any] = {}
    for key, v in entries[0].items():
        vals = [e.get(key) for e in entries]
        if isinstance(v, dict):
            out[key] = mean_over_seeds(vals)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(np.mean(vals))
            out[f"{key}_std"] = float(np.std(vals))
        else:
            out[key] = v
    return out
