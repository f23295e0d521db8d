"""The Flickr8k / Flickr30k loader on six real Flickr8k photos (tests/fixtures/flickr8k, with its attribution):
both caption layouts, the split lists, the missing-test-list rule, and every bad-input case as a one-line error
that names the file and the line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dsanchor.cli import main
from dsanchor.data import list_formats, load_dataset
from dsanchor.data.flickr import FlickrLoader
from dsanchor.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "flickr8k"
TOKEN = "Flickr8k.token.txt"
TRAIN, DEV, TEST = "Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"


def _names(name: str) -> list[str]:
    return (FIXTURE / name).read_text().split()


@pytest.fixture
def data(tmp_path) -> Path:
    out = tmp_path / "flickr8k"
    shutil.copytree(FIXTURE, out)
    return out


def _error(path, match: str, **options) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        load_dataset("flickr8k", path, **options)
    assert "\n" not in str(info.value)
    return info.value


def test_formats_are_registered():
    assert {"flickr8k", "flickr30k"} <= set(list_formats())


def test_standard_layout_without_test_list_evaluates_on_dev(data):
    loader = FlickrLoader(data, val_size=1)
    samples = loader.load()
    assert len(samples) == 6 and all(len(s.captions) == 5 and not s.objects for s in samples)
    assert all((s.width, s.height) == (224, 224) and (data / s.image_path).is_file() for s in samples)
    split = {Path(s.image_path).name: s.split for s in samples}
    train, dev = _names(TRAIN), _names(DEV)
    assert [split[n] for n in dev] == ["test", "test"]
    assert [split[n] for n in train] == ["train", "train", "train", "val"]  # validation: the end of the train list
    assert len(loader.notes) == 1 and "no test list" in loader.notes[0] and "2 dev images" in loader.notes[0]
    first = (FIXTURE / TOKEN).read_text().splitlines()[0]
    assert samples[0].captions[0].text == first.split("\t", 1)[1].strip()
    ids = {s.image_id: s.image_path for s in samples}
    for name in ("train", "val", "test"):  # ids do not depend on the split loaded
        assert all(ids[s.image_id] == s.image_path for s in load_dataset("flickr8k", data, name, val_size=1))


def test_default_validation_size_leaves_training_images(data):
    samples = load_dataset("flickr8k", data)
    assert sum(s.split == "train" for s in samples) == 1 and sum(s.split == "val" for s in samples) == 3


def test_with_a_test_list_dev_is_validation(data):
    train = _names(TRAIN)
    (data / TRAIN).write_text("\n".join(train[:3]) + "\n")
    (data / TEST).write_text(train[3] + "\n")
    loader = FlickrLoader(data)
    split = {Path(s.image_path).name: s.split for s in loader.load()}
    assert split[train[3]] == "test" and all(split[n] == "val" for n in _names(DEV))
    assert loader.notes == []


def test_test_from_none_keeps_dev_as_validation(data):
    samples = load_dataset("flickr8k", data, test_from="none")
    assert {s.split for s in samples} == {"train", "val"}
    with pytest.raises(DataError, match="no images in split 'test'"):
        load_dataset("flickr8k", data, "test", test_from="none")


def test_download_layout_with_text_folder(data):
    (data / "Flickr8k_text").mkdir()
    for name in (TOKEN, TRAIN, DEV):
        shutil.move(data / name, data / "Flickr8k_text" / name)
    assert len(load_dataset("flickr8k", data)) == 6


def test_captions_csv_variant_with_images_folder(data):
    shutil.move(data / "Flicker8k_Dataset", data / "Images")
    for name in (TOKEN, TRAIN, DEV):
        (data / name).unlink()
    rows = ["image,caption"]
    for line in (FIXTURE / TOKEN).read_text().splitlines():
        key, text = line.split("\t", 1)
        rows.append(f'{key.split("#")[0]},"{text.strip()}, with a comma"')
    (data / "captions.txt").write_text("\n".join(rows) + "\n")
    samples = load_dataset("flickr8k", data)
    assert len(samples) == 6 and all(s.split is None for s in samples)
    assert all(s.image_path.startswith("Images/") for s in samples)
    assert samples[0].captions[0].text.endswith(", with a comma")


def test_flickr30k_token_file_and_karpathy_splits(data, tmp_path):
    root = tmp_path / "f30k"
    shutil.copytree(data / "Flicker8k_Dataset", root / "flickr30k-images")
    shutil.copy(data / TOKEN, root / "results_20130124.token")
    names = _names(TRAIN) + _names(DEV)
    splits = ["train", "train", "restval", "val", "test", "test"]
    (root / "dataset_flickr30k.json").write_text(json.dumps(
        {"images": [{"filename": n, "split": s} for n, s in zip(names, splits, strict=True)]}))
    samples = load_dataset("flickr30k", root)
    by = {Path(s.image_path).name: s.split for s in samples}
    assert [by[n] for n in names] == ["train", "train", "train", "val", "test", "test"]


# ---- bad input: one line, naming the file and the line -----------------------------------------------------

def test_token_line_without_tab(data):
    lines = (data / TOKEN).read_text().splitlines()
    lines[6] = lines[6].replace("\t", " ")
    (data / TOKEN).write_text("\n".join(lines) + "\n")
    err = _error(data, "expected 'image#k<TAB>caption'")
    assert err.path.endswith(TOKEN) and err.field == "line 7"


def test_token_key_without_caption_number(data):
    lines = (data / TOKEN).read_text().splitlines()
    lines[2] = lines[2].replace("#2", "")
    (data / TOKEN).write_text("\n".join(lines) + "\n")
    assert _error(data, "expected 'image#k<TAB>caption'").field == "line 3"


def test_empty_caption(data):
    lines = (data / TOKEN).read_text().splitlines()
    lines[4] = lines[4].split("\t")[0] + "\t   "
    (data / TOKEN).write_text("\n".join(lines) + "\n")
    assert _error(data, "empty caption").field == "line 5"


def test_list_names_an_image_without_captions(data):
    (data / DEV).write_text((data / DEV).read_text() + "9999999999_unknown.jpg\n")
    err = _error(data, "has no captions")
    assert err.path.endswith(DEV) and err.field == "line 3"


def test_listed_image_missing_from_disk(data):
    missing = _names(TRAIN)[1]
    (data / "Flicker8k_Dataset" / missing).unlink()
    err = _error(data, "not found in")
    assert err.path.endswith(TRAIN) and err.field == "line 2" and missing in str(err)


def test_image_listed_in_two_splits(data):
    (data / DEV).write_text((data / DEV).read_text() + _names(TRAIN)[0] + "\n")
    err = _error(data, "listed twice")
    assert err.path.endswith(DEV) and err.field == "line 3"


def test_captioned_image_missing_without_lists(data):
    for name in (TRAIN, DEV):
        (data / name).unlink()
    missing = _names(DEV)[0]
    (data / "Flicker8k_Dataset" / missing).unlink()
    line = next(k for k, row in enumerate((data / TOKEN).read_text().splitlines(), 1) if row.startswith(missing))
    err = _error(data, "not found in")
    assert err.path.endswith(TOKEN) and err.field == f"line {line}"


def test_unreadable_image(data):
    bad = _names(DEV)[1]
    (data / "Flicker8k_Dataset" / bad).write_bytes(b"not a jpeg")
    assert bad in str(_error(data, "not a readable image"))


def test_csv_bad_header_and_short_row(data):
    for name in (TOKEN, TRAIN, DEV):
        (data / name).unlink()
    (data / "captions.txt").write_text("image,caption\nonly_a_name.jpg\n")
    assert _error(data, "expected 'image,caption'").field == "line 2"


def test_no_captions_file_and_no_image_folder(data, tmp_path):
    (data / TOKEN).unlink()
    _error(data, "no captions file")
    shutil.copy(FIXTURE / TOKEN, data / TOKEN)
    shutil.rmtree(data / "Flicker8k_Dataset")
    _error(data, "not found in any of")


def test_bad_options(data):
    with pytest.raises(DataError, match="test_from must be"):
        load_dataset("flickr8k", data, test_from="dev")
    with pytest.raises(ValueError, match="valid options are"):
        load_dataset("flickr8k", data, instances="x.json")


def test_cli_data_check(data, capsys):
    assert main(["data", "check", str(data), "--format", "flickr8k"]) == 0
    assert "6" in capsys.readouterr().out
    (data / DEV).write_text("missing.jpg\n")
    assert main(["data", "check", str(data), "--format", "flickr8k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and DEV in err and "line 1" in err


def test_run_says_when_dev_is_the_test_split(data, tmp_path, capsys):
    """`dsanchor run`'s loading prints the loader's note (no test list: dev is the test split), and the caption-
    derived objects are recorded in the store."""
    from dsanchor.features.store import FeatureStore
    from dsanchor.run import RunConfig, _load_samples
    from dsanchor.stages import extract_samples

    config = RunConfig(workers=0)
    samples, labels = _load_samples(data, "flickr8k", config, None)
    out = capsys.readouterr().out
    assert "no test list" in out and "dev images are the test split" in out
    assert labels == "captions" and "objects are the COCO categories the reference captions name" in out
    extract_samples(samples, data, tmp_path / "features", config, "flickr8k", object_labels=labels)
    store = FeatureStore(tmp_path / "features")
    assert store.manifest["source"]["objects"].startswith("captions")
    assert "dog" in store.object_vocabulary().names
    # photos whose objects come from captions: every grid cell, pooled from the encoder's head map
    assert store.manifest["encoder"]["config"]["region_stage"] == "head" and store.dims["region"] == 1280
    assert store.manifest["regions"]["max_regions"] == 14 and not store.manifest["regions"]["components"]


TINY = ["--align-epochs", "2", "--detector-epochs", "2", "--tune-trials", "2", "--tune-timesteps", "512",
        "--ppo-timesteps", "1024", "--caption-steps", "20", "--caption-ppo-timesteps", "512", "--workers", "0",
        "--threads", "1"]


@pytest.mark.slow
def test_run_end_to_end_on_captions_only(data, tmp_path, capsys):
    """`dsanchor run` on Flickr8k files: objects come from the reference captions (said in the output and the
    report) and feed the detector and the hallucination numbers; with --object-labels annotations the dataset has
    no object labels, so there is no detector and every hallucination cell is absent, never 1.000 or 0."""
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--format", "flickr8k", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "objects are the COCO categories the reference captions name (6 of 6 images" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["object_labels"].startswith("captions") and "pope" in res
    assert all("hall_t2i" in row and "exact" not in row for row in res["methods"].values())
    report = (out / "report.md").read_text()
    assert "objects are the COCO categories its reference captions name" in report
    assert "nearest neighbour" in report and "human (each reference" in report
    assert (out / "seed0" / "detector" / ".stage.json").is_file() and (out / "pipeline").is_dir()

    bare = tmp_path / "bare"
    argv = ["run", "--data", str(data), "--format", "flickr8k", "--out", str(bare), "--object-labels", "annotations"]
    assert main([*argv, *TINY]) == 0
    assert "no hallucination detector" in capsys.readouterr().out
    res = json.loads((bare / "results.json").read_text())
    assert res["object_labels"] == "none" and "pope" not in res
    for row in res["methods"].values():
        assert not {"hall_t2i", "hall_i2t", "coverage_t2i", "CHAIR_i", "CHAIR_s"} & set(row)
    assert not (bare / "seed0" / "detector").exists()
    report = (bare / "report.md").read_text()
    assert "Object labels: **none**" in report and "| – (–) | – (–) |" in report
