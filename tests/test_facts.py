"""Structured facts: every caption holds for its own scene, and each kind of fact is false where it should be."""

from __future__ import annotations

import numpy as np
import pytest

from dsanchor.data import FACT_TYPES, SynthConfig, caption_scene, holds, holds_matrix
from dsanchor.data.scene import DEFAULT_DIRECTIONS, compute_relationships
from dsanchor.data.synth import build_scene


def _obj(size="large", color="red", material="metal", shape="cube", x=0.0, y=0.0, px=112):
    return {"size": size, "color": color, "material": material, "shape": shape, "3d_coords": [x, y, 0.5],
            "pixel_coords": [px, 100, 10.0]}


def _scene(*objs, width=224):
    coords = np.array([o["3d_coords"] for o in objs], dtype=float).reshape(-1, 3)
    dirs = {k: np.asarray(v) for k, v in DEFAULT_DIRECTIONS.items()}
    return {"objects": list(objs), "width": width, "relationships": compute_relationships(coords, dirs),
            "directions": {k: list(v) for k, v in DEFAULT_DIRECTIONS.items()}}


def test_every_generated_caption_holds_for_its_own_scene():
    cfg = SynthConfig(scenes=1, seed=5, min_objects=1, max_objects=10)
    seen = set()
    for index in range(150):
        scene, _ = build_scene(index, cfg, "train")
        for cap in caption_scene(scene, seed=3):
            assert cap.fact is not None, cap.text
            assert holds(cap.fact, scene), (cap.text, cap.fact)
            seen.add(cap.fact["type"])
    assert seen == set(FACT_TYPES)  # every kind of fact was generated and checked


def test_empty_scene_caption_holds():
    (cap,) = caption_scene({"objects": [], "image_index": 0})
    assert holds(cap.fact, {"objects": []}) and not holds(cap.fact, _scene(_obj()))


RED_CUBE = {"size": "large", "color": "red", "material": "metal", "shape": "cube"}


@pytest.mark.parametrize("fact, true_scene, false_scene", [
    ({"type": "count", "n": 2}, _scene(_obj(), _obj(x=2)), _scene(_obj())),
    ({"type": "absent", "attribute": "shape", "value": "sphere"}, _scene(_obj()), _scene(_obj(shape="sphere"))),
    ({"type": "absent", "attribute": "color", "value": "blue"}, _scene(_obj()), _scene(_obj(), _obj(color="blue"))),
    ({"type": "all", "attribute": "material", "value": "metal"}, _scene(_obj(), _obj(x=2)),
     _scene(_obj(), _obj(material="rubber", x=2))),
    ({"type": "most", "attribute": "color", "value": "red"}, _scene(_obj(), _obj(x=2), _obj(color="blue", x=4)),
     _scene(_obj(), _obj(color="blue", x=2))),  # a tie is not a majority
    ({"type": "most_common", "attribute": "shape", "value": "cube"},
     _scene(_obj(), _obj(x=2), _obj(shape="sphere", x=4), _obj(shape="cylinder", x=6)),
     _scene(_obj(), _obj(x=2), _obj(shape="sphere", x=4), _obj(shape="sphere", x=6))),
    ({"type": "crowded", "below": 2.3}, _scene(_obj(), _obj(x=1), _obj(y=1)),
     _scene(_obj(), _obj(x=1), _obj(x=5))),
    ({"type": "spread", "above": 3.4}, _scene(_obj(), _obj(x=5), _obj(y=5)),
     _scene(_obj(), _obj(x=5))),  # fewer than three objects
    ({"type": "side", "side": "left", "margin": 2, "center_band": 0.06},
     _scene(_obj(px=10), _obj(px=20), _obj(px=30)), _scene(_obj(px=10), _obj(px=20), _obj(px=112))),
    ({"type": "object", "object": RED_CUBE}, _scene(_obj(shape="sphere"), _obj(x=3)),
     _scene(_obj(size="small"), _obj(color="blue"), _obj(material="rubber"), _obj(shape="sphere"))),
    ({"type": "relation", "subject": RED_CUBE, "relation": "left", "margin": 0.6,
      "object": dict(RED_CUBE, color="blue")},
     _scene(_obj(x=-2), _obj(color="blue", x=0)),
     _scene(_obj(x=2), _obj(color="blue", x=0))),  # the red cube is to the right
    ({"type": "relation", "subject": RED_CUBE, "relation": "behind", "margin": 0.6,
      "object": dict(RED_CUBE, color="blue")},
     _scene(_obj(y=2), _obj(color="blue", y=0)),
     _scene(_obj(y=0.3), _obj(color="blue", y=0))),  # closer than the margin
])
def test_each_kind_of_fact_true_and_false(fact, true_scene, false_scene):
    assert holds(fact, true_scene)
    assert not holds(fact, false_scene)


def test_relation_follows_the_relationships_table_where_present():
    fact = {"type": "relation", "subject": RED_CUBE, "relation": "left", "margin": 0.6,
            "object": dict(RED_CUBE, color="blue")}
    scene = _scene(_obj(x=-2), _obj(color="blue", x=0))
    scene["relationships"]["left"] = [[], []]  # CLEVR's table says nobody is left of anybody
    assert not holds(fact, scene)
    a_subject_is_not_its_own_anchor = {**fact, "object": RED_CUBE}
    assert not holds(a_subject_is_not_its_own_anchor, _scene(_obj()))


def test_unknown_fact_is_a_clear_error():
    with pytest.raises(ValueError, match="one of count"):
        holds({"type": "colour"}, _scene(_obj()))


def test_holds_matrix_matches_a_loop():
    cfg = SynthConfig(scenes=1, seed=1)
    scenes = [build_scene(i, cfg)[0] for i in range(12)]
    facts = [c.fact for s in scenes for c in caption_scene(s)]
    m = holds_matrix(facts, scenes)
    assert m.shape == (len(facts), len(scenes))
    assert all(m[t, n] == holds(facts[t], scenes[n]) for t in range(len(facts)) for n in range(len(scenes)))
    own = np.repeat(np.arange(len(scenes)), 5)
    assert m[np.arange(len(facts)), own].all()
    assert m.sum(1).mean() > 1.5  # synthetic captions are true of many images: why exact relevance exists
