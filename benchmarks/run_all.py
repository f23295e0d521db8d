"""Run every benchmark at ``make bench`` sizes and print one summary table (also written to last_run.md).

Each ``benchmarks/bench_*.py`` has a ``main(...) -> dict``; this script calls them in turn with small
sizes (``--quick``: smaller still), reports a benchmark that fails without stopping the others, and ends
with one markdown table ``benchmark | metric | value | target | met?`` plus the demo's time per stage
(read from ``runs/demo/results.json`` or ``--demo-results``). Ratios are measured within one run, so
they hold on a loaded machine; bare times do not. See benchmarks/README.md for what each one measures.

    python benchmarks/run_all.py [--quick] [--only retrieval] [--threads 2] [--startup-base OTHER/src]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DEMO_RESULTS = ROOT / "runs" / "demo" / "results.json"

# benchmark -> (make bench sizes, --quick sizes); the whole run stays under ~5 minutes on 2 cores
SIZES: dict[str, tuple[dict, dict]] = {
    "synth": ({"scenes": 200, "workers": 2}, {"scenes": 60, "workers": 2}),
    "extract": ({"n_images": 128, "workers": 2}, {"n_images": 64, "workers": 1, "batch_size": 16}),
    "retrieval": ({"queries": 5000, "gallery": 25000, "dsa_queries": 500, "dsa_gallery": 5000,
                   "two_stage_queries": 500},
                  {"queries": 1000, "gallery": 10000, "dsa_queries": 100, "dsa_gallery": 2000,
                   "two_stage_queries": 100, "repeats": 1}),
    "controller": ({"gallery": 1000, "repeats": 30}, {"gallery": 1000, "repeats": 10}),
    "ppo_env": ({"ppo_steps": 4096, "raw_steps": 5000}, {"ppo_steps": 2048, "raw_steps": 2000}),
    "search_scale": ({"gallery": 100_000, "queries": 256, "index_size": 10_000, "single_queries": 50},
                     {"gallery": 20_000, "queries": 64, "index_size": 10_000, "single_queries": 20, "repeats": 1}),
    "mllm_overhead": ({"images": 32, "batch": 8, "repeats": 5}, {"images": 16, "batch": 8, "repeats": 3}),
    "startup": ({"repeats": 7}, {"repeats": 3}),
    "pair_controller": ({"index_size": 10_000, "m": 100, "repeats": 30}, {"index_size": 10_000, "m": 100,
                                                                         "repeats": 10}),
}

Row = tuple[str, str, str, str]  # metric, value, target, met?


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _synth_rows(r: dict) -> list[Row]:
    return [("1,000 scenes at 224 px, projected s", f"{r['projected_s_per_1000']:.1f}",
             f"< {r['target_s_per_1000']:.0f}", _met(r["meets_target"])),
            ("scenes/s", f"{r['scenes_per_s']:.1f}", "", _met(None))]


def _extract_rows(r: dict) -> list[Row]:
    return [("full encoding / bare backbone", f"{r['full_ratio']:.3f}", f"<= {r['ratio_target']}",
             _met(r["ratio_ok"])),
            ("peak RSS of extraction, MB", f"{r['maxrss_main_mb']:.0f}", f"< {r['rss_target_mb']}", _met(r["rss_ok"])),
            (f"end-to-end extraction ({r['images']} images), img/s", f"{r['images_per_s']:.2f}", "", _met(None))]


def _retrieval_rows(r: dict) -> list[Row]:
    size = f"{r['search_queries']} x {r['search_gallery']}"
    return [(f"exact top-{r['k']} {size}, torch queries/s", f"{r['torch_qps']:.0f}", "", _met(None)),
            (f"exact top-{r['k']} {size}, faiss queries/s", f"{r['faiss_qps']:.0f}", "", _met(None)),
            ("torch / faiss throughput", f"{r['torch_over_faiss']:.2f}", f">= {r['ratio_target']}",
             _met(r["meets_target"])),
            ("torch and faiss: same top-k up to float ties (exact sets)",
             f"{100 * r['agreement_ties']:.2f} % ({100 * r['agreement_set']:.2f} %)", "100 %", _met(r["agrees"])),
            (f"dense DSA {r['dsa_queries']} x {r['dsa_gallery']} x R={r['regions']}, queries/s",
             f"{r['dsa_dense_qps']:.1f}", "", _met(None)),
            (f"two-stage DSA (top-{r['two_stage_m']}) {r['two_stage_queries']} x {r['two_stage_gallery']}, queries/s",
             f"{r['two_stage_qps']:.1f}", "", _met(None))]


def _controller_rows(r: dict) -> list[Row]:
    return [("text encoder, 1 caption at batch 1, ms", f"{r['text_encode_ms_b1']:.2f}", "", _met(None)),
            ("controller (query state + codebook + MLP), ms", f"{r['controller_ms']:.3f}", "", _met(None)),
            ("controller / text encoder, batch 1", f"{100 * r['ratio_b1']:.2f} %",
             f"< {100 * r['ratio_target']:.0f} % (seed: < 5 %)", _met(r["meets_target"])),
            ("controller / text encoder, batched per item", f"{100 * r['ratio_batched']:.2f} %", "", _met(None)),
            ("image-query controller / effnet image encoding", f"{100 * r['image_ratio']:.2f} %", "", _met(None)),
            (f"summary-state controller (vs {r['gallery']} images) / text encoder, batch 1",
             f"{100 * r['summary_ratio_b1']:.2f} %", "", _met(None)),
            ("(pair terms + summary controller) / text encoder, batch 1",
             f"{100 * r['summary_ratio_with_terms_b1']:.2f} %", "", _met(None))]


def _ppo_rows(r: dict) -> list[Row]:
    return [(f"raw env steps/s (T={r['captions']}, N={r['images']})", f"{r['raw_steps_per_s']:.0f}", "", _met(None)),
            (f"SB3 PPO steps/s, {r['ppo_n_envs']} envs, training incl.", f"{r['ppo_steps_per_s']:.0f}", "",
             _met(None)),
            ("env share of PPO wall time", f"{100 * r['env_share_of_ppo']:.1f} %",
             f"< {100 * r['env_share_target']:.0f} %", _met(r["meets_target"])),
            (f"default PPO config ({r['default_steps']} steps), projected s", f"{r['default_projected_s']:.0f}",
             f"< {r['ppo_time_target_s']:.0f}", _met(r["meets_ppo_time_target"]))]


def _search_scale_rows(r: dict) -> list[Row]:
    size, k = f"{r['queries']} x {r['gallery']:,} x R={r['regions']}", r["k"]
    rows = [(f"exact DSA {size}, ms/query", f"{r['exact_ms_per_query']:.2f}", "", _met(None)),
            (f"exact DSA: chunked top-{k} = unchunked", "yes" if r["exact_chunking_ok"] else "no", "yes",
             _met(r["exact_chunking_ok"]))]
    for m in r["ms"]:
        s = r[f"m{m}"]
        rows += [(f"two-stage M={m:,} (faiss + DSA), ms/query (speed-up)",
                  f"{s['ms_per_query']:.3f} ({s['speedup']:.0f}x)", "", _met(None)),
                 (f"two-stage M={m:,}: exact top-{k} / top-1 lost (random vectors: worst case)",
                  f"{100 * s[f'lost_top{k}']:.1f} % / {100 * s['lost_top1']:.1f} %", "", _met(None))]
    return rows + [
        (f"one text query, {r['index_size']:,}-image index, median ms (encoder ms)",
         f"{r['total_ms']:.2f} ({r['encode_ms']:.2f})", "", _met(None)),
        ("controller (state + MLP) / whole query", f"{100 * r['controller_share']:.2f} %",
         f"<= {100 * r['share_target']:.0f} %", _met(r["meets_target"]))]


def _mllm_rows(r: dict) -> list[Row]:
    return [("small LLaVA generate, ms / image", f"{1000 * r['seconds']['base'] / r['images']:.2f}", "", _met(None)),
            ("DSA at fixed g / unmodified (same run)", f"{r['fixed_over_base']:.3f}", "", _met(None)),
            ("DSA with controller / unmodified (same run)", f"{r['controller_over_base']:.3f}", "", _met(None)),
            ("MLLM state + controller share of generation", f"{100 * r['controller_share']:.2f} %",
             f"< {100 * r['share_target']:.0f} %", _met(r["meets_target"]))]


def _startup_rows(r: dict) -> list[Row]:
    med, over, speed = r["median_s"], r["over_python"], r.get("speedup", {})
    rows = [("python -c pass, median s", f"{med['python -c pass']:.3f}", "", _met(None))]
    for name in ("import dsanchor", "dsanchor --help", "dsanchor search --help", "dsanchor train --help"):
        target, ok = (f"< {r['target_help_s']:.0f} s", r["meets_target"]) if name == "dsanchor --help" else ("", None)
        rows.append((f"{name}, median s (x python -c pass)", f"{med[name]:.3f} ({over[name]:.1f}x)", target, _met(ok)))
        if name in speed:
            rows.append((f"{name} before ({r['base_src']}), median s (before / now)",
                         f"{med['before: ' + name]:.3f} ({speed[name]:.1f}x)", "", _met(None)))
    return rows


def _pair_rows(r: dict) -> list[Row]:
    ms = r["ms"]
    return [(f"per-pair controller share of one text query ({r['index_size']} images, m={r['m']})",
             f"{100 * r['controller_share']:.2f}% ({ms['pair_state'] + ms['controller']:.3f} of "
             f"{r['total_ms']:.3f} ms)", f"<= {100 * r['target_share']:.0f}%", _met(r["meets_target"]))]


ROWS: dict[str, Callable[[dict], list[Row]]] = {
    "pair_controller": _pair_rows,
    "synth": _synth_rows, "extract": _extract_rows, "retrieval": _retrieval_rows,
    "controller": _controller_rows, "ppo_env": _ppo_rows, "search_scale": _search_scale_rows,
    "mllm_overhead": _mllm_rows, "startup": _startup_rows,
}


def run_one(name: str, quick: bool, extra: dict | None = None) -> tuple[list[Row], float]:
    """Run ``bench_<name>.main`` with its sizes (and ``extra`` arguments); a failure becomes one row instead
    of an exception."""
    kwargs = {**SIZES[name][1 if quick else 0], **(extra or {})}
    start = time.perf_counter()
    print(f"\n== bench_{name} {kwargs}", flush=True)
    try:
        result = importlib.import_module(f"bench_{name}").main(**kwargs)
        rows = ROWS[name](result)
    except Exception as exc:  # report it and go on with the other benchmarks
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:160].replace("|", "/")
        rows = [("FAILED", message, "", _met(False))]
    return rows, time.perf_counter() - start


def demo_section(path: Path) -> str:
    """The demo's time per stage from its results.json, or how to get one."""
    if not path.is_file():
        return f"Demo time per stage: no {path} — run `make demo` first."
    try:
        timing = json.loads(path.read_text()).get("timing_s") or {}
    except (OSError, json.JSONDecodeError) as exc:
        return f"Demo time per stage: cannot read {path} ({exc}); rerun `make demo`."
    if not timing:
        return f"Demo time per stage: {path} has no timing_s; rerun `make demo`."
    lines = [f"Demo time per stage (from {path}):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {float(s):.1f} |" for stage, s in timing.items()]
    return "\n".join(lines)


def markdown_table(results: dict[str, tuple[list[Row], float]]) -> str:
    lines = ["| benchmark | metric | value | target | met? |", "|---|---|---|---|---|"]
    for name, (rows, seconds) in results.items():
        for metric, value, target, met in rows:
            lines.append(f"| {name} | {metric} | {value} | {target or '—'} | {met} |")
        lines.append(f"| {name} | wall time of the benchmark, s | {seconds:.0f} | — | — |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, tuple[list[Row], float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a minute or two)")
    ap.add_argument("--only", choices=list(SIZES), action="append", type=lambda s: s.removeprefix("bench_"),
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="torch (and faiss) threads")
    ap.add_argument("--demo-results", type=Path, default=DEFAULT_DEMO_RESULTS, help="a demo's results.json")
    ap.add_argument("--out", type=Path, default=HERE / "last_run.md", help="where to write the table")
    ap.add_argument("--startup-base", default=None, help="another checkout's src/ whose CLI start-up bench_startup "
                                                         "also times, in the same rounds (before / after a change)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    load0 = os.getloadavg()
    start = time.perf_counter()
    extra = {"startup": {"base_src": args.startup_base}} if args.startup_base else {}
    results = {name: run_one(name, args.quick, extra.get(name)) for name in (args.only or SIZES)}
    load1 = os.getloadavg()
    header = (f"Benchmarks of {datetime.datetime.now():%Y-%m-%d %H:%M} ({'quick' if args.quick else 'make bench'} "
              f"sizes), {args.threads} torch threads, {os.cpu_count()} CPUs, load average {load0[0]:.1f} at start "
              f"and {load1[0]:.1f} at end, {time.perf_counter() - start:.0f} s in all. Ratios are measured within "
              "one run; bare times depend on the machine's load.")
    text = "\n\n".join([header, markdown_table(results), demo_section(args.demo_results)]) + "\n"
    print("\n" + text)
    args.out.write_text(text)
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main()
