"""Print the package layout, one line per file: its path, its line count and the first line of its docstring.

Usage: python scripts/layout_doc.py [--src src] [--markdown] [--by-package]

``--by-package`` prints lines per package instead (the closing notes compare them before and after a change).
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from pathlib import Path


def first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def rows(src: Path) -> list[tuple[str, int, str]]:
    pkg = src / "dsanchor"
    return [(p.relative_to(pkg).as_posix(), len(p.read_text().splitlines()), first_line(p))
            for p in sorted(pkg.rglob("*.py"), key=lambda p: (len(p.relative_to(pkg).parts), p.as_posix()))]


def by_package(src: Path) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for name, n, _ in rows(src):
        out[name.split("/")[0] if "/" in name else "(top-level modules)"] += n
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="src")
    parser.add_argument("--markdown", action="store_true", help="a markdown table")
    parser.add_argument("--by-package", action="store_true", help="lines per package")
    args = parser.parse_args(argv)
    if args.by_package:
        counts = by_package(Path(args.src))
        for name, n in counts.items():
            print(f"{name:<22} {n:>6}")
        print(f"{'total':<22} {sum(counts.values()):>6}")
        return 0
    if args.markdown:
        print("| file | lines | what it holds |\n|---|---|---|")
    for name, n, doc in rows(Path(args.src)):
        print(f"| `{name}` | {n} | {doc.replace('|', '/')} |" if args.markdown else f"{name:<34} {n:>5}  {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
