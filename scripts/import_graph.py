"""Import graph of the dsanchor package, read with `ast`: cycles, function-local imports and private cross-imports.

Usage: python scripts/import_graph.py [--src src] [--json OUT]

Module-level imports (including those under `if TYPE_CHECKING:` are left out, as they never run) form the graph; a
cycle is a strongly connected component with more than one module. Function-local imports are listed separately,
because they are how a cycle is usually hidden: the script also reports the cycles the graph would have if every
function-local import ran at import time. Private names imported across modules are names starting with `_` taken
from another dsanchor module.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from pathlib import Path


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                skip.add(id(child))
    return skip


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]):
    """(imported module, name or None) pairs inside the package."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                yield alias.name, None
        return
    base = _resolve(node, module, is_package)
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in modules:
            yield sub, None
        elif base in modules:
            yield base, alias.name


def read_imports(src: Path, package: str = "dsanchor") -> dict[str, dict]:
    """For each module: its module-level imports, its function-local imports and its private cross-imports."""
    files = {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    modules = set(files)
    info: dict[str, dict] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_nodes(tree)
        top_level = {id(n) for n in tree.body}
        top, local, private = set(), [], []
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in skip:
                continue
            for target, name in _targets(node, module, path.name == "__init__.py", modules):
                if target == module:
                    continue
                if id(node) in top_level:
                    top.add(target)
                else:
                    local.append((target, node.lineno))
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append((target, name, node.lineno))
        info[module] = {"imports": sorted(top), "local": local, "private": private}
    return info


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def summary(src: Path) -> dict:
    info = read_imports(src)
    top = {m: set(i["imports"]) for m, i in info.items()}
    full = {m: set(i["imports"]) | {t for t, _ in i["local"]} for m, i in info.items()}
    # a package's __init__ importing its own submodules is how a package exports its API, not a cycle to break
    return {
        "modules": len(info),
        "cycles_module_level": cycles(top),
        "cycles_with_local_imports": cycles(full),
        "function_local_imports": sum(len(i["local"]) for i in info.values()),
        "function_local_by_package": _by_package({m: len(i["local"]) for m, i in info.items()}),
        "private_cross_imports": [f"{m}:{line} imports {n} from {t}" for m, i in info.items()
                                  for t, n, line in i["private"]],
    }


def _by_package(counts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for module, n in counts.items():
        parts = module.split(".")
        out[".".join(parts[:2]) if len(parts) > 2 else parts[0]] += n
    return {k: v for k, v in sorted(out.items()) if v}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="src", help="the folder that holds the dsanchor package")
    parser.add_argument("--json", help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    s = summary(Path(args.src))
    print(f"modules: {s['modules']}")
    print(f"function-local imports of dsanchor modules: {s['function_local_imports']}")
    for pkg, n in s["function_local_by_package"].items():
        print(f"  {pkg}: {n}")
    for title, key in (("import cycles (module level)", "cycles_module_level"),
                       ("import cycles if function-local imports ran at import time", "cycles_with_local_imports")):
        print(f"{title}: {len(s[key])}")
        for comp in s[key]:
            print("  " + " <-> ".join(comp))
    print(f"private names imported across modules: {len(s['private_cross_imports'])}")
    for line in s["private_cross_imports"]:
        print("  " + line)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
