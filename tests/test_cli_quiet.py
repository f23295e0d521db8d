"""The command line is quiet and quick to start: no third-party INFO lines or weight-loading bars unless
``-v``, no torch import for ``dsanchor --help`` or a command's ``--help``, and ``dsanchor caption --help``
shows both of its forms."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dsanchor
from dsanchor import cli

SRC = str(Path(dsanchor.__file__).resolve().parents[1])
LOUD = ("faiss.loader", "swigfaiss", "Loading weights", "sentence_transformers", "Load pretrained")


def _dsanchor(*argv: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # as a user's shell has it
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "dsanchor", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["index", "--help"], ["serve", "--help"],
                                  ["data", "--help"], ["run", "--help"]])
def test_help_does_not_import_torch(argv):
    code = (f"import sys\nfrom dsanchor.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('torch imported:', 'torch' in sys.modules)")
    out = _dsanchor(code=code)
    assert out.returncode == 0, out.stderr
    assert "usage: dsanchor" in out.stdout
    assert out.stdout.rstrip().endswith("torch imported: False")


def test_top_level_help_matches_each_commands_own_help():
    parser = cli.build_parser()  # every module's parser
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    own = {a.dest: a.help for a in sub._choices_actions}
    assert own == {m.replace("_", "-"): cli.HELP[m] for m in cli.COMMANDS}
    listed = _dsanchor("--help").stdout
    for name in own:
        assert f"    {name}" in listed


def test_search_is_quiet_and_verbose_brings_the_logs_back(parts, pipe, tmp_path):
    from dsanchor.index import build_index

    build_index(pipe, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)
    quiet = _dsanchor("search", "--index", str(tmp_path / "idx"), "--query", "a red cube", "--k", "2")
    assert quiet.returncode == 0, quiet.stderr
    assert not [w for w in LOUD if w in quiet.stdout + quiet.stderr], quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if " INFO " in line and " dsanchor." not in line]
    loud = _dsanchor("search", "--index", str(tmp_path / "idx"), "--query", "a red cube", "--k", "2", "-v")
    assert loud.returncode == 0, loud.stderr
    assert "faiss.loader" in loud.stderr
    assert quiet.stdout == loud.stdout


def test_caption_help_shows_both_forms_and_errors_name_caption(tmp_path):
    out = _dsanchor("caption", "--help")
    assert out.returncode == 0
    assert "dsanchor caption [-h] [-v] ACTION ..." in out.stdout
    assert "dsanchor caption [-h] --pipeline PIPELINE" in out.stdout and "IMAGE [IMAGE ...]" in out.stdout
    assert "--beam BEAM" in out.stdout
    bad = _dsanchor("caption", "--pipeline", str(tmp_path / "nope"), str(tmp_path / "a.png"))
    assert bad.returncode == 2
    assert bad.stderr.startswith("dsanchor caption: error:"), bad.stderr
    usage = _dsanchor("caption", "--pipeline")
    assert "dsanchor caption: error: argument --pipeline" in usage.stderr
    assert "caption-images" not in bad.stderr + usage.stderr


def test_setup_logging_keeps_dsanchor_info_and_drops_other_info(caplog):
    from dsanchor.logs import _OwnInfoOnly

    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    keep = _OwnInfoOnly()
    assert keep.filter(record("dsanchor.features.extract", logging.INFO))
    assert not keep.filter(record("faiss.loader", logging.INFO))
    assert keep.filter(record("faiss.loader", logging.WARNING))
    assert not keep.filter(record("sentence_transformers.SentenceTransformer", logging.INFO))


def test_progress_bars_show_only_on_a_terminal():
    from dsanchor.progress import progress_bar

    assert not sys.stderr.isatty()  # pytest captures it
    assert progress_bar(range(3), desc="x", unit="it").disable
    assert progress_bar(range(3), desc="x", unit="it", enabled=False).disable


def test_ppo_progress_bar_counts_the_timesteps_and_changes_no_number(tmp_path, monkeypatch):
    import io

    import torch
    from tqdm import tqdm

    import dsanchor.rl.ppo as ppo_mod
    from dsanchor.rl.env import RewardConfig

    bars = []

    def shown_bar(**kwargs):  # as on a terminal, into a buffer
        bars.append(tqdm(**kwargs, file=io.StringIO(), disable=False))
        return bars[-1]

    monkeypatch.setattr(ppo_mod, "progress_bar", shown_bar)
    torch.manual_seed(0)
    states = torch.randn(64, 4)

    def reward_model(q, g):
        return 1.0 - abs(g - float(states[q, 0] > 0)), 0.0

    cfg = ppo_mod.PPOConfig(timesteps=256, n_envs=2, n_steps=64, batch_size=64, n_epochs=2, checkpoint_every=1024)
    quiet, _ = ppo_mod.train_ppo(states, reward_model, RewardConfig(), cfg, tmp_path / "quiet", progress=False)
    assert bars == []
    shown, info = ppo_mod.train_ppo(states, reward_model, RewardConfig(), cfg, tmp_path / "shown", progress=True)
    assert len(bars) == 1 and bars[0].n == info["timesteps"] == 256 and bars[0].total == 256
    for (name, a), (_, b) in zip(quiet.state_dict().items(), shown.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
