"""Captioning: vocabulary, V_fine / V_coarse tokens, decoder, decoding, the controller's reward and training."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from dsanchor.captioning import (
    CaptionDecoder,
    CaptionGateConfig,
    CaptionRewardModel,
    CaptionRLConfig,
    CaptionSplit,
    CaptionTrainConfig,
    DecodeConfig,
    DecoderConfig,
    GridOutcomes,
    ScenePositions,
    VocabConfig,
    Vocabulary,
    beam_search,
    build_token_pair,
    caption_examples,
    caption_kinds,
    caption_loss,
    caption_state_dim,
    caption_states,
    cider_per_image,
    generate_caption_sets,
    generate_captions,
    granularity_mix,
    greedy_decode,
    load_captioner,
    oracle_g,
    ptb_tokenize,
    select_fixed_g,
    text_granularity,
    train_caption_gate,
    train_caption_ppo,
    train_decoder,
)
from dsanchor.captioning.evaluate import caption_metrics, captions_for, cider_of_sets
from dsanchor.captioning.train import CaptionBatch
from dsanchor.controller import ControllerConfig, GranularityController
from dsanchor.errors import ConfigError, DataError

D, R = 8, 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run many tiny ops; one thread avoids thread hand-offs on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

CAPTIONS = ["A large red metal cube.", "There are two objects in the scene.", "The small blue ball is left of it."]
CODES = [1, 0, 2]  # their granularities: object, scene, relation
GRANS = ("scene", "object", "relation")


def _split(n: int = 4, seed: int = 0, captions: list[list[str]] | None = None,
           codes: list[list[int]] | None = None) -> CaptionSplit:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, R, dtype=torch.bool)
    mask[0, 2] = False
    regions = torch.nn.functional.normalize(torch.randn(n, R, D, generator=g), dim=-1) * mask.unsqueeze(-1)
    refs = captions or [[CAPTIONS[i % 3], CAPTIONS[(i + 1) % 3]] for i in range(n)]
    if captions is None:
        codes = [[CODES[i % 3], CODES[(i + 1) % 3]] for i in range(n)]
    return CaptionSplit(torch.arange(n) + 10, torch.nn.functional.normalize(torch.randn(n, D, generator=g), dim=-1),
                        regions, torch.rand(n, R, 4, generator=g) * 0.5, mask, refs, [["red cube"]] * n, codes)


def _vocab(split: CaptionSplit) -> Vocabulary:
    return Vocabulary.build([c for refs in split.references for c in refs], VocabConfig(max_len=12))


def _decoder(vocab: Vocabulary, width: int = 16, dropout: float = 0.0, seed: int = 0,
             granularities: tuple[str, ...] = ()) -> CaptionDecoder:
    torch.manual_seed(seed)
    return CaptionDecoder(DecoderConfig(vocab_size=len(vocab), visual_dim=D, width=width, layers=2, heads=2,
                                        dropout=dropout, max_len=vocab.max_len + 2, granularities=granularities))


# --- vocabulary ---------------------------------------------------------------------------------

def test_ptb_tokens_match_the_metrics_tokenizer():
    from dsanchor.metrics.tokenize import caption_tokens

    texts = CAPTIONS + ["The scene is empty; there are no objects in the image.", "Don't the cat's toys (3.5)!"]
    ours = [" ".join(ptb_tokenize(t)) for t in texts[:-1]]
    assert ours == caption_tokens(texts[:-1], tokenizer="python")
    assert ptb_tokenize(texts[-1]) == ["do", "n't", "the", "cat", "'s", "toys", "3.5"]


def test_vocabulary_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, VocabConfig(max_len=5))
    ids = vocab.encode("A large red metal cube.")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 7
    assert vocab.decode(ids) == "a large red metal cube"
    assert vocab.decode(vocab.encode("a purple cube")) == "a <unk> cube"
    assert vocab.decode(vocab.encode("there are two objects in the scene")) == "there are two objects in"  # cut at 5
    assert vocab.itos[4] == "the"  # most frequent word first
    path = vocab.save(tmp_path)
    again = Vocabulary.load(path)
    assert again.itos == vocab.itos and again.max_len == 5
    with pytest.raises(DataError):
        Vocabulary.load(tmp_path / "missing")


# --- tokens -------------------------------------------------------------------------------------

def test_token_pair_shapes_and_extremes():
    split = _split()
    pos = ScenePositions(D)
    pair = build_token_pair(split.coarse, split.regions, split.boxes, split.mask, pos)
    assert pair.fine.shape == pair.coarse.shape == (4, R, D)
    assert torch.equal(pair.mix(1.0), pair.fine) and torch.equal(pair.mix(0.0), pair.coarse)
    assert torch.equal(pair.fine, split.regions)
    with torch.no_grad():
        expect = split.coarse[1].unsqueeze(0) + pos(split.boxes[1:2])[0]  # scene vector at each region's box
    assert torch.allclose(pair.coarse[1], expect)
    assert pair.coarse[0, 2].abs().sum() == 0 and not pair.mask[0, 2]  # masked slot is zero in both
    g = torch.tensor([0.0, 1.0, 0.25, 0.5])
    mixed = pair.mix(g)
    assert torch.allclose(mixed[2], 0.25 * pair.fine[2] + 0.75 * pair.coarse[2])


def test_image_without_regions_keeps_one_slot():
    split = _split()
    mask = split.mask.clone()
    mask[1] = False
    pair = build_token_pair(split.coarse, split.regions * mask.unsqueeze(-1), split.boxes, mask, ScenePositions(D))
    assert pair.mask[1].tolist() == [True, False, False]
    assert pair.fine[1].abs().sum() == 0 and torch.allclose(pair.coarse[1, 0], split.coarse[1])


# --- decoder ------------------------------------------------------------------------------------

def test_decoder_shapes_and_cache_equals_teacher_forcing():
    split = _split()
    vocab = _vocab(split)
    dec = _decoder(vocab).eval()
    pair = dec.token_pair(split)
    batch = caption_examples(split, vocab)
    v, mask = pair.mix(0.3), pair.mask
    inputs = batch.ids[:4, :6]
    logits = dec(v, mask, inputs)
    assert logits.shape == (4, 6, len(vocab)) and torch.isfinite(logits).all()
    mem, cache, steps = dec.encode(v), None, []
    for t in range(6):
        step, cache = dec.step(inputs[:, t:t + 1], mem, mask, cache)
        steps.append(step)
    assert torch.allclose(torch.stack(steps, 1), logits, atol=1e-5)


def test_save_load_gives_identical_outputs(tmp_path):
    split = _split()
    vocab = _vocab(split)
    dec = _decoder(vocab, granularities=GRANS).eval()
    dec.save_pretrained(tmp_path, vocab)
    again, vocab2 = load_captioner(tmp_path)
    assert vocab2.itos == vocab.itos and again.config == dec.config and again.config.granularities == GRANS
    pair, pair2 = dec.token_pair(split), again.token_pair(split)
    batch = caption_examples(split, vocab).index(torch.arange(4))
    assert torch.equal(caption_loss(dec, split, batch, torch.full((4,), 0.5), "none"),
                       caption_loss(again, split, batch, torch.full((4,), 0.5), "none"))
    ids = batch.ids
    assert torch.equal(dec(pair.mix(0.5), pair.mask, ids), again(pair2.mix(0.5), pair2.mask, ids))
    with pytest.raises(DataError):
        load_captioner(tmp_path / "nothing")
    cfg = json.loads((tmp_path / "decoder_config.json").read_text())
    (tmp_path / "decoder_config.json").write_text(json.dumps({**cfg, "granularities": []}))
    with pytest.raises(DataError, match="does not fit"):  # weights with start tokens, config without
        load_captioner(tmp_path)


def test_start_ids_per_granularity():
    vocab = _vocab(_split())
    dec = _decoder(vocab, granularities=("object", "scene"))
    v = len(vocab)
    assert dec.tok_emb.num_embeddings == v + 2 and dec.head.out_features == v
    assert dec.start_ids(torch.tensor([-1, 0, 1, 2])).tolist() == [1, v + 1, v, 1]  # relation: no token -> <bos>
    assert _decoder(vocab).start_ids(torch.tensor([0, -1])).tolist() == [1, 1]
    with pytest.raises(ConfigError, match="unknown caption granularity"):
        _decoder(vocab, granularities=("colour",))
    with pytest.raises(ConfigError, match="no start token"):
        generate_captions(dec, vocab, dec.token_pair(_split()), 0.5, granularity="relation")


def test_caption_examples_carry_granularity_and_the_loss_starts_with_its_token():
    split = _split(3)
    vocab = _vocab(split)
    batch = caption_examples(split, vocab)
    assert batch.granularity.tolist() == [1, 0, 0, 2, 2, 1] and (batch.ids[:, 0] == 1).all()
    dec = _decoder(vocab, granularities=GRANS).eval()
    g = torch.full((len(batch),), 0.5)
    as_scene = CaptionBatch(batch.rows, batch.ids, torch.zeros_like(batch.granularity))
    assert not torch.allclose(caption_loss(dec, split, batch, g, "none"), caption_loss(dec, split, as_scene, g, "none"))
    unknown = CaptionBatch(batch.rows, batch.ids, torch.full_like(batch.granularity, -1))
    plain = _decoder(vocab).eval()  # given dec's weights without the start-token rows
    plain.load_state_dict({k: (v[:len(vocab)] if k == "tok_emb.weight" else v) for k, v in dec.state_dict().items()})
    assert torch.allclose(caption_loss(dec, split, unknown, g, "none"), caption_loss(plain, split, batch, g, "none"))


def test_beam_of_one_equals_greedy():
    split = _split(6)
    vocab = _vocab(split)
    dec = _decoder(vocab, seed=3).eval()
    pair = dec.token_pair(split)
    v = pair.mix(torch.linspace(0, 1, 6))
    greedy, beam1 = greedy_decode(dec, v, pair.mask), beam_search(dec, v, pair.mask, beam=1)
    assert [vocab.decode(r) for r in greedy] == [vocab.decode(r) for r in beam1]
    beam3 = beam_search(dec, v, pair.mask, beam=3)
    assert beam3.shape[0] == 6 and not (beam3 == 1).any()  # never <bos>


def _overfit(split: CaptionSplit, vocab: Vocabulary, steps: int = 60) -> CaptionDecoder:
    dec = _decoder(vocab, width=32)
    batch = caption_examples(split, vocab)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = caption_loss(dec, split, batch, torch.rand(len(batch), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval()


def test_overfits_two_images_at_every_g():
    split = _split(2, captions=[["A large red metal cube."], ["There are two objects in the scene."]])
    vocab = _vocab(split)
    dec = _overfit(split, vocab)
    pair = dec.token_pair(split)
    for g in (0.0, 0.5, 1.0):
        for beam in (1, 2):
            caps = generate_captions(dec, vocab, pair, g, DecodeConfig(beam=beam))
            assert caps == ["a large red metal cube", "there are two objects in the scene"]


def test_overfit_decoder_captions_each_image_at_every_granularity():
    caps = [["A large red metal cube.", "There are two objects in the scene.", "The small blue ball is left of it."],
            ["A small blue rubber ball.", "There are five objects in the image.", "The large red cube is behind it."]]
    split = _split(2, captions=caps, codes=[CODES, CODES])
    vocab = _vocab(split)
    dec = _decoder(vocab, width=32, granularities=GRANS)
    batch = caption_examples(split, vocab)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = caption_loss(dec, split, batch, torch.rand(len(batch), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    sets = generate_caption_sets(dec.eval(), vocab, dec.token_pair(split), 0.5)
    want = [{k: " ".join(ptb_tokenize(c[CODES.index(i)])) for i, k in enumerate(GRANS)} for c in caps]
    assert sets == want and caption_kinds(dec) == GRANS
    assert caption_kinds(_decoder(vocab)) == ("any",)


def test_train_decoder_runs_and_keeps_best(tmp_path):
    split = _split(4)
    vocab = _vocab(split)
    dec, info = train_decoder(split, _split(2, seed=1), vocab, DecoderConfig(width=16, layers=1, heads=2),
                              CaptionTrainConfig(steps=4, eval_every=2, batch_size=4, val_g=(0.0, 1.0),
                                                 early_stop="cider"))
    assert dec.config.vocab_size == len(vocab) and dec.config.max_len == vocab.max_len + 2
    assert dec.config.granularities == GRANS  # from the train captions' granularities
    only, _ = train_decoder(split, _split(2, seed=1), vocab, DecoderConfig(width=16, layers=1, heads=2,
                                                                         granularities=("object",)),
                            CaptionTrainConfig(steps=1, batch_size=4))
    assert only.config.granularities == ("object",) and only.tok_emb.num_embeddings == len(vocab) + 1
    assert [h["step"] for h in info["history"]] == [2, 4] and "val_cider" in info["history"][0]
    assert not dec.training


# --- per-image CIDEr, the reward and the g choices ------------------------------------------------

def test_cider_per_image_averages_to_corpus_cider():
    from dsanchor.metrics.captioning import cider

    refs = [[CAPTIONS[0], CAPTIONS[1]], [CAPTIONS[1], CAPTIONS[2]], [CAPTIONS[2]]]
    cands = ["a large red cube", "there are two objects", "the small blue ball"]
    per = cider_per_image(cands, refs)
    assert per.shape == (3,)
    corpus = cider(dict(enumerate(cands)), dict(enumerate(refs)), tokenizer="python")
    assert per.mean() == pytest.approx(corpus)


def test_text_granularity_and_mix():
    assert [text_granularity(c) for c in CAPTIONS] == ["object", "scene", "relation"]
    assert text_granularity("The scene contains only cubes.") == "scene"  # names a shape, but talks of the scene
    assert text_granularity("a small green rubber cylinder left of a large green cylinder") == "relation"
    assert text_granularity("it is left of it") == "relation"  # a relation phrase
    assert text_granularity("a large shiny thing") == "other"
    assert granularity_mix(["scene", "object", "object", "other"]) == {
        "scene": 0.25, "object": 0.5, "relation": 0.0, "other": 0.25}
    assert granularity_mix([], ("scene",)) == {"scene": 0.0}


def test_cider_of_sets_scores_every_caption_against_all_references():
    refs = [[CAPTIONS[0], CAPTIONS[1]], [CAPTIONS[1], CAPTIONS[2]], [CAPTIONS[2]]]
    sets = [{"scene": "there are two objects", "object": "a large red cube"}, {"scene": "the small blue ball"},
            {"scene": "a cube", "object": "the small blue ball is left"}]
    flat = [c for s in sets for c in s.values()]
    per = cider_per_image(flat, [refs[0], refs[0], refs[1], refs[2], refs[2]])
    assert cider_of_sets(sets, refs) == pytest.approx([per[:2].mean(), per[2], per[3:].mean()])
    one = [{"any": c} for c in ("a large red cube", "there are two objects", "the small blue ball")]
    assert cider_of_sets(one, refs) == pytest.approx(cider_per_image([s["any"] for s in one], refs))


def test_caption_metrics_mix_and_chair_by_granularity_on_hand_made_captions():
    from dsanchor.metrics.captioning import caption_metrics as scores

    refs = [["A large red metal cube.", "There are two objects in the scene."],
            ["The small blue ball is left of it.", "There are three objects in the image."]]
    split = _split(2, captions=refs, codes=[[1, 0], [2, -1]])  # unknown: read off the text (a scene caption)
    split.objects = [["red cube", "blue sphere"], ["green cylinder"]]
    sets = [{"scene": "there are two objects in the scene",  # no mention
             "object": "a large red metal cube",  # 1 mention, present
             "relation": "the small blue ball is left of the large yellow cube"},  # 2 mentions, yellow cube absent
            {"scene": "a large green metal cylinder",  # asked for a scene caption, reads as an object caption
             "object": "a large red metal cube",  # absent
             "relation": "a small green rubber cylinder left of a large green cylinder"}]  # 2 mentions, present
    m = caption_metrics(sets, split, "synth", tokenizer="python")
    assert m["CHAIR_i"] == pytest.approx(2 / 7) and m["CHAIR_s"] == pytest.approx(2 / 6)  # not equal
    assert m["caption_mix"] == {"references": {"scene": 0.5, "object": 0.25, "relation": 0.25, "other": 0.0},
                                "generated": {"scene": 1 / 6, "object": 3 / 6, "relation": 2 / 6, "other": 0.0}}
    by = m["caption_by_granularity"]
    assert list(by) == ["scene", "object", "relation"] and all(r["n"] == 2 for r in by.values())
    assert [(by[k]["CHAIR_i"], by[k]["CHAIR_s"], by[k]["on_target"]) for k in by] == [
        (0.0, 0.0, 0.5), (0.5, 0.5, 1.0), (0.25, 0.5, 1.0)]
    flat = {f"{10 + n}/{k}": c for n, s in enumerate(sets) for k, c in s.items()}
    want = scores(flat, {key: refs[int(key.split("/")[0]) - 10] for key in flat}, tokenizer="python")
    assert m["BLEU-4"] == pytest.approx(want.bleu4) and m["CIDEr"] == pytest.approx(want.cider)
    per = cider_per_image(list(flat.values()), [refs[0]] * 3 + [refs[1]] * 3)
    assert by["object"]["CIDEr"] == pytest.approx((per[1] + per[4]) / 2)


def test_coco_chair_judges_annotated_images_against_instances_and_reference_mentions():
    from dsanchor.metrics.chair import chair_ground_truth

    refs = [["A dog sleeps on a couch."], ["A man rides a horse."], ["A cat on a bed."]]
    split = _split(3, captions=refs, codes=[[-1], [-1], [-1]])
    split.objects = [["dog"], ["person"], []]  # the third image has captions but no instance annotations
    truth = chair_ground_truth(split.objects, split.references, "coco")
    assert truth == [["dog", "dog", "couch"], ["person", "person", "horse"], None]
    sets = [{"any": "a dog on a couch with a cat"},  # couch: from the reference; cat: hallucinated
            {"any": "a man riding a horse"},
            {"any": "a giraffe"}]  # not judged: no instances
    m = caption_metrics(sets, split, "coco", tokenizer="python")
    assert m["CHAIR_images"] == 2
    assert m["CHAIR_i"] == pytest.approx(1 / 5) and m["CHAIR_s"] == pytest.approx(1 / 2)
    assert m["caption_by_granularity"]["any"]["CHAIR_s"] == pytest.approx(1 / 2)
    split.objects = [[], [], []]
    none = caption_metrics(sets, split, "coco", tokenizer="python")
    # no image can be judged: CHAIR is absent (a number would claim a measurement)
    assert none["CHAIR_images"] == 0 and not {"CHAIR_i", "CHAIR_s"} & set(none) and np.isfinite(none["CIDEr"])


def _grid() -> GridOutcomes:
    # 3 images x g in {0, 0.5, 1}
    cider = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.2, 0.9], [0.3, 0.3, 0.3]])
    hall = torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.5, 0.0], [0.4, 0.0, 0.2]])
    caps = [[{"scene": f"c{n} at {g}"} for n in range(3)] for g in (0, 0.5, 1)]
    return GridOutcomes(torch.tensor([0.0, 0.5, 1.0]), caps, cider, hall)


def test_reward_model_reads_the_nearest_grid_point():
    rm = CaptionRewardModel(_grid())
    assert rm(0, 0.0) == (1.0, -0.0)
    assert rm(0, 0.2) == (1.0, -0.0)  # nearest is 0
    assert rm(1, 0.3) == (pytest.approx(0.2), -0.5)  # nearest is 0.5
    assert rm(1, 0.75) == (pytest.approx(0.2), -0.5)  # tie between 0.5 and 1 -> lower g
    assert rm(1, 0.8) == (pytest.approx(0.9), -0.0)


def test_fixed_best_and_oracle_on_a_hand_made_grid(tmp_path):
    grid = _grid()
    g, curve = select_fixed_g(grid)
    assert g == 0.0 and [round(r["CIDEr"], 4) for r in curve] == [0.4333, 0.3333, 0.4]
    # image 2 ties on CIDEr everywhere -> lowest hallucination (g = 0.5)
    assert oracle_g(grid).tolist() == [0.0, 1.0, 0.5]
    again = GridOutcomes.load(grid.save(tmp_path / "g.json"))
    assert torch.equal(again.cider, grid.cider) and again.captions == grid.captions


def test_captions_for_reuses_grid_captions():
    split = _split(3)
    vocab = _vocab(split)
    dec = _decoder(vocab)
    caps = captions_for(dec, vocab, split, torch.tensor([0.0, 1.0, 0.5]), DecodeConfig(), _grid())
    assert caps == [{"scene": "c0 at 0"}, {"scene": "c1 at 1"}, {"scene": "c2 at 0.5"}]


def test_caption_states_hand_case():
    split = _split(2)
    states = caption_states(split)
    assert states.shape == (2, caption_state_dim(D))
    assert torch.equal(states[:, :D], split.coarse)
    assert states[0, 2 * D].item() == 2 and states[1, 2 * D].item() == 3  # valid regions
    r = split.regions[0, :2]
    assert states[0, 2 * D + 1].item() == pytest.approx(float(r[0] @ r[1]), abs=1e-6)  # mean pairwise cosine


def test_tiny_ppo_exports_a_controller(tmp_path):
    from dsanchor.rl.ppo import PPOConfig

    n = 16
    states = torch.randn(n, 5)
    # image n prefers g = 1 when its first state feature is positive, else g = 0
    good = (states[:, 0] > 0).long() * 2  # grid index 0 or 2
    cider = torch.zeros(n, 3)
    cider[torch.arange(n), good] = 1.0
    grid = GridOutcomes(torch.tensor([0.0, 0.5, 1.0]), [[""] * n] * 3, cider, torch.zeros(n, 3))
    ppo = PPOConfig(timesteps=256, n_envs=2, n_steps=64, batch_size=64, n_epochs=2, hidden=8, layers=1,
                    checkpoint_every=10_000)
    ctrl, info = train_caption_ppo(states, grid, CaptionRLConfig(grid=3), ppo, tmp_path)
    assert info["timesteps"] >= 256
    loaded = GranularityController.from_pretrained(tmp_path / "controller")
    g = loaded(states)
    assert g.shape == (n,) and ((g >= 0) & (g <= 1)).all() and torch.allclose(g, ctrl(states))


def test_gradient_gate_trains_only_the_controller():
    split = _split(4)
    vocab = _vocab(split)
    dec = _decoder(vocab)
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    states = caption_states(split)
    cfg = ControllerConfig(state_dim=states.shape[1], hidden=8, layers=1)
    ctrl, info = train_caption_gate(dec, vocab, split, states, cfg, CaptionGateConfig(steps=5, batch_size=4))
    assert all(torch.equal(before[k], v) for k, v in dec.state_dict().items())
    assert all(p.requires_grad for p in dec.parameters())
    g = ctrl(states)
    assert g.shape == (4,) and ((g >= 0) & (g <= 1)).all() and np.isfinite(info["final_loss"])


# --- end to end ---------------------------------------------------------------------------------

def test_fit_and_evaluate_every_method(tmp_path):
    from dsanchor.captioning import evaluate_captioning, fit_caption_methods
    from dsanchor.rl.ppo import PPOConfig

    val, test = _split(6, seed=1), _split(5, seed=2)
    vocab = _vocab(val)
    dec = _overfit(val, vocab, steps=30)
    methods = fit_caption_methods(
        dec, vocab, val, test, CaptionRLConfig(grid=3),
        PPOConfig(timesteps=128, n_envs=2, n_steps=64, batch_size=64, n_epochs=1, hidden=8, layers=1),
        CaptionGateConfig(steps=3), DecodeConfig(beam=2), tmp_path, hallucination=lambda caps: np.full(len(caps), 0.5))
    assert set(methods.g) == {"coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "oracle"}
    assert float(methods.val_grid.hallucination.mean()) == 0.5
    assert (tmp_path / "ppo" / "controller").is_dir() and (tmp_path / "gate" / "controller").is_dir()
    res = evaluate_captioning(dec, vocab, test, methods.g, DecodeConfig(beam=2), methods.test_grid, tokenizer="python")
    for row in res.values():
        assert set(row) == {"BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s", "CHAIR_images", "mean_g", "caption_mix",
                            "caption_by_granularity"}
        assert row["CHAIR_images"] == len(test)
        assert all(np.isfinite(v) for k, v in row.items() if not k.startswith("caption_"))
        assert row["caption_mix"]["references"] == {"scene": 0.4, "object": 0.3, "relation": 0.3, "other": 0.0}
        assert set(row["caption_by_granularity"]) == {"any"} and row["caption_by_granularity"]["any"]["n"] == 5
    assert res["fine"]["mean_g"] == 1.0 and res["coarse"]["mean_g"] == 0.0


def _write_store(path, n_per_split: dict[str, int]) -> None:
    from dsanchor.features.store import FORMAT_VERSION, ShardData, StoreWriter

    g = torch.Generator().manual_seed(0)
    splits = [s for s, k in n_per_split.items() for _ in range(k)]
    n = len(splits)
    ids = torch.arange(n)
    caps = [CAPTIONS[i % 3] for i in range(n) for _ in range(2)]
    plan = {"format_version": FORMAT_VERSION, "fingerprint": "t", "regions": {"max_regions": R},
            "encoder": {"name": "toy", "config": {}, "dims": {"coarse": 5, "region": 4, "text": 6}}}
    w = StoreWriter(path, plan)
    w.prepare()
    w.write_shard(0, ShardData(
        image_ids=ids, coarse=torch.randn(n, 5, generator=g), regions=torch.randn(n, R, 4, generator=g),
        boxes=torch.rand(n, R, 4, generator=g) * 0.5, mask=torch.ones(n, R, dtype=torch.bool),
        text_embeddings=torch.randn(2 * n, 6, generator=g), text_image_ids=ids.repeat_interleave(2),
        text_granularity=torch.zeros(2 * n, dtype=torch.long), image_paths=[f"{i}.png" for i in range(n)],
        splits=splits, objects=[["red cube"]] * n, captions=caps))
    w.finish(1)


def _cli(argv: list[str]) -> int:
    from dsanchor.commands import caption

    parser = argparse.ArgumentParser()
    caption.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train_and_generate(tmp_path):
    from dsanchor.align.heads import AlignConfig, AlignmentHeads

    _write_store(tmp_path / "feats", {"train": 6, "val": 3, "test": 3})
    torch.manual_seed(0)
    AlignmentHeads(AlignConfig(coarse_dim=5, region_dim=4, text_dim=6, dim=D, hidden=8)).save_pretrained(
        tmp_path / "heads")
    common = ["--features", str(tmp_path / "feats"), "--heads", str(tmp_path / "heads")]
    assert _cli(["caption", "train", *common, "--out", str(tmp_path / "dec"), "--decoder-width", "16",
                 "--decoder-layers", "1", "--decoder-heads", "2", "--steps", "2", "--early-stop", "loss"]) == 0
    assert (tmp_path / "dec" / "vocab.json").is_file() and (tmp_path / "dec" / "config.yaml").is_file()
    out = tmp_path / "caps.jsonl"
    assert _cli(["caption", "generate", *common, "--decoder", str(tmp_path / "dec"), "--g", "0.5", "--beam", "2",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [9, 10, 11] and all(isinstance(r["caption"], dict) for r in rows)
    assert _cli(["caption", "generate", *common, "--decoder", str(tmp_path / "dec"), "--g", "0.5",
                 "--granularity", "any", "--out", str(out)]) == 0
    assert all(isinstance(json.loads(line)["caption"], str) for line in out.read_text().splitlines())
    ctrl = GranularityController(ControllerConfig(state_dim=caption_state_dim(D), hidden=4, layers=1))
    ctrl.save_pretrained(tmp_path / "ctrl")
    assert _cli(["caption", "generate", *common, "--decoder", str(tmp_path / "dec"), "--controller",
                 str(tmp_path / "ctrl"), "--split", "val", "--out", str(out)]) == 0
    tiny = ["--grid", "3", "--ppo-timesteps", "128", "--ppo-n-envs", "2", "--ppo-n-steps", "64", "--ppo-batch-size",
            "64", "--ppo-n-epochs", "1", "--ppo-hidden", "8", "--ppo-layers", "1", "--gate-steps", "3"]
    assert _cli(["caption", "eval", *common, "--decoder", str(tmp_path / "dec"), "--out", str(tmp_path / "ev"),
                 "--vocabulary", "synth", *tiny]) == 0  # dsanchor.stages.caption_eval_stage, as `dsanchor run` runs it
    metrics = json.loads((tmp_path / "ev" / "caption_metrics.json").read_text())
    assert set(metrics["methods"]) == {"coarse", "fine", "fixed_best", "gate_grad", "dsa_ppo", "oracle"}
    assert metrics["n_images"] == 3 and metrics["vocabulary"] == "synth" and "fixed_best_g" in metrics["info"]
    rows = [json.loads(line) for line in (tmp_path / "ev" / "captions" / "dsa_ppo.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in rows] == [9, 10, 11] and all(0.0 <= r["g"] <= 1.0 for r in rows)


def test_detector_hallucination_estimate():
    from dsanchor.captioning import DetectorHallucination
    from dsanchor.hallucination import ObjectVocabulary

    class FakeDetector:
        def presence_matrix(self, images, phrases):
            return torch.tensor([[0.9, 0.2], [0.1, 0.8]])  # image 0 has a red cube, image 1 a blue sphere

    objects = ObjectVocabulary(["red cube", "blue sphere"], torch.zeros(2, 3))
    est = DetectorHallucination(FakeDetector(), None, objects, "synth")
    out = est(["A large red metal cube.", "A red cube left of a blue ball."])
    assert out[0] == pytest.approx(0.1) and out[1] == pytest.approx((0.9 + 0.2) / 2)
    assert est(["There are two objects in the scene.", "x"]).tolist() == [0.0, 0.0]  # names no object


def test_demo_report_prints_the_caption_mix_table():
    from dsanchor.report.demo_report import _caption_granularity_lines

    row = {"caption_mix": {"references": {"scene": 0.4, "object": 0.4, "relation": 0.2, "other": 0.0},
                           "generated": {"scene": 0.3, "object": 0.4, "relation": 0.3, "other": 0.0}},
           "caption_by_granularity": {"scene": {"n": 2, "CHAIR_i": 0.0, "CHAIR_s": 0.0, "on_target": 0.9},
                                      "object": {"n": 2, "CHAIR_i": 0.5, "CHAIR_s": 0.25, "on_target": 1.0}}}
    lines = _caption_granularity_lines({"methods": {"fine": {"t2i": {}}, "dsa_ppo": row}})
    assert "| references | 0.40 / 0.40 / 0.20 / 0.00 | – | – |" in lines
    assert "| dsa_ppo | 0.30 / 0.40 / 0.30 / 0.00 | 0.00 / 0.00 / 0.90 | 0.50 / 0.25 / 1.00 |" in lines
    assert _caption_granularity_lines({"methods": {"fine": {"t2i": {}}}}) == []
