"""Project errors: messages written for people, raised at boundaries (files, CLI arguments, configs).

The CLI prints a :class:`DsanchorError` as one line and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DsanchorError", "DataError", "ConfigError", "MissingDependencyError", "MetricInputError"]


class DsanchorError(Exception):
    """Base class of every error the CLI reports as one line (exit code 2)."""


class DataError(DsanchorError):
    """A problem with an input file: names the file, the field and what is wrong.

    Args:
        path: the offending file (or directory).
        message: what is wrong and, where possible, what to do.
        field: the JSON field or record involved, e.g. ``annotations[3].bbox``.
    """

    def __init__(self, path: str | Path, message: str, field: str | None = None):
        self.path = str(path)
        self.field = field
        self.message = message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


class ConfigError(DsanchorError):
    """An invalid configuration value or command-line argument."""


class MissingDependencyError(DsanchorError):
    """An optional package or a local model path is missing; says what to install or pass."""


class MetricInputError(DsanchorError, ValueError):
    """Inputs a metric cannot score: empty, mismatched ids, wrong types or shapes."""
