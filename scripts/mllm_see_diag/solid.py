# ruff: noqa  (kept as it was run; not library code)
# Diagnostic of why the small LLaVA did not see (see README.md here); run as it was, with PYTHONPATH=src.
"""Sanity: solid-colour images, 'Is there a X thing?': can the LLaVA stage learn it at all?"""
import random
import sys

import numpy as np
import torch
import transformers
from PIL import Image

from dsanchor.integrations import get_family
from dsanchor.mllm.build import train_llava
from dsanchor.mllm.config import BuildConfig
from dsanchor.mllm.items import item_prompt

torch.set_num_threads(1)
cols = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20), "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
rng = random.Random(0)
def make(n):
    out = []
    for _ in range(n):
        c = rng.choice(list(cols))
        a = np.zeros((128, 128, 3), np.uint8); a[:] = cols[c]
        a[40:80, 40:80] = cols[rng.choice(list(cols))] if rng.random() < 0.0 else cols[c]
        out.append((Image.fromarray(a), c))
    return out
tr, va = make(600), make(100)
rows = [(im, item_prompt("llava", f"Is there a {c} thing?", False), "yes" if c == k else "no") for im, k in tr for c in cols]
pairs = [(im, f"a {k} image .") for im, k in tr]
vpairs = [(im, f"a {k} image .") for im, k in va]
steps = int(sys.argv[1])
cfg = BuildConfig(image_size=128, patch_size=32, distill_steps=0, pretrain_steps=0, steps=steps, align_steps=min(50, steps // 4), turns_per_text=8, batch_size=16, eval_every=steps, questions_per_image=0, uniform_g=False, summary_token=False)
info = train_llava(pairs, vpairs, cfg, "runs/exp_solid", get_family("llava").CAPTION_PROMPT, progress=False, train_items=rows, text_encoder=object())
print({k: info[k] for k in ("val_loss_true_images", "val_loss_shuffled_images")})
m = transformers.LlavaForConditionalGeneration.from_pretrained("runs/exp_solid", local_files_only=True).eval()
p = transformers.AutoProcessor.from_pretrained("runs/exp_solid", local_files_only=True)
yes, no = p.tokenizer.convert_tokens_to_ids(["yes", "no"])
right = n = 0
for im, k in va[:50]:
    inp = p(images=[im] * 8, text=[item_prompt("llava", f"Is there a {c} thing?", False) for c in cols], return_tensors="pt", padding=True)
    with torch.no_grad():
        lg = m(**inp).logits[:, -1]
    d = (lg[:, yes] - lg[:, no])
    right += int(list(cols)[int(d.argmax())] == k); n += 1
print("solid colour: the colour with the highest yes-no logit is the image's:", right / n, "(chance 0.125)")
