"""Nothing is written before a run is accepted: a command refused because its --out holds the output of other
inputs exits 2 with one line and leaves every file byte-identical; ``--overwrite`` replaces it; a rerun with the
same inputs still resumes or reuses. Also unreadable images (``--skip-bad``) and WebP files in folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from dsanchor.cli import main as cli_main
from dsanchor.errors import ConfigError


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder``: relative path -> sha256 of its bytes ("dir" for a folder)."""
    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def refused(argv: list[str], folder: Path, capsys) -> str:
    """Run a command that must be refused: exit 2, one line on stderr, ``folder`` byte-identical; the line."""
    before = snapshot(folder)
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]  # (weight-loading bars are not ours)
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert snapshot(folder) == before
    return lines[0]


def _some_images(parts, dest: Path, n: int) -> Path:
    dest.mkdir(parents=True)
    for f in sorted((parts / "synth" / "images").glob("*.png"))[:n]:
        shutil.copy(f, dest / f.name)
    return dest


# ---------------------------------------------------------------- index


def test_refused_index_leaves_the_index_untouched_and_overwrite_replaces_it(parts, pipe, tmp_path, capsys):
    from dsanchor.index import load_index

    idx = tmp_path / "idx"
    base = ["index", "--pipeline", str(parts / "pipe"), "--out", str(idx), "--workers", "0", "--no-progress"]
    assert cli_main(base + ["--images", str(parts / "synth" / "images")]) == 0
    n_all = len(load_index(idx)[0])
    other = _some_images(parts, tmp_path / "other", 3)
    err = refused(base + ["--images", str(other)], idx, capsys)
    assert "another" in err or "other images" in err
    assert "--overwrite" in err
    assert len(load_index(idx)[0]) == n_all  # still describes itself
    before = snapshot(idx)
    assert cli_main(base + ["--images", str(parts / "synth" / "images")]) == 0  # same inputs: reused
    assert snapshot(idx) == before
    assert cli_main(base + ["--images", str(other), "--overwrite"]) == 0
    index, _ = load_index(idx)
    meta = json.loads((idx / "index.json").read_text())
    assert len(index) == meta["n_images"] == 3 and meta["root"] == str(other.resolve())


def test_index_refuses_a_folder_that_is_not_an_index_even_with_overwrite(parts, pipe, tmp_path, capsys):
    mine = _some_images(parts, tmp_path / "photos", 2)
    (mine / "notes.txt").write_text("mine")
    argv = ["index", "--pipeline", str(parts / "pipe"), "--images", str(mine), "--out", str(mine), "--workers", "0",
            "--no-progress"]
    assert "not a dsanchor index" in refused(argv, mine, capsys)
    assert "not a dsanchor index" in refused(argv + ["--overwrite"], mine, capsys)


def test_index_of_another_pipeline_is_refused_before_writing(parts, pipe, tmp_path):
    from dsanchor.errors import ConfigError
    from dsanchor.index import build_index
    from dsanchor.pipeline import _replace

    build_index(pipe, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)
    before = snapshot(tmp_path / "idx")
    other = _replace(pipe, heads=type(pipe.heads)(pipe.heads.config))
    with pytest.raises(ConfigError, match="another pipeline.*--overwrite"):
        build_index(other, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)
    assert snapshot(tmp_path / "idx") == before
    build_index(other, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False, overwrite=True)
    assert snapshot(tmp_path / "idx") != before


# ---------------------------------------------------------------- extract


def _extract_argv(parts, data: Path, out: Path) -> list[str]:
    return ["extract", "--data", str(data), "--format", "synth", "--out", str(out), "--encoder", "clip",
            "--model-path", str(parts / "clip"), "--coarse-layer", "1", "--workers", "0", "--max-regions", "4",
            "--no-progress"]


def test_refused_extract_leaves_the_store_untouched_and_overwrite_replaces_it(parts, tmp_path, capsys):
    from dsanchor.features.store import FeatureStore

    out = tmp_path / "feats"
    argv = _extract_argv(parts, parts / "synth", out)
    assert cli_main(argv + ["--split", "train"]) == 0
    err = refused(argv + ["--split", "test"], out, capsys)
    assert "another extraction" in err and "--overwrite" in err
    before = snapshot(out)
    assert cli_main(argv + ["--split", "train"]) == 0  # the same extraction: nothing to do
    assert {k: v for k, v in snapshot(out).items() if k != "config.yaml"} == \
        {k: v for k, v in before.items() if k != "config.yaml"}
    assert cli_main(argv + ["--split", "test", "--overwrite"]) == 0
    store = FeatureStore(out)
    assert store.manifest["source"]["split"] == "test" and len(store) == store.manifest["split_counts"]["test"]


def test_extract_skip_bad_leaves_out_and_lists_unreadable_images(parts, tmp_path, capsys):
    from dsanchor.features.store import FeatureStore

    data = tmp_path / "synth"
    shutil.copytree(parts / "synth", data)
    victim = sorted((data / "images").glob("*.png"))[1]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated PNG: its header reads, its pixels do not
    argv = _extract_argv(parts, data, tmp_path / "feats")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert victim.name in err and "--skip-bad" in err
    assert cli_main(argv + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {victim}" in out
    store = FeatureStore(tmp_path / "feats")
    assert victim.name not in " ".join(store.image_paths()) and len(store) == 6


# ---------------------------------------------------------------- run (stages replaced by quick fakes)


@pytest.fixture
def fake_stages(monkeypatch):
    """`dsanchor run` with its stages replaced by ones that write random bytes (a rerun would change them)."""
    import os

    import dsanchor.report.demo_report as report
    import dsanchor.run as run_module

    def extract(samples, data, out, config, fmt, labels):
        (out / "store.bin").write_bytes(os.urandom(16))

    def seed_stages(stages, out, config, seed, feat_key, dataset, detector=True):
        stages.run(f"align heads (seed {seed})", out / f"seed{seed}" / "heads",
                   {"features": feat_key, "seed": seed, "epochs": config.align_epochs},
                   lambda d: (d / "heads.bin").write_bytes(os.urandom(16)), "align")
        return {"methods": {"fixed_best": {"g": 0.5}}}

    monkeypatch.setattr(run_module, "quiet_progress", lambda: None)
    monkeypatch.setattr(run_module, "_load_samples", lambda data, fmt, config, splits: ([], "annotations"))
    monkeypatch.setattr(run_module, "_extract", extract)
    monkeypatch.setattr(run_module, "_seed_stages", seed_stages)
    monkeypatch.setattr(run_module, "_pipeline", lambda out, seed0: None)
    monkeypatch.setattr(report, "write_report", lambda out, results, config: None)


def test_refused_run_leaves_the_run_untouched_and_overwrite_replaces_it(fake_stages, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--data", str(tmp_path / "data"), "--format", "synth", "--out", str(out)]
    assert cli_main(argv) == 0
    before = snapshot(out)
    assert cli_main(argv + ["--workers", "0"]) == 0  # same inputs (workers is not one): every stage reused
    assert "reused" in capsys.readouterr().out and snapshot(out) == before
    err = refused(argv + ["--split-seed", "3"], out, capsys)
    assert "other inputs (different split_seed)" in err and "--overwrite" in err
    err = refused(argv + ["--align-epochs", "3"], out, capsys)
    assert "different align_epochs" in err
    assert cli_main(argv + ["--align-epochs", "3", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "extract features" in printed and "reused" in printed  # the features did not change
    after = snapshot(out)
    assert after["features/store.bin"] == before["features/store.bin"]
    assert after["seed0/heads/heads.bin"] != before["seed0/heads/heads.bin"]
    assert json.loads((out / ".run.json").read_text())["align_epochs"] == 3


def test_more_seeds_extend_a_run_without_overwrite(tmp_path):
    from dsanchor.run import RunConfig, run_inputs, start_run

    out = tmp_path / "run"
    start_run(out, 7, run_inputs({"path": "d"}, "synth", None, RunConfig()))
    (out / "seed0").mkdir()
    for seeds in (3, 1):  # each seed's stages are keyed by their seed, so the count is not an input
        assert start_run(out, 19, run_inputs({"path": "d"}, "synth", None, RunConfig(seeds=seeds))) is not None
    with pytest.raises(ConfigError, match="different align_epochs"):
        start_run(out, 19, run_inputs({"path": "d"}, "synth", None, RunConfig(seeds=3, align_epochs=2)))


def test_run_from_before_the_record_is_checked_stage_by_stage(fake_stages, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--data", str(tmp_path / "data"), "--format", "synth", "--out", str(out)]
    assert cli_main(argv) == 0
    (out / ".run.json").unlink()  # as a run of an earlier version left it
    err = refused(argv + ["--split-seed", "3"], out, capsys)
    assert "'extract features' run with other settings" in err and "--overwrite" in err
    assert cli_main(argv) == 0 and (out / ".run.json").is_file()  # the same inputs: reused, then recorded


def test_run_refuses_a_folder_that_is_not_a_run(fake_stages, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    argv = ["run", "--data", str(tmp_path / "data"), "--format", "synth", "--out", str(mine)]
    assert "holds no dsanchor run" in refused(argv, mine, capsys)
    assert "holds no dsanchor run" in refused(argv + ["--overwrite"], mine, capsys)


# ---------------------------------------------------------------- train and the other commands that write a folder


def _train_argv(parts, out: Path) -> list[str]:
    return ["train", "--features", str(parts / "feats"), "--heads", str(parts / "heads"), "--out", str(out),
            "--split", "train", "--timesteps", "64", "--n-envs", "2", "--n-steps", "16", "--batch-size", "32",
            "--n-epochs", "1", "--hidden", "8", "--layers", "1", "--checkpoint-every", "32"]


def test_refused_train_leaves_the_run_untouched_and_overwrite_replaces_it(parts, tmp_path, capsys):
    out = tmp_path / "ppo"
    argv = _train_argv(parts, out)
    assert cli_main(argv) == 0
    assert (out / "controller").is_dir() and (out / "train_info.json").is_file()
    assert cli_main(argv) == 0  # the same inputs: resumed (here: already done)
    err = refused(argv + ["--seed", "1"], out, capsys)
    assert "other --seed" in err and "--overwrite" in err
    err = refused(argv[:4] + [str(parts / "feats")] + argv[5:], out, capsys)  # --heads now names the store
    assert "other --heads" in err
    assert cli_main(argv + ["--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / ".dsanchor-out.json").read_text())["args"]["seed"] == 1


def test_commands_refuse_a_folder_they_did_not_write(parts, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for argv in (_train_argv(parts, mine),
                 ["align", "--features", str(parts / "feats"), "--out", str(mine)],
                 ["data", "synth", "--out", str(mine), "--scenes", "2"]):
        assert "holds no dsanchor output" in refused(argv + ["--overwrite"], mine, capsys)


@pytest.mark.parametrize("command", ["align", "train", "tune", "eval", "demo", "run", "extract", "index",
                                     "hallucination train", "caption train", "caption eval", "data synth",
                                     "mllm build", "mllm caption", "mllm tune", "mllm train", "mllm eval",
                                     "mllm adapt"])
def test_every_command_that_writes_a_folder_has_the_one_overwrite_flag(command, capsys):
    from dsanchor.commands._common import OVERWRITE_HELP

    with pytest.raises(SystemExit):
        cli_main(command.split() + ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and " ".join(OVERWRITE_HELP.split()) in text


# ---------------------------------------------------------------- unreadable images, WebP, data check, messages


def _folder_with_bad_files(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (20, 50), (32, 32)]):
        Image.new("RGB", size, (40 * i, 90, 20)).save(folder / f"good{i}.png")
    Image.new("RGB", (24, 24), (200, 10, 10)).save(folder / "good3.webp")
    (folder / "garbage.jpg").write_bytes(b"not an image at all")
    truncated = folder / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    return folder


def test_index_skip_bad_lists_unreadable_images_and_indexes_the_rest(parts, pipe, tmp_path, capsys):
    folder = _folder_with_bad_files(tmp_path)
    argv = ["index", "--pipeline", str(parts / "pipe"), "--images", str(folder), "--out", str(tmp_path / "idx"),
            "--workers", "0", "--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "garbage.jpg" in err and "--skip-bad" in err
    assert not (tmp_path / "idx").exists()
    assert cli_main(argv + ["--skip-bad", "--shard-size", "1"]) == 0  # the truncated file's shard is empty
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("skipped ") for line in out) == 2
    assert "4 images" in out[-1] and "2 unreadable left out" in out[-1]  # three PNGs and the WebP
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["n_images"] == 4


def test_folders_read_webp_and_say_what_they_leave_out(tmp_path, caplog):
    from PIL import Image

    from dsanchor.data import load_dataset

    Image.new("RGB", (30, 20)).save(tmp_path / "a.webp")
    Image.new("RGB", (30, 20)).save(tmp_path / "b.gif")
    Image.new("RGB", (30, 20)).save(tmp_path / "c.bmp")
    samples = load_dataset("images", tmp_path)
    assert [Path(s.image_path).name for s in samples] == ["a.webp"]
    assert (samples[0].width, samples[0].height) == (30, 20)
    assert "left out 1 .bmp file, 1 .gif file" in caplog.text


def test_data_check_names_every_bad_file_and_says_no_splits(tmp_path, capsys):
    from dsanchor.data import check_dataset, format_summary
    from dsanchor.errors import DataError

    folder = _folder_with_bad_files(tmp_path)
    with pytest.raises(DataError, match="not a readable image"):  # loading reads every header
        check_dataset("images", folder)
    (folder / "garbage.jpg").unlink()
    (folder / "also-truncated.png").write_bytes((folder / "truncated.png").read_bytes())
    with pytest.raises(DataError, match=r"2 of 6 image files cannot be used: also-truncated.png \(.*truncated.png"):
        check_dataset("images", folder)
    for f in ("truncated.png", "also-truncated.png"):
        (folder / f).unlink()
    assert "images: 4 (no splits)" in format_summary(check_dataset("images", folder))


def test_loader_errors_say_what_to_pass_on_the_command_line(tmp_path, capsys):
    (tmp_path / "coco").mkdir()
    assert cli_main(["data", "check", str(tmp_path / "coco"), "--format", "coco"]) == 2
    err = capsys.readouterr().err
    assert "--data FILE" in err and "captions=PATH in Python" in err


def test_mllm_help_lists_its_actions_in_workflow_order(capsys):
    with pytest.raises(SystemExit):
        cli_main(["mllm", "--help"])
    text = capsys.readouterr().out
    listed = [line.split()[0] for line in text.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == ["build", "caption", "answer", "tune", "train", "eval", "adapt"]


def test_a_folder_left_by_a_run_that_failed_at_once_is_taken_as_empty(tmp_path):
    from dsanchor.commands._common import OUT_RECORD, accept_out
    from dsanchor.errors import ConfigError

    out = tmp_path / "out"
    accept_out(out, {"command": "align", "args": {"epochs": 1}, "config": {}}, None)
    (out / "config.yaml").write_text("align: {}\n")  # then the command stopped with a one-line error
    accept_out(out, {"command": "align", "args": {"epochs": 2}, "config": {}}, None)  # the corrected rerun
    assert json.loads((out / OUT_RECORD).read_text())["args"]["epochs"] == 2
    (out / "heads.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="other --epochs; pass a new --out, or --overwrite"):
        accept_out(out, {"command": "align", "args": {"epochs": 3}, "config": {}}, None)
    with pytest.raises(ConfigError, match="an output of `dsanchor align`"):
        accept_out(out, {"command": "train", "args": {"epochs": 2}, "config": {}}, None)
    with pytest.raises(ConfigError, match="is a file"):
        accept_out(out / "heads.safetensors", {"command": "align", "args": {}, "config": {}}, None)


def test_run_recorded_before_auto_regions_resumes_only_with_the_old_default(tmp_path):
    """A run recorded when region_source defaulted to proposals resumes under the auto default (the same boxes for
    renders and annotated data; stage keys decide the rest); one recorded with another source is refused."""
    import json

    from dsanchor.errors import ConfigError
    from dsanchor.files import write_json
    from dsanchor.run import RUN_RECORD, RunConfig, run_inputs, start_run

    inputs = run_inputs({"data": "d"}, "synth", None, RunConfig())
    assert "region_source" not in inputs and "region_stage" not in inputs and "object_labels" not in inputs
    out = tmp_path / "run"
    out.mkdir()
    write_json(out / RUN_RECORD, {**inputs, "region_source": "proposals"})
    start_run(out, 7, inputs)
    assert json.loads((out / RUN_RECORD).read_text()) == inputs
    write_json(out / RUN_RECORD, {**inputs, "region_source": "annotations"})
    with pytest.raises(ConfigError, match="different region_source"):
        start_run(out, 7, inputs)
