# ruff: noqa  (kept as it was run; not library code)
# Diagnostic of why the small LLaVA did not see (see README.md here); run as it was, with PYTHONPATH=src.
"""Does the model read colour at all? 'Is there a X thing?' for every colour per val image: AUC of yes-no logit."""
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

from dsanchor.data import load_dataset
from dsanchor.encoders.transforms import load_rgb
from dsanchor.mllm.items import item_prompt

torch.set_num_threads(1)
mdir, data = Path(sys.argv[1]), Path(sys.argv[2])
m = transformers.LlavaForConditionalGeneration.from_pretrained(mdir, local_files_only=True).eval()
p = transformers.AutoProcessor.from_pretrained(mdir, local_files_only=True)
p.tokenizer.padding_side = "left"
S = [s for s in load_dataset("synth", data) if s.split == (sys.argv[3] if len(sys.argv) > 3 else "val")][:60]
yes, no = p.tokenizer.convert_tokens_to_ids(["yes", "no"])
cols = ["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
for attr, vals, form in (("color", cols, "Is there a {} thing?"), ("shape", ["cube", "sphere", "cylinder"], "Is there a {}?")):
    rows = [(s, v) for s in S for v in vals]
    ims = {s.image_id: load_rgb(data / s.image_path) for s in S}
    d = []
    for a in range(0, len(rows), 32):
        b = rows[a:a+32]
        inp = p(images=[ims[s.image_id] for s, _ in b], text=[item_prompt("llava", form.format(v), False) for _, v in b], return_tensors="pt", padding=True)
        with torch.no_grad():
            lg = m(**inp).logits[:, -1]
        d += (lg[:, yes] - lg[:, no]).tolist()
    d = np.array(d); t = np.array([any(o[attr] == v for o in s.scene["objects"]) for s, v in rows])
    pos, neg = d[t], d[~t]
    print(attr, "AUC %.3f" % ((pos[:, None] > neg[None]).mean()), "acc %.3f" % ((d > 0) == t).mean(), "base yes %.2f" % t.mean())
