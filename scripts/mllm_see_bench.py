"""Does the small LLaVA of ``dsanchor mllm build`` see? The grounding targets, measured by one command.

Builds the default model (``BuildConfig()``, or ``--set field=value`` overrides) on a synth dataset (generated
here when missing), then measures on its test split and on every image of a fresh data seed (generated with
``--fresh-seed``; no scene of it was trained on):

* POPE (random, popular, adversarial; 3 present and 3 absent objects per image and sampling) with the project's
  path (:func:`dsanchor.mllm.pope.answer_questions`: 3 greedy tokens, read by ``read_yes_no``): accuracy,
  precision, recall, F1, yes-rate, F1 with a 95% bootstrap interval over images;
* accuracy per question family (``dsanchor data questions`` on the split's scene graphs, 2 per family and
  image; greedy answer, :func:`~dsanchor.data.questions.normalize_answer`, exact match) with two blind baselines:
  the same model with the split's images deranged (each question sees another image) and the family's majority
  answer among the train split's questions; ``query_attribute`` pools the four query families. 95% bootstrap
  intervals over images;
* CHAIR_i / CHAIR_s of object captions (the ``caption_object`` prompt, 20 greedy tokens, synth vocabulary), with
  the deranged-image baseline and an interval for CHAIR_i;
* that the model loads with plain ``LlavaForConditionalGeneration.from_pretrained`` and
  ``AutoProcessor.from_pretrained`` offline (local_files_only), which is how it is loaded for all of the above.

Targets: POPE F1 >= 0.85 per sampling; exist and query_attribute >= 0.85, relate >= 0.7, count >= 0.6;
CHAIR_i <= 0.10.

Usage (a benchmark, never a test; the build takes up to ~30 min on 2 cores):

    python scripts/mllm_see_bench.py --data runs/synth128 --fresh runs/synth128_seed1 --out runs/see --threads 2
    python scripts/mllm_see_bench.py ... --model runs/see/model      # measure an existing build only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from dsanchor.data import SynthConfig, generate_synth, load_dataset
from dsanchor.data.questions import QuestionConfig, caption_items, generate_questions, normalize_answer
from dsanchor.encoders.transforms import load_rgb
from dsanchor.files import write_json
from dsanchor.integrations import get_family
from dsanchor.integrations.families import decode
from dsanchor.mllm.build import build_from_dataset, derangement
from dsanchor.mllm.config import BuildConfig, MLLMConfig
from dsanchor.mllm.generate import generate_text
from dsanchor.mllm.items import item_prompt
from dsanchor.mllm.pope import SAMPLINGS, answer_questions, f1_of_counts, pope_counts, pope_questions, pope_scores
from dsanchor.mllm.scores import per_image_scores, score_captions

FAMILIES = ("exist", "count", "query_color", "query_size", "query_material", "query_shape", "compare_integer",
            "relate")
QUERY = ("query_color", "query_size", "query_material", "query_shape")
TARGETS = {"pope_f1": 0.85, "exist": 0.85, "query_attribute": 0.85, "relate": 0.7, "count": 0.6, "CHAIR_i": 0.10}


def interval(per_image: np.ndarray, stat, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of ``stat(rows)`` over images (rows of ``per_image``)."""
    rng = np.random.default_rng(seed)
    n = len(per_image)
    vals = [stat(per_image[rng.integers(n, size=n)]) for _ in range(n_boot)]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def ratio(x: np.ndarray) -> float:
    """sum of column 0 / sum of column 1."""
    return float(x[:, 0].sum() / max(x[:, 1].sum(), 1))


def answer(model, processor, images: list, prompts: list[str], tokens: int, batch: int = 32) -> list[str]:
    """Greedy answers of the model to (image, prompt) pairs."""
    family, out = get_family("llava"), []
    for a in range(0, len(prompts), batch):
        inputs = family.prepare(processor, images[a:a + batch], prompts[a:a + batch])
        out += generate_text(model, inputs, lambda ids: decode(processor, ids), tokens)
    return out


def pope_block(model, processor, test, all_samples, root: Path) -> dict:
    """POPE metrics per sampling, each with a bootstrap interval of F1 over images."""
    questions = pope_questions(test, all_samples, positives=3, seed=0)
    answers = answer_questions(model, "llava", processor, test, root, questions, batch_size=32)
    scores = pope_scores(questions, answers)
    for sampling in SAMPLINGS:
        counts = pope_counts({sampling: questions[sampling]}, answers, len(test))  # (I, 3) tp, fp, fn
        scores[sampling]["f1_interval"] = interval(counts, f1_of_counts)
        scores[sampling]["n_questions"] = len(questions[sampling])
    return scores


def family_block(model, processor, test, images: dict, majority: dict[str, str]) -> dict:
    """Accuracy per family with the true images and deranged ones, and the family's majority answer."""
    qs = [q for q in generate_questions(test, QuestionConfig(per_family=2, families=FAMILIES, seed=7, captions=()))]
    row_of = {s.image_id: k for k, s in enumerate(test)}
    other = derangement(len(test), seed=11).tolist()
    prompts = [item_prompt("llava", q.question, caption=False) for q in qs]
    said = answer(model, processor, [images[q.image_id] for q in qs], prompts, 3)
    blind = answer(model, processor, [images[test[other[row_of[q.image_id]]].image_id] for q in qs], prompts, 3)
    out = {}
    groups = {f: [f] for f in FAMILIES} | {"query_attribute": list(QUERY), "all": list(FAMILIES)}
    for name, members in groups.items():
        per = np.zeros((len(test), 4))  # right, asked, right with deranged images, right by the majority answer
        for q, s, b in zip(qs, said, blind, strict=True):
            if q.family in members:
                r = row_of[q.image_id]
                per[r] += (normalize_answer(s) == q.answer, 1, normalize_answer(b) == q.answer,
                           majority.get(q.family) == q.answer)
        if not per[:, 1].sum():
            continue
        out[name] = {"accuracy": ratio(per[:, [0, 1]]), "interval": interval(per[:, [0, 1]], ratio),
                     "shuffled_images": ratio(per[:, [2, 1]]), "shuffled_interval": interval(per[:, [2, 1]], ratio),
                     "majority_answer": ratio(per[:, [3, 1]]), "n": int(per[:, 1].sum())}
    out["examples"] = [(q.question, q.answer, s) for q, s in list(zip(qs, said, strict=True))[:12]]
    return out


def chair_block(model, processor, test, images: dict) -> dict:
    """CHAIR of object captions with the true images and with deranged ones."""
    prompt = item_prompt("llava", caption_items(test[0], ("caption_object",))[0].question, caption=True)
    objects_only = [dataclasses.replace(s, captions=[c for c in s.captions if c.granularity == "object"])
                    for s in test]
    other = derangement(len(test), seed=13).tolist()
    out = {}
    for name, order in (("true_images", list(range(len(test)))), ("shuffled_images", other)):
        caps = answer(model, processor, [images[test[k].image_id] for k in order], [prompt] * len(test), 20)
        captions = {s.image_id: c for s, c in zip(test, caps, strict=True)}
        row = score_captions(captions, objects_only, "synth")
        per = per_image_scores(captions, objects_only, "synth")
        row["CHAIR_i_interval"] = interval(np.stack([per["hall"], per["mentions"]], 1), ratio)
        row["examples"] = caps[:6]
        out[name] = row
    return out


def measure(model_dir: Path, data: Path, split: str, train_majority: dict[str, str], limit: int | None = None) -> dict:
    """Every target on ``split`` of ``data`` ("all": every image), its first ``limit`` images."""
    import transformers

    model = transformers.LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    samples = load_dataset("synth", data)
    test = [s for s in samples if split == "all" or s.split == split][:limit]
    images = {s.image_id: load_rgb(data / s.image_path) for s in test}
    out: dict = {"data": str(data), "split": split, "n_images": len(test), "seconds": {}}
    with torch.inference_mode():
        for name, fn in (("pope", lambda: pope_block(model, processor, test, samples, data)),
                         ("families", lambda: family_block(model, processor, test, images, train_majority)),
                         ("chair", lambda: chair_block(model, processor, test, images))):
            tic = time.perf_counter()
            out[name] = fn()
            out["seconds"][name] = time.perf_counter() - tic
            print(json.dumps({name: out[name]}, default=str)[:3000], flush=True)
    return out


def majority_answers(data: Path) -> dict[str, str]:
    """The most frequent answer of each family among the train split's questions."""
    train = [s for s in load_dataset("synth", data) if s.split == "train"]
    qs = generate_questions(train, QuestionConfig(per_family=2, families=FAMILIES, seed=7, captions=()))
    by: dict[str, Counter] = defaultdict(Counter)
    for q in qs:
        by[q.family][q.answer] += 1
    return {f: c.most_common(1)[0][0] for f, c in by.items()}


def ensure_synth(path: Path, scenes: int, size: int, seed: int) -> None:
    if not (path / "scenes.json").is_file():
        generate_synth(path, SynthConfig(scenes=scenes, image_size=size, seed=seed))


def table(results: dict) -> str:
    lines = ["| measure | target | " + " | ".join(r["name"] for r in results["evals"]) + " |",
             "|---|---|" + "---|" * len(results["evals"])]

    def cell(v, lo_hi=None):
        return f"{v:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else "")

    for s in SAMPLINGS:
        lines.append(f"| POPE F1 {s} | >= 0.85 | " + " | ".join(
            cell(r["pope"][s]["f1"], r["pope"][s]["f1_interval"]) + f" (yes {r['pope'][s].get('yes_ratio', 0):.2f})"
            for r in results["evals"]) + " |")
    for f in (*FAMILIES, "query_attribute"):
        lines.append(f"| {f} acc (shuffled images / majority) | {TARGETS.get(f, '-')} | " + " | ".join(
            cell(r["families"][f]["accuracy"], r["families"][f]["interval"])
            + f" ({r['families'][f]['shuffled_images']:.3f} / {r['families'][f]['majority_answer']:.3f})"
            if f in r["families"] else "-" for r in results["evals"]) + " |")
    lines.append("| CHAIR_i object captions (shuffled images) | <= 0.10 | " + " | ".join(
        cell(r["chair"]["true_images"]["CHAIR_i"], r["chair"]["true_images"]["CHAIR_i_interval"])
        + f" ({r['chair']['shuffled_images']['CHAIR_i']:.3f})" for r in results["evals"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="synth dataset to build on (generated when missing)")
    p.add_argument("--fresh", required=True, help="synth dataset of a fresh seed (generated when missing)")
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--fresh-scenes", type=int, default=300)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--fresh-seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="measure this build instead of building one")
    p.add_argument("--set", nargs="*", default=[], help="BuildConfig overrides, field=value (JSON values)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="measure on the first N images of each split")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, fresh, out = Path(args.data), Path(args.fresh), Path(args.out)
    ensure_synth(data, args.scenes, args.image_size, 0)
    ensure_synth(fresh, args.fresh_scenes, args.image_size, args.fresh_seed)
    results: dict = {"evals": []}
    model_dir = Path(args.model) if args.model else out / "model"
    if not args.model:
        overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        build = BuildConfig(**overrides)
        info = build_from_dataset(MLLMConfig(data=str(data), format="synth", out=str(model_dir)), build)
        results["build"] = {"config": dataclasses.asdict(build), "stage_times_s": info["stage_times_s"],
                            "train_time_s": info["train_time_s"], "distill": info.get("distill"),
                            "val_pope_accuracy": info["val_pope_accuracy"],
                            "val_loss_true_images": info["val_loss_true_images"],
                            "val_loss_shuffled_images": info["val_loss_shuffled_images"]}
        print(json.dumps(results["build"], default=str), flush=True)
    majority = majority_answers(data)
    for name, d, split in (("synth test", data, "test"), (f"fresh seed {args.fresh_seed} (all)", fresh, "all")):
        results["evals"].append({"name": name, **measure(model_dir, d, split, majority, args.limit)})
    results["table"] = table(results)
    print(results["table"])
    write_json(out / "see_bench.json", results)
    return results


if __name__ == "__main__":
    main()
