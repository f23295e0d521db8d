"""``dsanchor data check``: summaries of good data, and one-line errors (exit 2) for each kind of bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.datasets import materialize

import dsanchor.cli
from dsanchor.data import SynthConfig, check_dataset, generate_synth, load_dataset
from dsanchor.errors import DataError


@pytest.fixture(autouse=True)
def only_data_command(monkeypatch):
    monkeypatch.setattr(dsanchor.cli, "COMMANDS", ("data",))  # only our subcommand: keeps the tests fast


@pytest.fixture(scope="module")
def synth_template(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synth(out, SynthConfig(scenes=6, seed=2, image_size=96))
    return out


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = dsanchor.cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- good data ----------------------------------------------------------------------------------------------

def test_synth_checks_the_same_through_coco_and_clevr(synth_template, capsys):
    summaries = []
    for fmt in ("coco", "clevr"):
        rc, out, err = run(["data", "check", "--format", fmt, str(synth_template), "--json"], capsys)
        assert rc == 0, err
        summaries.append(json.loads(out))
    coco, clevr = summaries
    assert coco["images"] == clevr["images"] == 6 and coco["objects"] == clevr["objects"] > 0
    assert coco["categories"] == clevr["categories"] and coco["captions_by_granularity"] == {
        "object": 12, "relation": 6, "scene": 12}
    assert coco["missing_images"] == 0


@pytest.mark.parametrize("fmt,name,expect", [
    ("coco", "coco", ["images: 3 (test 1, train 1, val 1)", "captions: 5 (unknown 5)", "objects: 3", "categories: 3"]),
    ("vg", "vg", ["images: 2 (no splits)", "captions: 3 (object 3)", "objects: 3", "categories: 3"]),
    ("clevr", "clevr", ["images: 2 (val 2)", "captions: 10 (object 4, relation 2, scene 4)", "objects: 7"]),
])
def test_fixture_summaries(tmp_path, capsys, fmt, name, expect):
    root = materialize(name, tmp_path)
    rc, out, err = run(["data", "check", "--format", fmt, str(root)], capsys)
    assert rc == 0, err
    for line in expect + ["missing image files: 0"]:
        assert line in out.splitlines()


def test_allow_missing_counts_missing_images(tmp_path, capsys):
    root = materialize("coco", tmp_path)
    for name in ("000000000285.jpg", "000000000139.jpg"):
        (root / "val2017" / name).unlink()
    rc, _, err = run(["data", "check", "--format", "coco", str(root)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{root}: 2 of 3 image files missing: val2017/000000000139.jpg, val2017/000000000285.jpg; add them" in err
    summary = check_dataset("coco", root, allow_missing=True)
    assert (summary.missing_images, summary.missing_examples) == (2, ["val2017/000000000139.jpg",
                                                                      "val2017/000000000285.jpg"])
    rc, out, err = run(["data", "check", "--format", "coco", "--allow-missing", str(root)], capsys)
    assert rc == 0 and "missing image files: 2 (val2017/000000000139.jpg, val2017/000000000285.jpg)" in out
    # the images that are there are still checked
    (root / "val2017" / "000000000632.jpg").write_text("hello")
    rc, _, err = run(["data", "check", "--format", "coco", "--allow-missing", str(root)], capsys)
    assert rc == 2 and "000000000632.jpg: not an image file" in err


def test_boxes_a_little_past_the_edge_are_clipped_and_counted(tmp_path, capsys):
    root = materialize("vg", tmp_path)
    # image 10 is 64x64 (default limit 8 px): x = -3 is 3 px over; image 1 is 80x60: x + w = 82 is 2 px over
    edit_json(root / "objects.json", set_in((1, "objects", 0, "x"), -3))
    edit_json(root / "objects.json", set_in((0, "objects", 2, "w"), 82))
    boxes = {s.image_id: [o.box for o in s.objects] for s in load_dataset("vg", root)}
    assert boxes[10] == [(0.0, 10.0, 27.0, 50.0)] and boxes[1][1] == (0.0, 30.0, 80.0, 28.0)
    rc, out, err = run(["data", "check", "--format", "vg", str(root)], capsys)
    assert rc == 0, err
    assert "boxes clipped to the image: 2 (up to 8 px past an edge)" in out.splitlines()
    rc, out, _ = run(["data", "check", "--format", "vg", str(root), "--bbox-tolerance", "3", "--json"], capsys)
    assert rc == 0 and (json.loads(out)["clipped_boxes"], json.loads(out)["bbox_tolerance"]) == (2, 3.0)
    rc, _, err = run(["data", "check", "--format", "vg", str(root), "--bbox-tolerance", "2.5"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert ("objects.json: [1].objects[0]: box [-3, 10, 30, 50] lies outside the 64x64 image by 3 px; boxes up to "
            "bbox_tolerance=2.5 px past an edge are clipped") in err


def test_coco_and_clevr_clip_and_count_too(tmp_path, synth_template):
    root = materialize("coco", tmp_path)
    edit_json(root / INST, set_in(("annotations", 1, "bbox"), [50, 30, 14.5, 14]))  # 0.5 px past a 64-px side
    assert check_dataset("coco", root).clipped_boxes == 1
    boxes = [o.box for s in load_dataset("coco", root) for o in s.objects]
    assert (50.0, 30.0, 14.0, 14.0) in boxes
    synth = Path(shutil.copytree(synth_template, tmp_path / "s"))
    edit_json(synth / "scenes.json", set_in(("scenes", 0, "objects", 0, "bbox"), [-1, 10, 20, 20]))
    assert check_dataset("clevr", synth).clipped_boxes == 1


def test_negative_bbox_tolerance_is_a_config_error(tmp_path, capsys):
    root = materialize("vg", tmp_path)
    rc, _, err = run(["data", "check", "--format", "vg", str(root), "--bbox-tolerance", "-1"], capsys)
    assert rc == 2 and "bbox_tolerance must be a number of pixels >= 0, got -1.0" in err


# ---- bad data: each gives one line naming the file, and exit code 2 -----------------------------------------

def edit_json(path: Path, change: Callable[[object], object]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) or data))


CAPS = "annotations/captions_val2017.json"
INST = "annotations/instances_val2017.json"


def set_in(keys: tuple, value) -> Callable:
    def change(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return change


BAD_COCO = {
    "malformed json": (CAPS, lambda p: p.write_text('{"images": ['), "not valid JSON"),
    "wrong top level": (CAPS, lambda p: p.write_text("[]"), "top level must be an object"),
    "missing key": (CAPS, lambda p: edit_json(p, set_in(("annotations", 1, "caption"), KeyError)),
                    "annotations[1]: missing required key 'caption'"),
    "unknown image id": (CAPS, lambda p: edit_json(p, set_in(("annotations", 2, "image_id"), 999)),
                         "image_id 999 is not in 'images'"),
    "unknown image id in instances": (INST, lambda p: edit_json(p, set_in(("annotations", 0, "image_id"), 7)),
                                      "image_id 7 is not an image"),
    "negative box": (INST, lambda p: edit_json(p, set_in(("annotations", 0, "bbox"), [10, 20, -5, 25])),
                     "negative width or height"),
    "box outside": (INST, lambda p: edit_json(p, set_in(("annotations", 1, "bbox"), [50, 30, 20, 14])),
                    "lies outside the 64x48 image"),
    "empty caption": (CAPS, lambda p: edit_json(p, set_in(("annotations", 0, "caption"), "  ")), "empty caption"),
    "absolute file name": (CAPS, lambda p: edit_json(p, set_in(("images", 0, "file_name"), "/etc/passwd")),
                           "is absolute"),
    "dotdot file name": (CAPS, lambda p: edit_json(p, set_in(("images", 0, "file_name"), "../../secret.jpg")),
                         "escapes the dataset root"),
    "duplicate image id": (CAPS, lambda p: edit_json(p, set_in(("images", 1, "id"), 139)), "duplicate image id 139"),
    "image missing": ("val2017/000000000285.jpg", lambda p: p.unlink(), "image files missing"),
    "not an image": ("val2017/000000000285.jpg", lambda p: p.write_text("hello"), "not an image file"),
    "image wrong size": ("val2017/000000000285.jpg", lambda p: shutil.copy(p.parent / "000000000139.jpg", p),
                         "image is 64x48 but the annotations say 56x64"),
    "bad split file": ("dataset_coco.json", lambda p: p.write_text('{"images": [{"cocoid": 139}]}'),
                       "missing required key 'split'"),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_input_is_one_line_exit_2(tmp_path, capsys, case):
    rel, mutate, phrase = BAD_COCO[case]
    root = materialize("coco", tmp_path)
    mutate(root / rel)
    rc, out, err = run(["data", "check", "--format", "coco", str(root)], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert Path(rel).name in err and phrase in err, err


def test_truncated_png_is_unreadable(synth_template, tmp_path, capsys):
    root = Path(shutil.copytree(synth_template, tmp_path / "s"))
    img = root / "images" / "synth_000003.png"
    img.write_bytes(img.read_bytes()[:200])
    for fmt in ("coco", "clevr"):
        rc, _, err = run(["data", "check", "--format", fmt, str(root)], capsys)
        assert rc == 2 and "synth_000003.png: unreadable image" in err and len(err.strip().splitlines()) == 1


BAD_OTHER = {
    "clevr malformed": ("clevr", "scenes/CLEVR_val_scenes.json", lambda p: p.write_text("{"), "not valid JSON"),
    "clevr no scenes": ("clevr", "scenes/CLEVR_val_scenes.json", lambda p: p.write_text('{"info": {}}'),
                        "missing required key 'scenes'"),
    "clevr object key": ("clevr", "scenes/CLEVR_val_scenes.json",
                         lambda p: edit_json(p, set_in(("scenes", 1, "objects", 2, "shape"), KeyError)),
                         "scenes[1].objects[2]: missing required key 'shape'"),
    "clevr unknown colour": ("clevr", "scenes/CLEVR_val_scenes.json",
                             lambda p: edit_json(p, set_in(("scenes", 0, "objects", 0, "color"), "pink")),
                             "unknown color 'pink'"),
    "clevr relation index": ("clevr", "scenes/CLEVR_val_scenes.json",
                             lambda p: edit_json(p, set_in(("scenes", 0, "relationships", "left", 0), [7])),
                             "relationships.left[0]: object indices must lie in 0..2"),
    "clevr dotdot": ("clevr", "scenes/CLEVR_val_scenes.json",
                     lambda p: edit_json(p, set_in(("scenes", 0, "image_filename"), "../x.png")), "escapes"),
    "clevr image missing": ("clevr", "images/val/CLEVR_val_000001.png", lambda p: p.unlink(), "image files missing"),
    "vg wrong top level": ("vg", "image_data.json", lambda p: p.write_text("{}"), "top level must be a list"),
    "vg region unknown image": ("vg", "region_descriptions.json",
                                lambda p: edit_json(p, set_in((1, "regions", 0, "image_id"), 99)),
                                "image id 99 is not in image_data.json"),
    "vg empty phrase": ("vg", "region_descriptions.json",
                        lambda p: edit_json(p, set_in((0, "regions", 1, "phrase"), "")), "empty caption"),
    "vg object box outside": ("vg", "objects.json", lambda p: edit_json(p, set_in((1, "objects", 0, "h"), 80)),
                              "lies outside the 64x64 image"),
    "vg object no name": ("vg", "objects.json", lambda p: edit_json(p, set_in((1, "objects", 0, "names"), [])),
                          "object has no name"),
    "vg missing width": ("vg", "image_data.json", lambda p: edit_json(p, set_in((0, "width"), KeyError)),
                         "[0]: missing required key 'width'"),
}


@pytest.mark.parametrize("case", sorted(BAD_OTHER))
def test_bad_clevr_and_vg_input_is_one_line_exit_2(tmp_path, capsys, case):
    fmt, rel, mutate, phrase = BAD_OTHER[case]
    root = materialize(fmt, tmp_path)
    mutate(root / rel)
    rc, _, err = run(["data", "check", "--format", fmt, str(root)], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert Path(rel).name in err and phrase in err, err


def test_bad_synth_box_and_loader_raises_typed_error(synth_template, tmp_path, capsys):
    root = Path(shutil.copytree(synth_template, tmp_path / "s"))
    edit_json(root / "scenes.json", set_in(("scenes", 0, "objects", 0, "bbox"), [90, 10, 20, 20]))
    rc, _, err = run(["data", "check", "--format", "clevr", str(root)], capsys)
    assert rc == 2 and "scenes.json: scenes[0].objects[0].bbox: box [90, 10, 20, 20] lies outside" in err
    with pytest.raises(DataError) as info:  # plain loading raises the same typed error
        load_dataset("clevr", root)
    assert info.value.path.endswith("scenes.json") and info.value.field == "scenes[0].objects[0].bbox"


def test_missing_annotations_and_unknown_split(tmp_path, capsys):
    rc, _, err = run(["data", "check", "--format", "coco", str(tmp_path)], capsys)
    assert rc == 2 and "no COCO captions file" in err
    root = materialize("vg", tmp_path)
    rc, _, err = run(["data", "check", "--format", "vg", str(root), "--split", "val"], capsys)
    assert rc == 2 and "dataset has no split information" in err


def test_check_of_an_image_folder_names_every_unreadable_file(tmp_path):
    from PIL import Image

    from dsanchor.data import check_dataset
    from dsanchor.errors import DataError

    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.webp")
    for name in ("bad1.png", "bad2.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"2 of 4 image files cannot be used: .*bad1.png.*bad2.jpg"):
        check_dataset("images", tmp_path)
    (tmp_path / "bad1.png").unlink()
    (tmp_path / "bad2.jpg").unlink()
    assert check_dataset("images", tmp_path).images == 2
