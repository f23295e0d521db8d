# ruff: noqa  (kept as it was run; not library code)
# Diagnostic of why the small LLaVA did not see (see README.md here); run as it was, with PYTHONPATH=src.
import sys
from pathlib import Path

import torch
import transformers

from dsanchor.data import load_dataset
from dsanchor.encoders.transforms import load_rgb
from dsanchor.mllm.items import item_prompt

torch.set_num_threads(1)
mdir, data = Path(sys.argv[1]), Path(sys.argv[2])
m = transformers.LlavaForConditionalGeneration.from_pretrained(mdir, local_files_only=True, attn_implementation="eager").eval()
p = transformers.AutoProcessor.from_pretrained(mdir, local_files_only=True)
S = [s for s in load_dataset("synth", data) if s.split == "val"][:16]
inp = p(images=[load_rgb(data / s.image_path) for s in S], text=[item_prompt("llava", "Is there a red cube?", False)] * 16, return_tensors="pt", padding=True)
with torch.no_grad():
    out = m(**inp, output_attentions=True, output_hidden_states=True)
    vis = m.model.vision_tower(inp["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
    proj = m.model.multi_modal_projector(vis)
emb = m.model.language_model.embed_tokens.weight
print("vision feat rms", vis.pow(2).mean().sqrt().item(), "per-token std across tokens", vis.std(1).mean().item())
print("proj out rms", proj.pow(2).mean().sqrt().item(), "text emb rms", emb.pow(2).mean().sqrt().item())
img = (inp["input_ids"][0] == m.config.image_token_id)
for l, a in enumerate(out.attentions):
    last = a[:, :, -1]  # (B, H, L)
    print("layer", l, "attention mass of last token on image tokens per head", last[:, :, img].sum(-1).mean(0).numpy().round(3))
