"""What the class-agnostic region fallback does on real photos (and on CLEVR renders, for comparison).

For every image with instance boxes, the fallback's boxes (:func:`dsanchor.encoders.regions.propose_boxes`,
what an image without annotations gets) are compared with its annotated boxes: whether connected components
fired (they need a uniform background) and the share of annotated boxes that some proposal covers at IoU >=
0.5 (recall), over the ``max_regions`` largest annotated boxes, the ones extraction would keep.

Usage:

    python scripts/proposals_on_photos.py --data ../shared/data/real/coco --format coco
    python scripts/proposals_on_photos.py --data runs/demo/data --format synth --limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, 4) x (m, 4) xywh -> (n, m) intersection over union."""
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    ih = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    inter = iw * ih
    return inter / (a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter).clamp(min=1e-9)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    args = p.parse_args(argv)
    from dsanchor.data import load_dataset
    from dsanchor.encoders.regions import RegionConfig, annotation_boxes, component_boxes, propose_boxes
    from dsanchor.encoders.transforms import load_rgb

    cfg, grid_only = RegionConfig(), RegionConfig(components=False)
    n_img = n_comp = n_gt = n_hit = n_hit_grid = n_hit_comp = n_comp_gt = 0
    for sample in load_dataset(args.format, args.data):
        if not sample.objects:
            continue
        if args.limit and n_img >= args.limit:
            break
        img = load_rgb(Path(args.data) / sample.image_path)
        w, h = (sample.width, sample.height) if sample.width > 0 else img.size
        gt = annotation_boxes(sample.objects, w, h, cfg.max_regions)
        if not len(gt):
            continue
        scale = torch.tensor([img.size[0] / w, img.size[1] / h] * 2)
        gt = gt * scale
        props = propose_boxes(img, cfg)
        fired = component_boxes(img, cfg).shape[0] > 0
        n_img += 1
        n_comp += int(fired)
        n_gt += len(gt)
        hit = int((iou(gt, props).max(1).values >= 0.5).sum())
        n_hit += hit
        n_hit_grid += int((iou(gt, propose_boxes(img, grid_only)).max(1).values >= 0.5).sum())
        if fired:
            n_comp_gt += len(gt)
            n_hit_comp += hit
    if n_img == 0:
        raise SystemExit(f"{args.data}: no image with boxes")
    res = {"images": n_img, "components_fired": n_comp / n_img, "boxes": n_gt, "recall_iou50": n_hit / n_gt,
           "grid_only_recall_iou50": n_hit_grid / n_gt,
           "recall_iou50_where_components_fired": n_hit_comp / n_comp_gt if n_comp_gt else None}
    where = (f" ({res['recall_iou50_where_components_fired']:.1%} on the images where they fired)"
             if n_comp_gt else "")
    print(f"{n_img} images with boxes, {n_gt} annotated boxes: connected components fired on "
          f"{res['components_fired']:.0%} of the images; at IoU >= 0.5 the fallback's boxes cover "
          f"{res['recall_iou50']:.1%} of the annotated boxes{where}, the grid alone "
          f"{res['grid_only_recall_iou50']:.1%}")
    return res


if __name__ == "__main__":
    main()
