"""attach_dsa on tiny random LLaVA, BLIP-2 and IDEFICS models, the one generate loop, and the `dsanchor mllm
caption` command."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from dsanchor.controller import ControllerConfig, GranularityController  # noqa: E402
from dsanchor.errors import ConfigError  # noqa: E402
from dsanchor.integrations import attach_dsa, dsa_state_dim, get_dsa  # noqa: E402

IMG = 30  # image placeholder token id in the tiny vocabularies (size 32)
IMAGE = 16  # image side; patch 8 -> 4 patches + CLS
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              image_size=IMAGE, patch_size=8, initializer_range=0.02)  # BLIP-2 defaults to 1e-10


@dataclass
class Case:
    """A tiny model and one batch of inputs for it."""

    model: nn.Module
    inputs: dict[str, torch.Tensor]
    n_images: int


def _llava(feature_layer: int | list[int] = -1, strategy: str = "default") -> Case:
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, vocab_size=32,
                                             pad_token_id=0),
        image_token_id=IMG, vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy)
    n_tokens = 4 if strategy == "default" else 5  # 4 patches; "default" drops CLS
    ids = torch.tensor([[1] + [IMG] * n_tokens + [5, 6]] * 2)  # (2, 3 + n_tokens)
    return Case(transformers.LlavaForConditionalGeneration(cfg).eval(),
                {"input_ids": ids, "pixel_values": torch.randn(2, 3, IMAGE, IMAGE)}, 2)


def _blip2() -> Case:
    cfg = transformers.Blip2Config(
        vision_config=transformers.Blip2VisionConfig(**VISION).to_dict(),
        qformer_config=transformers.Blip2QFormerConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=32, encoder_hidden_size=16,
                                                       vocab_size=32).to_dict(),
        text_config=transformers.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                           vocab_size=32, word_embed_proj_dim=16, max_position_embeddings=64,
                                           pad_token_id=0).to_dict(),
        num_query_tokens=4, image_token_id=IMG)
    ids = torch.tensor([[IMG] * 4 + [2, 5, 6]] * 2)  # (2, 7)
    return Case(transformers.Blip2ForConditionalGeneration(cfg).eval(),
                {"input_ids": ids, "pixel_values": torch.randn(2, 3, IMAGE, IMAGE)}, 2)


def _idefics(images_per_sample: int = 1) -> Case:
    vision = {**VISION, "embed_dim": VISION["hidden_size"]}
    del vision["hidden_size"]
    cfg = transformers.IdeficsConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        alpha_initializer="ones", vision_config=vision, use_resampler=True, max_position_embeddings=64,
        initializer_range=0.2,  # at 0.02 the image barely moves the tiny model's logits
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=8),
        freeze_text_layers=False, freeze_vision_layers=False)
    ids = torch.tensor([[1, 5, 6, 7]] * 2)  # (2, 4)
    return Case(transformers.IdeficsForVisionText2Text(cfg).eval(), {
        "input_ids": ids,
        "pixel_values": torch.randn(2, images_per_sample, 3, IMAGE, IMAGE),
        "image_attention_mask": torch.ones(2, 4, images_per_sample, dtype=torch.long),
    }, 2 * images_per_sample)


BUILDERS = {"llava": _llava, "blip2": _blip2, "idefics": _idefics}


@pytest.fixture(params=list(BUILDERS))
def case(request) -> Case:
    torch.manual_seed(0)
    return BUILDERS[request.param]()


@torch.no_grad()
def _logits(case: Case, **kwargs) -> torch.Tensor:
    return case.model(**case.inputs, **kwargs).logits


def test_g_one_is_the_original_model(case):
    ref = _logits(case)
    handle = attach_dsa(case.model, 1.0)
    out = _logits(case)
    assert torch.equal(out, ref)  # 1 * V_fine + 0 * V_coarse is V_fine bit for bit
    assert handle.last_g.shape == (case.n_images,) and torch.all(handle.last_g == 1)


def test_g_zero_changes_the_logits(case):
    ref = _logits(case)
    attach_dsa(case.model, 0.0)
    assert not torch.allclose(_logits(case), ref, atol=1e-4)


def _hooks(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every forward hook and pre-hook on the model's modules (transformers installs some of its own)."""
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, hooks in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in hooks}


def test_detach_restores_the_model_and_is_idempotent(case):
    ref = _logits(case)
    before = _hooks(case.model)
    handle = attach_dsa(case.model, 0.3)
    assert _hooks(case.model) > before
    _logits(case)
    handle.detach()
    handle.detach()
    assert get_dsa(case.model) is None and not handle.attached
    assert _hooks(case.model) == before
    assert torch.equal(_logits(case), ref)
    attach_dsa(case.model, 0.5).detach()  # attachable again after detach


def test_generate_runs_with_dsa_and_sets_last_g(case):
    handle = attach_dsa(case.model, 0.25)
    with torch.no_grad():
        out = case.model.generate(**case.inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 2 and out.shape[1] >= 3
    assert handle.last_g.shape == (case.n_images,)
    assert torch.allclose(handle.last_g, torch.full((case.n_images,), 0.25))


def test_controller_gives_one_g_in_unit_interval_per_image(case):
    torch.manual_seed(1)
    controller = GranularityController(ControllerConfig(state_dim=dsa_state_dim(case.model), hidden=8)).eval()
    handle = attach_dsa(case.model, controller)
    _logits(case)
    g = handle.last_g
    assert g.shape == (case.n_images,) and bool(((g >= 0) & (g <= 1)).all())


def test_wrong_state_dim_is_a_clear_error(case):
    controller = GranularityController(ControllerConfig(state_dim=7, hidden=8))
    with pytest.raises(ConfigError, match=rf"state_dim=7.*state_dim={dsa_state_dim(case.model)}"):
        attach_dsa(case.model, controller)
    assert get_dsa(case.model) is None


def test_custom_state_fn_with_wrong_size_is_a_clear_error(case):
    controller = GranularityController(ControllerConfig(state_dim=5, hidden=8))
    handle = attach_dsa(case.model, controller, state_fn=lambda fine, coarse: fine.mean(1)[:, :5])
    _logits(case)
    assert handle.last_g.shape == (case.n_images,)
    handle.detach()
    attach_dsa(case.model, controller, state_fn=lambda fine, coarse: fine.mean(1))
    with pytest.raises(ConfigError, match="state_fn"):
        _logits(case)


def test_g_zero_is_exactly_the_coarse_layer(case):
    """With g = 0 the model sees the coarse layer's features, shaped as the model shapes its own."""
    coarse = 1
    if isinstance(case.model, transformers.LlavaForConditionalGeneration):
        ref = _logits(case, vision_feature_layer=coarse)  # LLaVA itself selecting hidden state 1
    else:  # BLIP-2 / IDEFICS: the same vision encoder cut after `coarse` layers
        vision = case.model.vision_model if hasattr(case.model, "vision_model") else case.model.model.vision_model
        layers = vision.encoder.layers
        vision.encoder.layers = nn.ModuleList(list(layers)[:coarse])
        ref = _logits(case)
        vision.encoder.layers = layers
    attach_dsa(case.model, 0.0, coarse_layer=coarse)
    assert torch.allclose(_logits(case), ref, atol=1e-5)


@pytest.mark.parametrize("feature_layer,strategy", [([-2, -1], "default"), (-1, "full"), (-2, "default")])
def test_llava_coarse_follows_feature_layers_and_strategy(feature_layer, strategy):
    """g = 0 equals LLaVA selecting the coarse layer itself (once per selected layer), CLS kept or dropped alike."""
    torch.manual_seed(0)
    case = _llava(feature_layer, strategy)
    k = 1 if isinstance(feature_layer, int) else len(feature_layer)
    ref = _logits(case, vision_feature_layer=1 if k == 1 else [1] * k)
    attach_dsa(case.model, 0.0, coarse_layer=1)
    assert torch.allclose(_logits(case), ref, atol=1e-5)
    assert dsa_state_dim(case.model) == 2 * k * VISION["hidden_size"]


def test_bad_arguments_are_clear_errors():
    torch.manual_seed(0)
    case = _llava()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        attach_dsa(case.model, 1.5)
    with pytest.raises(ConfigError, match="coarse_layer=9"):
        attach_dsa(case.model, 0.5, coarse_layer=9)
    with pytest.raises(ConfigError, match="does not support"):
        attach_dsa(nn.Linear(2, 2), 0.5)
    with attach_dsa(case.model, 0.5):
        with pytest.raises(ConfigError, match="already attached"):
            attach_dsa(case.model, 0.5)
    assert get_dsa(case.model) is None


def test_coarse_layer_zero_and_several_images_per_sample():
    torch.manual_seed(0)
    case = _idefics(images_per_sample=2)
    controller = GranularityController(ControllerConfig(state_dim=dsa_state_dim(case.model), hidden=8))
    handle = attach_dsa(case.model, controller, coarse_layer=0)
    _logits(case)
    assert handle.last_g.shape == (4,)


# --------------------------------------------------------------------------- dsanchor mllm caption

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "a", "red", "blue", "cube", "sphere", "cylinder", "on", "the", "left",
         "right", "of", "and", "two", "three", "small", "large", "metal", "rubber", "image", "describe", ".",
         "USER:", "ASSISTANT:", "in", "one", "sentence", "<image>", "green"]  # "<image>" is id IMG = 30


def _images(root: Path, n: int) -> list:
    """n small random PNGs under root/images; returns the Sample records for them."""
    import numpy as np
    from PIL import Image

    from dsanchor.data.records import Caption, ObjectAnnotation, Sample

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        samples.append(Sample(image_id=i, image_path=f"images/{i}.png", width=24, height=20,
                              captions=[Caption("a red cube on the left"), Caption("two blue spheres")],
                              objects=[ObjectAnnotation("red cube", (1, 1, 5, 5))], split="test"))
    return samples


def _tokenizer(words: list[str], image_token: str | None = "<image>"):
    """A word-level fast tokenizer built offline from a word list."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"extra_special_tokens": {"image_token": image_token}} if image_token else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>", pad_token="<pad>", **extra)


def _processor(model_type: str):
    """An offline processor whose image token id is IMG, matching the tiny models above."""
    if model_type == "llava":
        image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": IMAGE},
                                                             crop_size={"height": IMAGE, "width": IMAGE})
        return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=_tokenizer(WORDS),
                                           patch_size=8, vision_feature_select_strategy="default",
                                           num_additional_image_tokens=1)
    if model_type == "blip2":  # the processor adds "<image>" itself, as id 30
        return transformers.Blip2Processor(
            image_processor=transformers.BlipImageProcessorPil(size={"height": IMAGE, "width": IMAGE}),
            tokenizer=_tokenizer(WORDS[:IMG], image_token=None), num_query_tokens=4)
    return transformers.IdeficsProcessor(image_processor=transformers.IdeficsImageProcessorPil(image_size=IMAGE),
                                         tokenizer=_tokenizer(WORDS))


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_processor_fns_feed_generate(tmp_path, model_type):
    from dsanchor.integrations import processor_fns
    from dsanchor.mllm.generate import caption_samples

    torch.manual_seed(0)
    model = BUILDERS[model_type]().model
    prepare, decode = processor_fns(model_type, _processor(model_type))
    run = caption_samples(model, prepare, decode, _images(tmp_path, 3), tmp_path, batch_size=2, max_new_tokens=3)
    assert set(run.captions) == {0, 1, 2} and all(run.captions.values())


def test_caption_loop_with_and_without_dsa(tmp_path):
    from dsanchor.integrations import processor_fns
    from dsanchor.mllm.generate import caption_samples

    torch.manual_seed(0)
    model = _llava().model
    samples = _images(tmp_path, 3)
    prepare, decode = processor_fns("llava", _processor("llava"), "describe the image")
    base = caption_samples(model, prepare, decode, samples, tmp_path, batch_size=2, max_new_tokens=4)
    assert set(base.captions) == {0, 1, 2} and not base.g
    with attach_dsa(model, 0.0):
        dsa = caption_samples(model, prepare, decode, samples, tmp_path, batch_size=2, max_new_tokens=4)
    assert set(dsa.g) == {0, 1, 2} and all(g == 0.0 for g in dsa.g.values())
    assert all(isinstance(c, str) for c in dsa.captions.values())


def _coco(root: Path, n: int) -> None:
    """A COCO-format dataset (captions, instances, splits) of n random test images (ids 0..n-1) under root, plus
    one train and one val image: a complete split, which every mllm command takes as it is."""
    samples = _images(root, n + 2)
    images = [{"id": s.image_id, "file_name": f"{s.image_id}.png", "width": s.width, "height": s.height}
              for s in samples]
    caps = [{"id": 10 * s.image_id + k, "image_id": s.image_id, "caption": c.text}
            for s in samples for k, c in enumerate(s.captions)]
    inst = [{"id": s.image_id, "image_id": s.image_id, "category_id": 1, "bbox": [1, 1, 5, 5]} for s in samples]
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": inst,
                                                     "categories": [{"id": 1, "name": "cube"}]}))
    (root / "splits.json").write_text(json.dumps({"train": [n], "val": [n + 1], "test": list(range(n))}))


def _cli(argv: list[str]) -> int:
    """``dsanchor.cli.main`` with only the mllm subcommand registered (isolated from the other commands)."""
    from dsanchor import cli

    mp = pytest.MonkeyPatch()
    mp.setattr(cli, "COMMANDS", ("mllm",))
    try:
        return cli.main(argv)
    finally:
        mp.undo()


def test_mllm_caption_command_end_to_end(tmp_path, capsys):
    torch.manual_seed(0)
    model_dir, data, out = tmp_path / "llava", tmp_path / "coco", tmp_path / "out"
    _llava().model.save_pretrained(model_dir)
    _processor("llava").save_pretrained(model_dir)
    _coco(data, 3)
    torch.manual_seed(1)
    ctrl = GranularityController(ControllerConfig(state_dim=2 * VISION["hidden_size"], hidden=8))
    ctrl.save_pretrained(tmp_path / "ctrl")
    code = _cli(["mllm", "caption", "--model-type", "llava", "--model-path", str(model_dir), "--data", str(data),
                 "--format", "coco", "--split", "test", "--limit", "2", "--dsa", str(tmp_path / "ctrl"),
                 "--prompt", "describe the image", "--max-new-tokens", "3", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("captions_base.jsonl", "captions_dsa.jsonl"):
        rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
        assert [r["image_id"] for r in rows] == [0, 1] and all(isinstance(r["caption"], str) for r in rows)
    dsa_rows = [json.loads(line) for line in (out / "captions_dsa.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["g"] <= 1.0 for r in dsa_rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and set(metrics["runs"]) == {"base", "dsa"}
    assert 0.0 <= metrics["runs"]["dsa"]["g_mean"] <= 1.0
    for run in metrics["runs"].values():
        assert {"BLEU-1", "BLEU-4", "CIDEr", "s_per_image"} <= set(run)
        assert "CHAIR_i" not in run  # the COCO vocabulary names no "cube": an empty cell, never 0
    assert (out / "config.yaml").is_file()


def test_mllm_caption_takes_the_same_test_images_as_train_and_eval(tmp_path, capsys):
    """One split rule for every mllm command: a dataset without a complete split gets the seeded 60/20/20 split
    of `dsanchor run` (kept: the rule train, tune, eval and the demo used), in `mllm caption` too (it used to take
    the loader's split, so "test" meant other images there)."""
    from dsanchor.mllm.config import MLLMConfig
    from dsanchor.mllm.data import split_samples

    torch.manual_seed(0)
    model_dir, data, out = tmp_path / "llava", tmp_path / "coco", tmp_path / "out"
    _llava().model.save_pretrained(model_dir)
    _processor("llava").save_pretrained(model_dir)
    _coco(data, 8)
    (data / "splits.json").unlink()  # no split file: the loader puts every image in no split
    code = _cli(["mllm", "caption", "--model-type", "llava", "--model-path", str(model_dir), "--data", str(data),
                 "--format", "coco", "--split", "test", "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "captions_base.jsonl").read_text().splitlines()]
    samples, note = split_samples(MLLMConfig(data=str(data), format="coco"))
    assert "seeded split" in note
    assert sorted(r["image_id"] for r in rows) == sorted(s.image_id for s in samples if s.split == "test")
    assert 0 < len(rows) < 10


def test_mllm_caption_missing_model_is_a_one_line_error(tmp_path, capsys):
    _coco(tmp_path / "coco", 1)
    code = _cli(["mllm", "caption", "--model-type", "llava", "--model-path", str(tmp_path / "nope"),
                 "--data", str(tmp_path / "coco"), "--format", "coco", "--g", "0.5", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope" in err and "config.json" in err


def test_mllm_caption_rejects_dsa_and_g_together(tmp_path, capsys):
    code = _cli(["mllm", "caption", "--model-type", "llava", "--model-path", str(tmp_path), "--data", str(tmp_path),
                 "--format", "coco", "--g", "0.5", "--dsa", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_score_captions_uses_annotated_and_caption_objects():
    from dsanchor.data.records import Caption, ObjectAnnotation, Sample
    from dsanchor.mllm.scores import score_captions

    samples = [Sample(1, "1.png", 8, 8, [Caption("a dog on a couch")], [ObjectAnnotation("cat", (0, 0, 1, 1))]),
               Sample(2, "2.png", 8, 8, [Caption("a red car")], [])]
    scores = score_captions({1: "a cat and a dog and a horse", 2: "a red car"}, samples, "coco")
    # image 2 has no instance annotations, so only image 1 is judged: horse is its one hallucination of 3
    assert scores["CHAIR_images"] == 1
    assert scores["CHAIR_i"] == pytest.approx(1 / 3)
    assert scores["CHAIR_s"] == pytest.approx(1.0)
    assert scores["BLEU-1"] > 0 and "CIDEr" in scores
