# ruff: noqa  (kept as it was run; not library code)
# Diagnostic of why the small LLaVA did not see (see README.md here); run as it was, with PYTHONPATH=src.
"""P(yes) of a built model on val POPE questions and exist questions: AUC against the truth."""
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

from dsanchor.data import load_dataset
from dsanchor.data.questions import QuestionConfig, generate_questions, normalize_answer
from dsanchor.encoders.transforms import load_rgb
from dsanchor.mllm.items import item_prompt
from dsanchor.mllm.pope import training_questions

torch.set_num_threads(1)
mdir, data = Path(sys.argv[1]), Path(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
m = transformers.LlavaForConditionalGeneration.from_pretrained(mdir, local_files_only=True).eval()
p = transformers.AutoProcessor.from_pretrained(mdir, local_files_only=True)
p.tokenizer.padding_side = "left"
S = [s for s in load_dataset("synth", data) if s.split == "val"][:n]
ims = {s.image_id: load_rgb(data / s.image_path) for s in S}
yes, no = p.tokenizer.convert_tokens_to_ids(["yes", "no"])
def auc(score, truth):
    score, truth = np.asarray(score), np.asarray(truth, bool)
    pos, neg = score[truth], score[~truth]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
def first_logits(images, prompts, shuffle=False):
    out = []
    for a in range(0, len(prompts), 32):
        inp = p(images=images[a:a+32], text=prompts[a:a+32], return_tensors="pt", padding=True)
        with torch.no_grad():
            out.append(m(**inp).logits[:, -1])
    return torch.cat(out)
qs = training_questions([(ims[s.image_id], [o.name for o in s.objects]) for s in S], 6, seed=5)
lg = first_logits([q[0] for q in qs], [q[1] for q in qs])
truth = [q[2] == "yes" for q in qs]
d = (lg[:, yes] - lg[:, no]).numpy()
print("POPE val: AUC(yes-no logit) %.3f, said yes %.3f, acc %.3f" % (auc(d, truth), (d > 0).mean(), ((d > 0) == np.array(truth)).mean()))
perm = np.roll(np.arange(len(S)), 1)
idx = {id(ims[s.image_id]): k for k, s in enumerate(S)}
lg2 = first_logits([ims[S[perm[idx[id(q[0])]]].image_id] for q in qs], [q[1] for q in qs])
d2 = (lg2[:, yes] - lg2[:, no]).numpy()
print("POPE val shuffled images: AUC %.3f" % auc(d2, truth))
Q = generate_questions(S, QuestionConfig(per_family=2, families=("exist", "count", "query_color", "query_shape", "query_size", "query_material", "compare_integer", "relate"), seed=9, captions=()))
lgq = first_logits([ims[q.image_id] for q in Q], [item_prompt("llava", q.question, False) for q in Q])
pred = p.tokenizer.convert_ids_to_tokens(lgq.argmax(1).tolist())
from collections import defaultdict

acc = defaultdict(list)
for q, w in zip(Q, pred):
    acc[q.family].append(normalize_answer(w) == q.answer)
print({f: (round(float(np.mean(v)), 3), len(v)) for f, v in acc.items()})
ex = [(q.question, q.answer, w) for q, w in zip(Q, pred) if q.family == "exist"]
print("exist AUC", auc((lgq[:, yes] - lgq[:, no]).numpy()[[q.family == "exist" for q in Q]], [q.answer == "yes" for q in Q if q.family == "exist"]))
print(ex[:6])
