"""Helpers shared by the subcommands: YAML + flags resolution, threads, JSON output, and accepting ``--out``.

Every command that writes a folder checks it before writing anything (:func:`accept_out`): an empty or new
folder is taken; a folder made by the same command with the same inputs is taken as it is (a killed run
resumes, a finished one is redone or reused); a folder made from other inputs is refused in one line and left
untouched, unless ``--overwrite`` (:func:`add_overwrite`, the same flag on every such command) replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dsanchor.config import load_yaml
from dsanchor.errors import ConfigError
from dsanchor.files import write_json

__all__ = ["add_common", "yaml_of", "write_json", "set_threads", "OVERWRITE_HELP", "OUT_RECORD", "add_overwrite",
           "command_inputs", "accept_out", "accept_command_out"]

OVERWRITE_HELP = ("replace what --out holds when it was made from other inputs (without it such an --out is refused "
                  "and left untouched; a rerun with the same inputs resumes or reuses it without this flag)")
OUT_RECORD = ".dsanchor-out.json"  # in an output folder: the command and inputs that made it
# arguments that do not change what a command writes (and --out itself)
_NOT_INPUTS = frozenset({"func", "overwrite", "threads", "quiet", "progress", "config", "out", "workers"})
_OWN_FILES = (OUT_RECORD, "config.yaml", ".stage.json")  # any of these: a folder dsanchor wrote


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file of config values (flags override it)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """The one ``--overwrite`` flag of every command that writes a folder (None when not given)."""
    parser.add_argument("--overwrite", action="store_true", default=None, help=OVERWRITE_HELP)


def yaml_of(args: argparse.Namespace) -> dict[str, Any]:
    return load_yaml(getattr(args, "config", None))


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


def _as_input(value: Any) -> Any:
    """An argument as recorded: a path that exists is made absolute (the same data from another folder)."""
    if isinstance(value, str) and value and os.path.exists(value):
        return str(Path(value).resolve())
    return value


def command_inputs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """What identifies a command's output: its name, its arguments (runtime ones left out) and its YAML."""
    values = {k: _as_input(v) for k, v in sorted(vars(args).items())
              if k not in _NOT_INPUTS and not k.endswith("_command")}
    return json.loads(json.dumps({"command": command, "args": values, "config": yaml_of(args)}, default=str))


def _differs(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which inputs differ, as flags: "other --epochs, --features"."""
    if old.get("command") != new["command"]:
        return f"an output of `dsanchor {old.get('command')}`"
    keys = sorted(k for k in set(old.get("args", {})) | set(new["args"]) if old["args"].get(k) != new["args"].get(k))
    flags = ["--" + k.replace("_", "-") for k in keys] + (["--config"] if old.get("config") != new["config"] else [])
    return "an output made with other " + (", ".join(flags) if flags else "inputs")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 alone checks, clears and records


def accept_out(out: str | Path, inputs: dict[str, Any], overwrite: bool | None) -> None:
    """Check ``--out`` before anything is written; replace it with ``overwrite``; record ``inputs`` in it.

    Raises:
        ConfigError: ``out`` is a file; or a non-empty folder that dsanchor did not write (never deleted); or a
            folder made from other inputs, without ``overwrite``. Nothing is written then.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; pass a folder")
    if not _is_main_rank():
        return
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if not entries <= {OUT_RECORD, "config.yaml"} or entries == {"config.yaml"}:
        # (the record and at most config.yaml: a run that failed before it produced anything, taken as empty)
        if not any((folder / name).exists() for name in _OWN_FILES):
            raise ConfigError(f"--out {folder} is not empty and holds no dsanchor output; pass a new --out")
        record = folder / OUT_RECORD
        old = json.loads(record.read_text()) if record.is_file() else None
        if old == inputs:
            return
        if not overwrite:
            why = _differs(old, inputs) if old else "an output of an earlier version or another command"
            raise ConfigError(f"--out {folder} holds {why}; pass a new --out, or --overwrite to replace it")
        shutil.rmtree(folder)
    write_json(folder / OUT_RECORD, inputs, indent=1)


def accept_command_out(args: argparse.Namespace, command: str, out: str | Path | None = None) -> None:
    """:func:`accept_out` for a command: its ``--out`` (or ``out``), its inputs, its ``--overwrite``."""
    target = args.out if out is None else out
    if target is not None:  # (a missing --out is the command's own error)
        accept_out(target, command_inputs(args, command), getattr(args, "overwrite", None))
