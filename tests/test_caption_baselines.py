"""Captioning baselines without a decoder: the nearest-neighbour caption (Devlin et al. 2015) and the human
leave-one-out references, on small hand-made features and the captions of tests/fixtures/flickr8k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsanchor.captioning.baselines import human_leave_one_out, nearest_neighbour_captions
from dsanchor.captioning.tokens import CaptionSplit
from dsanchor.data import load_dataset
from dsanchor.data.caption_objects import label_objects_from_captions
from dsanchor.features.types import ImageFeatures, TextFeatures

FIXTURE = Path(__file__).parent / "fixtures" / "flickr8k"


def _images(coarse: list[list[float]], ids: list[int]) -> ImageFeatures:
    n = len(ids)
    return ImageFeatures(torch.tensor(ids), torch.tensor(coarse), torch.zeros(n, 1, 2), torch.zeros(n, 1, 4),
                         torch.ones(n, 1, dtype=torch.bool), [[] for _ in ids], ["train"] * n)


def test_nearest_neighbour_takes_the_consensus_caption_of_the_closest_training_image():
    train = _images([[1.0, 0.0], [0.0, 1.0]], [10, 11])
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.1, 0.0, 1.0], [0.0, 1.0, 0.0]])
    texts = TextFeatures(emb, torch.tensor([10, 10, 10, 11]), torch.full((4,), -1),
                         ["a dog runs", "a dog is running", "an odd one", "a cat sleeps"])
    test = _images([[0.1, 1.0], [1.0, 0.2]], [20, 21])
    assert nearest_neighbour_captions(train, texts, test, k=1) == ["a cat sleeps", "a dog runs"]
    # with both neighbours, image 21's candidates are all four captions, and "a dog is running" (closest to
    # "a cat sleeps" as well) becomes the consensus
    assert nearest_neighbour_captions(train, texts, test, k=2)[1] == "a dog is running"


def _split(refs: list[list[str]]) -> CaptionSplit:
    from dsanchor.metrics.chair import caption_objects

    n = len(refs)
    objects = [[o for r in rs for o in caption_objects(r, "coco")] for rs in refs]
    return CaptionSplit(torch.arange(n), torch.zeros(n, 2), torch.zeros(n, 1, 2), torch.zeros(n, 1, 4),
                        torch.ones(n, 1, dtype=torch.bool), refs, objects)


def test_human_leave_one_out_on_real_references():
    samples = label_objects_from_captions(load_dataset("flickr8k", FIXTURE))
    refs = [[c.text for c in s.captions] for s in samples]
    row = human_leave_one_out(_split(refs), "coco")
    assert row["held_out_references"] == 5 and row["n_images"] == len(refs)
    assert 0.0 < row["BLEU-4"] < 1.0 and 0.0 < row["CIDEr"] < 10.0
    # in these six images every object a reference names is named by another reference too ("truck", "car" and
    # "sports ball" twice each): no person hallucinates against the others
    assert row["CHAIR_i"] == 0.0 and row["CHAIR_s"] == 0.0
    # one person alone names a horse: that reference's horse is judged against the other four, which lack it
    refs[0][0] = "a boy rides a horse past two children on a skateboard"
    row = human_leave_one_out(_split(refs), "coco")
    assert row["CHAIR_s"] == pytest.approx(1 / 5 / len(refs))  # one caption of 5 x 6
    assert 0.0 < row["CHAIR_i"] < row["CHAIR_s"] * 2


def test_nearest_neighbour_needs_training_captions():
    train = _images([[1.0, 0.0]], [1])
    texts = TextFeatures(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0), [])
    with pytest.raises(ValueError, match="needs training captions"):
        nearest_neighbour_captions(train, texts, train)
