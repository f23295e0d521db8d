# ruff: noqa  (kept as it was run; not library code)
# Diagnostic of why the small LLaVA did not see (see README.md here); run as it was, with PYTHONPATH=src.
"""Sanity: can the build learn 'Is there a X thing?' (colour presence) when that is all it is asked?"""
import sys
from pathlib import Path

import torch

from dsanchor.data import load_dataset
from dsanchor.encoders.transforms import load_rgb
from dsanchor.integrations import get_family
from dsanchor.mllm.build import train_llava
from dsanchor.mllm.config import BuildConfig
from dsanchor.mllm.distill import scene_labels
from dsanchor.mllm.items import item_prompt

torch.set_num_threads(1)
data, out = Path(sys.argv[1]), sys.argv[2]
steps, distill = int(sys.argv[3]), int(sys.argv[4])
S = load_dataset("synth", data)
cols = ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
def split(name, n):
    ss = [s for s in S if s.split == name][:n]
    ims = [(load_rgb(data / s.image_path), s) for s in ss]
    pairs = [(im, s.captions[0].text) for im, s in ims]
    rows = [(im, item_prompt("llava", f"Is there a {c} thing?", False), "yes" if any(o["color"] == c for o in s.scene["objects"]) else "no") for im, s in ims for c in cols]
    return pairs, rows, [(im, scene_labels(s.scene)) for im, s in ims]
tr, rows, sm = split("train", 1000)
va, _, smv = split("val", 100)
import os

extra = eval(os.environ.get("EXTRA", "{}"))
kw = dict(image_size=128, distill_steps=distill, pretrain_steps=0, steps=steps, align_steps=50, turns_per_text=8, batch_size=16, eval_every=steps, questions_per_image=0, uniform_g=False)
kw.update(extra)
cfg = BuildConfig(**kw)
info = train_llava(tr, va, cfg, out, get_family("llava").CAPTION_PROMPT, progress=False, train_items=rows, text_encoder=object(), summaries=sm + smv)
print({k: info[k] for k in ("stage_times_s", "val_loss_true_images", "val_loss_shuffled_images", "distill")})
