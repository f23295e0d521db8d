"""Rebuild the small LLaVA shipped in the package from its record, and compare the weights' SHA-256.

``dsanchor/mllm/shipped/llava_small/shipped.json`` records the synth data (generator settings) and the
:class:`~dsanchor.mllm.config.BuildConfig` the model was built with, on how many torch threads. This script
generates that data (or takes ``--data``), runs what ``dsanchor mllm build --config build.yaml`` runs, and says
whether the rebuilt ``model.safetensors`` is byte-identical to the shipped one. About 25 minutes on one thread of
this project's 2-core machine (a benchmark, never a test). Floating-point order depends on the machine and the
thread count, so another CPU can rebuild a model that differs in the last bits.

    python scripts/mllm_rebuild_shipped.py --out runs/rebuild [--data runs/synth128]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch

from dsanchor.config import config_from_dict
from dsanchor.data import SynthConfig, generate_synth
from dsanchor.mllm.build import build_from_dataset
from dsanchor.mllm.config import BuildConfig, MLLMConfig
from dsanchor.mllm.shipped import SMALL_LLAVA, shipped_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the data (unless --data) and the rebuilt model")
    ap.add_argument("--data", default=None, help="the recorded synth data, already generated")
    args = ap.parse_args()
    record = shipped_record()
    torch.set_num_threads(record["threads"])
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if not args.data:
        d = record["data"]
        generate_synth(data, SynthConfig(scenes=d["scenes"], seed=d["seed"], image_size=d["image_size"],
                                         split_fractions=tuple(d["split_fractions"]), color_space=d["color_space"]))
    build = config_from_dict(BuildConfig, record["build"], where="shipped.json build")
    t0 = time.perf_counter()
    build_from_dataset(MLLMConfig(data=str(data), format=record["data"]["format"], out=str(out / "model")), build)
    digest = hashlib.sha256((out / "model" / "model.safetensors").read_bytes()).hexdigest()
    same = digest == record["sha256"]
    print(f"rebuilt in {time.perf_counter() - t0:.0f}s; sha256 {digest} "
          f"{'matches' if same else 'differs from'} the shipped {record['sha256']} ({SMALL_LLAVA})")


if __name__ == "__main__":
    main()
