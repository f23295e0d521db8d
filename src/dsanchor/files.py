"""Writing and reading the project's small files: atomic writes, indented JSON and JSON-lines.

Every JSON or JSONL file the project writes goes through here, so a killed run never leaves half a file behind
(each write goes to a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "write_jsonl", "read_jsonl",
           "write_captions"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 2, compact: bool = False) -> Path:
    """Write ``data`` as JSON atomically, creating the folder; returns the path.

    Args:
        indent: indentation (2 by default, the project's reports); ignored when ``compact``.
        compact: no whitespace at all (large data files such as generated scenes).

    Objects JSON cannot hold (paths, numpy scalars) are written with ``str``.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"), default=str) if compact else json.dumps(data, indent=indent,
                                                                                             default=str)
    atomic_write_text(p, text)
    return p


def read_json(path: str | Path) -> Any:
    """Read one JSON file."""
    return json.loads(Path(path).read_text())


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write one JSON object per line, atomically, creating the folder; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, "".join(json.dumps(row, default=str) + "\n" for row in rows))
    return p


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (blank lines are skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_captions(path: str | Path, image_ids: Iterable[int], captions: Iterable[Any],
                   gs: Iterable[float] | None = None, digits: int = 6) -> Path:
    """The caption JSON-lines file: one ``{"image_id", "caption", "g"}`` per image, atomically.

    ``caption`` is a string or a ``{granularity: caption}`` dict; ``g`` is rounded to ``digits`` and left out when
    ``gs`` is None.
    """
    ids, caps = [int(i) for i in image_ids], list(captions)
    if gs is None:
        return write_jsonl(path, ({"image_id": i, "caption": c} for i, c in zip(ids, caps, strict=True)))
    return write_jsonl(path, ({"image_id": i, "caption": c, "g": round(float(g), digits)}
                              for i, c, g in zip(ids, caps, list(gs), strict=True)))
