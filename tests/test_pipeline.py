"""The saved pipeline, the Python API, the index (with resume) and the index / search / caption commands, on a
tiny random CLIP encoder and randomly initialised parts (seconds, no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from dsanchor.cli import main as cli_main
from dsanchor.errors import ConfigError, DataError


def _images(parts):
    return sorted((parts / "synth" / "images").glob("*.png"))


def test_saved_pipeline_is_json_and_safetensors_and_loads_the_same(parts, pipe):
    from dsanchor.pipeline import load

    files = {p.suffix for p in (parts / "pipe").rglob("*") if p.is_file()}
    assert files <= {".json", ".safetensors"}  # nothing to unpickle
    meta = json.loads((parts / "pipe" / "pipeline.json").read_text())
    assert meta["parts"] == {"heads": True, "controller": True, "detector": True, "decoder": True,
                             "pair_controller": False}
    assert meta["encoder"]["name"] == "clip" and meta["fixed_g"] == 0.4
    again = load(parts / "pipe")
    img = _images(parts)[0]
    a, b = pipe.choose_g(image=img), again.choose_g(image=img)
    assert a == b and a.source == "controller" and a.query_type in (2, 3)  # image query types: k..2k-1
    t = pipe.choose_g(text="a red cube")
    assert t.query_type in (0, 1) and 0.0 <= t.g <= 1.0 and "query type" in t.describe()
    assert pipe.choose_g(text="a red cube", g=0.25).describe() == "g = 0.25 (given)"


def test_parts_that_do_not_fit_are_one_line_errors(parts, pipe):
    from dsanchor.captioning import DecoderConfig
    from dsanchor.captioning.decoder import CaptionDecoder
    from dsanchor.controller import ControllerConfig, GranularityController
    from dsanchor.pipeline import _replace, load

    wrong_ctrl = GranularityController(ControllerConfig(state_dim=7))
    with pytest.raises(ConfigError, match="controller reads states of size 7"):
        _replace(pipe, controller=wrong_ctrl)
    wrong_dec = CaptionDecoder(DecoderConfig(vocab_size=len(pipe.vocab), visual_dim=12, width=16, layers=1, heads=2,
                                             max_len=pipe.vocab.max_len + 2))
    with pytest.raises(ConfigError, match="reads 12-d visual tokens"):
        _replace(pipe, decoder=wrong_dec)
    with pytest.raises(ConfigError, match="heads expect features"):
        _replace(pipe, encoder={**pipe.encoder_spec, "dims": {**pipe.encoder_spec["dims"], "text": 3}})
    with pytest.raises(DataError, match="not a saved DSA pipeline"):
        load(parts / "heads")
    no_ctrl = _replace(pipe, controller=None)
    assert no_ctrl.choose_g(text="a cube").source == "fixed" and no_ctrl.choose_g(text="a cube").g == 0.4


def test_api_index_search_rank_and_caption(parts, pipe):
    images = _images(parts)
    idx = pipe.index(parts / "synth" / "images", progress=False, workers=0)  # in memory
    assert len(idx) == len(images) and sorted(idx.paths) == sorted(str(p) for p in images)
    hits = pipe.search("a large green metal sphere", idx, k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
    assert len({h.path for h in hits}) == 3 and all(h.g == hits[0].g for h in hits)
    assert pipe.search("a large green metal sphere", idx, k=3, g=0.0)[0].g == 0.0
    # search agrees with exact DSA scoring of the whole (small) gallery
    from dsanchor.retrieval import anchored_scores, pair_terms

    text = pipe.heads.encode_text(pipe.encode_texts(["a large green metal sphere"]))
    exact = anchored_scores(pair_terms(text, idx.joint, pipe.heads.pool_s.item()), torch.tensor([[hits[0].g]]))[0]
    assert [idx.paths[i] for i in exact.topk(3).indices.tolist()] == [h.path for h in hits]
    ranked, choice = pipe.rank_captions(images[0], ["a red cube", "there are two objects", "a blue sphere"])
    assert sorted(c for c, _ in ranked) == sorted(["a red cube", "there are two objects", "a blue sphere"])
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True) and choice.source == "controller"
    caps = pipe.caption(images[:2], g=0.7)
    assert len(caps) == 2 and set(caps[0]["captions"]) == {"scene", "object"} and caps[0]["g"] == 0.7
    assert all(isinstance(t, str) for c in caps for t in c["captions"].values())
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        pipe.caption(images[0], g=1.5)
    with pytest.raises(ConfigError, match="non-empty"):
        pipe.search("  ", idx)


def test_a_killed_index_run_resumes_to_the_same_index(parts, pipe, tmp_path, monkeypatch):
    import dsanchor.features.extract as extract_module
    from dsanchor.index import build_index, load_index

    folder = parts / "synth" / "images"
    whole = build_index(pipe, folder, tmp_path / "whole", workers=0, shard_size=2, progress=False)
    real_write = extract_module.StoreWriter.write_shard
    calls = []

    def dying(self, index, data):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the second shard
        return real_write(self, index, data)

    monkeypatch.setattr(extract_module.StoreWriter, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index(pipe, folder, tmp_path / "killed", workers=0, shard_size=2, progress=False)
    monkeypatch.setattr(extract_module.StoreWriter, "write_shard", real_write)
    with pytest.raises(DataError, match="unfinished"):
        load_index(tmp_path / "killed")
    done = []
    monkeypatch.setattr(extract_module.StoreWriter, "write_shard",
                        lambda self, i, data: (done.append(i), real_write(self, i, data))[1])
    build_index(pipe, folder, tmp_path / "killed", workers=0, shard_size=2, progress=False)
    assert 0 not in done  # the first shard was kept
    resumed, _ = load_index(tmp_path / "killed")
    assert resumed.paths == whole.paths
    torch.testing.assert_close(resumed.joint.coarse, whole.joint.coarse)
    q = "a small red rubber cube"
    assert [h.path for h in pipe.search(q, resumed, k=4)] == [h.path for h in pipe.search(q, whole, k=4)]


def test_index_of_another_pipeline_is_refused(parts, pipe, tmp_path):
    from dsanchor.index import build_index, load_index
    from dsanchor.pipeline import _replace

    build_index(pipe, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)
    other = _replace(pipe, heads=type(pipe.heads)(pipe.heads.config))
    with pytest.raises(ConfigError, match="another pipeline"):
        load_index(tmp_path / "idx", other)
    with pytest.raises(ConfigError, match="another pipeline"):
        build_index(other, parts / "synth" / "images", tmp_path / "idx", workers=0, progress=False)


def test_commands_index_search_caption(parts, pipe, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert cli_main(["index", "--pipeline", str(parts / "pipe"), "--images", str(parts / "synth" / "images"),
                     "--out", str(idx), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["search", "--index", str(idx), "--query", "a large green metal sphere", "--k", "2",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["results"]) == 2 and set(out["results"][0]) == {"path", "score", "g"}
    assert out["source"] == "controller"
    img = str(_images(parts)[0])
    assert cli_main(["caption", "--pipeline", str(parts / "pipe"), img, "--g", "0.5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["image"] == img and row["g"] == 0.5 and set(row["captions"]) == {"scene", "object"}
    assert cli_main(["search", "--index", str(idx), "--image", img]) == 2  # no captions in a folder index
    assert "holds no captions" in capsys.readouterr().err
    # a dataset index holds its captions: image -> caption ranking
    assert cli_main(["index", "--pipeline", str(parts / "pipe"), "--data", str(parts / "synth"), "--format",
                     "synth", "--out", str(tmp_path / "ds"), "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["search", "--index", str(tmp_path / "ds"), "--image", img, "--k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert len(res) == 3 and all("caption" in r for r in res)


def test_folder_loader_reads_any_size_and_names_a_bad_file(tmp_path):
    from PIL import Image

    from dsanchor.data import load_dataset

    (tmp_path / "sub").mkdir()
    Image.new("RGB", (120, 40)).save(tmp_path / "b.PNG")
    Image.new("RGB", (30, 90)).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    samples = load_dataset("images", tmp_path)
    assert [(s.image_path, s.width, s.height) for s in samples] == [("b.PNG", 120, 40), ("sub/a.jpg", 30, 90)]
    (tmp_path / "c.png").write_text("broken")
    with pytest.raises(DataError, match="c.png.*not a readable image"):
        load_dataset("images", tmp_path)
    with pytest.raises(DataError, match="has no splits"):
        load_dataset("images", tmp_path / "sub", split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        load_dataset("images", tmp_path / "empty")


def test_region_note_warns_when_new_images_get_other_regions_than_training(pipe):
    import dataclasses

    from dsanchor.pipeline import _replace

    assert "annotation boxes" in pipe.region_note()  # trained on synth boxes; a new image gets proposals
    assert _replace(pipe, regions=dataclasses.replace(pipe.regions, annotations=False)).region_note() is None


def test_new_images_get_the_detector_boxes_of_a_detector_region_source(parts, pipe, tmp_path):
    import dataclasses

    from PIL import Image

    from dsanchor.encoders.detectors import RegionDetector, save_tiny_detr
    from dsanchor.pipeline import _replace

    regions = dataclasses.replace(pipe.regions, detector=str(save_tiny_detr(tmp_path / "detr")),
                                  detector_threshold=0.0)
    with_detector = _replace(pipe, regions=regions)
    image = Image.open(_images(parts)[0]).convert("RGB")
    feats = with_detector.encode_images([image])
    want = RegionDetector(regions).detect([image])[0] / torch.tensor([*image.size, *image.size], dtype=torch.float32)
    torch.testing.assert_close(feats.boxes[0][feats.mask[0]], want)
    loaded = with_detector._detector_model
    again = with_detector.encode_images([image])
    assert with_detector._detector_model is loaded  # loaded once, then reused
    torch.testing.assert_close(again.boxes, feats.boxes)
    assert pipe._detector_model is None  # a pipeline without a detector never loads one


def test_search_with_relations_and_a_per_pair_controller_agrees_with_exact_scoring(parts, pipe):
    """With the compositional scorer on and a per-pair controller, search (faiss first stage, deeper than this
    gallery) ranks exactly as scoring the whole gallery does, and each hit carries its own pair's g."""
    import copy

    from dsanchor.pairs import PairController, PairControllerConfig, pair_scores, pair_states
    from dsanchor.pipeline import _replace
    from dsanchor.relations import compose_fine, compositions
    from dsanchor.retrieval import pair_terms

    heads = copy.deepcopy(pipe.heads)
    heads.config.relation_mix, heads.config.relation_weight = 1.0, 0.3
    torch.manual_seed(0)
    ctrl = PairController(PairControllerConfig(top_m=4, codebook=2, text_dim=pipe.encoder_spec["dims"]["text"],
                                               base_g=0.4, hidden=8))
    ctrl.text_centroids.copy_(torch.nn.functional.normalize(torch.randn(2, ctrl.config.text_dim), dim=-1))
    with torch.no_grad():
        ctrl.head.bias.fill_(0.3)
    both = _replace(pipe, heads=heads, pair_controller=ctrl)
    idx = both.index(parts / "synth" / "images", progress=False, workers=0)
    query = "a large green metal sphere to the left of a small red cube"
    hits, choice = both.search_with_choice(query, idx, k=3, per_pair=True)
    assert choice.source == "per-pair controller" and "per-pair controller chose" in choice.describe()
    raw = both.encode_texts([query])
    text = heads.encode_text(raw)
    s = heads.pool_s.item()
    terms = pair_terms(text, idx.joint, s)
    comp = compositions([query]).embed(lambda ps: heads.encode_text(both.encode_texts(ps)))
    assert len(comp) == 1
    terms = terms._replace(fine=compose_fine(terms.fine, comp, idx.joint, idx.joint.boxes, s,
                                             heads.relation_config))
    states = pair_states(terms, text, raw, idx.joint, s, 0.4, 4, comp)
    exact = pair_scores(terms, ctrl, states)[0]
    assert [idx.paths[i] for i in exact.topk(3).indices.tolist()] == [h.path for h in hits]
    assert torch.allclose(torch.tensor([h.score for h in hits]), exact.topk(3).values, atol=1e-5)
    assert both.search(query, idx, k=3)[0].g == both.choose_g(text=query).g  # by default the query's own g
    with pytest.raises(ConfigError, match="no per-pair controller"):
        pipe.search(query, idx, per_pair=True)
    # rank_captions uses the compositional scorer too: a reversed relation scores differently
    ranked, _ = both.rank_captions(_images(parts)[0], [query, "a small red cube to the left of a large green "
                                                       "metal sphere"], g=1.0, collapse=False)
    assert ranked[0][1] != ranked[1][1]
