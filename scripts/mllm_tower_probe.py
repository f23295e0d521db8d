"""Can the small LLaVA's vision tower see objects? Linear probes of object attributes from patch tokens.

For every object of a synth split, the patch (cell of the tower's grid) that holds its centre gives a feature
vector; a linear softmax probe per attribute (colour, shape, size, material), fitted on the train images' objects,
is scored on the val images' objects. Rows:

* ``majority``: the most frequent value of the train objects (what a probe that sees nothing scores);
* ``teacher <stage>``: EfficientNet-Lite0's map of that stage, pooled to the same grid (the distillation target);
* ``random tower``: the tower of a freshly initialised ``BuildConfig`` model (no training);
* ``distilled tower``: the same tower after ``--distill-steps`` of :func:`dsanchor.mllm.distill.distill_vision`;
* ``model <path>``: the tower of saved small LLaVAs (``dsanchor mllm build --out``), layer -1 (what the
  projector reads) and their coarse layer.

Usage:

    python scripts/mllm_tower_probe.py --data runs/synth128 --image-size 128 --distill-steps 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dsanchor.data import load_dataset
from dsanchor.encoders.transforms import load_rgb
from dsanchor.integrations.small_models import caption_tokenizer
from dsanchor.mllm.build import build_llava
from dsanchor.mllm.config import BuildConfig
from dsanchor.mllm.distill import TeacherMaps, distill_vision, patch_tokens, standardise, teacher_maps

ATTRIBUTES = ("color", "shape", "size", "material")


def objects_of(samples, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[str]]]:
    """Per object: (image row, cell index), attribute values, and how many objects share its cell."""
    rows, values = [], {a: [] for a in ATTRIBUTES}
    for i, s in enumerate(samples):
        for o in s.scene["objects"]:
            x, y = o["pixel_coords"][:2]
            cx = min(grid - 1, int(x * size / s.width * grid / size))
            cy = min(grid - 1, int(y * size / s.height * grid / size))
            rows.append((i, cy * grid + cx))
            for a in ATTRIBUTES:
                values[a].append(o[a])
    where = torch.tensor(rows)
    return where, torch.tensor([sum(1 for r in rows if r == t) for t in rows]), values


def probe(train_x: torch.Tensor, train_y: list[str], val_x: torch.Tensor, val_y: list[str], steps: int = 300) -> float:
    """Val accuracy of a linear softmax probe (standardised inputs, Adam, weight decay)."""
    classes = sorted(set(train_y))
    ty = torch.tensor([classes.index(v) for v in train_y])
    vy = torch.tensor([classes.index(v) if v in classes else -1 for v in val_y])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-5)
    tx, vx = (train_x - mean) / std, (val_x - mean) / std
    head = torch.nn.Linear(tx.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(tx), ty)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(vx).argmax(1) == vy).float().mean())


def scores(name: str, train_feats: torch.Tensor, val_feats: torch.Tensor, tr, va) -> dict[str, float]:
    """Probe accuracies of per-cell features (I, N, D) at the objects' cells."""
    (tw, _, tv), (vw, _, vv) = tr, va
    x, vx = train_feats[tw[:, 0], tw[:, 1]], val_feats[vw[:, 0], vw[:, 1]]
    row = {a: probe(x, tv[a], vx, vv[a]) for a in ATTRIBUTES}
    print(f"{name:32s} " + " ".join(f"{a} {row[a]:.3f}" for a in ATTRIBUTES), flush=True)
    return row


@torch.no_grad()
def tower_tokens(tower, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    tower.eval()
    return torch.cat([patch_tokens(tower, pixels[a:a + 128], layer) for a in range(0, len(pixels), 128)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=300)
    p.add_argument("--distill-steps", type=int, default=0)
    p.add_argument("--model", nargs="*", default=[], help="saved small LLaVAs whose towers to probe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = load_dataset("synth", args.data)
    train = [s for s in samples if s.split == "train"][:args.train_images]
    val = [s for s in samples if s.split == "val"][:args.val_images]
    cfg = BuildConfig(image_size=args.image_size, patch_size=args.patch_size, distill_steps=args.distill_steps)
    grid = cfg.image_size // cfg.patch_size
    model, processor = build_llava(caption_tokenizer(["a"]), cfg)
    root = Path(args.data)
    splits = (("train", train), ("val", val))
    pix = {n: processor.image_processor(images=[load_rgb(root / s.image_path) for s in ss],
                                        return_tensors="pt")["pixel_values"] for n, ss in splits}
    tr, va = objects_of(train, cfg.image_size, grid), objects_of(val, cfg.image_size, grid)
    print(f"{len(tr[0])} train objects, {len(va[0])} val objects; val objects alone in their cell: "
          f"{float((va[1] == 1).float().mean()):.3f}")
    results = {"majority": {a: max(va[2][a].count(v) for v in set(va[2][a])) / len(va[2][a]) for a in ATTRIBUTES}}
    print("majority (val)                   " + " ".join(f"{a} {results['majority'][a]:.3f}" for a in ATTRIBUTES))
    tic = time.perf_counter()
    stages = (cfg.distill_stage, cfg.distill_coarse_stage)
    t_train, t_val = teacher_maps(pix["train"], grid, stages), teacher_maps(pix["val"], grid, stages)
    fine, fine_val = standardise(t_train[0], t_val[0])
    coarse, coarse_val = standardise(t_train[1], t_val[1])
    print(f"teacher maps: {time.perf_counter() - tic:.1f}s")
    results[f"teacher {stages[0]}"] = scores(f"teacher {stages[0]}", fine, fine_val, tr, va)
    results[f"teacher {stages[1]}"] = scores(f"teacher {stages[1]}", coarse, coarse_val, tr, va)
    tower = model.model.vision_tower
    results["random tower"] = scores("random tower", tower_tokens(tower, pix["train"], -1),
                                     tower_tokens(tower, pix["val"], -1), tr, va)
    if args.distill_steps:
        tic = time.perf_counter()
        info = distill_vision(tower, pix["train"], TeacherMaps(fine, coarse, 0.0), cfg,
                              val=(pix["val"], TeacherMaps(fine_val, coarse_val, 0.0)), progress=False)
        print(f"distillation {args.distill_steps} steps: {time.perf_counter() - tic:.0f}s {info}")
        results["distilled tower"] = scores("distilled tower", tower_tokens(tower, pix["train"], -1),
                                            tower_tokens(tower, pix["val"], -1), tr, va)
        results["distilled tower (coarse)"] = scores(
            "distilled tower (coarse)", tower_tokens(tower, pix["train"], cfg.coarse_layer),
            tower_tokens(tower, pix["val"], cfg.coarse_layer), tr, va)
        results["distill_info"] = info
    for path in args.model:
        import transformers

        m = transformers.LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True)
        proc = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        mp = {n: proc.image_processor(images=[load_rgb(root / s.image_path) for s in ss], return_tensors="pt")[
            "pixel_values"] for n, ss in (("train", train), ("val", val))}
        g = m.config.vision_config.image_size // m.config.vision_config.patch_size
        mtr = objects_of(train, m.config.vision_config.image_size, g)
        mva = objects_of(val, m.config.vision_config.image_size, g)
        for layer in (-1, 1):
            name = f"model {path} layer {layer}"
            results[name] = scores(name, tower_tokens(m.model.vision_tower, mp["train"], layer),
                                   tower_tokens(m.model.vision_tower, mp["val"], layer), mtr, mva)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
