# Diagnostic of why the small LLaVA answers relations at chance (see README.md here); PYTHONPATH=src.
# Is the answer to a question linearly readable from the language model's hidden state at the answer position
# (the last prompt token), layer by layer? A logistic-regression probe is fit on train-split questions and scored
# on test-split questions of one family; the same for `exist` as a control the model answers above chance.
# Usage: python scripts/mllm_see_diag/relate_probe.py MODEL DATA QUESTIONS.json [n_train n_test]
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dsanchor.mllm.items import item_prompt

torch.set_num_threads(1)
model_dir, data, qfile = sys.argv[1:4]
n_train, n_test = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (1500, 400)
model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
proc = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
qs = json.loads(Path(qfile).read_text())["questions"]  # rows carry the split of their image


def features(rows):
    out = []
    with torch.no_grad():
        for q in rows:
            image = Image.open(Path(data) / q["image_filename"]).convert("RGB")
            inputs = proc(images=image, text=item_prompt("llava", q["question"], False), return_tensors="pt")
            hs = model(**inputs, output_hidden_states=True).hidden_states  # embeddings + each layer
            out.append(torch.stack([h[0, -1] for h in hs]))
    return torch.stack(out)  # (N, layers + 1, H)


def probe(xtr, ytr, xte, yte):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xtr @ w + b, ytr) + 1e-2 * w.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        return float(((xte @ w + b > 0).float() == yte).float().mean())


for family in ("relate", "exist"):
    rows = [q for q in qs if q["question_family"] == family and q["answer"] in ("yes", "no")]
    tr = [q for q in rows if q["split"] == "train"][:n_train]
    te = [q for q in rows if q["split"] == "test"][:n_test]
    xtr, xte = features(tr), features(te)
    ytr = torch.tensor([q["answer"] == "yes" for q in tr], dtype=torch.float)
    yte = torch.tensor([q["answer"] == "yes" for q in te], dtype=torch.float)
    accs = [probe(xtr[:, k], ytr, xte[:, k], yte) for k in range(xtr.shape[1])]
    print(f"{family}: {len(tr)} train / {len(te)} test questions, test yes-rate {float(yte.mean()):.2f}; "
          f"probe accuracy at the answer position, embeddings then layers 1..: "
          + " / ".join(f"{a:.3f}" for a in accs), flush=True)
