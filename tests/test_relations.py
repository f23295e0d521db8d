"""Compositional fine scoring (dsanchor.relations): parsing free text, the box-geometry kernels, and scores on
hand-made images whose left and right are known."""

import pytest
import torch

from dsanchor.align.heads import JointFeatures
from dsanchor.relations import (
    RELATION_KINDS,
    RelationConfig,
    compose_fine,
    compositions,
    fit_relation_config,
    parse_caption,
    relation_kernels,
)
from dsanchor.retrieval import pair_terms


@pytest.mark.parametrize("text, phrases, relation", [
    ("The small red cube is to the left of the large green sphere.",
     ("the small red cube", "the large green sphere"), "left"),
    ("A red cube is left of a blue ball", ("a red cube", "a blue ball"), "left"),
    ("the gray cylinder on the left side of the cube", ("the gray cylinder", "the cube"), "left"),
    ("There is a yellow sphere to the right of a cyan block.", ("a yellow sphere", "a cyan block"), "right"),
    ("A big metal ball in front of a small rubber cube.", ("a big metal ball", "a small rubber cube"), "front"),
    ("The brown cylinder is behind the purple cube", ("the brown cylinder", "the purple cube"), "behind"),
    ("a dog sitting next to a man", ("a dog", "a man"), "near"),
    ("A cat under the table.", ("a cat", "the table"), "below"),
    ("a lamp on top of a desk", ("a lamp", "a desk"), "above"),
    ("A red cube and a blue sphere.", ("a red cube", "a blue sphere"), None),
    ("There is a red cube, a blue sphere and a green cylinder.",
     ("a red cube", "a blue sphere", "a green cylinder"), None),
    ("A man with a hat", ("a man", "a hat"), None),
])
def test_parse_finds_phrases_and_relation(text, phrases, relation):
    assert parse_caption(text) == (phrases, relation)


@pytest.mark.parametrize("text", ["A tiny gray cube sitting on the floor.", "There are no cubes.",
                                  "The right half of the image contains more objects than the left half.",
                                  "left of", "A small red rubber cube"])
def test_single_phrase_captions_keep_one_phrase(text):
    assert len(parse_caption(text).phrases) == 1


def test_kernels_follow_the_image_geometry():
    # region 0 at the left and lower (nearer the camera), region 1 at the right and higher
    boxes = torch.tensor([[[0.05, 0.6, 0.1, 0.2], [0.7, 0.2, 0.1, 0.2]]])
    k = relation_kernels(boxes, tau=0.05)[0]  # (K, R, R): "region i <kind> region j"
    kind = {name: k[i] for i, name in enumerate(RELATION_KINDS)}
    assert kind["left"][0, 1] > 0.99 and kind["left"][1, 0] < 0.01
    assert kind["right"][1, 0] > 0.99 and kind["right"][0, 1] < 0.01
    assert kind["front"][0, 1] > 0.99 and kind["behind"][1, 0] > 0.99
    assert kind["above"][1, 0] > 0.99 and kind["below"][0, 1] > 0.99


def _scene():
    """Two images with a red cube and a blue sphere: in image 0 the cube is left, in image 1 right. Region vectors
    are the phrases' own unit vectors, so each phrase attends to its object."""
    red, blue, other = torch.eye(3)
    regions = torch.stack([torch.stack([red, blue]), torch.stack([red, blue])])  # (2, 2, 3)
    boxes = torch.tensor([[[0.1, 0.4, 0.1, 0.1], [0.7, 0.4, 0.1, 0.1]],
                          [[0.7, 0.4, 0.1, 0.1], [0.1, 0.4, 0.1, 0.1]]])
    coarse = torch.nn.functional.normalize(torch.ones(2, 3), dim=-1)
    joint = JointFeatures(coarse, regions, torch.ones(2, 2, dtype=torch.bool), boxes=boxes).precompute()
    vec = {"the red cube": red, "the blue sphere": blue, "a red cube": red, "a blue sphere": blue}

    def encode(phrases):
        return torch.stack([vec.get(p, other) for p in phrases])

    return joint, encode


def test_relation_ranks_the_image_where_it_holds():
    joint, encode = _scene()
    texts = ["The red cube is left of the blue sphere.", "The red cube is to the right of the blue sphere."]
    comp = compositions(texts).embed(encode)
    whole = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), dim=-1)  # bag of words
    terms = pair_terms(whole, joint, pool_s=10.0)
    assert torch.allclose(terms.fine[:, 0], terms.fine[:, 1])  # one pool cannot tell the images apart
    fine = compose_fine(terms.fine, comp, joint, joint.boxes, 10.0, RelationConfig(mix=1.0, weight=0.5))
    assert fine[0, 0] > fine[0, 1] + 0.2  # "left": image 0
    assert fine[1, 1] > fine[1, 0] + 0.2  # "right": image 1
    # without the relation weight the per-phrase pools match both images equally
    same = compose_fine(terms.fine, comp, joint, joint.boxes, 10.0, RelationConfig(mix=1.0, weight=0.0))
    assert torch.allclose(same[:, 0], same[:, 1])
    # mix 0 is exactly today's single pool
    assert torch.equal(compose_fine(terms.fine, comp, joint, joint.boxes, 10.0, RelationConfig()), terms.fine)


def test_swapped_attributes_lose_to_the_true_binding():
    red, blue, other = torch.eye(3)
    regions = torch.stack([red, blue]).unsqueeze(0)
    joint = JointFeatures(torch.ones(1, 3) / 3 ** 0.5, regions, torch.ones(1, 2, dtype=torch.bool),
                          boxes=torch.rand(1, 2, 4)).precompute()
    vec = {"a red cube": red, "a blue sphere": blue}
    texts = ["A red cube and a blue sphere.", "A blue cube and a red sphere."]
    comp = compositions(texts).embed(lambda ps: torch.stack([vec.get(p, other) for p in ps]))
    fine = torch.zeros(2, 1)
    out = compose_fine(fine, comp, joint, joint.boxes, 10.0, RelationConfig(mix=1.0, weight=0.0))
    assert out[0, 0] > out[1, 0] + 0.5


def test_candidate_mode_equals_the_gathered_full_scores():
    torch.manual_seed(0)
    n, r, d = 6, 4, 8
    regions = torch.nn.functional.normalize(torch.randn(n, r, d), dim=-1)
    joint = JointFeatures(torch.nn.functional.normalize(torch.randn(n, d), dim=-1), regions,
                          torch.ones(n, r, dtype=torch.bool), boxes=torch.rand(n, r, 4) * 0.5).precompute()
    texts = ["a thing is left of a box", "a cup and a plate", "a single thing"]
    table = {}
    comp = compositions(texts).embed(
        lambda ps: torch.stack([table.setdefault(p, torch.nn.functional.normalize(torch.randn(d), dim=0))
                                for p in ps]))
    text = torch.nn.functional.normalize(torch.randn(3, d), dim=-1)
    terms = pair_terms(text, joint, 10.0)
    cfg = RelationConfig(mix=0.7, weight=0.3)
    full = compose_fine(terms.fine, comp, joint, joint.boxes, 10.0, cfg)
    cand = torch.tensor([[5, 0, 2], [1, 3, 4], [0, 1, 2]])
    part = compose_fine(terms.fine.gather(1, cand), comp, joint, joint.boxes, 10.0, cfg, cand=cand)
    assert torch.allclose(part, full.gather(1, cand), atol=1e-6)
    assert torch.equal(full[2], terms.fine[2])  # one phrase: unchanged


def test_fit_prefers_the_simpler_scorer_on_ties():
    cfg, grid = fit_relation_config(lambda c: 1.0)
    assert (cfg.mix, cfg.weight) == (0.0, 0.0) and len(grid) > 1
    cfg, _ = fit_relation_config(lambda c: c.mix - abs(c.weight - 0.2))
    assert (cfg.mix, cfg.weight) == (1.0, 0.2)
