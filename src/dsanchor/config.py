"""Dataclass configs <-> command line and YAML.

Every component has a dataclass config whose defaults are defined once (STYLE.md §3). The CLI is
generated from those configs: :func:`add_config_args` adds one ``--flag`` per field, a YAML file may set
values, and flags given on the command line override it (:func:`resolve_config`). Every run writes
its resolved config next to its outputs (:func:`save_resolved`).

A field's help text is ``field(metadata={"help": ...})``; fields without it get their name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dsanchor.errors import ConfigError

__all__ = ["add_config_args", "resolve_config", "load_yaml", "save_resolved", "config_to_dict", "config_from_dict"]

T = TypeVar("T")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] and return the concrete type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of dataclass ``cls``; unset flags stay ``None`` so YAML values survive."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        helptext = f"{f.metadata.get('help', f.name.replace('_', ' '))} (default: {default})"
        dest = _dest(prefix, f.name)
        if tp is bool:
            group.add_argument(_flag(prefix, f.name), dest=dest, default=None,
                               action=argparse.BooleanOptionalAction, help=helptext)
        elif typing.get_origin(tp) in (tuple, list):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            group.add_argument(_flag(prefix, f.name), dest=dest, default=None, nargs="+",
                               type=inner, help=helptext)
        else:
            conv = tp if tp in (int, float, str) else str
            group.add_argument(_flag(prefix, f.name), dest=dest, default=None, type=conv, help=helptext)


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML config file (a mapping). ``None`` gives an empty mapping."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of config values")
    return data


def config_from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with a clear error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in values.items():
        tp = _base_type(hints[k])
        if typing.get_origin(tp) is tuple and isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def resolve_config(cls: type[T], args: argparse.Namespace | None = None, yaml_values: dict[str, Any] | None = None,
                   prefix: str = "", section: str | None = None, defaults: dict[str, Any] | None = None) -> T:
    """Defaults (``cls``'s, then ``defaults``: a command's own) < YAML (``yaml_values[section]`` or the top
    level) < flags that were given."""
    values: dict[str, Any] = dict(defaults or {})
    src = (yaml_values or {})
    if section is not None:
        src = src.get(section, {}) or {}
    names = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in src.items() if k in names})
    if args is not None:
        for name in names:
            v = getattr(args, _dest(prefix, name), None)
            if v is not None:
                values[name] = v
    return config_from_dict(cls, values, where=section or cls.__name__)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_resolved(out_dir: str | Path, name: str = "config.yaml", **configs: Any) -> Path:
    """Write the resolved configs of a run next to its outputs, one YAML section per config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: (config_to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in configs.items()}
    path = out / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
