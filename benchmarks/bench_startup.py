"""Benchmark: CLI start-up (target: ``dsanchor --help`` in under 2 s).

Each command runs in a fresh process (``python -m dsanchor`` is the ``dsanchor`` script): ``python -c pass``
(the interpreter alone), ``python -c "import dsanchor"``, ``dsanchor --help``, ``dsanchor search --help`` and
``dsanchor train --help`` (parsing only: the time before a command starts its own work; train's flags come
from config dataclasses in modules that import torch). The commands run interleaved, ``repeats``
rounds, and each is reported as its median and its ratio to ``python -c pass`` of the same run. With
``base_src`` (a checkout's ``src``, e.g. the code before a change) the dsanchor commands are also timed with
that tree on ``PYTHONPATH``, in the same rounds. Run alone with ``python benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TARGET_HELP_S = 2.0
COMMANDS: dict[str, list[str]] = {
    "import dsanchor": ["-c", "import dsanchor"],
    "dsanchor --help": ["-m", "dsanchor", "--help"],
    "dsanchor search --help": ["-m", "dsanchor", "search", "--help"],
    "dsanchor train --help": ["-m", "dsanchor", "train", "--help"],  # its config flags come from torch modules
}


def _time(args: list[str], src: Path | None) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(repeats: int = 7, base_src: str | None = None) -> dict:
    """Time each start-up ``repeats`` times, interleaved; returns medians (s) and ratios to ``python -c pass``."""
    trees = {"": SRC, **({"before: ": Path(base_src)} if base_src else {})}
    runs = {"python -c pass": []} | {f"{tag}{name}": [] for tag in trees for name in COMMANDS}
    for _ in range(repeats):
        runs["python -c pass"].append(_time(["-c", "pass"], None))
        for tag, src in trees.items():
            for name, args in COMMANDS.items():
                runs[f"{tag}{name}"].append(_time(args, src))
    median = {name: statistics.median(times) for name, times in runs.items()}
    bare = median["python -c pass"]
    row = {"name": "startup", "repeats": repeats, "base_src": base_src, "median_s": median,
           "over_python": {name: m / bare for name, m in median.items()}, "target_help_s": TARGET_HELP_S,
           "meets_target": median["dsanchor --help"] < TARGET_HELP_S}
    if base_src:
        row["speedup"] = {name: median[f"before: {name}"] / median[name] for name in COMMANDS}
    for name, m in median.items():
        extra = f", {row['speedup'][name]:.1f}x faster than before" if base_src and name in COMMANDS else ""
        print(f"bench_startup: {name:<32} median {m:6.3f} s ({m / bare:6.1f} x python -c pass){extra}")
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--base-src", default=None, help="another tree's src/ to time in the same rounds "
                                                         "(e.g. the code before a change)")
    a = parser.parse_args()
    main(a.repeats, a.base_src)
