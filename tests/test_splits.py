"""Splits of a whole-pipeline run: from a split file, from the dataset, or seeded (dsanchor.data.splits)."""

import json

import pytest

from dsanchor.data import Sample
from dsanchor.data.splits import assign_splits
from dsanchor.errors import DataError


def _samples(splits):
    return [Sample(i, f"{i}.png", 8, 8, split=s) for i, s in enumerate(splits)]


def test_the_dataset_splits_are_kept_when_complete():
    samples = _samples(["train", "val", "test", "train"])
    out, how = assign_splits(samples)
    assert [s.split for s in out] == ["train", "val", "test", "train"] and "from the dataset" in how


def test_an_incomplete_split_gives_a_seeded_one_that_is_announced():
    samples = _samples(["val"] * 20)  # COCO val2017 alone: every image is "val"
    out, how = assign_splits(samples, seed=3)
    assert "seeded split, seed 3" in how and "only {'val': 20}" in how
    counts = {sp: sum(s.split == sp for s in out) for sp in ("train", "val", "test")}
    assert counts == {"train": 12, "val": 4, "test": 4}
    assert [s.split for s in assign_splits(samples, seed=3)[0]] == [s.split for s in out]  # deterministic
    assert [s.split for s in assign_splits(samples, seed=4)[0]] != [s.split for s in out]
    assert all(s.split == "val" for s in samples)  # the input records are not changed


def test_a_split_file_wins_and_leaves_out_unlisted_images(tmp_path):
    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": [0, 1], "val": [2], "test": [3]}))
    out, how = assign_splits(_samples([None] * 5), f)
    assert [s.split for s in out] == ["train", "train", "val", "test"] and "1 images not in the file" in how
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps({"images": [{"cocoid": 0, "split": "restval"}, {"cocoid": 1, "split": "val"},
                                              {"cocoid": 2, "split": "test"}]}))
    assert [s.split for s in assign_splits(_samples([None] * 3), karpathy)[0]] == ["train", "val", "test"]


def test_a_split_file_that_leaves_a_split_empty_is_an_error(tmp_path):
    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": [0, 1], "val": [2], "test": [99]}))
    with pytest.raises(DataError, match=r"no images of the dataset in split\(s\) \['test'\]"):
        assign_splits(_samples([None] * 3), f)
