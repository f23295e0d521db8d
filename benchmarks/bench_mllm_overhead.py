"""Benchmark: what DSA inside an MLLM costs at generation time (``make bench``).

A LLaVA of ``dsanchor mllm build``'s default size (random weights: timing does not depend on training), its
word-level tokenizer and processor, and ``images`` random 64 px images captioned in batches of ``batch`` with
greedy ``generate`` (``max_new_tokens`` tokens, no early stop: ``min_new_tokens`` = ``max_new_tokens``) three
ways, interleaved over ``repeats`` rounds so machine noise hits all three alike:

* ``base``: the unmodified model;
* ``fixed``: DSA attached at g = 0.5 (the coarse tap and the mixing, no controller);
* ``controller``: DSA with a GranularityController on the MLLM state (seam + prompt embedding), which
  adds the prompt capture, the state and the MLP.

Reported: the median seconds of each, the ratios ``fixed / base`` and ``controller / base``, and the share of
the controller run spent in the state and the controller (timed inside the hook). Target: the controller's share
below 5 % (the DSA proposal's claim for inference overhead).

Run alone: ``python benchmarks/bench_mllm_overhead.py [--images 32] [--batch 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

SHARE_TARGET = 0.05


def main(images: int = 32, batch: int = 8, max_new_tokens: int = 16, repeats: int = 5, seed: int = 0) -> dict:
    from PIL import Image

    from dsanchor.controller import ControllerConfig, GranularityController
    from dsanchor.integrations import attach_dsa, get_family, processor_fns, state_layout
    from dsanchor.integrations.small_models import TINY_WORDS, caption_tokenizer
    from dsanchor.mllm.build import build_llava
    from dsanchor.mllm.config import BuildConfig

    cfg = BuildConfig(seed=seed)
    prompt = get_family("llava").CAPTION_PROMPT
    tok = caption_tokenizer([" ".join(TINY_WORDS), prompt])
    model, processor = build_llava(tok, cfg)
    model.eval()
    processor.tokenizer.padding_side = "left"
    layout = state_layout(model, cfg.coarse_layer)
    torch.manual_seed(seed)
    ctrl = GranularityController(ControllerConfig(state_dim=layout.size, state_layout=layout.to_dict())).eval()
    rng = np.random.default_rng(seed)
    pics = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(images)]
    prepare, _ = processor_fns("llava", processor, prompt)
    batches = [prepare(pics[a:a + batch]) for a in range(0, images, batch)]

    def run() -> float:
        tic = time.perf_counter()
        with torch.no_grad():
            for inputs in batches:
                model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                               do_sample=False)
        return time.perf_counter() - tic

    times: dict[str, list[float]] = {"base": [], "fixed": [], "controller": []}
    shares = []
    run()  # warm-up
    for _ in range(repeats):
        times["base"].append(run())
        with attach_dsa(model, 0.5, cfg.coarse_layer):
            times["fixed"].append(run())
        with attach_dsa(model, ctrl, cfg.coarse_layer) as handle:
            t = run()
            times["controller"].append(t)
            shares.append(handle.controller_seconds / t)
    med = {k: statistics.median(v) for k, v in times.items()}
    share = statistics.median(shares)
    result = {"name": "mllm_overhead", "images": images, "batch": batch, "max_new_tokens": max_new_tokens,
              "threads": torch.get_num_threads(), "seconds": med,
              "fixed_over_base": med["fixed"] / med["base"], "controller_over_base": med["controller"] / med["base"],
              "controller_share": share, "share_target": SHARE_TARGET, "meets_target": share < SHARE_TARGET}
    print(f"bench_mllm_overhead (small LLaVA, {images} images in batches of {batch}, {max_new_tokens} tokens, "
          f"{result['threads']} threads, median of {repeats})")
    print(f"  base generate, ms / image            {1000 * med['base'] / images:.2f}")
    print(f"  DSA at fixed g / base                {result['fixed_over_base']:.3f}")
    print(f"  DSA with controller / base           {result['controller_over_base']:.3f}")
    print(f"  state + controller share of the run  {100 * share:.2f} % (target < {100 * SHARE_TARGET:.0f} %)")
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    main(a.images, a.batch, a.max_new_tokens, a.repeats)
