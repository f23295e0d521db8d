"""DSA inside an MLLM, end to end on tiny random LLaVA, BLIP-2 and IDEFICS models (seconds each): the state from
the seam and the prompt, the saved state layout, the grid cache (resume, torchrun), the rewards, and the
`dsanchor mllm tune | train | eval | adapt` commands."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from dsanchor.cli import main as cli_main  # noqa: E402
from dsanchor.controller import ControllerConfig, GranularityController  # noqa: E402
from dsanchor.errors import ConfigError, DataError  # noqa: E402
from dsanchor.integrations import attach_dsa  # noqa: E402
from dsanchor.integrations.small_models import save_tiny_mllm, tiny_mllm  # noqa: E402

TYPES = ("llava", "blip2", "idefics")
TINY_PPO = ["--ppo-n-envs", "2", "--ppo-n-steps", "32", "--ppo-batch-size", "32", "--ppo-n-epochs", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synth dataset (32 train / 4 val / 4 test images; the tests use 8 / 4 / 4) and a tiny model of each type."""
    from dsanchor.data import SynthConfig, generate_synth

    root = tmp_path_factory.mktemp("mllm-loop")
    generate_synth(root / "synth", SynthConfig(scenes=40, image_size=64, max_objects=3, supersample=1))
    for t in TYPES:
        save_tiny_mllm(t, root / t)
    return root


def _images(n: int):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def _controller(model, coarse_layer: int = 1, seed: int = 0) -> GranularityController:
    from dsanchor.integrations.state import state_layout

    layout = state_layout(model, coarse_layer)
    torch.manual_seed(seed)
    return GranularityController(ControllerConfig(state_dim=layout.size, hidden=8, state_layout=layout.to_dict()))


class _Spy(torch.nn.Module):
    """Records the states a handle passes and returns g = 0.5."""

    def __init__(self, ctrl):
        super().__init__()
        self.config, self.states = ctrl.config, []

    def forward(self, state):
        self.states.append(state)
        return torch.full((state.shape[0],), 0.5)


@pytest.mark.parametrize("model_type", TYPES)
def test_state_reads_the_seam_and_the_prompt(model_type):
    from dsanchor.integrations import processor_fns
    from dsanchor.mllm.pope import question_prompt

    model, processor = tiny_mllm(model_type)
    spy = _Spy(_controller(model))
    images = _images(2)
    with attach_dsa(model, spy) as handle:
        for prompt in (None, question_prompt(model_type, "red cube")):
            prepare, _ = processor_fns(model_type, processor, prompt)
            model.generate(**prepare(images), max_new_tokens=2, do_sample=False)
        assert handle.layout is not None and handle.controller_seconds > 0
    first, second = spy.states[0], spy.states[-1]
    d = handle.layout.image_dim
    assert first.shape == (2, handle.layout.size)
    assert torch.allclose(first[:, :2 * d], second[:, :2 * d])  # same images: same image part
    assert not torch.allclose(first[:, 2 * d:], second[:, 2 * d:])  # another prompt: another text part
    assert not torch.allclose(first[0, :2 * d], first[1, :2 * d])  # two images differ


def test_controller_needs_the_prompt():
    model, _ = tiny_mllm("llava")
    with attach_dsa(model, _controller(model)) as handle:
        with pytest.raises(ConfigError, match="reads the prompt"):
            handle.prompt_rows(1)  # nothing has called the model with input_ids


def test_saved_layout_rebuilds_the_state_and_rejects_another_model(tmp_path):
    llava, _ = tiny_mllm("llava")
    ctrl = _controller(llava)
    ctrl.save_pretrained(tmp_path / "ctrl")
    loaded = GranularityController.from_pretrained(tmp_path / "ctrl")
    assert loaded.config.state_layout == ctrl.config.state_layout
    attach_dsa(llava, loaded).detach()
    blip2, _ = tiny_mllm("blip2")
    with pytest.raises(ConfigError, match="model_type='llava'"):
        attach_dsa(blip2, loaded)
    with pytest.raises(ConfigError, match="coarse_layer=1"):
        attach_dsa(llava, loaded, coarse_layer=2)
    plain = GranularityController(ControllerConfig(state_dim=7))  # a retrieval-style controller
    with pytest.raises(ConfigError, match="state_dim=7"):
        attach_dsa(llava, plain)


def test_g_sources_fixed_settable_recording_and_uniform():
    """The one set of g sources (replacing UniformG, RecordingG + SimpleNamespace, _SetG and _Attached)."""
    from dsanchor.integrations import SettableG, UniformG, state_layout

    model, _ = tiny_mllm("llava")
    layout = state_layout(model, 1)
    rec = SettableG(layout=layout, record=True)
    assert rec.config.state_dim == layout.size and rec.config.state_layout == layout.to_dict()  # a real config
    rec.set(0.25)
    assert rec(torch.zeros(3, layout.size)).tolist() == [0.25] * 3 and len(rec.states) == 1
    per_image = SettableG()
    per_image.set(torch.tensor([0.0, 1.0]))
    assert per_image(torch.zeros(2, 4)).tolist() == [0.0, 1.0]
    uniform, again = UniformG(seed=3), UniformG(seed=3)
    with uniform.at(0.5):  # a measurement at one g draws nothing
        assert uniform(torch.zeros(2, 1)).tolist() == [0.5, 0.5]
    draws = uniform(torch.zeros(4, 1))
    assert torch.equal(draws, again(torch.zeros(4, 1))) and ((draws >= 0) & (draws <= 1)).all()
    fixed = UniformG(seed=3, fixed=1.0)  # mllm build --no-uniform-g
    with fixed.at(0.0):
        assert fixed(torch.zeros(1, 1)).item() == 0.0
    assert fixed(torch.zeros(1, 1)).item() == 1.0  # back to what was set
    with attach_dsa(model, 0.5) as handle:  # a fixed g is the float itself
        assert handle.fixed_g == 0.5


def _grid_args(world: Path, model_type: str, cache: Path) -> list[str]:
    return ["--model-type", model_type, "--model-path", str(world / model_type), "--data", str(world / "synth"),
            "--format", "synth", "--cache", str(cache), "--max-new-tokens", "3", "--grid", "3", "--chunk-size", "4",
            "--batch-size", "2", "--limit", "8", "--threads", "1", "--quiet"]


def _cache(world: Path, model_type: str, out: Path, split: str = "train"):
    from dsanchor.mllm.config import GridConfig, MLLMConfig
    from dsanchor.mllm.data import load_mllm_data
    from dsanchor.mllm.rewards import split_rewards

    cfg = MLLMConfig(model_type=model_type, model_path=str(world / model_type), data=str(world / "synth"),
                     format="synth", cache=str(out), out=str(out), limit=8)
    data = load_mllm_data(cfg)
    return split_rewards(cfg, data, split, GridConfig(grid=3, chunk_size=4, batch_size=2, max_new_tokens=3), False)


def test_grid_cache_resumes_after_a_kill_and_refuses_other_settings(world, tmp_path, monkeypatch):
    from dsanchor.mllm.grid import load_grid_cache
    from dsanchor.mllm.rewards import GridRewardModel

    cache, rewards = _cache(world, "llava", tmp_path)
    assert len(cache.image_ids) == 8 and len(cache.captions[0]) == 3 and cache.states.shape[0] == 8
    assert rewards.cider.shape == (8, 3) and rewards.n_unjudged == 0
    assert ((rewards.hallucination >= 0) & (rewards.hallucination <= 1)).all()
    before = load_grid_cache(tmp_path / "train")
    (tmp_path / "train" / "chunk-00001.json").unlink()  # as if killed while writing chunk 1
    calls = []
    import transformers

    original = transformers.LlavaForConditionalGeneration.generate

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "generate", counting)
    again, _ = _cache(world, "llava", tmp_path)
    assert len(calls) == 2 * 3  # one chunk of 4 images: 2 batches x 3 grid values
    assert again.captions == before.captions and torch.equal(again.states, before.states)
    m = GridRewardModel(cache.grid, rewards.cider, rewards.hallucination)
    c0, h0 = m.values(0, 0.0)
    c_mid, _ = m.values(0, 0.25)
    assert c_mid == pytest.approx((rewards.cider[0, 0] + rewards.cider[0, 1]) / 2)
    assert m(0, 0.0) == (c0, -h0)
    meta = json.loads((tmp_path / "train" / "grid.json").read_text())
    meta["prompt"] = "another prompt"
    (tmp_path / "train" / "grid.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="another prompt"):
        _cache(world, "llava", tmp_path)
    shutil.rmtree(tmp_path / "train")
    with pytest.raises(DataError, match="not a grid cache"):
        load_grid_cache(tmp_path / "train")


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_grid_cache(world, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = [*_grid_args(world, "llava", tmp_path / "one"), "--ppo-timesteps", "64", *TINY_PPO]
    one = [sys.executable, "-m", "dsanchor", "mllm", "train", *base, "--out", str(tmp_path / "o1")]
    subprocess.run(one, check=True, env=env, timeout=300, capture_output=True)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    two_args = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in base]
    two = [torchrun, "--nproc-per-node", "2", "--standalone", "-m", "dsanchor", "mllm", "train", *two_args,
           "--out", str(tmp_path / "o2")]
    subprocess.run(two, check=True, env=env, timeout=300, capture_output=True)
    from dsanchor.mllm.grid import load_grid_cache

    a, b = load_grid_cache(tmp_path / "one" / "train"), load_grid_cache(tmp_path / "two" / "train")
    assert a.image_ids == b.image_ids and a.captions == b.captions
    assert torch.allclose(a.states, b.states, atol=1e-5)
    names = sorted(p.name for p in (tmp_path / "one" / "train").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two" / "train").iterdir())
    assert (tmp_path / "o2" / "controller" / "controller.safetensors").is_file()


@pytest.mark.parametrize("model_type", TYPES)
def test_tune_train_eval_adapt_end_to_end(world, tmp_path, model_type):
    args = _grid_args(world, model_type, tmp_path / "cache")
    assert cli_main(["mllm", "tune", *args, "--out", str(tmp_path / "tune"), "--tune-trials", "2",
                     "--tune-startup-trials", "1", "--tune-timesteps", "64", *TINY_PPO]) == 0
    best = json.loads((tmp_path / "tune" / "best_reward.json").read_text())
    assert best["alpha"] == 1.0 and len(best["trials"]) == 2
    seeds = ["--seeds", "2"] if model_type == "llava" else []
    assert cli_main(["mllm", "train", *args, "--out", str(tmp_path / "ctrl"), "--tuned", str(tmp_path / "tune"),
                     "--ppo-timesteps", "128", *TINY_PPO, *seeds]) == 0
    info = json.loads((tmp_path / "ctrl" / "train_info.json").read_text())
    assert info["reward"]["beta"] == pytest.approx(best["beta"]) and info["n_train_images"] == 8
    assert set(info["seconds"]) >= {"grid_cache", "ppo"}
    assert (tmp_path / "ctrl" / ("seed0" if seeds else "") / "tb").is_dir()  # TensorBoard logs
    ctrl_dir = tmp_path / "ctrl" / ("seed1" if seeds else "") / "controller"
    ctrl = GranularityController.from_pretrained(ctrl_dir)
    assert ctrl.config.state_layout["model_type"] == model_type
    assert cli_main(["mllm", "eval", *args, "--out", str(tmp_path / "eval"), "--controller", str(tmp_path / "ctrl"),
                     "--n-boot", "50", "--pope-positives", "1"]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(res["methods"]) == ["base", "fixed_best", "dsa_ppo", "oracle"]
    for name, row in res["methods"].items():
        for key in ("BLEU-4", "CIDEr", "CHAIR_i", "CHAIR_s"):
            assert key in row, (name, key)
        assert set(row["pope"]) == {"random", "popular", "adversarial", "all"}
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(row["pope"]["all"])
        assert {"protocol", "t2i", "i2t"} <= set(row["retrieval"]) and "R@10" in row["retrieval"]["t2i"]
    assert res["methods"]["fixed_best"]["g_mean"] == res["fixed_best_g"] and "ms_per_image" in res["methods"]["dsa_ppo"]
    assert res["overhead"]["controller_ms_per_image"] > 0
    assert res["n_controller_seeds"] == (2 if seeds else 1)
    if seeds:  # one dsa_ppo measurement per seed, combined as mean and std; intervals resample the seeds
        assert len(res["methods"]["dsa_ppo"]["seeds"]) == 2 and "CIDEr_std" in res["methods"]["dsa_ppo"]
        assert res["differences"]["dsa_ppo - base"]["CIDEr"]["seeds"] == [2, 1]
    for diff in ("dsa_ppo - base", "dsa_ppo - fixed_best"):
        assert set(res["differences"][diff]) == {"CIDEr", "CHAIR_i", "POPE_F1"}
        d = res["differences"][diff]["CIDEr"]
        assert d["low"] <= d["diff"] <= d["high"]
    assert "| dsa_ppo |" in (tmp_path / "eval" / "report.md").read_text()
    assert cli_main(["mllm", "adapt", *args, "--out", str(tmp_path / "adapt"), "--steps", "2",
                     "--adapt-batch-size", "2", "--eval-images", "2", "--eval-grid", "2"]) == 0
    ad = json.loads((tmp_path / "adapt" / "adapt_info.json").read_text())
    assert len(ad["cider_before"]) == len(ad["cider_after"]) == 2
    assert ad["bytes"] < 200_000  # only the adapter is saved
    # the adapter loads through --adapter and changes what the model reads at g = 0.5, not the base model
    model, processor = tiny_mllm(model_type)
    from dsanchor.integrations import load_adapter, processor_fns

    prepare, _ = processor_fns(model_type, processor)
    inputs = prepare(_images(1))
    with torch.no_grad():
        base = model(**inputs).logits
        with attach_dsa(model, 0.5):
            plain = model(**inputs).logits
        adapter = load_adapter(model, tmp_path / "adapt")
        with torch.no_grad():
            adapter.up.weight.add_(0.5)  # the trained one is nearly the identity after 2 steps
        with attach_dsa(model, 0.5, adapter=adapter):
            adapted = model(**inputs).logits
        assert torch.equal(model(**inputs).logits, base)
    assert not torch.allclose(plain, adapted)


def test_adapter_for_another_seam_is_a_one_line_error(world, tmp_path):
    from dsanchor.integrations import SeamAdapter, load_adapter, save_adapter

    save_adapter(SeamAdapter(12, 4), tmp_path, "llava", 1)
    model, _ = tiny_mllm("llava")
    with pytest.raises(ConfigError, match="seam of width 12"):
        load_adapter(model, tmp_path)
    with pytest.raises(DataError, match="no seam adapter"):
        load_adapter(model, tmp_path / "nowhere")


def test_bad_mllm_arguments_are_one_line_errors(world, tmp_path, capsys):
    assert cli_main(["mllm", "train", "--model-type", "gpt", "--model-path", str(world / "llava"), "--data",
                     str(world / "synth"), "--format", "synth", "--out", str(tmp_path)]) == 2
    assert "unknown --model-type 'gpt'" in capsys.readouterr().err
    assert cli_main(["mllm", "eval", *_grid_args(world, "llava", tmp_path / "c"), "--out", str(tmp_path / "e"),
                     "--controller", str(tmp_path / "missing")]) == 2
    assert "not a saved controller" in capsys.readouterr().err
    assert cli_main(["mllm", "train", *_grid_args(world, "llava", tmp_path / "c"), "--out", str(tmp_path / "t"),
                     "--hall-detector", str(tmp_path)]) == 2
    assert "--hall-detector and --features go together" in capsys.readouterr().err


def test_demo_mllm_runs_every_stage_and_reuses_them(tmp_path, capsys):
    """`dsanchor demo --mllm` at tiny sizes: build, tune, grid + PPO, eval; a rerun reuses every stage."""
    from test_mllm_build import TINY  # noqa: E402  (tests/ is on the path under pytest)

    tiny = dict(zip([a[2:].replace("-", "_") for a in TINY[0::2]], TINY[1::2], strict=True))
    tiny.pop("threads")
    (tmp_path / "tiny.yaml").write_text("build:\n" + "".join(
        f"  {k}: {v}\n" for k, v in tiny.items()))
    argv = ["demo", "--mllm", "--out", str(tmp_path / "d"), "--config", str(tmp_path / "tiny.yaml"), "--mllm-build",
            "--mllm-scenes", "40", "--mllm-train-images", "8", "--mllm-eval-images", "4", "--mllm-grid", "3",
            "--mllm-tune-trials", "2", "--mllm-tune-timesteps", "64", "--mllm-ppo-timesteps", "256", "--threads", "1"]
    assert cli_main(argv) == 0
    res = json.loads((tmp_path / "d" / "eval" / "results.json").read_text())
    assert set(res["methods"]) == {"base", "fixed_best", "family_best", "router_loss", "dsa_ppo", "oracle"}
    assert {"questions", "build", "tune", "ppo", "eval", "total"} <= set(res["demo_timing_s"])
    assert (tmp_path / "d" / "llava" / "config.json").is_file() and (tmp_path / "d" / "eval" / "report.md").is_file()
    assert "question family" in (tmp_path / "d" / "eval" / "report.md").read_text()
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 6
    captions = argv[:3] + [str(tmp_path / "c")] + argv[4:] + ["--no-mllm-questions"]  # one caption per image
    assert cli_main(captions) == 0
    res = json.loads((tmp_path / "c" / "eval" / "results.json").read_text())
    assert list(res["methods"]) == ["base", "fixed_best", "dsa_ppo", "oracle"]


def test_shipped_model_loads_offline_and_matches_its_record():
    """The small LLaVA in the package loads with plain transformers offline; its weights are the ones its record's
    SHA-256 names, and its build.yaml resolves to the BuildConfig it records."""
    import hashlib

    import yaml
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dsanchor.config import resolve_config
    from dsanchor.mllm.config import BuildConfig
    from dsanchor.mllm.shipped import SMALL_LLAVA, shipped_record

    record = shipped_record()
    assert hashlib.sha256((SMALL_LLAVA / "model.safetensors").read_bytes()).hexdigest() == record["sha256"]
    build = resolve_config(BuildConfig, None, yaml.safe_load((SMALL_LLAVA / "build.yaml").read_text()), section="build")
    assert json.loads(json.dumps(dataclasses.asdict(build))) == record["build"]
    assert record["data"]["seed"] == 0 and record["data"]["image_size"] == build.image_size
    model = LlavaForConditionalGeneration.from_pretrained(SMALL_LLAVA, local_files_only=True)
    processor = AutoProcessor.from_pretrained(SMALL_LLAVA, local_files_only=True)
    assert model.config.vision_config.image_size == build.image_size
    ids = processor.tokenizer("a red cube", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and processor.tokenizer.unk_token_id not in ids  # the words it was trained on


@pytest.mark.slow
def test_demo_mllm_starts_from_the_shipped_model(tmp_path, capsys):
    """`dsanchor demo --mllm` without --mllm-build: no build stage, the shipped model on scenes of a seed it never
    saw at its image size; the seed of its training scenes is refused in one line."""
    from PIL import Image

    argv = ["demo", "--mllm", "--out", str(tmp_path / "d"), "--mllm-scenes", "20", "--mllm-train-images", "2",
            "--mllm-eval-images", "4", "--mllm-grid", "2", "--mllm-tune-trials", "2", "--mllm-tune-timesteps", "32",
            "--mllm-ppo-timesteps", "64", "--threads", "1"]
    assert cli_main([*argv[:3], str(tmp_path / "bad"), "--mllm-data-seed", "0"]) == 2
    assert "seed of the shipped model's training scenes" in capsys.readouterr().err
    assert cli_main([*argv[:3], str(tmp_path / "bad"), "--data-seed", "5"]) == 2
    assert "--data-seed apply to the retrieval demo only; with --mllm use --mllm-scenes" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert cli_main(argv) == 0
    res = json.loads((tmp_path / "d" / "eval" / "results.json").read_text())
    assert "build" not in res["demo_timing_s"] and not (tmp_path / "d" / "llava").exists()
    assert set(res["methods"]) == {"base", "fixed_best", "family_best", "router_loss", "dsa_ppo", "oracle"}
    image = next((tmp_path / "d" / "data" / "images").iterdir())
    assert Image.open(image).size[0] == 128


def test_images_without_annotations_get_the_detectors_estimate(parts, tmp_path):
    """R_hall of an image CHAIR cannot judge comes from the hallucination detector reading the store's features."""
    import dataclasses

    from dsanchor.data import load_dataset
    from dsanchor.mllm.grid import GridCache
    from dsanchor.mllm.rewards import DetectorShares, grid_rewards

    samples = load_dataset("synth", parts / "synth")[:4]
    stripped = [dataclasses.replace(s, objects=[]) if k % 2 else s for k, s in enumerate(samples)]
    ids = [s.image_id for s in stripped]
    captions = [["a red cube and a blue sphere", "there is nothing"] for _ in ids]
    cache = GridCache(ids, torch.tensor([0.0, 1.0]), captions, torch.zeros(len(ids), 3), {}, 0.0)
    plain = grid_rewards(cache, stripped, "synth")
    assert plain.n_unjudged == 2 and plain.n_detector == 0
    assert (plain.hallucination[1::2] == 0).all()  # not judged and no detector: 0
    det = DetectorShares(parts / "detector", parts / "feats", "synth")
    with_det = grid_rewards(cache, stripped, "synth", det)
    assert with_det.n_detector == 2
    est = with_det.hallucination[1::2, 0]  # the caption that names objects
    assert ((est > 0) & (est < 1)).all()  # a probability-based share, not a ground-truth 0 / 0.5 / 1
    assert (with_det.hallucination[1::2, 1] == 0).all()  # names no object: 0
    assert np.array_equal(with_det.hallucination[0::2], plain.hallucination[0::2])  # judged: ground truth
    with pytest.raises(DataError, match="not in the feature store"):
        det([10**9], ["a red cube"])
