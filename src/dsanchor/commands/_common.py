"""Helpers shared by the subcommands: YAML + flags resolution, threads, JSON output."""

from __future__ import annotations

import argparse
from typing import Any

from dsanchor.config import load_yaml
from dsanchor.files import write_json

__all__ = ["add_common", "yaml_of", "write_json", "set_threads"]


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file of config values (flags override it)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def yaml_of(args: argparse.Namespace) -> dict[str, Any]:
    return load_yaml(getattr(args, "config", None))


def set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


