"""Honest answers on new inputs: near-duplicate captions collapsed in a top-k list, the record of what a pipeline
was trained on, and the one-line out-of-domain note of the API, `search`, `caption` and the server. On the tiny
pipeline of conftest.py (seconds, no downloads); the check that a COCO photo is flagged for a synth pipeline
and a fresh synth image is not runs the real default encoder (marked slow)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from dsanchor.cli import main as cli_main

COCO_PHOTO = Path(__file__).parent / "fixtures" / "real" / "coco" / "val2017" / "000000000802.jpg"


def _images(parts):
    return sorted((parts / "synth" / "images").glob("*.png"))


# ---- near-duplicates ----------------------------------------------------------------------------------------------

def test_near_duplicates_by_fact_text_and_cosine():
    from dsanchor.duplicates import near_duplicate_keep, normalise_caption

    texts = ["Balls are the most common shape.", "Spheres are the most common shape.", "A red cube!",
             "a  red CUBE", "two objects", "Two objects, nearly.", "a blue ball"]
    keys = ["most:sphere", "most:sphere", None, None, None, None, None]
    vectors = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [1.0, 0.0, 0.99], [0, 1, 1]])
    assert normalise_caption(" A  red CUBE! ") == "a red cube"
    order = list(range(len(texts)))
    # 1 shares 0's fact, 3 is 2's text, 5 has cosine 0.99995 with 4
    assert near_duplicate_keep(order, texts, vectors, keys=keys) == [0, 2, 4, 6]
    assert near_duplicate_keep(order, texts, vectors, keys=keys, k=2) == [0, 2]
    assert near_duplicate_keep(order, texts, None, keys=None) == [0, 1, 2, 4, 5, 6]  # the text rule alone
    assert near_duplicate_keep([3, 2, 1, 0], texts, vectors, keys=keys) == [3, 1]  # the best of a group stays


def test_rank_captions_collapses_by_default(parts, pipe):
    image = _images(parts)[0]
    caps = ["a red cube", "A red cube.", "there are two objects", "a blue sphere"]
    ranked, _ = pipe.rank_captions(image, caps, g=0.5)
    every, _ = pipe.rank_captions(image, caps, g=0.5, collapse=False)
    assert len(every) == 4 and len(ranked) == 3
    names = [c for c, _ in ranked]
    assert ("a red cube" in names) != ("A red cube." in names)  # the higher-ranked of the two stays
    assert ranked == [r for r in every if r[0] in names]  # the kept captions keep their order and scores
    assert len(pipe.rank_captions(image, caps, g=0.5, k=2)[0]) == 2


def test_index_captions_show_each_fact_once(parts, pipe):
    from dsanchor.duplicates import fact_key, normalise_caption
    from dsanchor.index import build_index, rank_index_captions

    idx = build_index(pipe, data=parts / "synth", format="synth", workers=0, progress=False)
    texts = idx.store.texts()
    fact_of = dict(zip(texts.captions, texts.facts, strict=True))
    top, _ = rank_index_captions(pipe, idx, _images(parts)[0], k=8, g=0.5)
    every, _ = rank_index_captions(pipe, idx, _images(parts)[0], k=len(texts), g=0.5, collapse=False)
    assert len({normalise_caption(c) for c, _ in top}) == len(top) == 8
    assert len({fact_key(fact_of[c]) for c, _ in top}) == len(top)
    assert len({fact_key(fact_of[c]) for c, _ in every}) < len(every)  # uncollapsed, facts come back reworded
    assert top[0] == every[0]


# ---- what a pipeline was trained on -------------------------------------------------------------------------------

def test_pipeline_records_what_it_was_trained_on(parts, pipe, tmp_path):
    from dsanchor.features.store import FeatureStore
    from dsanchor.pipeline import save_pipeline

    meta = json.loads((parts / "pipe" / "pipeline.json").read_text())["domain"]
    n_train = len(FeatureStore(parts / "feats").images("train"))
    fmt = "unknown"  # the tiny store was extracted without naming its format
    assert {k: meta[k] for k in ("dataset", "format", "train_images", "region_source")} == {
        "dataset": fmt, "format": fmt, "train_images": n_train, "region_source": "annotation boxes"}
    assert (parts / "pipe" / "domain.safetensors").is_file()
    assert pipe.trained_on() == f"{fmt} ({n_train} training images, annotation boxes)"
    named = save_pipeline(tmp_path / "p", parts / "feats", parts / "heads", dataset="synth")
    assert named.trained_on() == f"synth ({n_train} training images, annotation boxes)"
    assert pipe.domain.image_threshold > 0 and 0 < pipe.domain.text_threshold < 1
    cal = meta["calibration"]
    assert meta["image_threshold"] == pytest.approx(cal["image_margin"] * cal["image_quantile_value"])
    assert meta["text_threshold"] == pytest.approx(cal["text_margin"] * cal["text_quantile_value"])


def test_domain_rule_on_hand_made_vectors():
    from dsanchor.domain import TrainingDomain

    dom = TrainingDomain("synth", "synth", 2, "proposals", torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                         torch.tensor([[1.0, 0.0, 0.0]]), image_threshold=0.1, text_threshold=0.5)
    # distances 0, 1 - cos(45°) = 0.29 (beyond 0.1), 0.005
    notes = dom.image_notes(torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.1]]))
    assert notes[0] is None and notes[2] is None
    assert notes[1].startswith("this image looks unlike the pipeline's training images (synth (2 training "
                               "images, proposals): distance 0.29")
    assert dom.text_note(torch.tensor([[1.0, 1.0, 0.0]])) is None  # similarity 0.71
    assert "similarity 0.00 to the closest, below 0.50" in dom.text_note(torch.tensor([[0.0, 0.0, 1.0]]))


def test_region_source_of_the_training_images():
    from types import SimpleNamespace

    from dsanchor.domain import region_source
    from dsanchor.encoders.regions import RegionConfig

    imgs = SimpleNamespace(objects=[["cube"], [], ["ball"]])
    assert region_source(RegionConfig(detector="/models/owlv2"), imgs) == "detector /models/owlv2"
    assert region_source(RegionConfig(), imgs) == "annotation boxes (2 images) and proposals (1)"
    assert region_source(RegionConfig(annotations=False), imgs) == "proposals"


def _old_pipeline(parts, tmp_path) -> Path:
    """A copy of the tiny pipeline as saved before the domain record."""
    old = tmp_path / "old-pipe"
    shutil.copytree(parts / "pipe", old)
    meta = json.loads((old / "pipeline.json").read_text())
    del meta["domain"]
    (old / "pipeline.json").write_text(json.dumps(meta))
    (old / "domain.safetensors").unlink()
    return old


def _flag_everything(pipe, tmp_path) -> Path:
    """A copy of the tiny pipeline whose thresholds call every image and every text out of domain."""
    import dataclasses

    from dsanchor.pipeline import _replace

    dom = dataclasses.replace(pipe.domain, image_threshold=-1.0, text_threshold=2.0)
    out = tmp_path / "strict-pipe"
    _replace(pipe, domain=dom).save_pretrained(out)
    return out


def test_older_pipelines_load_without_notes(parts, tmp_path, capsys):
    from dsanchor.pipeline import load

    old = load(_old_pipeline(parts, tmp_path))
    img = _images(parts)[0]
    assert old.domain is None and old.trained_on() is None
    assert old.image_notes([COCO_PHOTO]) == [None] and old.text_note("a dog sitting on a bed") is None
    assert old.caption(img, g=0.5)[0]["domain_note"] is None


def _notes(err: str) -> list[str]:
    """The lines of stderr that are dsanchor's notes (third-party loading bars aside)."""
    return [line for line in err.splitlines() if "note:" in line]


def test_commands_print_the_note_in_one_line(parts, pipe, tmp_path, capsys):
    strict = _flag_everything(pipe, tmp_path)
    idx = tmp_path / "idx"
    assert cli_main(["index", "--pipeline", str(parts / "pipe"), "--data", str(parts / "synth"), "--format", "synth",
                     "--out", str(idx), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    for query in (["--query", "a dog sitting on a bed"], ["--image", str(COCO_PHOTO)]):
        assert cli_main(["search", "--index", str(idx), "--pipeline", str(strict), *query, "--k", "2"]) == 0
        err = _notes(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith("dsanchor search: note: this ")
        assert cli_main(["search", "--index", str(idx), "--pipeline", str(strict), *query, "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["domain_note"].startswith("this ")
        assert cli_main(["search", "--index", str(idx), *query, "--json"]) == 0  # the tiny pipeline's own domain
        assert "domain_note" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli_main(["caption", "--pipeline", str(strict), str(COCO_PHOTO), "--g", "0.5"]) == 0
    err = _notes(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"dsanchor caption: note: {COCO_PHOTO}: this image looks unlike")
    assert cli_main(["caption", "--pipeline", str(_old_pipeline(parts, tmp_path)), str(COCO_PHOTO), "--json"]) == 0
    out = capsys.readouterr()
    assert _notes(out.err) == [] and json.loads(out.out.strip().splitlines()[-1])["domain_note"] is None


def test_server_answers_carry_the_note(parts, pipe, tmp_path):
    from test_serve import _call, _start

    from dsanchor.index import build_index

    build_index(pipe, data=parts / "synth", format="synth", out=tmp_path / "idx", workers=0, progress=False)
    srv = _start(tmp_path / "idx", _flag_everything(pipe, tmp_path))
    try:
        status, _, out = _call(srv, "/api/search?q=a+dog+sitting+on+a+bed&k=2")
        assert status == 200 and out["domain_note"].startswith("this query looks unlike")
        status, _, out = _call(srv, "/api/image?k=2", COCO_PHOTO.read_bytes(), "image/jpeg")
        assert status == 200 and out["domain_note"].startswith("this image looks unlike")
        status, _, info = _call(srv, "/api/info")
        assert info["trained_on"] == pipe.trained_on()
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.slow
def test_coco_photo_is_flagged_and_a_fresh_synth_image_is_not(tmp_path):
    """The real default encoder (effnet-minilm) on a small synth set: a domain fitted on its train and val
    splits flags COCO photos and passes fresh synth images of another data seed."""
    from dsanchor.data import SynthConfig, generate_synth, load_dataset
    from dsanchor.domain import fit_domain
    from dsanchor.encoders import create_encoder
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.extract import ExtractConfig, extract_features
    from dsanchor.features.store import FeatureStore
    from dsanchor.pipeline import _open

    generate_synth(tmp_path / "train", SynthConfig(scenes=30, seed=0, split_fractions=(0.6, 0.4, 0.0), workers=0),
                   progress=False)
    generate_synth(tmp_path / "fresh", SynthConfig(scenes=6, seed=1234, split_fractions=(1.0, 0.0, 0.0), workers=0),
                   progress=False)
    encoder = create_encoder("effnet-minilm")
    extract_features(load_dataset("synth", tmp_path / "train"), tmp_path / "train", tmp_path / "feats", encoder,
                     ExtractConfig(workers=0, progress=False), RegionConfig())
    domain = fit_domain(FeatureStore(tmp_path / "feats"), RegionConfig())

    def coarse(paths):
        pixels = torch.stack([encoder.transform(_open(p)) for p in paths])  # (N, 3, S, S)
        boxes, mask = torch.zeros(len(paths), 1, 4), torch.zeros(len(paths), 1, dtype=torch.bool)
        return encoder.encode_pixels(pixels, boxes, mask)[0]

    fresh = sorted((tmp_path / "fresh" / "images").glob("*.png"))
    photos = sorted(COCO_PHOTO.parent.glob("*.jpg"))
    assert domain.image_notes(coarse(fresh)) == [None] * len(fresh)
    assert all(n is not None for n in domain.image_notes(coarse(photos)))


# ---- plots and the report's reading -------------------------------------------------------------------------------

def _results(fb=0.784, pp=0.764, orc=0.830):
    methods = {name: {"exact": {"t2i": {"R@1": v}}} for name, v in
               (("coarse", 0.5), ("fine", 0.74), ("fixed_best", fb), ("gate_grad", 0.76), ("dsa_ppo", pp),
                ("oracle", orc))}
    methods["fixed_best"]["g"] = 0.7
    return {"methods": methods, "seeds": [0], "overhead": {"controller_ms": 0.01, "encoder_ms": 4.0, "ratio": 0.0025}}


def test_reading_says_where_ppo_and_the_oracle_stand_in_plain_numbers():
    from dsanchor.report.demo_report import reading

    lines = reading(_results())
    oracle = next(s for s in lines if "oracle" in s)
    assert oracle.startswith("Text→image R@1 (exact): PPO (0.764) is 0.020 below the best fixed g (0.784 at "
                             "g = 0.70, chosen on val), while the per-query oracle (0.830) is 0.046 above it.")
    assert "(the DSA proposal asks for under 5%)" in lines[-1]
    text = " ".join(lines)
    assert "captures" not in text and "the seed" not in text and "the issue" not in text
    assert not re.search(r"[-−]\d+%", text)  # no negative percentages
    assert "PPO (0.790) is 0.006 above" in " ".join(reading(_results(pp=0.790)))


def test_examples_are_framed_by_the_exact_protocol_with_a_legend(parts, tmp_path):
    from dsanchor.features.store import FeatureStore
    from dsanchor.features.types import exact_relevance
    from dsanchor.report.demo_report import _examples
    from dsanchor.report.plots import EXAMPLE_LEGEND, plot_examples

    store = FeatureStore(parts / "feats")
    texts, images = store.texts("test"), store.images("test")
    examples, protocol = _examples(store, texts, images, torch.full((len(texts),), 0.5), parts)
    assert protocol == "exact" and examples
    rel = exact_relevance(texts, images)
    paths = [str(parts / "synth" / p) for p in store.image_paths("test")]
    for ex in examples:
        q = texts.captions.index(ex["caption"])
        for path, relevant, own in ex["top"]:
            j = paths.index(str(path))
            assert relevant == bool(rel[q, j]) and (relevant or not own)  # own image => relevant
    assert "true of this image" in EXAMPLE_LEGEND["exact"][0]
    assert plot_examples(examples, tmp_path / "ex.png", protocol).stat().st_size > 1000


def test_report_says_which_boxes_its_numbers_use():
    from types import SimpleNamespace

    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.report.demo_report import regions_note

    boxed = SimpleNamespace(objects=[["cube"], ["ball"]])
    note = regions_note(RegionConfig(), boxed)
    assert "measured on **annotation boxes**" in note and "overstate" in note and "--region-source proposals" in note
    note = regions_note(RegionConfig(annotations=False), boxed)
    assert "measured on **proposals**" in note and "measured on the boxes new files get" in note


def test_run_config_region_source(monkeypatch):
    """A run extracts the boxes of ``RunConfig.region_source``: auto by default, which is proposals (what new files
    get) except for photos whose objects come from captions, which get every grid cell."""
    import dsanchor.encoders
    import dsanchor.features.extract
    from dsanchor.run import REGION_SOURCES, RunConfig
    from dsanchor.stages import auto_region_source, extract_samples

    assert RunConfig().region_source == REGION_SOURCES[0] == "auto"
    assert auto_region_source("annotations") == "proposals" and auto_region_source("captions") == "grid"
    with pytest.raises(ValueError, match="region_source must be one of auto, proposals, annotations, grid, union"):
        RunConfig(region_source="boxes")
    seen = []
    monkeypatch.setattr(dsanchor.encoders, "create_encoder", lambda name, config=None: name)
    monkeypatch.setattr(dsanchor.features.extract, "extract_features",
                        lambda samples, data, out, encoder, config, regions, source: seen.append(regions))
    for source in REGION_SOURCES[1:]:
        extract_samples([], Path("data"), Path("out"), RunConfig(region_source=source), "synth")
    assert [r.annotations for r in seen] == [False, True, False, False]
    assert [(r.components, r.max_regions) for r in seen[2:]] == [(False, 14), (True, 20)]
