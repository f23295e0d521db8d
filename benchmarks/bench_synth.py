"""Benchmark: synth generation speed (target: 1,000 scenes at 224 px in under 60 s on 2 cores).

``main()`` generates the scenes into a temporary folder (rendering, captions and all annotation files),
prints one result line and returns a dict. Run alone with ``python benchmarks/bench_synth.py``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from dsanchor.data import SynthConfig, generate_synth

TARGET_S = 60.0  # seconds for 1,000 scenes


def main(scenes: int = 1000, image_size: int = 224, workers: int = 2, seed: int = 0) -> dict:
    """Generate ``scenes`` scenes with ``workers`` processes; returns the timing as a dict."""
    cpu0 = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as out:
        result = generate_synth(out, SynthConfig(scenes=scenes, seed=seed, image_size=image_size, workers=workers))
    cpu = time.process_time() + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - cpu0  # all processes
    per_s = result.n_images / result.seconds
    projected = 1000 / per_s
    row = {"name": "synth", "scenes": result.n_images, "image_size": image_size, "workers": workers,
           "cpus": os.cpu_count(), "seconds": round(result.seconds, 2), "cpu_seconds": round(cpu, 2),
           "cpu_ms_per_scene": round(1000 * cpu / result.n_images, 1), "scenes_per_s": round(per_s, 2),
           "projected_s_per_1000": round(projected, 1), "target_s_per_1000": TARGET_S,
           "meets_target": projected < TARGET_S}
    print(f"bench_synth: {result.n_images} scenes at {image_size} px, {workers} workers: {result.seconds:.1f} s, "
          f"{per_s:.1f} scenes/s (1,000 scenes in {projected:.0f} s; target < {TARGET_S:.0f} s); "
          f"CPU {1000 * cpu / result.n_images:.0f} ms/scene")
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    a = parser.parse_args()
    main(a.scenes, a.image_size, a.workers)
