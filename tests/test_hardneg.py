"""Compositional hard negatives: on hand-made scenes each type binds the words differently and the negative is
false of the scene; on generated and real CLEVR scenes every positive holds and every negative fails; the
SugarCrepe files round-trip; `dsanchor hardneg make/score` run end to end on a tiny pipeline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsanchor.cli import main
from dsanchor.data import SynthConfig, generate_synth, holds, load_dataset
from dsanchor.data.hardneg import (
    HARD_NEGATIVE_TYPES,
    HardNegConfig,
    generate_hard_negatives,
    read_sugarcrepe,
    scene_hard_negatives,
    unique_description,
    write_sugarcrepe,
)
from dsanchor.data.scene import DEFAULT_DIRECTIONS

FIXTURES = Path(__file__).parent / "fixtures"


def _obj(size, color, material, shape, x, y):
    return {"size": size, "color": color, "material": material, "shape": shape, "3d_coords": [x, y, 0.35],
            "pixel_coords": [240 + 40 * x, 160, 10]}


def _scene(*objs):
    return {"objects": list(objs), "directions": {k: list(v) for k, v in DEFAULT_DIRECTIONS.items()}, "width": 480}


# a red cube clearly left of a blue sphere; a large gray cylinder at the back
SCENE = _scene(_obj("small", "red", "rubber", "cube", -2.0, 0.0), _obj("large", "blue", "metal", "sphere", 2.0, 0.0),
               _obj("large", "gray", "rubber", "cylinder", 0.0, 3.0))


def _all_hold(facts, scene):
    return all(holds(f, scene) for f in facts)


@pytest.mark.parametrize("seed", range(5))
def test_every_type_on_a_hand_made_scene(seed):
    items = {i.type: i for i in scene_hard_negatives(SCENE, HardNegConfig(seed=seed), image_id=3)}
    assert set(items) == set(HARD_NEGATIVE_TYPES)
    for item in items.values():
        assert _all_hold(item.facts, SCENE) and not _all_hold(item.negative_facts, SCENE)
        assert item.caption != item.negative and item.image_id == 3
    words = lambda t: sorted(re.findall(r"\w+", t.lower()))  # noqa: E731
    for kind in ("swap-att", "swap-rel"):  # the same words, bound differently
        assert words(items[kind].caption) == words(items[kind].negative), kind
    rel = items["swap-rel"].facts[0]
    assert rel["subject"] != items["swap-rel"].negative_facts[0]["subject"]
    count = items["replace-count"]
    assert count.facts == [{"type": "count", "n": 3}] and count.negative_facts[0]["n"] != 3


def test_left_and_right_follow_the_geometry():
    two = _scene(_obj("small", "red", "rubber", "cube", -2.0, 0.0), _obj("large", "blue", "metal", "sphere", 2.0, 0.0))
    seen = set()
    for seed in range(12):
        (item,) = scene_hard_negatives(two, HardNegConfig(seed=seed, types=("swap-rel",)))
        fact = item.facts[0]
        want = "left" if fact["subject"]["shape"] == "cube" else "right"  # the cube is at x = -2, the sphere at +2
        assert fact["relation"] == want and item.negative_facts[0]["subject"] == fact["object"]
        seen.add(want)
    assert seen == {"left", "right"}


def test_unique_description_adds_words_until_one_object_matches():
    scene = _scene(_obj("small", "red", "rubber", "cube", 0, 0), _obj("large", "red", "rubber", "cube", 2, 0),
                   _obj("large", "red", "metal", "cube", 4, 0))
    assert unique_description(scene, 0) == {"size": "small", "color": "red", "shape": "cube"}
    assert unique_description(scene, 2) == {"color": "red", "material": "metal", "shape": "cube"}
    assert unique_description(scene, 1) == {"size": "large", "color": "red", "material": "rubber", "shape": "cube"}
    twins = _scene(_obj("small", "red", "rubber", "cube", 0, 0), _obj("small", "red", "rubber", "cube", 2, 0))
    assert unique_description(twins, 0) is None
    assert not [i for i in scene_hard_negatives(twins, HardNegConfig()) if i.type in ("replace-att", "swap-rel")]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("hn") / "synth"
    generate_synth(root, SynthConfig(scenes=12, image_size=64, supersample=1, seed=5))
    return root


def test_generated_and_real_scenes_positive_true_negative_false(synth):
    real = load_dataset("clevr", FIXTURES / "clevr")  # real CLEVR scene records
    for samples in (load_dataset("synth", synth), real):
        items = generate_hard_negatives(samples)
        for item in items:
            scene = next(s.scene for s in samples if s.image_id == item.image_id)
            assert _all_hold(item.facts, scene) and not _all_hold(item.negative_facts, scene), item
        assert {i.type for i in items} == set(HARD_NEGATIVE_TYPES)


def test_no_scene_graphs_is_an_error(tmp_path):
    from dsanchor.data.records import Sample

    with pytest.raises(ValueError, match="need scene graphs"):
        generate_hard_negatives([Sample(0, "a.jpg", 10, 10)])
    with pytest.raises(ValueError, match="valid types are"):
        HardNegConfig(types=("swap-everything",))


def test_sugarcrepe_layout_round_trips(synth, tmp_path):
    items = generate_hard_negatives(load_dataset("synth", synth))
    files = write_sugarcrepe(items, tmp_path)
    assert sorted(p.name for p in files.values()) == ["replace_att.json", "replace_count.json", "swap_att.json",
                                                       "swap_rel.json"]
    rows = json.loads((tmp_path / "swap_rel.json").read_text())
    assert {"filename", "caption", "negative_caption"} <= set(rows["0"])
    back = read_sugarcrepe(tmp_path)
    assert sorted((i.type, i.caption, i.negative) for i in back) == sorted((i.type, i.caption, i.negative)
                                                                           for i in items)


def test_sugarcrepe_files_written_elsewhere(tmp_path):
    """Files with SugarCrepe's keys only: one image id per image file across the types; a broken item is a
    one-line error naming the file."""
    from dsanchor.errors import DataError

    (tmp_path / "swap_att.json").write_text(json.dumps({
        "0": {"filename": "a.png", "caption": "A red cube and a blue ball.",
              "negative_caption": "A blue cube and a red ball."},
        "1": {"filename": "b.png", "caption": "A big cube and a small ball.",
              "negative_caption": "A small cube and a big ball."}}))
    (tmp_path / "swap_rel.json").write_text(json.dumps({
        "0": {"filename": "b.png", "caption": "The ball is to the left of the cube.",
              "negative_caption": "The cube is to the left of the ball."}}))
    items = read_sugarcrepe(tmp_path)
    ids = {(i.type, i.image_path): i.image_id for i in items}
    assert ids[("swap-att", "b.png")] == ids[("swap-rel", "b.png")]
    assert ids[("swap-att", "a.png")] != ids[("swap-att", "b.png")]
    (tmp_path / "swap_rel.json").write_text(json.dumps({"0": {"filename": "b.png", "caption": "x"}}))
    with pytest.raises(DataError, match="swap_rel.json.*negative_caption"):
        read_sugarcrepe(tmp_path)


def test_cli_make_and_score(synth, pipe, tmp_path, capsys):
    out = tmp_path / "items"
    assert main(["hardneg", "make", "--data", str(synth), "--format", "synth", "--out", str(out), "--seed", "1"]) == 0
    assert "written to" in capsys.readouterr().out
    assert main(["hardneg", "score", "--pipeline", str(pipe.path), "--items", str(out), "--images", str(synth),
                 "--out", str(tmp_path / "acc.json"), "--quiet"]) == 0
    res = json.loads((tmp_path / "acc.json").read_text())
    assert {"coarse", "fine", "fixed_best"} <= set(res["methods"])
    for row in res["methods"].values():
        assert 0.0 <= row["all"]["lo"] <= row["all"]["accuracy"] <= row["all"]["hi"] <= 1.0
    assert "| method | g | replace-att | swap-att | swap-rel | replace-count | all |" in capsys.readouterr().out
    assert main(["hardneg", "make", "--data", str(FIXTURES / "coco"), "--format", "coco", "--out",
                 str(tmp_path / "x")]) == 2
    assert main(["hardneg", "score", "--pipeline", str(pipe.path), "--items", str(tmp_path / "none"), "--images",
                 str(synth)]) == 2
