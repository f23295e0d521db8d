"""Helpers shared by the subcommands: YAML + flags resolution, threads, JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from dsanchor.config import load_yaml

__all__ = ["add_common", "yaml_of", "write_json", "set_threads"]


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file of config values (flags override it)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def yaml_of(args: argparse.Namespace) -> dict[str, Any]:
    return load_yaml(getattr(args, "config", None))


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2))
    return p
