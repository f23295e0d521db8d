"""Loaders: the hand-written fixtures in each real schema, and the synth output through COCO and CLEVR."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixtures.datasets import materialize

from dsanchor.data import Caption, ObjectAnnotation, SynthConfig, generate_synth, list_formats, load_dataset
from dsanchor.errors import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synth(out, SynthConfig(scenes=10, seed=4, image_size=128))
    return out


def test_registry_lists_formats_and_rejects_unknown(tmp_path):
    assert {"coco", "vg", "clevr", "synth"} <= set(list_formats())
    with pytest.raises(ValueError, match=r"valid formats are \['clevr', 'coco'"):
        load_dataset("pascal", tmp_path)
    with pytest.raises(ValueError, match="valid options are"):
        load_dataset("coco", tmp_path, caption_file="x.json")
    with pytest.raises(DataError, match="not found"):
        load_dataset("coco", tmp_path / "nowhere")


def test_coco_fixture(tmp_path):
    root = materialize("coco", tmp_path)
    samples = {s.image_id: s for s in load_dataset("coco", root)}
    assert sorted(samples) == [139, 285, 632]
    s = samples[139]
    assert (s.image_path, s.width, s.height) == ("val2017/000000000139.jpg", 64, 48)
    assert (root / s.image_path).is_file()
    assert s.captions[0] == Caption("A woman stands in the dining area at the table.", None)
    assert s.objects == [ObjectAnnotation("person", (10.0, 20.0, 20.5, 25.0)),
                         ObjectAnnotation("dining table", (40.0, 30.0, 20.0, 14.0))]
    assert samples[632].objects == []
    # Karpathy split file: test, restval -> train, val
    assert {i: x.split for i, x in samples.items()} == {139: "test", 285: "train", 632: "val"}
    assert [x.image_id for x in load_dataset("coco", root, split="val")] == [632]


def test_coco_explicit_files_and_split_from_file_name(tmp_path):
    root = materialize("coco", tmp_path)
    (root / "dataset_coco.json").unlink()
    samples = load_dataset("coco", root / "annotations" / "captions_val2017.json")
    assert {s.split for s in samples} == {"val"}
    assert sum(len(s.objects) for s in samples) == 3  # instances found beside the captions file
    other = tmp_path / "elsewhere"
    (root / "val2017").rename(other)
    moved = load_dataset("coco", root, image_dir=str(other))
    assert all(Path(s.image_path).is_absolute() and Path(s.image_path).is_file() for s in moved)
    with pytest.raises(DataError, match="no images in split 'train'"):
        load_dataset("coco", root, split="train")


def test_visual_genome_v14(tmp_path):
    root = materialize("vg", tmp_path)
    samples = {s.image_id: s for s in load_dataset("vg", root)}
    one = samples[1]
    assert one.image_path == "VG_100K_2/1.jpg" and (root / one.image_path).is_file()
    assert one.captions == [Caption("the clock is green in colour", "object"),
                            Caption("shade is along the street", "object")]
    # object 5046 was merged into 1058498, so it is skipped; attributes come from attributes.json
    assert one.objects == [ObjectAnnotation("clock", (41.0, 10.0, 15.0, 20.0), ("green", "tall")),
                           ObjectAnnotation("street", (0.0, 30.0, 78.0, 28.0))]
    assert samples[10].objects == [ObjectAnnotation("man", (20.0, 10.0, 30.0, 50.0), ("standing",))]
    assert all(s.split is None for s in samples.values())


def test_visual_genome_v12_ids_and_single_name(tmp_path):
    root = materialize("vg_v12", tmp_path)
    samples = {s.image_id: s for s in load_dataset("vg", root)}
    assert [o.name for o in samples[1].objects] == ["clock", "street"]
    assert samples[10].image_path == "VG_100K/10.jpg" and samples[10].captions == []


def test_clevr_real_layout(tmp_path):
    root = materialize("clevr", tmp_path)
    samples = load_dataset("clevr", root)
    assert [s.image_id for s in samples] == [1_000_000, 1_000_001]  # val ids are offset
    s = samples[0]
    assert (s.image_path, s.width, s.height, s.split) == ("images/val/CLEVR_val_000000.png", 480, 320, "val")
    assert [(o.name, o.attributes) for o in s.objects] == [("brown cylinder", ("large", "rubber")),
                                                          ("gray cube", ("large", "rubber")),
                                                          ("green cylinder", ("small", "rubber"))]
    for o in s.objects:  # estimated boxes: inside the image and around the projected centre
        x, y, w, h = o.box
        assert 0 <= x and 0 <= y and x + w <= 480 and y + h <= 320 and 20 < w < 120
    assert [c.granularity for c in s.captions] == ["scene", "scene", "object", "object", "relation"]
    assert load_dataset("clevr", root)[1].captions == samples[1].captions  # deterministic
    assert load_dataset("clevr", root, caption_seed=9)[1].captions != samples[1].captions


def test_synth_round_trip_through_coco_and_clevr(synth):
    coco, clevr, syn = (load_dataset(f, synth) for f in ("coco", "clevr", "synth"))
    assert clevr == syn  # the same records, scene graphs included
    assert all(s.scene is None for s in coco) and all(s.scene is not None for s in syn)
    assert [dataclasses.replace(s, scene=None) for s in syn] == coco
    assert [[c.fact for c in s.captions] for s in coco] == [[c.fact for c in s.captions] for s in clevr]
    assert all(o.name.split()[1] in ("cube", "sphere", "cylinder") and len(o.attributes) == 2
               for s in coco for o in s.objects)
    for split in ("train", "val", "test"):
        assert [s.image_id for s in load_dataset("coco", synth, split=split)] == \
               [s.image_id for s in load_dataset("clevr", synth, split=split)]
    assert {s.split for s in coco} == {"train", "val", "test"}
