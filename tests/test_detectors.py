"""The transformers region detector: tiny random DETR-family and OWL-ViT models saved offline."""

import json

import pytest
import torch
from PIL import Image, ImageDraw

from dsanchor.cli import main as cli_main
from dsanchor.data.records import Caption, ObjectAnnotation, Sample
from dsanchor.encoders import (
    RegionConfig,
    RegionDetector,
    create_encoder,
    nms,
    propose_boxes,
    sample_boxes,
    save_tiny_clip,
    save_tiny_detr,
    save_tiny_owlvit,
)
from dsanchor.encoders.detectors import box_iou
from dsanchor.errors import ConfigError
from dsanchor.features import ExtractConfig, FeatureStore, extract_features

FAMILIES = ("detr", "conditional_detr", "deformable_detr", "owlvit", "owlv2")
SIZES = ((160, 96), (96, 160), (50, 80))  # (width, height), none square


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Family name -> folder of a tiny random detector of that family."""
    root = tmp_path_factory.mktemp("detectors")
    out = {}
    for family in FAMILIES:
        if family.startswith("owl"):
            out[family] = save_tiny_owlvit(root / family, v2=family == "owlv2")
        else:
            out[family] = save_tiny_detr(root / family, model_type=family)
    return out


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """Grey background with two coloured blocks (gives the fallback components to find)."""
    im = Image.new("RGB", (width, height), (128, 128, 128))
    d = ImageDraw.Draw(im)
    d.rectangle([width // 8, height // 6, width // 3, height // 2], fill=(200, 40 + 20 * seed, 40))
    d.rectangle([width // 2, height // 2, 7 * width // 8, 5 * height // 6], fill=(40, 60, 210))
    return im


def _assert_inside(boxes: torch.Tensor, width: int, height: int, max_regions: int) -> None:
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert 1 <= boxes.shape[0] <= max_regions and torch.isfinite(boxes).all()
    x, y, w, h = boxes.unbind(1)
    assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (x + w <= width + 1e-4).all() and (y + h <= height + 1e-4).all()


# ---- NMS -----------------------------------------------------------------------------------------------------

def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 0, 0]])
    b = torch.tensor([[5.0, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]])
    expected = torch.tensor([[25 / 175, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_nms_removes_duplicates():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU(box 0, box 1) = 81 / 119 = 0.68; box 3 duplicates box 0 with a higher score
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [3]
    assert nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_nms_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(40, 2, generator=g) * 20], dim=1)
    scores = torch.rand(40, generator=g)
    kept: list[int] = []
    for i in sorted(range(40), key=lambda k: -float(scores[k])):
        if all(float(box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= 0.3 for j in kept):
            kept.append(i)
    assert nms(boxes, scores, 0.3).tolist() == kept


# ---- detection -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_detect_gives_boxes_inside_non_square_images(detectors, family):
    cfg = RegionConfig(detector=str(detectors[family]), detector_threshold=0.0, max_regions=6)
    det = RegionDetector(cfg)
    assert det.model_type == family and det.open_vocabulary == family.startswith("owl")
    images = [_scene(w, h, i) for i, (w, h) in enumerate(SIZES)]
    out = det.detect(images)
    assert len(out) == len(images)
    for boxes, im in zip(out, images, strict=True):
        _assert_inside(boxes, *im.size, cfg.max_regions)
    assert det.fallbacks == 0  # threshold 0: every image got detector boxes, not proposals
    # batching does not change the boxes of same-size images
    single = [det.detect([im])[0] for im in (images[0], images[0])]
    torch.testing.assert_close(det.detect([images[0], images[0]])[1], single[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_threshold_zero_keeps_the_best_max_regions(detectors, family):
    """With NMS off (IoU 1) the kept boxes are the highest-scored raw detections, clipped, in score order."""
    cfg = RegionConfig(detector=str(detectors[family]), detector_threshold=0.0, detector_iou=1.0, max_regions=5)
    det = RegionDetector(cfg)
    im = _scene(160, 96)
    boxes = det.detect([im])[0]
    scores, raw = det.raw_detections([im])[0]
    raw = torch.minimum(raw.clamp(min=0), torch.tensor([160.0, 96, 160, 96]))
    ok = ((raw[:, 2:] - raw[:, :2]) >= 1).all(dim=1)
    order = torch.argsort(scores[ok], descending=True, stable=True)[:5]
    best = raw[ok][order]
    assert boxes.shape[0] == min(5, int(ok.sum())) and boxes.shape[0] <= cfg.max_regions
    torch.testing.assert_close(boxes, torch.cat([best[:, :2], best[:, 2:] - best[:, :2]], dim=1))


@pytest.mark.parametrize("family", ["detr", "owlvit"])
def test_nothing_above_threshold_falls_back_to_proposals(detectors, family):
    cfg = RegionConfig(detector=str(detectors[family]), detector_threshold=1.0, max_regions=4)
    det = RegionDetector(cfg)
    images = [_scene(160, 96), _scene(50, 80, 1)]
    for boxes, im in zip(det.detect(images), images, strict=True):
        torch.testing.assert_close(boxes, propose_boxes(im, cfg))
    assert det.fallbacks == 2


def test_owl_queries_change_the_scores(detectors):
    im = _scene(160, 96)
    raw = [RegionDetector(RegionConfig(detector=str(detectors["owlvit"]), detector_threshold=0.0,
                                       detector_queries=q)).raw_detections([im])[0][0]
           for q in (("a cube", "a sphere", "a cylinder"), ("a dog",))]
    assert raw[0].shape == raw[1].shape == (16,)  # (32 / 8)^2 patches, one box each
    assert not torch.allclose(raw[0], raw[1])


# ---- configuration errors ------------------------------------------------------------------------------------

def test_bad_detector_paths_are_one_line_config_errors(tmp_path, detectors):
    clip = save_tiny_clip(tmp_path / "clip")
    (tmp_path / "empty").mkdir()
    cases = {str(tmp_path / "nope"): "does not exist", str(tmp_path / "empty"): "no config.json",
             str(clip): "model_type 'clip' is not an object-detection model"}
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as info:
            RegionDetector(RegionConfig(detector=path))
        assert "\n" not in str(info.value)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(ConfigError, match="cannot load a detr model") as info:
        RegionDetector(RegionConfig(detector=str(tmp_path / "broken")))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{"detector_threshold": 1.5}, {"detector_iou": -0.1},
                                    {"detector_batch_size": 0}, {"detector_queries": ()},
                                    {"detector_queries": ("a cube", " ")}])
def test_region_config_rejects_bad_detector_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RegionConfig(**kwargs)


def test_sample_boxes_source_order():
    im = _scene(160, 96)
    objects = [ObjectAnnotation("x", (16, 12, 80, 60))]
    detected = torch.tensor([[8.0, 8, 40, 24], [80, 48, 16, 16]])
    cfg = RegionConfig(max_regions=5)
    torch.testing.assert_close(sample_boxes(objects, (160, 96), im, cfg, detected),
                               torch.tensor([[0.1, 0.125, 0.5, 0.625]]))  # annotations first
    torch.testing.assert_close(sample_boxes([], (160, 96), im, cfg, detected),
                               detected / torch.tensor([160.0, 96, 160, 96]))
    off = RegionConfig(max_regions=1, annotations=False)
    torch.testing.assert_close(sample_boxes(objects, (160, 96), im, off, detected),
                               torch.tensor([[0.05, 1 / 12, 0.25, 0.25]]))  # annotations off: detected, capped
    fallback = propose_boxes(im, cfg) / torch.tensor([160.0, 96, 160, 96])
    torch.testing.assert_close(sample_boxes([], (160, 96), im, cfg, None), fallback)
    torch.testing.assert_close(sample_boxes([], (160, 96), im, cfg, torch.zeros(0, 4)), fallback)


# ---- extraction ----------------------------------------------------------------------------------------------

def _dataset(root, n: int, size=(160, 96)) -> list[Sample]:
    """n non-square scenes; odd ones have an annotated box, even ones none (they get detector boxes)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        _scene(*size, seed=i).save(root / "images" / f"{i}.png")
        objects = [ObjectAnnotation("red cube", (20, 16, 33, 32))] if i % 2 else []
        samples.append(Sample(image_id=i, image_path=f"images/{i}.png", width=size[0], height=size[1],
                              captions=[Caption(f"scene {i}", "scene")], objects=objects, split="train"))
    return samples


@pytest.fixture(scope="module")
def tiny_clip_encoder(tmp_path_factory):
    return create_encoder("clip", model_path=str(save_tiny_clip(tmp_path_factory.mktemp("clip"))), coarse_layer=1)


def test_extract_loads_the_detector_once_and_stores_its_boxes(tmp_path, detectors, tiny_clip_encoder, monkeypatch):
    import dsanchor.features.extract as extract_module

    loads = []

    class Counting(RegionDetector):
        def __init__(self, config):
            loads.append(config.detector)
            super().__init__(config)

    monkeypatch.setattr(extract_module, "RegionDetector", Counting)
    samples = _dataset(tmp_path / "data", 5)
    regions = RegionConfig(detector=str(detectors["detr"]), detector_threshold=0.0, max_regions=4,
                           detector_batch_size=2)
    extract_features(samples, tmp_path / "data", tmp_path / "feats", tiny_clip_encoder,
                     ExtractConfig(batch_size=2, shard_size=3, workers=0, progress=False), regions)
    assert len(loads) == 1  # 3 batches, one load
    store = FeatureStore(tmp_path / "feats")
    assert store.manifest["regions"]["detector"] == str(detectors["detr"])
    img = store.images()
    det = RegionDetector(regions)
    scale = torch.tensor([160.0, 96, 160, 96])
    for k, s in enumerate(samples):
        boxes = img.boxes[k][img.mask[k]]
        if s.objects:
            torch.testing.assert_close(boxes, torch.tensor([[20 / 160, 16 / 96, 33 / 160, 32 / 96]]))
        else:
            im = Image.open(tmp_path / "data" / s.image_path).convert("RGB")
            torch.testing.assert_close(boxes, det.detect([im])[0] / scale)


def test_extract_with_workers_equals_no_workers(tmp_path, detectors, tiny_clip_encoder, monkeypatch):
    """Each DataLoader worker loads the detector once (4 batches over 2 workers: 2 loads), same store."""
    import dsanchor.features.extract as extract_module

    log = tmp_path / "loads.txt"

    class Logging(RegionDetector):  # workers are forked, so they see this class; they append to a file
        def __init__(self, config):
            with log.open("a") as f:
                f.write("load\n")
            super().__init__(config)

    monkeypatch.setattr(extract_module, "RegionDetector", Logging)
    samples = _dataset(tmp_path / "data", 8)
    regions = RegionConfig(detector=str(detectors["owlvit"]), detector_threshold=0.0, max_regions=3,
                           annotations=False, detector_queries=("a cube", "a sphere", "a cylinder"))
    loads = {}
    for w in (0, 2):
        log.write_text("")
        extract_features(samples, tmp_path / "data", tmp_path / f"w{w}", tiny_clip_encoder,
                         ExtractConfig(batch_size=2, shard_size=4, workers=w, progress=False), regions)
        loads[w] = len(log.read_text().splitlines())
    assert loads == {0: 1, 2: 2}
    a, b = FeatureStore(tmp_path / "w0").images(), FeatureStore(tmp_path / "w2").images()
    assert a.mask.all()  # threshold 0: three detector boxes per image
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.regions, b.regions, atol=1e-5, rtol=0)


def test_cli_extract_with_detector_on_synth(tmp_path, detectors, capsys):
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(tmp_path / "synth", SynthConfig(scenes=4, image_size=64, max_objects=3, supersample=1))
    out = tmp_path / "feats"
    base = ["extract", "--data", str(tmp_path / "synth"), "--format", "synth", "--out", str(out),
            "--encoder", "clip", "--model-path", str(save_tiny_clip(tmp_path / "clip")), "--coarse-layer", "1",
            "--workers", "0", "--max-regions", "4", "--no-progress", "--no-annotations"]
    assert cli_main(base + ["--detector", str(detectors["owlvit"]), "--detector-threshold", "0",
                            "--detector-queries", "a cube", "a sphere", "a cylinder"]) == 0
    store = FeatureStore(out)
    assert store.manifest["regions"]["detector_queries"] == ["a cube", "a sphere", "a cylinder"]
    assert len(store) > 0 and store.images().mask.all()
    bad = base + ["--detector", str(tmp_path / "missing"), "--overwrite"]
    capsys.readouterr()
    assert cli_main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight-loading progress bars
    assert err.startswith("dsanchor extract: error: detector") and "does not exist" in err
    assert FeatureStore(out).manifest["regions"]["detector"] == str(detectors["owlvit"])  # store untouched
