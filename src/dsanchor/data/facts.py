"""Structured facts: what a caption states about a CLEVR scene, and whether that holds for another scene.

A synthetic caption is true of many images ("A large green metal sphere." is true of every image holding
one). The captioner records, beside each caption's text, the fact it states as a small JSON dict, and
:func:`holds` decides whether that fact is true of *any* scene in the CLEVR scenes schema. That is the
``exact`` relevance protocol (DESIGN.md "Relevance"): a caption's positives are every image it is true of.

Facts (``"type"`` and its fields; every threshold the captioner used travels inside the fact, so
:func:`holds` needs nothing else):

* ``{"type": "count", "n": 8}``: exactly n objects.
* ``{"type": "absent", "attribute": "shape" | "color", "value": "sphere"}``: no object has that value.
* ``{"type": "all" | "most" | "most_common", "attribute": A, "value": V}``: every object has V (and there is at
  least one object); V is a strict majority; V is a strict plurality held by at least two objects.
* ``{"type": "crowded", "below": 2.3}`` / ``{"type": "spread", "above": 3.4}``: at least three objects whose
  mean pairwise ground distance is below / above the threshold (scene units).
* ``{"type": "side", "side": "left" | "right", "margin": 2, "center_band": 0.06}``: the objects clearly in that
  half of the image outnumber the others (those of the other half plus those near the centre line) by at
  least ``margin``; the band is a fraction of the image width (``scene["width"]``, else CLEVR's 480).
* ``{"type": "object", "object": {"size", "color", "material", "shape"}}``: some object matches all four.
* ``{"type": "relation", "subject": {...}, "relation": "left", "object": {...}, "margin": 0.6}``: some object
  matching ``subject`` lies in that direction of some other object matching ``object``, by at least
  ``margin`` scene units along the scene's direction vector and, where the scene has a relationships
  table, by CLEVR's own rule too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dsanchor.data.scene import scene_directions

__all__ = ["FACT_TYPES", "holds", "holds_matrix", "object_fact", "describe_fact", "check_fact",
           "mean_pairwise_distance", "side_counts"]

Fact = dict[str, Any]
Scene = dict[str, Any]

_ATTRIBUTES = ("size", "color", "material", "shape")
CLEVR_IMAGE_WIDTH = 480  # real CLEVR images are 480 px wide; used when a scene does not say its width


def object_fact(obj: dict[str, Any]) -> dict[str, str]:
    """The four attributes of an object, as a fact's object description."""
    return {a: obj[a] for a in _ATTRIBUTES}


def _matches(obj: dict[str, Any], desc: dict[str, str]) -> bool:
    return all(obj.get(a) == v for a, v in desc.items())


def _count(fact: Fact, scene: Scene) -> bool:
    return len(scene["objects"]) == int(fact["n"])


def _absent(fact: Fact, scene: Scene) -> bool:
    return all(o[fact["attribute"]] != fact["value"] for o in scene["objects"])


def _tally(fact: Fact, scene: Scene) -> tuple[int, int, int]:
    """(objects with the value, most objects with any other single value, all objects)."""
    counts = Counter(o[fact["attribute"]] for o in scene["objects"])
    mine = counts.pop(fact["value"], 0)
    return mine, max(counts.values(), default=0), len(scene["objects"])


def _all(fact: Fact, scene: Scene) -> bool:
    mine, _, n = _tally(fact, scene)
    return n > 0 and mine == n


def _most(fact: Fact, scene: Scene) -> bool:
    mine, _, n = _tally(fact, scene)
    return 2 * mine > n


def _most_common(fact: Fact, scene: Scene) -> bool:
    mine, other, _ = _tally(fact, scene)
    return mine >= 2 and mine > other


def mean_pairwise_distance(scene: Scene) -> float:
    """Mean ground-plane distance between object centres, in scene units (0 with fewer than two)."""
    xy = np.array([o["3d_coords"][:2] for o in scene["objects"]], dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2:
        return 0.0
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)  # (N, N)
    return float(d[np.triu_indices(len(xy), 1)].mean())


def _crowded(fact: Fact, scene: Scene) -> bool:
    return len(scene["objects"]) >= 3 and mean_pairwise_distance(scene) < float(fact["below"])


def _spread(fact: Fact, scene: Scene) -> bool:
    return len(scene["objects"]) >= 3 and mean_pairwise_distance(scene) > float(fact["above"])


def side_counts(scene: Scene, width: float, center_band: float) -> tuple[int, int, int]:
    """Objects clearly in the left half, clearly in the right half, and near the centre line."""
    xs = np.array([o["pixel_coords"][0] for o in scene["objects"]], dtype=np.float64)
    band = center_band * width
    left = int((xs < width / 2 - band).sum())
    right = int((xs > width / 2 + band).sum())
    return left, right, len(xs) - left - right


def _side(fact: Fact, scene: Scene) -> bool:
    width = float(scene.get("width") or CLEVR_IMAGE_WIDTH)
    left, right, mid = side_counts(scene, width, float(fact["center_band"]))
    mine, other = (left, right) if fact["side"] == "left" else (right, left)
    return mine - (other + mid) >= int(fact["margin"])


def _object(fact: Fact, scene: Scene) -> bool:
    return any(_matches(o, fact["object"]) for o in scene["objects"])


def _relation(fact: Fact, scene: Scene) -> bool:
    objs, rel = scene["objects"], fact["relation"]
    direction = scene_directions(scene).get(rel)
    if direction is None:
        return False
    subj = [j for j, o in enumerate(objs) if _matches(o, fact["subject"])]
    anchor = [i for i, o in enumerate(objs) if _matches(o, fact["object"])]
    table = (scene.get("relationships") or {}).get(rel)
    for j in subj:
        for i in anchor:
            if i == j:
                continue
            along = (np.asarray(objs[j]["3d_coords"], float) - np.asarray(objs[i]["3d_coords"], float)) @ direction
            if along >= float(fact["margin"]) and (table is None or j in table[i]):
                return True
    return False


_HOLDS: dict[str, Callable[[Fact, Scene], bool]] = {
    "count": _count, "absent": _absent, "all": _all, "most": _most, "most_common": _most_common,
    "crowded": _crowded, "spread": _spread, "side": _side, "object": _object, "relation": _relation,
}
FACT_TYPES: tuple[str, ...] = tuple(_HOLDS)


def holds(fact: Fact, scene: Scene) -> bool:
    """Whether ``fact`` (as the captioner records it) is true of ``scene`` (CLEVR scenes schema).

    Raises:
        ValueError: for a fact of unknown type (the message lists the known ones).
    """
    try:
        check = _HOLDS[fact["type"]]
    except (KeyError, TypeError):
        raise ValueError(f"unknown fact {fact!r}; a fact's 'type' is one of {', '.join(FACT_TYPES)}") from None
    return bool(check(fact, scene))


def _candidates(fact: Fact, present: list[set[tuple]]) -> list[int]:
    """Scenes that can hold the fact: an object or relation fact needs objects of its descriptions."""
    need = [tuple(fact[k][a] for a in _ATTRIBUTES) for k in ("object", "subject")
            if fact.get("type") in ("object", "relation") and isinstance(fact.get(k), dict)
            and set(fact[k]) == set(_ATTRIBUTES)]
    return [n for n, p in enumerate(present) if all(d in p for d in need)]


def holds_matrix(facts: Sequence[Fact], scenes: Sequence[Scene]) -> np.ndarray:
    """(T, N) bool: ``holds(facts[t], scenes[n])``. Identical facts are decided once, and scenes without the
    objects an object or relation fact describes are ruled out before :func:`holds` is called."""
    import json

    out = np.zeros((len(facts), len(scenes)), dtype=bool)
    present = [{tuple(o.get(a) for a in _ATTRIBUTES) for o in s["objects"]} for s in scenes]
    memo: dict[str, np.ndarray] = {}
    for t, fact in enumerate(facts):
        key = json.dumps(fact, sort_keys=True)
        if key not in memo:
            row = np.zeros(len(scenes), dtype=bool)
            for n in _candidates(fact, present):
                row[n] = holds(fact, scenes[n])
            memo[key] = row
        out[t] = memo[key]
    return out


def check_fact(value: Any, path, where: str) -> Fact | None:
    """``None``, or a fact dict of a known type (a :class:`~dsanchor.errors.DataError` otherwise)."""
    from dsanchor.errors import DataError

    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _HOLDS:
        raise DataError(path, f"a fact must be an object whose 'type' is one of {', '.join(FACT_TYPES)}, "
                              f"found {value!r}"[:300], where)
    return value


def describe_fact(fact: Fact) -> str:
    """A short readable form, for reports and error messages."""
    kind = fact.get("type")
    if kind == "object":
        return "object " + " ".join(fact["object"][a] for a in _ATTRIBUTES)
    if kind == "relation":
        s, o = (" ".join(fact[k][a] for a in _ATTRIBUTES) for k in ("subject", "object"))
        return f"relation ({s}) {fact['relation']} of ({o})"
    rest = ", ".join(f"{k}={v}" for k, v in fact.items() if k != "type")
    return f"{kind} ({rest})" if rest else str(kind)
