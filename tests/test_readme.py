"""Every command in README.md works: each `dsanchor ...` line parses against the real command line, and the
"Using it" commands and Python snippet run end to end on a tiny demo (the same `dsanchor demo` as `make demo`,
with a tiny budget), from a folder where `runs/demo` is that demo.

Lines that need what a test machine does not have are parsed only: paths under /data or /models (a user's
datasets and weights) and `dsanchor serve` (a server that runs until stopped; the page is tested in
tests/test_page.py). `make` and `source` lines are the README's own tooling: CI runs `make test` itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

from dsanchor.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--scenes", "60", "--align-epochs", "2", "--detector-epochs", "2", "--tune-trials", "2",
        "--tune-timesteps", "512", "--ppo-timesteps", "1024", "--caption-steps", "20",
        "--caption-ppo-timesteps", "512", "--workers", "0", "--threads", "1"]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[list[str]]:
    """Every `dsanchor ...` command of the README's bash blocks, comments removed, continuations joined."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("dsanchor "):
                out.append(shlex.split(line)[1:])
    return out


def runnable(argv: list[str]) -> bool:
    return argv[0] != "serve" and not any(a.startswith(("/data", "/models")) for a in argv)


def test_readme_has_commands():
    assert len(commands()) >= 10 and blocks("python")


@pytest.mark.parametrize("argv", commands(), ids=lambda a: " ".join(a[:3]))
def test_readme_command_parses(argv):
    from dsanchor.cli import parse_args

    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as info:
            parse_args(argv)
        assert info.value.code == 0
        return
    args = parse_args(argv)
    assert getattr(args, "func", None) is not None


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.mark.slow
def test_readme_usage_runs_on_a_tiny_demo(tmp_path, capsys):
    with _cwd(tmp_path):
        assert main(["demo", "--out", "runs/demo", *TINY]) == 0
        for argv in commands():
            if argv[0] in ("run", "extract", "mllm") or argv[:2] == ["data", "check"]:
                continue  # parsed above; these need a user's dataset or weights
            if argv[:2] == ["demo", "--mllm"]:
                continue  # parsed above; minutes at its budget (tests/test_mllm_loop.py runs it at a tiny one)
            if runnable(argv) and "--help" not in argv:
                assert main(argv) == 0, " ".join(argv)
        for snippet in blocks("python"):
            if "attach_dsa(model" in snippet:
                continue  # needs a user's MLLM (tests/test_integrations.py runs attach_dsa on tiny ones)
            exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "a large green metal sphere" in out
