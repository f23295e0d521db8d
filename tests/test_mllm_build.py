"""`dsanchor mllm build`: a small LLaVA trained on a dataset's captions and yes/no questions (tiny sizes here,
seconds) loads back offline with its processor and runs through `dsanchor mllm caption` with and without DSA;
its vision pre-training, question data and shuffled-image control are checked on their own."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dsanchor.cli import main as cli_main

TINY = ["--image-size", "32", "--patch-size", "16", "--vision-width", "16", "--vision-layers", "1",
        "--text-width", "16", "--text-layers", "1", "--heads", "2", "--steps", "4", "--eval-every", "2",
        "--batch-size", "4", "--threads", "1", "--pretrain-steps", "3", "--pretrain-batch-size", "4",
        "--align-steps", "2", "--questions-per-image", "2", "--distill-steps", "2", "--distill-batch-size", "4",
        "--questions-per-family", "1", "--turns-per-text", "3"]


class FakeTextEncoder:
    """Stands in for all-MiniLM-L6-v2: a fixed random unit vector per text (records what it encoded)."""

    def __init__(self, dim: int = 12):
        self.dim, self.seen = dim, []

    def encode(self, texts, **kwargs):
        self.seen += list(texts)
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from dsanchor.data import SynthConfig, generate_synth

    root = tmp_path_factory.mktemp("build")
    generate_synth(root / "synth", SynthConfig(scenes=16, image_size=64, max_objects=3, supersample=1))
    encoder = FakeTextEncoder()
    with pytest.MonkeyPatch.context() as mp:  # the project's loader is what the build calls (no model here)
        mp.setattr("dsanchor.encoders.effnet_minilm.load_minilm", lambda device: encoder)
        assert cli_main(["mllm", "build", "--data", str(root / "synth"), "--format", "synth",
                         "--out", str(root / "llava"), *TINY]) == 0
    assert encoder.seen  # the captions went through the text encoder
    return root


def _info(built) -> dict:
    return json.loads((built / "llava" / "build_info.json").read_text())


def test_build_saves_a_llava_that_loads_offline_with_its_processor(built):
    import transformers
    from PIL import Image

    model = transformers.LlavaForConditionalGeneration.from_pretrained(built / "llava", local_files_only=True)
    proc = transformers.AutoProcessor.from_pretrained(built / "llava", local_files_only=True)
    info = _info(built)
    assert info["best_step"] in (2, 4) and len(info["history"]) == 2 and info["image_tokens"] == 5
    inputs = proc(images=[Image.new("RGB", (50, 30))], text=[info["prompt"]], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 5  # CLS (summary) + (32 / 16)^2
    ids = proc.tokenizer("there are three objects .", add_special_tokens=False).input_ids
    assert proc.tokenizer.unk_token_id not in ids  # the captions' words are in the vocabulary
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_build_info_reports_stage_times_shuffled_image_loss_and_pope(built, capsys):
    info = _info(built)
    assert set(info["stage_times_s"]) == {"distill", "pretrain", "llava", "final_val"}
    assert all(t > 0 for t in info["stage_times_s"].values())
    assert info["distill"]["n_images"] > 0 and math.isfinite(info["distill"]["val_fine_r2"])
    rows = info["n_train_captions"] + info["n_train_questions"] + info["n_train_items"]
    assert info["n_train_items"] > 0 and info["n_train_sequences"] < rows  # packed 3 turns to a sequence
    assert info["pretrain"]["val_retrieval_chance"] > 0 and 0 <= info["pretrain"]["val_retrieval_acc"] <= 1
    for key in ("val_loss_true_images", "val_loss_shuffled_images"):
        assert set(info[key]) == {"g=1", "g=0"} and all(math.isfinite(v) and v > 0 for v in info[key].values())
    assert info["n_train_questions"] > 0 and info["n_val_questions"] > 0
    assert set(info["val_pope_accuracy"]) == {"g=1", "g=0"}
    assert all(0 <= a <= 1 for a in info["val_pope_accuracy"].values())


def test_tokenizer_knows_the_question_words_and_answers(built):
    import transformers

    from dsanchor.data import load_dataset
    from dsanchor.mllm.pope import question_prompt

    proc = transformers.AutoProcessor.from_pretrained(built / "llava", local_files_only=True)
    name = next(o.name for s in load_dataset("synth", built / "synth") if s.split == "train" for o in s.objects)
    text = question_prompt("llava", name).replace("<image>", "") + " yes no"
    ids = proc.tokenizer(text, add_special_tokens=False).input_ids
    assert proc.tokenizer.unk_token_id not in ids


def test_built_model_runs_through_mllm_caption_with_dsa(built, capsys):
    out = built / "cap"
    assert cli_main(["mllm", "caption", "--model-type", "llava", "--model-path", str(built / "llava"), "--data",
                     str(built / "synth"), "--format", "synth", "--split", "test", "--limit", "2", "--g", "0.5",
                     "--max-new-tokens", "4", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"base", "dsa"} <= set(metrics["runs"])
    assert "CIDEr" in metrics["runs"]["dsa"] and "CHAIR_i" in metrics["runs"]["dsa"]


def test_pope_questions_are_balanced_and_true_to_the_objects():
    from dsanchor.mllm.pope import question_prompt
    from dsanchor.mllm.pope import training_questions as pope_questions

    objects = [("a", ["red cube", "red cube", "blue sphere"]), ("b", ["green cylinder"]), ("c", ["gray cube"])]
    questions = pope_questions(objects, per_image=4, seed=0)
    vocabulary = {"red cube", "blue sphere", "green cylinder", "gray cube"}
    prompts = {question_prompt("llava", n): n for n in vocabulary}
    for image, names in objects:
        mine = [(prompts[p], a) for im, p, a in questions if im == image]
        assert [a for _, a in mine].count("yes") == 2 and [a for _, a in mine].count("no") == 2
        assert all((n in names) == (a == "yes") for n, a in mine)
    assert {prompts[p] for im, p, a in questions if im == "a" and a == "yes"} == {"red cube", "blue sphere"}
    assert pope_questions(objects, per_image=0) == []


def test_pretraining_matches_images_to_their_texts():
    """Eight random images with eight distinct texts: the contrastive loss must learn to pair them."""
    from dsanchor.integrations.small_models import caption_tokenizer as build_tokenizer
    from dsanchor.mllm.build import build_llava
    from dsanchor.mllm.config import BuildConfig
    from dsanchor.mllm.pretrain import pretrain_vision

    cfg = BuildConfig(image_size=32, patch_size=16, vision_width=32, vision_layers=1, text_width=16, text_layers=1,
                      heads=2, pretrain_steps=80, pretrain_batch_size=8, pretrain_lr=3e-3, pretrain_shift=0)
    model, _ = build_llava(build_tokenizer(["a b"]), cfg)
    tower = model.model.vision_tower
    pixels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = torch.nn.functional.normalize(torch.randn(8, 12, generator=torch.Generator().manual_seed(1)), dim=-1)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    info = pretrain_vision(tower, pixels, texts, torch.arange(8), cfg, val=(pixels, texts, torch.arange(8)),
                           objects=torch.eye(8), val_objects=torch.eye(8), progress=False)
    assert any(not torch.equal(before[k], v) for k, v in tower.state_dict().items())
    assert info["val_retrieval_chance"] == pytest.approx(1 / 8)
    assert info["val_retrieval_acc"] >= 0.75 and info["val_object_acc"] > 0.875  # 0.875: all 'absent'
    assert info["pretrain_loss"] < math.log(8)


def test_pretrain_steps_0_skips_the_text_encoder(tmp_path):
    from PIL import Image

    from dsanchor.mllm.build import train_llava
    from dsanchor.mllm.config import BuildConfig

    class Refuse:
        def encode(self, *args, **kwargs):
            raise AssertionError("no pre-training was asked for")

    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    cfg = BuildConfig(image_size=32, patch_size=16, vision_width=16, vision_layers=1, text_width=16, text_layers=1,
                      heads=2, steps=3, align_steps=1, eval_every=3, batch_size=4, pretrain_steps=0,
                      questions_per_image=0, distill_steps=0)
    pairs = [(red, "a red cube ."), (blue, "a blue sphere .")]
    info = train_llava(pairs, pairs, cfg, tmp_path, "USER: <image>\nDescribe the image in one sentence. ASSISTANT:",
                       progress=False, text_encoder=Refuse())
    assert info["pretrain"] is None and info["val_pope_accuracy"] is None and info["n_train_questions"] == 0
    assert info["val_loss_shuffled_images"]["g=1"] > 0


def test_derangement_moves_every_image_and_random_shift_keeps_the_shape():
    from dsanchor.mllm.build import derangement
    from dsanchor.mllm.pretrain import random_shift

    for n in (2, 3, 17):
        d = derangement(n, seed=n)
        assert sorted(d.tolist()) == list(range(n)) and bool((d != torch.arange(n)).all())
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_shift(x, 0, gen), x)
    moved = random_shift(x, 2, gen)
    assert moved.shape == x.shape and not torch.equal(moved, x)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"image_size": 30, "patch_size": 16}, "multiple of patch_size"),
    ({"questions_per_image": 3}, "must be even"),
    ({"steps": 10, "align_steps": 10}, "smaller than steps"),
    ({"vision_lr_scale": -1.0}, ">= 0"),
    ({"question_families": ("exist", "nope")}, "unknown question_families"),
    ({"turns_per_text": 0}, "turns_per_text must be >= 1"),
    ({"ground_weight": -0.5}, "ground_weight must be >= 0"),
])
def test_build_config_rejects_bad_values(kwargs, match):
    from dsanchor.errors import ConfigError
    from dsanchor.mllm.config import BuildConfig

    with pytest.raises(ConfigError, match=match):
        BuildConfig(**kwargs)


def test_per_text_loss_weighs_a_short_answer_as_much_as_a_caption():
    from dsanchor.mllm.build import per_text_loss as _per_text_loss

    logits = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 1, 2, 3, 4], [-100, -100, -100, -100, 0, -100]])  # caption, "yes"
    token = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                              ignore_index=-100, reduction="none").view(2, 5)
    caption, answer = token[0, 1:].mean(), token[1, 3]
    assert float(_per_text_loss(logits, labels)) == pytest.approx(float((caption + answer) / 2), rel=1e-5)


def test_distillation_teaches_the_patch_tokens_the_teacher_cells():
    """The teacher cell of each patch is its mean colour: after distillation the tokens explain most of it."""
    from dsanchor.integrations.small_models import caption_tokenizer
    from dsanchor.mllm.build import build_llava
    from dsanchor.mllm.config import BuildConfig
    from dsanchor.mllm.distill import TeacherMaps, distill_vision, standardise

    cfg = BuildConfig(image_size=32, patch_size=16, vision_width=32, vision_layers=2, text_width=16, text_layers=1,
                      heads=2, distill_steps=30, distill_batch_size=32, distill_lr=3e-3)
    model, _ = build_llava(caption_tokenizer(["a b"]), cfg)
    gen = torch.Generator().manual_seed(0)
    colours = torch.randn(160, 3, 2, 2, generator=gen)  # one colour per 16-px patch
    pixels = colours.repeat_interleave(16, 2).repeat_interleave(16, 3) + 0.1 * torch.randn(160, 3, 32, 32,
                                                                                             generator=gen)
    cells = colours.flatten(2).transpose(1, 2)  # (160, 4, 3) row-major like the patches
    fine, val = standardise(cells[:128], cells[128:])
    info = distill_vision(model.model.vision_tower, pixels[:128], TeacherMaps(fine, fine, 0.0), cfg,
                          val=(pixels[128:], TeacherMaps(val, val, 0.0)), progress=False)
    assert info["val_fine_r2"] > 0.5 and info["val_coarse_r2"] > 0.5


def test_teacher_maps_are_effnet_stages_on_the_patch_grid():
    from dsanchor.encoders.transforms import CLIP_MEAN, CLIP_STD
    from dsanchor.mllm.distill import clip_to_effnet, standardise, teacher_maps

    grey = (torch.full((1, 3, 1, 1), 127 / 255) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(clip_to_effnet(grey), torch.zeros(1, 3, 1, 1), atol=1e-5)  # EfficientNet-Lite's 127 / 128
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fine, coarse = teacher_maps(pixels, 4, ("stage5", "stage3"))
    assert fine.shape == (3, 16, 112) and coarse.shape == (3, 16, 40)
    train, other = standardise(fine, fine[:1])
    assert torch.allclose(train.flatten(0, 1).mean(0), torch.zeros(112), atol=1e-4)
    assert torch.equal(other, train[:1])


def test_packed_conversations_keep_every_answer_once_and_the_image_in_the_first_turn():
    from dsanchor.integrations.small_models import caption_tokenizer
    from dsanchor.mllm.instructions import conversation_batches, pack_turns

    a, b = object(), object()
    rows = [(a, "USER: <image>\nq1 ASSISTANT:", "yes"), (a, "USER: <image>\nq2 ASSISTANT:", "no"),
            (a, "USER: <image>\nq3 ASSISTANT:", "red"), (b, "USER: <image>\nq1 ASSISTANT:", "no")]
    convs = pack_turns(rows, turns=2, seed=0)
    assert sorted(len(c) for _, c in convs) == [1, 1, 2]
    packed = sorted((id(im), p, ans) for im, c in convs for p, ans in c)
    assert packed == sorted((id(im), p, ans) for im, p, ans in rows)
    tok = caption_tokenizer([p + " " + ans for _, p, ans in rows])
    ids, labels = conversation_batches(tok, [c for _, c in convs], n_image_tokens=4, max_words=5)
    image = tok.convert_tokens_to_ids("<image>")
    for row, (_, conv) in zip(range(len(convs)), convs, strict=True):
        assert int((ids[row] == image).sum()) == 4  # the image once, in the first turn
        said = tok.convert_ids_to_tokens(labels[row][labels[row] != -100].tolist())
        assert said == [w for _, ans in conv for w in (ans, "</s>")]  # only the answers are learnt


def test_scene_rows_ask_the_scene_questions_in_the_answer_prompt(tmp_path):
    from dsanchor.data import SynthConfig, generate_synth, load_dataset
    from dsanchor.data.questions import QuestionConfig, scene_questions
    from dsanchor.integrations import get_family
    from dsanchor.mllm.instructions import scene_rows

    generate_synth(tmp_path, SynthConfig(scenes=3, image_size=64, max_objects=3, supersample=1))
    samples = load_dataset("synth", tmp_path)
    rows = scene_rows([(k, s) for k, s in enumerate(samples)], ("exist", "count"), 2, captions=True, seed=0)
    family = get_family("llava")
    for k, s in enumerate(samples):
        asked = {q.question: q.answer for q in scene_questions(s.scene, QuestionConfig(
            per_family=2, families=("exist", "count"), seed=0), s.image_id)}
        mine = [(p, ans) for im, p, ans in rows if im == k]
        assert {family.ANSWER_PROMPT.format(question=q): ans for q, ans in asked.items()}.items() <= set(mine)
        assert len(mine) == len(asked) + len(s.captions)  # every reference caption is a row of its prompt


def test_scene_labels_count_values_and_pairs_in_question_word_order():
    from dsanchor.mllm.distill import scene_labels

    scene = {"objects": [{"size": "large", "color": "red", "material": "metal", "shape": "cube"},
                         {"size": "small", "color": "red", "material": "rubber", "shape": "sphere"}]}
    labels = scene_labels(scene)
    assert labels["red"] == 2 and labels["cube"] == 1 and labels["red cube"] == 1 and labels["large red"] == 1
    assert labels["small sphere"] == 1 and labels["red sphere"] == 1 and labels["cube red"] == 0
    assert len(labels) == 7 + 12  # 7 distinct values (red in both), 6 pairs per object, none shared


def test_summary_token_is_kept_and_learns_what_the_image_holds():
    """With summary_token the CLS token is the first image token, and distillation teaches it label counts."""
    from PIL import Image

    from dsanchor.integrations.small_models import caption_tokenizer
    from dsanchor.mllm.build import build_llava
    from dsanchor.mllm.config import BuildConfig
    from dsanchor.mllm.distill import TeacherMaps, distill_vision, standardise

    cfg = BuildConfig(image_size=32, patch_size=16, vision_width=32, vision_layers=2, text_width=16, text_layers=1,
                      heads=2, distill_steps=40, distill_batch_size=32, distill_lr=3e-3, summary_token=True)
    model, processor = build_llava(caption_tokenizer(["a b"]), cfg)
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=["<image> a"], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 5  # CLS + 2 x 2 patches
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
    gen = torch.Generator().manual_seed(0)
    colours = torch.randn(160, 3, 2, 2, generator=gen)
    pixels = colours.repeat_interleave(16, 2).repeat_interleave(16, 3)
    cells = colours.flatten(2).transpose(1, 2)  # (160, 4, 3)
    counts = (cells > 0.5).sum(1).float()  # (160, 3) patches whose channel is bright: a label count per image
    fine, val = standardise(cells[:128], cells[128:])
    info = distill_vision(model.model.vision_tower, pixels[:128], TeacherMaps(fine, None, 0.0, counts[:128]), cfg,
                          val=(pixels[128:], TeacherMaps(val, None, 0.0, counts[128:])), progress=False)
    assert info["val_summary_presence_acc"] > max(info["val_summary_all_absent"], 1 - info["val_summary_all_absent"])


def test_patch_targets_name_the_words_of_the_objects_over_each_patch():
    from dsanchor.data.records import ObjectAnnotation
    from dsanchor.mllm.ground import object_words, patch_targets

    big = ObjectAnnotation("red cube", (0, 0, 64, 64), ("large", "metal"))  # patch (0, 0) of a 2 x 2 grid at 64 px
    small = ObjectAnnotation("blue sphere", (56, 56, 16, 16), ("small",))  # a quarter of it on each of 4 patches
    vocab = sorted({*object_words(big), *object_words(small)})
    t = patch_targets([big, small], (128, 128), 32, 16, vocab, summary=True)  # boxes scaled by 1/4
    on = {k: {vocab[j] for j in torch.nonzero(t[k]).flatten().tolist()} for k in range(len(t))}
    assert on[0] == set(vocab)  # the summary token: every word in the image
    assert on[1] == {"red", "cube", "large", "metal", "blue", "sphere", "small"}
    assert on[2] == on[3] == on[4] == {"blue", "sphere", "small"}
    assert patch_targets([big], (128, 128), 32, 16, vocab, summary=False).shape == (4, len(vocab))


def test_ground_weight_trains_the_image_tokens_on_the_words_under_them(tmp_path):
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(tmp_path / "synth", SynthConfig(scenes=16, image_size=64, max_objects=3, supersample=1))
    assert cli_main(["mllm", "build", "--data", str(tmp_path / "synth"), "--format", "synth", "--out",
                     str(tmp_path / "llava"), *TINY[:-4], "--pretrain-steps", "0", "--ground-weight", "1.0"]) == 0
    info = json.loads((tmp_path / "llava" / "build_info.json").read_text())
    assert {"red", "cube", "large", "metal"} <= set(info["ground_words"])
    assert all(math.isfinite(h["train_ground_loss"]) for h in info["history"])
    val = info["val_ground"]
    assert {"patch_auc g=1", "patch_auc g=0", "summary_auc g=1"} <= set(val)
    assert 0.0 <= val["patch_auc g=1"] <= 1.0
