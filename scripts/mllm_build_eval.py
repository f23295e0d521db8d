"""Captions of a small LLaVA from ``dsanchor mllm build`` on a test split, against a constant-caption baseline.

Rows:

* the constant caption (the most frequent training caption, for every test image): what a captioner that
  ignores the image can score;
* the leave-one-out reference: for each test image, one of its own reference captions scored against its other
  references (averaged over which one is held out): what a perfectly grounded captioner that writes captions
  like the references could score, i.e. the ceiling to compare the model's CIDEr with;
* the unmodified model (``base``: V_fine at the seam) and the model with DSA attached at fixed g values.

Columns: BLEU-4, CIDEr-D on its raw scale, CHAIR_i and CHAIR_s (the synth vocabulary for CLEVR-style data,
COCO's otherwise) and, when the model was built with yes/no questions, the POPE accuracy on the split's
objects (balanced yes/no, answers read with :func:`~dsanchor.mllm.pope.read_yes_no`).

The split is the one every ``dsanchor mllm`` command uses (:mod:`dsanchor.mllm.config`).

Usage:

    dsanchor mllm build --data runs/demo/data --format synth --out runs/llava_small --threads 2
    python scripts/mllm_build_eval.py --model runs/llava_small --data runs/demo/data --format synth
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch

from dsanchor.encoders.transforms import load_rgb
from dsanchor.files import write_json
from dsanchor.integrations import attach_dsa, get_family, load_mllm, processor_fns
from dsanchor.integrations.families import decode
from dsanchor.mllm.config import CHAIR_VOCABULARY, MLLMConfig
from dsanchor.mllm.data import split_samples
from dsanchor.mllm.generate import caption_samples, generate_text
from dsanchor.mllm.pope import read_yes_no, training_questions
from dsanchor.mllm.scores import score_captions


def leave_one_out(test: list, vocabulary: str) -> dict[str, float]:
    """Mean scores of one reference caption per image against the image's other references.

    Scored once per held-out position k (the k-th caption of every image with more than k + 1 captions), and
    averaged over k, so no caption choice is favoured.
    """
    most = max((len(s.captions) for s in test), default=0)
    runs = []
    for k in range(most):
        held = [s for s in test if len(s.captions) > max(k, 1)]
        if not held:
            continue
        rest = [dataclasses.replace(s, captions=s.captions[:k] + s.captions[k + 1:]) for s in held]
        runs.append(score_captions({s.image_id: s.captions[k].text for s in held}, rest, vocabulary))
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]} if runs else {}


def pope_accuracy(model, processor, questions: list[tuple], batch_size: int = 32) -> float:
    """Share of ``(image, prompt, answer)`` questions answered right (greedy; an answer that is neither yes nor no
    counts as no, as in POPE)."""
    right = 0
    for a in range(0, len(questions), batch_size):
        batch = questions[a:a + batch_size]
        inputs = get_family("llava").prepare(processor, [q[0] for q in batch], [q[1] for q in batch])
        said = generate_text(model, inputs, lambda ids: decode(processor, ids), 2)
        right += sum((read_yes_no(s) is True) == (q[2] == "yes") for s, q in zip(said, batch, strict=True))
    return right / max(len(questions), 1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--g", type=float, nargs="*", default=[0.0, 0.5, 1.0])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--questions-per-image", type=int, default=6,
                   help="POPE questions per image (half yes); 0: none (default: 6; only if the build trained them)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = MLLMConfig(data=args.data, format=args.format)
    samples, _ = split_samples(data)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == args.split][: args.limit]
    vocabulary = CHAIR_VOCABULARY[args.format]
    root = data.image_root
    constant = Counter(c.text for s in train for c in s.captions).most_common(1)[0][0]
    const_name = f"constant caption ({constant!r})"
    rows = {const_name: score_captions({s.image_id: constant for s in test}, test, vocabulary)}
    rows["leave-one-out reference"] = leave_one_out(test, vocabulary)
    model, processor = load_mllm("llava", args.model)
    info_path = Path(args.model) / "build_info.json"
    trained_questions = json.loads(info_path.read_text()).get("n_train_questions", 0) if info_path.is_file() else 0
    questions = []
    if args.questions_per_image and trained_questions:
        questions = training_questions([(load_rgb(root / s.image_path), [o.name for o in s.objects]) for s in test],
                                   args.questions_per_image, seed=3)
        processor.tokenizer.padding_side = "left"
    prepare, decode = processor_fns("llava", processor)

    def evaluate(name: str) -> None:
        run = caption_samples(model, prepare, decode, test, root)
        rows[name] = {**score_captions(run.captions, test, vocabulary), "s_per_image": run.seconds / len(test)}
        if questions:
            rows[name]["POPE"] = pope_accuracy(model, processor, questions)
        examples[name] = list(run.captions.values())[:3]

    examples: dict[str, list[str]] = {}
    evaluate("base (no DSA)")
    for g in args.g:
        handle = attach_dsa(model, g)
        evaluate(f"DSA g = {g:g}")
        handle.detach()
    print(f"{len(test)} {args.split} images of {args.data}; CIDEr-D on its raw scale"
          + (f"; POPE: {len(questions)} yes/no questions, half yes" if questions else "") + "\n")
    print("| captions | BLEU-4 | CIDEr | CHAIR_i | CHAIR_s | POPE |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        pope = f"{r['POPE']:.3f}" if "POPE" in r else "-"
        print(f"| {name} | {r['BLEU-4']:.3f} | {r['CIDEr']:.3f} | {r['CHAIR_i']:.3f} | {r['CHAIR_s']:.3f} | {pope} |")
    const_cider = max(rows[const_name]["CIDEr"], 1e-9)
    print(f"\nCIDEr / constant: base {rows['base (no DSA)']['CIDEr'] / const_cider:.2f}x, leave-one-out reference "
          f"{rows['leave-one-out reference']['CIDEr'] / const_cider:.2f}x")
    for name, caps in examples.items():
        print(f"{name}: {caps}")
    if args.out:
        write_json(args.out, {"rows": rows, "examples": examples})
    return rows


if __name__ == "__main__":
    main()
