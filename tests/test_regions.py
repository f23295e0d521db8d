import math

import pytest
import torch
from PIL import Image, ImageDraw

from dsanchor.data.records import ObjectAnnotation
from dsanchor.encoders.regions import (
    RegionConfig,
    annotation_boxes,
    component_boxes,
    grid_boxes,
    pad_boxes,
    propose_boxes,
    roi_align,
    roi_vectors,
    sample_boxes,
)


def _bilinear(fmap: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's roi_align bilinear_interpolate, one point, (C, H, W) -> (C,)."""
    C, H, W = fmap.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return torch.zeros(C, dtype=fmap.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * fmap[:, y0, x0] + hy * lx * fmap[:, y0, x1] + ly * hx * fmap[:, y1, x0] + ly * lx * fmap[:, y1, x1]


def _roi_align_reference(fmap, box, out_size, s, aligned):
    """Loop version of RoI-align for one (C, H, W) map and one normalised xywh box -> (C, oh, ow)."""
    C, H, W = fmap.shape
    off = 0.5 if aligned else 0.0
    x1, y1 = box[0] * W - off, box[1] * H - off
    bw, bh = box[2] * W, box[3] * H
    if not aligned:
        bw, bh = max(bw, 1.0), max(bh, 1.0)
    out = torch.zeros(C, out_size, out_size, dtype=fmap.dtype)
    for i in range(out_size):
        for j in range(out_size):
            acc = torch.zeros(C, dtype=fmap.dtype)
            for iy in range(s):
                for ix in range(s):
                    y = y1 + i * bh / out_size + (iy + 0.5) * bh / out_size / s
                    x = x1 + j * bw / out_size + (ix + 0.5) * bw / out_size / s
                    acc += _bilinear(fmap, float(y), float(x))
            out[:, i, j] = acc / (s * s)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("out_size,s", [(1, 3), (2, 2)])
def test_roi_align_matches_bruteforce(aligned, out_size, s):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    boxes = torch.tensor([
        [[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.5], [0.8, 0.85, 0.2, 0.15]],
        [[0.0, 0.9, 0.05, 0.1], [0.33, 0.0, 0.5, 0.2], [0.45, 0.45, 0.01, 0.01]],
    ], dtype=torch.float64)
    got = roi_align(feats, boxes, output_size=out_size, sampling_ratio=s, aligned=aligned)
    assert got.shape == (2, 3, 3, out_size, out_size)
    for b in range(2):
        for r in range(3):
            ref = _roi_align_reference(feats[b], boxes[b, r].tolist(), out_size, s, aligned)
            torch.testing.assert_close(got[b, r], ref, rtol=1e-9, atol=1e-9)


def test_roi_align_outside_the_map_is_zero_like_torchvision():
    feats = torch.ones(1, 2, 4, 4, dtype=torch.float64)
    boxes = torch.tensor([[[1.5, 1.5, 0.2, 0.2]]], dtype=torch.float64)  # far right / below
    assert torch.count_nonzero(roi_align(feats, boxes, 1, 2)) == 0


def test_roi_vectors_masks_and_averages():
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]])
    vec = roi_vectors(feats, boxes, torch.tensor([[True, False]]), samples=4)
    assert vec.shape == (1, 2, 1)
    assert vec[0, 0, 0].item() == pytest.approx(7.5)  # mean of a linear ramp over the whole map
    assert vec[0, 1, 0].item() == 0.0


def _two_blobs() -> Image.Image:
    im = Image.new("RGB", (160, 120), (128, 128, 128))
    d = ImageDraw.Draw(im)
    d.rectangle([20, 30, 59, 69], fill=(220, 30, 30))  # 40 x 40 red square
    d.ellipse([100, 60, 129, 99], fill=(30, 60, 220))  # 30 x 40 blue ellipse
    return im


def test_components_find_two_blobs_on_grey():
    boxes = component_boxes(_two_blobs(), RegionConfig())
    assert boxes.shape == (2, 4)
    # largest first: the red square, then the blue ellipse; thumbnails are 128 px so allow ~2 px
    torch.testing.assert_close(boxes[0], torch.tensor([20.0, 30.0, 40.0, 40.0]), atol=2.5, rtol=0)
    torch.testing.assert_close(boxes[1], torch.tensor([100.0, 60.0, 30.0, 40.0]), atol=2.5, rtol=0)


def test_no_components_on_a_busy_image():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    assert component_boxes(Image.fromarray(noise), RegionConfig()).shape == (0, 4)


def test_proposals_components_then_grid():
    cfg = RegionConfig(max_regions=4)
    boxes = propose_boxes(_two_blobs(), cfg)
    assert boxes.shape == (4, 4)
    torch.testing.assert_close(boxes[2], torch.tensor([0.0, 0.0, 160.0, 120.0]))  # whole image
    torch.testing.assert_close(boxes[3], torch.tensor([0.0, 0.0, 80.0, 60.0]))  # first 2x2 cell
    assert grid_boxes(90, 30, (1, 2, 3)).shape == (14, 4)
    no_comp = propose_boxes(_two_blobs(), RegionConfig(max_regions=20, components=False))
    assert no_comp.shape == (14, 4)


def test_annotation_boxes_keep_largest_in_order_and_clip():
    objs = [ObjectAnnotation("a", (0, 0, 10, 10)), ObjectAnnotation("b", (5, 5, 50, 50)),
            ObjectAnnotation("c", (90, 90, 30, 30)), ObjectAnnotation("d", (1, 1, 0, 5)),
            ObjectAnnotation("e", (20, 20, 20, 20))]
    boxes = annotation_boxes(objs, 100, 100, max_regions=3)
    # d is degenerate; c is clipped to 10 x 10 and ties with a, the earlier one wins
    assert boxes.tolist() == [[0, 0, 10, 10], [5, 5, 50, 50], [20, 20, 20, 20]]
    assert annotation_boxes(objs, 100, 100, max_regions=10).shape == (4, 4)


def test_sample_boxes_uses_annotations_else_fallback():
    im = _two_blobs()
    cfg = RegionConfig(max_regions=5)
    ann = sample_boxes([ObjectAnnotation("x", (16, 12, 80, 60))], (160, 120), im, cfg)
    torch.testing.assert_close(ann, torch.tensor([[0.1, 0.1, 0.5, 0.5]]))
    fb = sample_boxes([], (160, 120), im, cfg)
    assert fb.shape == (5, 4) and float(fb.min()) >= 0 and float(fb.max()) <= 1
    ignored = sample_boxes([ObjectAnnotation("x", (16, 12, 80, 60))], (160, 120), im,
                           RegionConfig(max_regions=5, annotations=False))
    torch.testing.assert_close(ignored, fb)  # the annotation is ignored: the same fallback


def test_pad_boxes():
    boxes, mask = pad_boxes(torch.ones(3, 4), 5)
    assert boxes.shape == (5, 4) and mask.tolist() == [True, True, True, False, False]
    assert boxes[3:].abs().sum() == 0
    assert pad_boxes(torch.ones(7, 4), 5)[1].all()


def test_stores_record_new_region_fields_only_away_from_their_defaults():
    from dsanchor.encoders.regions import region_record

    old_keys = {"max_regions", "grid_scales", "components", "background_tolerance", "background_min_fraction",
                "min_component_area", "proposal_size"}
    assert set(region_record(RegionConfig())) == old_keys  # a store made before these fields still resumes
    assert region_record(RegionConfig(annotations=False))["annotations"] is False
    rec = region_record(RegionConfig(detector="weights/detr", detector_threshold=0.2))
    assert rec["detector"] == "weights/detr" and rec["detector_threshold"] == 0.2
