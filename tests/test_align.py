"""Alignment heads training: the multi-positive InfoNCE against a brute-force loop, the in-batch positives
(every image a caption is true of, or own image + identical strings without scene graphs), and a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from dsanchor.align.heads import AlignConfig
from dsanchor.align.loss import multi_positive_infonce, symmetric_multi_positive_infonce
from dsanchor.align.positives import Relevance
from dsanchor.align.train import AlignTrainConfig, evaluate_by_granularity, train_heads
from dsanchor.errors import ConfigError
from dsanchor.features.types import ImageFeatures, TextFeatures, exact_relevance


def _brute(logits: list[list[float]], pos: list[list[bool]], form: str) -> float:
    """The loss by loops over rows and positives, straight from the formulas."""
    losses = []
    for z, p in zip(logits, pos, strict=True):
        if not any(p):
            continue
        denom = sum(math.exp(v) for v in z)
        probs = [math.exp(v) / denom for v, keep in zip(z, p, strict=True) if keep]  # softmax of the positives
        losses.append(-sum(math.log(q) for q in probs) / len(probs) if form == "mean" else -math.log(sum(probs)))
    return sum(losses) / len(losses)


LOGITS = [[2.0, 0.5, -1.0, 0.0], [0.1, 3.0, 1.0, -2.0], [1.0, 1.0, 1.0, 1.0]]
POS = [[True, False, True, False], [False, True, False, False], [False, False, False, False]]  # row 2: none


@pytest.mark.parametrize("form", ["mean", "lse"])
def test_multi_positive_infonce_equals_brute_force(form):
    got = multi_positive_infonce(torch.tensor(LOGITS), torch.tensor(POS), form)
    assert got.item() == pytest.approx(_brute(LOGITS, POS, form), rel=1e-6)
    cols = [list(c) for c in zip(*LOGITS, strict=True)]
    pos_cols = [list(c) for c in zip(*POS, strict=True)]
    sym = symmetric_multi_positive_infonce(torch.tensor(LOGITS), torch.tensor(POS), form)
    assert sym.item() == pytest.approx(0.5 * (_brute(LOGITS, POS, form) + _brute(cols, pos_cols, form)), rel=1e-6)


def test_one_positive_is_infonce_and_the_forms_differ_with_two():
    z, one = torch.tensor(LOGITS[:2]), torch.tensor([[True, False, False, False], [False, True, False, False]])
    ce = torch.nn.functional.cross_entropy(z, torch.tensor([0, 1]))
    assert multi_positive_infonce(z, one, "mean").item() == pytest.approx(ce.item(), rel=1e-6)
    assert multi_positive_infonce(z, one, "lse").item() == pytest.approx(ce.item(), rel=1e-6)
    two = torch.tensor(POS[:1])
    assert multi_positive_infonce(z[:1], two, "lse") < multi_positive_infonce(z[:1], two, "mean")
    with pytest.raises(ValueError, match="mean"):
        multi_positive_infonce(z, one, "max")


def _obj(size, color, material, shape, x):
    return {"size": size, "color": color, "material": material, "shape": shape, "3d_coords": [x, 0.0, 0.5],
            "pixel_coords": [int(112 + 20 * x), 100, 10.0]}


GREEN_SPHERE = ("large", "green", "metal", "sphere")
RED_CUBE = ("small", "red", "rubber", "cube")
SCENES = [  # image 0 and 2 hold a large green metal sphere; image 1 does not
    {"objects": [_obj(*GREEN_SPHERE, -2), _obj(*RED_CUBE, 2)], "width": 224},
    {"objects": [_obj(*RED_CUBE, -2), _obj("large", "green", "rubber", "sphere", 0), _obj(*RED_CUBE, 2)],
     "width": 224},
    {"objects": [_obj(*GREEN_SPHERE, 1)], "width": 224},
]
FACTS = [
    {"type": "object", "object": dict(zip(("size", "color", "material", "shape"), GREEN_SPHERE, strict=True))},
    {"type": "count", "n": 3},
    {"type": "absent", "attribute": "color", "value": "green"},  # true of no image, not even its own
    {"type": "relation", "subject": dict(zip(("size", "color", "material", "shape"), RED_CUBE, strict=True)),
     "relation": "right", "object": dict(zip(("size", "color", "material", "shape"), GREEN_SPHERE, strict=True)),
     "margin": 0.6},
]
CAPTIONS = ["A large green metal sphere.", "There are three objects.", "There is nothing green.",
            "A small red rubber cube right of a large green metal sphere."]
OWNER = [2, 1, 0, 0]  # image id each caption was written for


def _features(scenes=True, dim=6, n_regions=3) -> tuple[ImageFeatures, TextFeatures]:
    g = torch.Generator().manual_seed(0)
    n = len(SCENES)
    mask = torch.tensor([[len(s["objects"]) > j for j in range(n_regions)] for s in SCENES])
    images = ImageFeatures(torch.arange(n), torch.randn(n, 5, generator=g), torch.randn(n, n_regions, 4, generator=g),
                           torch.rand(n, n_regions, 4, generator=g), mask, [[] for _ in range(n)], ["train"] * n,
                           SCENES if scenes else None)
    texts = TextFeatures(torch.randn(len(CAPTIONS), dim, generator=g), torch.tensor(OWNER),
                         torch.tensor([1, 0, 0, 2]), CAPTIONS, FACTS if scenes else None)
    return images, texts


def test_exact_positives_are_every_image_the_caption_is_true_of():
    images, texts = _features()
    rel = Relevance(texts, images, "exact")
    assert rel.rule == "exact"
    want = torch.tensor([[True, False, True],  # the sphere: images 0 and 2 (image 1's sphere is rubber)
                         [False, True, False],  # three objects: image 1 only
                         [True, False, False],  # false everywhere, positive of its own image still
                         [True, False, False]])  # the cube right of the sphere: image 0 (its own)
    assert torch.equal(rel.matrix(), want)
    assert torch.equal(rel.matrix(), exact_relevance(texts, images))
    block = rel.block(torch.tensor([3, 0]), torch.tensor([2, 0]))  # any sub-batch, in the batch's order
    assert torch.equal(block, want[[3, 0]][:, [2, 0]])


def test_positives_fall_back_to_own_image_and_identical_strings():
    images, texts = _features(scenes=False)
    texts.captions = ["a sphere.", "three objects.", "a sphere.", "a cube."]  # caption 0 and 2: same string
    rel = Relevance(texts, images, "exact")
    assert rel.rule == "paired"
    want = torch.tensor([[True, False, True], [False, True, False], [True, False, True], [True, False, False]])
    assert torch.equal(rel.matrix(), want)
    with pytest.raises(ValueError, match="paired"):
        Relevance(texts, images, "fuzzy")


@pytest.mark.parametrize("scenes", [True, False])
def test_train_heads_tiny_run(scenes):
    images, texts = _features(scenes)
    cfg = AlignConfig(coarse_dim=5, region_dim=4, text_dim=6, dim=8, hidden=8)
    heads, info = train_heads(images, texts, images, texts, cfg, AlignTrainConfig(epochs=2, batch_size=2))
    assert info["positives"] == ("exact" if scenes else "paired")
    assert len(info["history"]) == 2 and 0 <= info["best_epoch"] < 2
    assert all(math.isfinite(h["loss"]) for h in info["history"])
    res = evaluate_by_granularity(heads, images, texts)
    assert set(res) == {"all", "scene", "object", "relation"} and res["all"]["n"] == 4
    assert ("exact_fine_MRR" in res["all"]) == scenes
    assert ("val_exact_fine_MRR" in info["history"][0]) == scenes  # no exact protocol without scene graphs
    assert 0.0 <= res["object"]["coarse"] <= 1.0


def test_fine_tuning_starts_from_the_given_heads_and_keeps_them_when_val_only_drops(tmp_path):
    images, texts = _features()
    cfg = AlignConfig(coarse_dim=5, region_dim=4, text_dim=6, dim=8, hidden=8)
    start, _ = train_heads(images, texts, images, texts, cfg, AlignTrainConfig(epochs=3, batch_size=2))
    before = {k: v.clone() for k, v in start.state_dict().items()}
    # lr 0: no epoch can beat the start on val, so fine-tuning returns the starting heads
    tuned, info = train_heads(images, texts, images, texts, cfg, AlignTrainConfig(epochs=2, batch_size=2, lr=0.0),
                              init=start)
    assert info["best_epoch"] == -1
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())  # the input is not changed
    other = AlignConfig(coarse_dim=5, region_dim=4, text_dim=7, dim=8, hidden=8)
    with pytest.raises(ConfigError, match="initial heads"):
        train_heads(images, texts, images, texts, other, AlignTrainConfig(epochs=1), init=start)


def test_train_config_rejects_unknown_rule():
    with pytest.raises(ConfigError, match="positive_loss"):
        AlignTrainConfig(positive_loss="max")


def test_region_context_ignores_padding_and_keeps_empty_images_finite():
    from dsanchor.align.heads import AlignmentHeads

    torch.manual_seed(0)
    heads = AlignmentHeads(AlignConfig(coarse_dim=5, region_dim=4, text_dim=6, dim=8, hidden=8, region_context=1,
                                       context_heads=2)).eval()
    images, _ = _features()
    mask = images.mask.clone()
    mask[1] = False  # an image without regions
    j = heads.encode_images(images.coarse, images.regions, images.boxes, mask)
    assert torch.isfinite(j.regions).all() and (j.regions[~mask] == 0).all()
    assert torch.allclose(j.regions[mask].norm(dim=-1), torch.ones(int(mask.sum())))
    noisy = images.regions.clone()
    noisy[~mask] = 100.0  # what the padding holds must not matter
    j2 = heads.encode_images(images.coarse, noisy, images.boxes, mask)
    assert torch.allclose(j.regions, j2.regions, atol=1e-6)


def test_train_heads_with_hard_negatives():
    images, texts = _features()
    cfg = AlignConfig(coarse_dim=5, region_dim=4, text_dim=6, dim=8, hidden=8)
    _, info = train_heads(images, texts, images, texts, cfg, AlignTrainConfig(epochs=1, batch_size=1,
                                                                               hard_negatives=1))
    assert math.isfinite(info["history"][0]["loss"])


def test_run_refuses_missing_init_heads_before_any_stage(tmp_path):
    from dsanchor.run import RunConfig, run_pipeline

    config = RunConfig(seeds=2, init_heads=str(tmp_path / "seed{seed}"))
    with pytest.raises(ConfigError, match="init-heads.*seed0 is not a folder"):
        run_pipeline(tmp_path / "data", "synth", tmp_path / "out", config)
    (tmp_path / "seed0").mkdir()
    with pytest.raises(ConfigError, match="seed1 is not a folder"):
        run_pipeline(tmp_path / "data", "synth", tmp_path / "out", config)
    assert not (tmp_path / "out" / "features").exists()
