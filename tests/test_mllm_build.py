"""`dsanchor mllm build`: a small LLaVA trained on a dataset's captions (tiny sizes here, seconds) loads back
offline with its processor and runs through `dsanchor mllm caption` with and without DSA."""

from __future__ import annotations

import json

import pytest

from dsanchor.cli import main as cli_main

TINY = ["--image-size", "32", "--patch-size", "16", "--vision-width", "16", "--vision-layers", "1",
        "--text-width", "16", "--text-layers", "1", "--heads", "2", "--steps", "4", "--eval-every", "2",
        "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from dsanchor.data import SynthConfig, generate_synth

    root = tmp_path_factory.mktemp("build")
    generate_synth(root / "synth", SynthConfig(scenes=8, image_size=64, max_objects=3, supersample=1))
    assert cli_main(["mllm", "build", "--data", str(root / "synth"), "--format", "synth",
                     "--out", str(root / "llava"), *TINY]) == 0
    return root


def test_build_saves_a_llava_that_loads_offline_with_its_processor(built):
    import transformers
    from PIL import Image

    model = transformers.LlavaForConditionalGeneration.from_pretrained(built / "llava", local_files_only=True)
    proc = transformers.AutoProcessor.from_pretrained(built / "llava", local_files_only=True)
    info = json.loads((built / "llava" / "build_info.json").read_text())
    assert info["best_step"] in (2, 4) and len(info["history"]) == 2 and info["image_tokens"] == 4
    inputs = proc(images=[Image.new("RGB", (50, 30))], text=[info["prompt"]], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 4  # (32 / 16)^2 image tokens
    ids = proc.tokenizer("there are three objects .", add_special_tokens=False).input_ids
    assert proc.tokenizer.unk_token_id not in ids  # the captions' words are in the vocabulary
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_built_model_runs_through_mllm_caption_with_dsa(built, capsys):
    out = built / "cap"
    assert cli_main(["mllm", "caption", "--model-type", "llava", "--model-path", str(built / "llava"), "--data",
                     str(built / "synth"), "--format", "synth", "--split", "test", "--limit", "2", "--g", "0.5",
                     "--max-new-tokens", "4", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"base", "dsa"} <= set(metrics["runs"])
    assert "CIDEr" in metrics["runs"]["dsa"] and "CHAIR_i" in metrics["runs"]["dsa"]


def test_build_config_rejects_a_patch_that_does_not_divide_the_image():
    from dsanchor.errors import ConfigError
    from dsanchor.integrations.build import BuildConfig

    with pytest.raises(ConfigError, match="multiple of patch_size"):
        BuildConfig(image_size=30, patch_size=16)
