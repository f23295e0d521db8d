"""DSA inside an MLLM on questions (`mllm train | eval --questions`), end to end on tiny random LLaVA, BLIP-2 and
IDEFICS models (seconds each): caption prompts per granularity in `data questions`, the grid of answers and answer
losses per (item, g), the router_loss baseline on a toy whose best g is known, family_best and the oracle, the
per-family table, and CHAIR's empty cell and negated mentions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from dsanchor.cli import main  # noqa: E402
from dsanchor.integrations.small_models import save_tiny_mllm  # noqa: E402

TYPES = ("llava", "blip2", "idefics")
TINY_PPO = ["--ppo-n-envs", "2", "--ppo-n-steps", "32", "--ppo-batch-size", "32", "--ppo-n-epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synth dataset (its own 32 / 4 / 4 split; the tests use 4 images per split), its questions file (one
    question per family and the three caption prompts per image) and a tiny model of each type."""
    from dsanchor.data import SynthConfig, generate_synth

    root = tmp_path_factory.mktemp("mllm-questions")
    generate_synth(root / "synth", SynthConfig(scenes=40, image_size=64, max_objects=3, supersample=1))
    assert main(["data", "questions", "--data", str(root / "synth"), "--format", "synth", "--out",
                 str(root / "q.json"), "--per-family", "1"]) == 0
    for t in TYPES:
        save_tiny_mllm(t, root / t)
    return root


def _args(world, model_type: str, cache) -> list[str]:
    return ["--model-type", model_type, "--model-path", str(world / model_type), "--data", str(world / "synth"),
            "--format", "synth", "--questions", str(world / "q.json"), "--cache", str(cache), "--grid", "3",
            "--max-new-tokens", "4", "--answer-tokens", "2", "--chunk-size", "16", "--batch-size", "8", "--limit",
            "4", "--threads", "1", "--quiet"]


def test_questions_file_has_caption_prompts_per_granularity(world):
    rows = json.loads((world / "q.json").read_text())["questions"]
    caps = [r for r in rows if r["question_family"].startswith("caption_")]
    assert {r["question_family"] for r in caps} == {"caption_scene", "caption_object", "caption_relation"}
    assert all("answer" not in r and r["references"] for r in caps)
    assert all("answer" in r for r in rows if r not in caps)
    assert rows.index(caps[0]) > max(k for k, r in enumerate(rows) if r not in caps)  # after every question


def _split(world, tmp_path, model_type: str, split: str = "train"):
    from dsanchor.mllm.config import GridConfig, MLLMConfig
    from dsanchor.mllm.data import load_mllm_data
    from dsanchor.mllm.items import item_split

    cfg = MLLMConfig(model_type=model_type, model_path=str(world / model_type), data=str(world / "synth"),
                     format="synth", questions=str(world / "q.json"), cache=str(tmp_path), out=str(tmp_path), limit=2)
    data = load_mllm_data(cfg)
    grid = GridConfig(grid=3, chunk_size=8, batch_size=4, max_new_tokens=4, answer_tokens=2)
    return cfg, data, item_split(cfg, data, split, grid, False)


@pytest.mark.parametrize("model_type", TYPES)
def test_grid_of_answers_and_losses_per_item(world, tmp_path, model_type):
    from dsanchor.mllm.items import answer_nll, item_prompt

    cfg, data, (cache, items, rewards) = _split(world, tmp_path, model_type)
    n = len(items)
    assert n > 2 * 8 and cache.keys == [it.key for it in items] and len(set(cache.image_ids)) == 2
    assert len(cache.captions) == n and all(len(row) == 3 for row in cache.captions)
    assert cache.losses.shape == (n, 3) and np.isfinite(cache.losses).all() and (cache.losses > 0).all()
    assert cache.states.shape[0] == n
    d = cache.layout["image_dim"]
    same = [k for k, it in enumerate(items) if it.sample.image_id == items[0].sample.image_id]
    assert torch.allclose(cache.states[same[0], :2 * d], cache.states[same[1], :2 * d], atol=1e-5)  # one image
    assert not torch.allclose(cache.states[same[0], 2 * d:], cache.states[same[1], 2 * d:])  # two prompts
    questions = [k for k, it in enumerate(items) if not it.is_caption]
    assert set(np.unique(rewards.accuracy[questions])) <= {0.0, 1.0}
    assert rewards.accuracy.shape == rewards.hallucination.shape == (n, 3)
    assert (tmp_path / "train-items" / "grid.json").is_file()  # item caches have their own folder
    # the cached loss is the model's own loss on the answer at that g (brute force: one item, model(...).loss)
    from dsanchor.mllm.adapt import training_batch
    from dsanchor.mllm.generate import open_image, to_model

    it = items[questions[0]]
    image, prompt = open_image(data.root, it.sample), item_prompt(model_type, it.question.question, False)
    with data.attach(1.0, cfg.coarse_layer), torch.no_grad():
        ours = answer_nll(data.model, model_type, data.processor, [image], [prompt], [it.target])
        ref = data.model(**to_model(training_batch(model_type, data.processor, [image], prompt, [it.target]),
                                    data.model)).loss
        assert ours.item() == pytest.approx(float(ref), rel=1e-4)
    assert cache.losses[questions[0], 2] == pytest.approx(ours.item(), rel=1e-3)  # grid g = 1


def test_router_learns_the_known_best_g(tmp_path):
    """Two kinds of state; the answer loss is lowest at g = 0 for one kind and at g = 1 for the other."""
    from dsanchor.controller import GranularityController
    from dsanchor.mllm.config import RouterConfig
    from dsanchor.mllm.router import router_loss, train_router

    gen = torch.Generator().manual_seed(0)
    kind = torch.arange(40) % 2
    states = torch.randn(40, 6, generator=gen) + 3.0 * kind.unsqueeze(1).float()
    grid = torch.tensor([0.0, 0.5, 1.0])
    losses = np.where(kind.numpy()[:, None] == 0, [[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]])
    ctrl, info = train_router(states, losses, grid, RouterConfig(steps=200, hidden=16), tmp_path, {"kind": "toy"})
    with torch.no_grad():
        g = ctrl(states)
    assert torch.equal(g, kind.float()) and info["train_lowest_loss_hit"] == 1.0
    loaded = GranularityController.from_pretrained(tmp_path / "controller")
    assert loaded.config.distribution == "grid" and loaded.config.grid == [0.0, 0.5, 1.0]
    assert loaded.config.state_layout == {"kind": "toy"} and torch.equal(loaded(states), g)
    # the loss by hand: uniform logits -> CE = log 3; every ranked pair has p_i - p_j = 0 -> hinge = margin
    value = router_loss(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 3.0]]), margin=0.1, rank_weight=2.0)
    assert float(value) == pytest.approx(np.log(3) + 2.0 * 0.1)


def _item(key: int, image_id: int, family: str, answer: str | None = "yes"):
    from dsanchor.data.questions import Question
    from dsanchor.data.records import Sample
    from dsanchor.mllm.items import Item

    sample = Sample(image_id=image_id, image_path=f"{image_id}.png", width=8, height=8, captions=[], objects=[])
    return Item(key, sample, Question(image_id, sample.image_path, "q?", answer, family, "test",
                                      () if answer else ("a red cube",)))


def test_family_best_fixed_best_and_oracle_choose_their_g():
    from dsanchor.mllm.evaluate_items import choose_item_g
    from dsanchor.mllm.items import ItemRewards

    grid = torch.tensor([0.0, 0.5, 1.0])
    val = [_item(0, 1, "count"), _item(1, 1, "count"), _item(2, 2, "exist")]
    acc = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    val_r = ItemRewards(acc, np.zeros_like(acc), np.ones(3, bool), 0)
    test = [_item(5, 3, "count"), _item(6, 3, "relate")]
    test_acc = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    test_hall = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    test_r = ItemRewards(test_acc, test_hall, np.ones(2, bool), 0)
    fixed, family, oracle, val_obj = choose_item_g(val, val_r, test, test_r, grid)
    assert fixed == 0.0 and val_obj.tolist() == pytest.approx([2 / 3, 0.0, 1 / 3])
    assert family == {"count": 0.0, "exist": 1.0, "relate": 0.0}  # a family val lacks gets the fixed g
    assert oracle.tolist() == [0.5, 0.5]  # best on its own answer; ties -> the g closest to 0.5


@pytest.mark.parametrize("model_type", TYPES)
def test_train_and_eval_per_family_end_to_end(world, tmp_path, model_type):
    args = _args(world, model_type, tmp_path / "cache")
    tuned = []
    if model_type == "llava":  # the reward search on the val items (2-fold PPO score), then train with it
        assert main(["mllm", "tune", *args, "--out", str(tmp_path / "tune"), "--tune-trials", "2",
                     "--tune-startup-trials", "1", "--tune-timesteps", "64", *TINY_PPO]) == 0
        assert "accuracy" in json.loads((tmp_path / "tune" / "tune_info.json").read_text())["objective"]
        tuned = ["--tuned", str(tmp_path / "tune")]
    assert main(["mllm", "train", *args, "--out", str(tmp_path / "ctrl"), "--ppo-timesteps", "64", *TINY_PPO,
                 "--router-steps", "20", *tuned]) == 0
    info = json.loads((tmp_path / "ctrl" / "train_info.json").read_text())
    assert info["n_train_items"] > info["n_train_images"] == 4 and len(info["train_answer_loss_by_g"]) == 3
    assert (tmp_path / "ctrl" / "router" / "controller" / "controller_config.json").is_file()
    assert main(["mllm", "eval", *args, "--out", str(tmp_path / "eval"), "--controller", str(tmp_path / "ctrl"),
                 "--n-boot", "20", "--pope-positives", "1"]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(res["methods"]) == ["base", "fixed_best", "family_best", "router_loss", "dsa_ppo", "oracle"]
    families = set(res["n_items_by_family"])
    assert {"exist", "count", "relate", "caption_scene", "caption_object", "caption_relation"} <= families
    for name, row in res["methods"].items():
        assert 0.0 <= row["accuracy"] <= 1.0 and set(row["by_family"]) | set(row["captions"]) == families, name
        for cell in row["captions"].values():
            assert {"CIDEr", "n", "n_judged"} <= set(cell)
            assert ("CHAIR_i" in cell) == (cell["n_judged"] > 0)
            assert ("CHAIR_i_no_negated" in cell) == (cell["n_judged"] > 0)  # synth: negated mentions left out too
        if name != "base":
            assert all("g_mean" in c for c in row["by_family"].values())
        assert ("pope" in row) == (name != "oracle")  # the oracle has no g for POPE's questions
    assert set(res["methods"]["family_best"]["by_family"]["exist"]) >= {"accuracy", "g_mean"}
    assert res["methods"]["fixed_best"]["g_mean"] == res["fixed_best_g"]
    assert {"ms_per_item", "controller_ms_per_item", "controller_share"} <= set(res["methods"]["dsa_ppo"])
    assert "ms_per_item" in res["methods"]["router_loss"] and "ms_per_item" not in res["methods"]["oracle"]
    assert set(res["differences"]) == {"dsa_ppo - fixed_best", "dsa_ppo - router_loss", "router_loss - fixed_best",
                                       "family_best - fixed_best", "oracle - fixed_best"}
    d = res["differences"]["dsa_ppo - router_loss"]
    assert {"accuracy", "CIDEr", "false_yes", "POPE_F1", "by_family"} <= set(d)
    assert d["accuracy"]["low"] <= d["accuracy"]["diff"] <= d["accuracy"]["high"] and "exist" in d["by_family"]
    assert "optimistic" in res["oracle_note"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| **all questions** |" in report and "| caption_scene |" in report and "router_loss" in report
    assert (tmp_path / "eval" / "accuracy_vs_g.png").is_file() and (tmp_path / "eval" / "g_per_family.png").is_file()
    answers = (tmp_path / "eval" / "answers" / "dsa_ppo.jsonl").read_text().splitlines()
    assert len(answers) == res["n_items"] and "g" in json.loads(answers[0])


def test_chair_is_an_empty_cell_when_the_vocabulary_names_no_object(world):
    """`--format coco` on synth data: no colour + shape word maps to a COCO category, so CHAIR judges nothing."""
    from dsanchor.data import load_dataset
    from dsanchor.mllm.items import item_scores
    from dsanchor.mllm.scores import chair_truth, per_image_scores, score_captions, vocabulary_matches

    samples = load_dataset("synth", world / "synth")[:4]
    assert all(s.objects for s in samples)
    assert vocabulary_matches(samples, "synth") and not vocabulary_matches(samples, "coco")
    captions = {s.image_id: "a red cube and a dog" for s in samples}
    assert all(t is None for t in chair_truth(samples, "coco").values())
    scores = score_captions(captions, samples, "coco")
    assert "CIDEr" in scores and "CHAIR_i" not in scores and "CHAIR_s" not in scores  # empty, never 0
    assert not per_image_scores(captions, samples, "coco")["judged"].any()
    assert "CHAIR_i" in score_captions(captions, samples, "synth")
    items = [_item(0, samples[0].image_id, "caption_scene", None)]
    items[0] = type(items[0])(0, samples[0], items[0].question)
    assert not item_scores(items, ["a red cube"], "coco")["judged"][0]


def test_negated_mentions_are_left_out_on_request():
    from dsanchor.metrics.chair import caption_words, chair, negated

    caption = "There are no red cubes and a blue sphere, not a green cylinder."
    gt = {1: ["blue sphere"]}
    published = chair({1: caption}, gt, "synth")
    assert published.num_mentions == 3 and published.num_hallucinated_mentions == 2  # "no red cubes" counts
    ours = chair({1: caption}, gt, "synth", skip_negated=True)
    assert ours.num_mentions == 1 and ours.num_hallucinated_mentions == 0 and ours.chair_s == 0.0
    words = caption_words("a cube and no sphere")
    assert not negated(words, words.index("cube")) and negated(words, words.index("sphere"))


def test_caption_eval_with_a_vocabulary_that_names_no_object_has_empty_chair_cells(world, tmp_path):
    """The caption path end to end: `mllm eval --format coco` on synth data used to report CHAIR_i 0.000."""
    args = ["--model-type", "llava", "--model-path", str(world / "llava"), "--data", str(world / "synth"),
            "--format", "coco", "--cache", str(tmp_path / "c"), "--grid", "2", "--max-new-tokens", "3", "--limit", "2",
            "--threads", "1", "--quiet", "--pope-positives", "0", "--no-retrieval", "--n-boot", "10"]
    assert main(["mllm", "eval", *args, "--out", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["chair_vocabulary"] == "coco" and res["chair_vocabulary_matches"] is False
    assert res["n_judged_chair"] == 0
    assert all("CHAIR_i" not in r and "CHAIR_s" not in r and "CIDEr" in r for r in res["methods"].values())
    assert "judges no image" in (tmp_path / "e" / "report.md").read_text()


def test_bad_questions_are_one_line_errors(world, tmp_path, capsys):
    args = _args(world, "llava", tmp_path / "c")
    args[args.index("--questions") + 1] = str(tmp_path / "missing.json")
    assert main(["mllm", "train", *args, "--out", str(tmp_path / "t")]) == 2
    assert "questions file not found" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"questions": [{"image_filename": "elsewhere.png",
                                                                   "question": "Is there a cube?", "answer": "yes"}]}))
    args[args.index("--questions") + 1] = str(tmp_path / "other.json")
    assert main(["mllm", "train", *args, "--out", str(tmp_path / "t2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no item of" in err and "train split" in err
