"""Progress bars of long loops (training epochs and steps, PPO timesteps, tuning trials).

A bar shows counts, rate and time left on a terminal and nothing when stderr is not one (a log file, a pipe,
the tests), and it disappears when its loop ends, so ``dsanchor run`` and the demo keep one line per stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str,
                 enabled: bool = True, **kwargs: Any) -> tqdm:
    """A transient tqdm bar, shown only when ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=None if enabled else True, **kwargs)
