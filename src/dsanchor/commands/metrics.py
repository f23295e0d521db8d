"""``dsanchor metrics``: score caption files with CHAIR, BLEU and CIDEr.

    dsanchor metrics chair --captions run.jsonl --gt gt_objects.json [--vocabulary coco|synth]
    dsanchor metrics chair --captions run.jsonl --instances instances_val2014.json --coco-captions captions_val2014.json
    dsanchor metrics caption --captions run.jsonl --references captions_val2014.json [--tokenizer auto|java|python]

Caption files are JSON lines with an image id and a caption per line (the usual MLLM evaluation output),
or a JSON list of such objects, or a JSON ``{image_id: caption}`` mapping. Image ids are matched by their
string form, so ``42`` in a caption file matches the key ``"42"`` of a JSON mapping.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dsanchor.commands._common import write_json
from dsanchor.errors import ConfigError, DataError

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("metrics", help="score caption files: CHAIR, BLEU, CIDEr",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="metric", metavar="METRIC", required=True)

    p = sub.add_parser("chair", help="CHAIR_s and CHAIR_i object hallucination (Rohrbach et al. 2018)")
    _caption_args(p)
    p.add_argument("--gt", type=Path, help="JSON {image_id: [object names]} (e.g. CHAIR's gt_objects.json)")
    p.add_argument("--instances", type=Path, nargs="+", help="COCO instances_*.json (instead of --gt)")
    p.add_argument("--coco-captions", type=Path, nargs="+", help="COCO captions_*.json (with --instances)")
    p.add_argument("--vocabulary", default="coco", choices=("coco", "synth"), help="object vocabulary")
    p.add_argument("--save", type=Path, help="write the summary and per-caption mentions to this JSON file")
    p.set_defaults(func=_run_chair)

    p = sub.add_parser("caption", help="BLEU-1..4 and CIDEr-D (raw scale) against reference captions")
    _caption_args(p)
    p.add_argument("--references", type=Path, required=True,
                   help="COCO captions_*.json, or JSON {image_id: [reference captions]}")
    p.add_argument("--tokenizer", default="auto", choices=("auto", "java", "python"),
                   help="PTB tokenizer: Stanford's (java), the Python one, or java when installed (auto)")
    p.set_defaults(func=_run_caption)


def _caption_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--captions", type=Path, required=True, help="generated captions (.jsonl or .json)")
    p.add_argument("--image-id-key", default="image_id", help="key of the image id in each record")
    p.add_argument("--caption-key", default="caption", help="key of the caption in each record")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _jsonl(path: Path) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise DataError(path, "file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not valid JSON ({exc.msg})", field=f"line {n}") from None
    return out


def read_captions(path: Path, id_key: str = "image_id", caption_key: str = "caption") -> dict[str, str]:
    """``{image_id (as a string): caption}`` from a caption file (see the module docstring)."""
    if path.suffix == ".jsonl":
        records = _jsonl(path)
    else:
        data = _load_json(path)
        if isinstance(data, dict):
            records = [(f"key {k}", {id_key: k, caption_key: v}) for k, v in data.items()]
        elif isinstance(data, list):
            records = [(f"[{n}]", r) for n, r in enumerate(data)]
        else:
            raise DataError(path, "expected JSON lines, a JSON list of records or a JSON {image_id: caption} mapping")
    out: dict[str, str] = {}
    for where, rec in records:
        if not isinstance(rec, dict) or id_key not in rec or caption_key not in rec:
            raise DataError(path, f"each record needs {id_key!r} and {caption_key!r} keys "
                                  "(set --image-id-key / --caption-key)", field=where)
        key, caption = str(rec[id_key]), rec[caption_key]
        if not isinstance(caption, str):
            raise DataError(path, f"{caption_key!r} must be a string", field=where)
        if key in out:
            raise DataError(path, f"image id {key} appears twice; keep one caption per image", field=where)
        out[key] = caption
    if not out:
        raise DataError(path, "no captions in the file")
    return out


def _read_gt(path: Path) -> dict[str, list[str]]:
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise DataError(path, "expected a JSON mapping {image_id: [object names]}")
    return {str(k): v for k, v in data.items()}


def _read_references(path: Path) -> dict[str, list[str]]:
    data = _load_json(path)
    if isinstance(data, dict) and "annotations" in data:
        refs: dict[str, list[str]] = {}
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise DataError(path, "needs 'image_id' and 'caption'", field=f"annotations[{n}]")
            refs.setdefault(str(ann["image_id"]), []).append(ann["caption"])
        return refs
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise DataError(path, "expected COCO captions JSON (with 'annotations') or {image_id: [reference captions]}")


def _run_chair(args: argparse.Namespace) -> int:
    from dsanchor.metrics.chair import chair, gt_objects_from_coco

    captions = read_captions(args.captions, args.image_id_key, args.caption_key)
    if args.gt is not None and args.instances:
        raise ConfigError("give either --gt or --instances/--coco-captions, not both")
    if args.gt is not None:
        gt: dict[str, Any] = _read_gt(args.gt)
    elif args.instances and args.coco_captions:
        built = gt_objects_from_coco([_load_json(p) for p in args.instances],
                                     [_load_json(p) for p in args.coco_captions], args.vocabulary)
        gt = {str(k): v for k, v in built.items()}
    else:
        raise ConfigError("CHAIR needs ground truth: --gt GT.json, or --instances and --coco-captions")
    result = chair(captions, gt, vocabulary=args.vocabulary)
    print(f"CHAIR_s  {result.chair_s:.4f}  ({result.num_hallucinated_captions} of {result.num_captions} captions "
          "hallucinate)")
    print(f"CHAIR_i  {result.chair_i:.4f}  ({result.num_hallucinated_mentions} of {result.num_mentions} "
          "object mentions hallucinated)")
    if args.save is not None:
        details = [{"image_id": c.image_id, "caption": c.caption, "mentions": [m._asdict() for m in c.mentions]}
                   for c in result.captions]
        write_json(args.save, {"vocabulary": args.vocabulary, **result.as_dict(), "captions": details})
    return 0


def _run_caption(args: argparse.Namespace) -> int:
    from dsanchor.metrics.captioning import caption_metrics

    captions = read_captions(args.captions, args.image_id_key, args.caption_key)
    refs = _read_references(args.references)
    missing = [k for k in captions if k not in refs]
    if missing:
        raise DataError(args.references, f"no references for {len(missing)} captioned images "
                                         f"(e.g. {', '.join(missing[:5])})")
    scores = caption_metrics(captions, {k: refs[k] for k in captions}, tokenizer=args.tokenizer)
    for name, value in scores.as_dict().items():
        print(f"{name:7s}  {value:.4f}")
    print("(CIDEr on its raw scale; papers often print it x100)")
    return 0
