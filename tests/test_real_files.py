"""The loaders, ``dsanchor data check`` and feature extraction on a few real COCO, CLEVR and VG files.

The files are in tests/fixtures/real (unchanged real records and images; see its README for licences). The
fixture folder is read-only here: outputs go to tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import dsanchor.cli
from dsanchor.data import GRANULARITIES, check_dataset, create_loader, load_dataset
from dsanchor.encoders import RegionConfig, create_encoder, save_tiny_clip
from dsanchor.errors import DataError
from dsanchor.features import ExtractConfig, FeatureStore, extract_features

REAL = Path(__file__).resolve().parent / "fixtures" / "real"


@pytest.fixture(autouse=True)
def only_data_command(monkeypatch):
    monkeypatch.setattr(dsanchor.cli, "COMMANDS", ("data",))  # only our subcommand: keeps the tests fast


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = dsanchor.cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- loaders --------------------------------------------------------------------------------------------------

def test_coco_photos_captions_and_instances():
    samples = {s.image_id: s for s in load_dataset("coco", REAL / "coco")}
    assert sorted(samples) == [802, 205401, 338905, 434204]
    sizes = {i: (s.width, s.height) for i, s in samples.items()}
    assert sizes == {802: (424, 640), 205401: (640, 408), 338905: (480, 360), 434204: (500, 333)}
    for s in samples.values():
        with Image.open(REAL / "coco" / s.image_path) as im:
            assert im.size == (s.width, s.height)
        assert s.split == "val" and len(s.captions) == 5 and all(c.granularity is None for c in s.captions)
    assert samples[802].captions[0].text == "A kitchen with a refrigerator, stove and oven with cabinets."
    assert [len(samples[i].objects) for i in sorted(samples)] == [2, 4, 0, 9]  # 338905 has no instance record
    assert sorted(o.name for o in samples[802].objects) == ["oven", "refrigerator"]
    assert {o.name for o in samples[434204].objects} == {"backpack", "bench", "person", "skateboard"}
    for s in samples.values():
        for o in s.objects:
            x, y, w, h = o.box
            assert 0 <= x and 0 <= y and x + w <= s.width and y + h <= s.height


def test_clevr_renders_and_scene_records():
    samples = {s.image_id: s for s in load_dataset("clevr", REAL / "clevr", split="train")}
    assert sorted(samples) == [206, 826, 895]
    assert [len(samples[i].objects) for i in (206, 826, 895)] == [4, 8, 3]
    for s in samples.values():
        assert (s.width, s.height, s.split) == (480, 320, "train")
        assert s.image_path == f"images/train/CLEVR_train_{s.image_id:06d}.png"
        with Image.open(REAL / "clevr" / s.image_path) as im:
            assert im.size == (480, 320)
        assert s.captions and all(c.granularity in GRANULARITIES for c in s.captions)
        for o in s.objects:  # estimated around pixel_coords (real CLEVR has no boxes), inside the image
            x, y, w, h = o.box
            assert 0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= 480 and y + h <= 320
    first = samples[206].objects[0]
    assert (first.name, first.attributes) == ("yellow sphere", ("small", "rubber"))


def test_visual_genome_records_clip_small_overshoots():
    loader = create_loader("vg", REAL / "vg")
    samples = {s.image_id: s for s in loader.load()}
    assert sorted(samples) == [3, 8, 21, 40, 46]
    assert [(samples[i].width, samples[i].height) for i in (3, 21, 40)] == [(640, 480), (256, 256), (560, 800)]
    assert [len(samples[i].captions) for i in sorted(samples)] == [100, 100, 95, 92, 84]  # one per region
    assert [len(samples[i].objects) for i in sorted(samples)] == [37, 38, 23, 20, 0]
    assert all(c.granularity == "object" for s in samples.values() for c in s.captions)
    assert samples[8].image_path == "VG_100K/8.jpg"  # the url's folder; the file itself is absent
    # image 8's "papers" is [670, 291, 132, 49] in an 800-wide image: 2 px over, clipped; its attribute is joined
    papers = samples[8].objects[21]
    assert (papers.name, papers.box, papers.attributes) == ("papers", (670.0, 291.0, 130.0, 49.0), ("stack",))
    # image 3 has three boxes 1 px over the right or bottom edge
    assert [samples[3].objects[j].box for j in (0, 19, 20)] == [
        (130.0, 89.0, 510.0, 389.0), (542.0, 176.0, 98.0, 56.0), (582.0, 98.0, 58.0, 112.0)]
    assert loader.clipped_boxes == 4
    for s in samples.values():
        for o in s.objects:
            x, y, w, h = o.box
            assert 0 <= x and 0 <= y and x + w <= s.width and y + h <= s.height


def test_visual_genome_overshoot_past_the_limit_is_an_error():
    with pytest.raises(DataError) as info:
        load_dataset("vg", REAL / "vg", bbox_tolerance=1)
    assert info.value.path.endswith("objects.json") and info.value.field == "[1].objects[21]"
    assert "lies outside the 800x600 image by 2 px" in info.value.message


# ---- data check ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, expect", [
    ("coco", ["images: 4 (val 4)", "captions: 20 (unknown 20)", "objects: 15", "categories: 8"]),
    ("clevr", ["images: 3 (train 3)", "objects: 15"]),
])
def test_data_check_passes_on_real_coco_and_clevr(capsys, fmt, expect):
    rc, out, err = run(["data", "check", "--format", fmt, str(REAL / fmt)], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert set(expect + ["missing image files: 0"]) <= set(lines)
    assert any(line.startswith("boxes clipped to the image: 0 ") for line in lines)


def test_data_check_on_real_vg_needs_allow_missing(capsys):
    rc, _, err = run(["data", "check", "--format", "vg", str(REAL / "vg")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "5 of 5 image files missing: VG_100K/3.jpg, VG_100K/8.jpg, VG_100K/21.jpg and 2 more" in err
    assert "--allow-missing" in err
    rc, out, err = run(["data", "check", "--format", "vg", "--allow-missing", str(REAL / "vg")], capsys)
    assert rc == 0, err
    assert {"images: 5 (no splits)", "captions: 471 (object 471)", "objects: 118",
            "boxes clipped to the image: 4 (up to 8 px past an edge)",
            "missing image files: 5 (VG_100K/3.jpg, VG_100K/8.jpg, VG_100K/21.jpg and 2 more)"} <= set(out.splitlines())
    summary = check_dataset("vg", REAL / "vg", allow_missing=True, bbox_tolerance=2)
    assert (summary.clipped_boxes, summary.bbox_tolerance, summary.missing_images) == (4, 2, 5)
    assert summary.to_dict()["missing_examples"] == ["VG_100K/3.jpg", "VG_100K/8.jpg", "VG_100K/21.jpg"]


def test_data_check_on_real_vg_with_a_tighter_limit_names_the_box(capsys):
    argv = ["data", "check", "--format", "vg", "--allow-missing", "--bbox-tolerance", "1", str(REAL / "vg")]
    rc, _, err = run(argv, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "objects.json: [1].objects[21]: box [670, 291, 132, 49] lies outside the 800x600 image by 2 px" in err


# ---- feature extraction on real photos -------------------------------------------------------------------------

def test_extract_real_coco_photos(tmp_path):
    samples = load_dataset("coco", REAL / "coco")
    enc = create_encoder("clip", model_path=str(save_tiny_clip(tmp_path / "clip")), coarse_layer=1)
    cfg = ExtractConfig(batch_size=2, shard_size=2, workers=0, progress=False)
    extract_features(samples, REAL / "coco", tmp_path / "feats", enc, cfg, RegionConfig(max_regions=10))
    store = FeatureStore(tmp_path / "feats")
    img, txt = store.images(), store.texts()
    d = enc.dims
    assert sorted(img.image_ids.tolist()) == [802, 205401, 338905, 434204]
    assert img.coarse.shape == (4, d.coarse) and img.regions.shape == (4, 10, d.region)
    assert img.boxes.shape == (4, 10, 4) and img.mask.shape == (4, 10)
    assert txt.embeddings.shape == (20, d.text) and len(txt.captions) == 20
    assert all(torch.isfinite(t).all() for t in (img.coarse, img.regions, img.boxes, txt.embeddings))
    boxes = img.boxes[img.mask]  # (n, 4) the real regions
    assert (boxes >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-6).all()
    assert (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-6).all() and (boxes[:, 2:] > 0).all()
    row = {i: k for k, i in enumerate(img.image_ids.tolist())}
    by_id = {s.image_id: s for s in samples}
    for image_id in (802, 205401, 434204):  # annotated: their own boxes, normalised by the non-square size
        s, k = by_id[image_id], row[image_id]
        expect = torch.tensor([o.box for o in s.objects]) / torch.tensor([s.width, s.height] * 2)  # (n, 4)
        assert img.mask[k].sum() == len(s.objects)
        torch.testing.assert_close(img.boxes[k, : len(s.objects)], expect.float())
    assert img.mask[row[338905]].any()  # no annotations: the proposal fallback
    assert img.objects[row[802]] == [o.name for o in by_id[802].objects]
    assert json.loads((tmp_path / "feats" / "manifest.json").read_text())["n_images"] == 4
