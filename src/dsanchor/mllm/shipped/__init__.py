"""The small LLaVA shipped in the package, so that ``dsanchor demo --mllm`` fits its 10-minute budget.

``llava_small/`` is what ``dsanchor mllm build`` wrote with ``BuildConfig()``'s defaults (recorded in its
``build.yaml``) on the synth data recorded in its ``shipped.json`` (``dsanchor data synth --scenes 5000
--image-size 128 --seed 0 --split-fractions 0.8 0.1 0.1``), on one torch thread, in 24.6 minutes on this
project's 2-core machine. It was trained on that data's train split only: its val and test scenes, and every scene
of another data seed, are unseen. ``shipped.json`` also holds the SHA-256 of ``model.safetensors``;
``scripts/mllm_rebuild_shipped.py`` rebuilds the model and compares. It loads with plain
``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``, offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["SMALL_LLAVA", "shipped_record"]

SMALL_LLAVA = Path(__file__).resolve().parent / "llava_small"


def shipped_record(path: str | Path = SMALL_LLAVA) -> dict[str, Any]:
    """``shipped.json`` of a shipped model: ``data`` (the synth generator's settings), ``build`` (the
    :class:`~dsanchor.mllm.config.BuildConfig` values), ``threads`` and ``sha256`` of ``model.safetensors``."""
    return json.loads((Path(path) / "shipped.json").read_text())
