"""CLEVR scene graphs: the vocabulary, the camera directions and the spatial relationships.

Shared by the synth generator, the captioner and the CLEVR loader. A scene is a plain dict in the CLEVR
scenes schema (Johnson et al. 2017, facebookresearch/clevr-dataset-gen): ``objects[]`` with ``color``,
``size``, ``shape``, ``material``, ``3d_coords``, ``pixel_coords`` and ``rotation``; ``relationships``
with ``relationships[rel][i]`` = the indices of the objects that are <rel> of object ``i``; and
``directions``, unit vectors on the ground plane for left, right, front and behind.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

__all__ = [
    "RELATIONS", "DEFAULT_DIRECTIONS", "Vocabulary", "clevr_vocabulary", "compute_relationships",
    "matches", "attribute_values", "object_key", "object_name", "object_attributes", "scene_directions",
]

RELATIONS: tuple[str, ...] = ("left", "right", "front", "behind")

# ground-plane directions of the synth camera (it looks along +y from x = 0): left is -x, behind is +y
DEFAULT_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "left": (-1.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0), "front": (0.0, -1.0, 0.0),
    "behind": (0.0, 1.0, 0.0), "above": (0.0, 0.0, 1.0), "below": (0.0, 0.0, -1.0),
}


@dataclass(frozen=True)
class Vocabulary:
    """CLEVR's attribute values and the word variants used in captions."""

    shapes: tuple[str, ...]  # "cube", "sphere", "cylinder"
    colors: dict[str, tuple[int, int, int]]  # colour name -> RGB
    sizes: dict[str, float]  # size name -> radius in scene units (CLEVR: large 0.7, small 0.35)
    materials: tuple[str, ...]  # "rubber", "metal"
    synonyms: dict[str, tuple[str, ...]]  # canonical word -> variants, canonical first when it is one

    def words(self, canonical: str) -> tuple[str, ...]:
        """Variants of a word (the word itself when it has none)."""
        return self.synonyms.get(canonical, (canonical,))


@functools.cache
def clevr_vocabulary() -> Vocabulary:
    """The packaged CLEVR properties and synonyms (see ``data/resources/README.md``)."""
    pkg = resources.files("dsanchor.data") / "resources"
    props = json.loads((pkg / "clevr_properties.json").read_text())
    syn = json.loads((pkg / "clevr_synonyms.json").read_text())
    return Vocabulary(
        shapes=tuple(props["shapes"]),
        colors={k: tuple(v) for k, v in props["colors"].items()},
        sizes=dict(props["sizes"]),
        materials=tuple(props["materials"]),
        synonyms={k: tuple(v) for k, v in syn.items()},
    )


def matches(obj: dict[str, Any], desc: dict[str, str]) -> bool:
    """Whether an object has every attribute value of a (partial) description, e.g. ``{"color": "red"}``."""
    return all(obj.get(a) == v for a, v in desc.items())


def attribute_values(attribute: str) -> tuple[str, ...]:
    """CLEVR's values of ``attribute`` ("color", "shape", "size" or "material")."""
    v = clevr_vocabulary()
    return {"color": tuple(v.colors), "shape": v.shapes, "size": tuple(v.sizes), "material": v.materials}[attribute]


def object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    """The full description of an object: (size, color, material, shape)."""
    return (obj["size"], obj["color"], obj["material"], obj["shape"])


def object_name(obj: dict[str, Any]) -> str:
    """Canonical object name, colour + shape, e.g. ``"red cube"``."""
    return f"{obj['color']} {obj['shape']}"


def object_attributes(obj: dict[str, Any]) -> tuple[str, str]:
    """The attributes kept next to the name: (size, material)."""
    return (obj["size"], obj["material"])


def scene_directions(scene: dict[str, Any]) -> dict[str, np.ndarray]:
    """The scene's direction vectors (CLEVR stores them per scene), else the synth camera's."""
    dirs = scene.get("directions") or DEFAULT_DIRECTIONS
    return {k: np.asarray(dirs[k], dtype=np.float64) for k in RELATIONS if k in dirs}


def compute_relationships(coords: np.ndarray, directions: dict[str, np.ndarray],
                          eps: float = 0.2) -> dict[str, list[list[int]]]:
    """CLEVR's rule: j is <rel> of i when (coords[j] - coords[i]) . direction[rel] > eps.

    Args:
        coords: (N, 3) object centres in scene units.
        directions: unit vector per relation name.
        eps: the margin CLEVR uses (0.2), so near-ties belong to neither side.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    diff = coords[None, :, :] - coords[:, None, :]  # (N, N, 3): diff[i, j] = coords[j] - coords[i]
    out: dict[str, list[list[int]]] = {}
    for rel in RELATIONS:
        dot = diff @ directions[rel]  # (N, N)
        np.fill_diagonal(dot, -np.inf)
        out[rel] = [np.flatnonzero(row > eps).tolist() for row in dot]
    return out
