"""Shared fixtures: a tiny pipeline (random parts on a tiny random CLIP encoder) for the pipeline, index and
serve tests, built once per session in seconds with no downloads (``parts``: the folders; ``pipe``: the loaded
pipeline)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def parts(tmp_path_factory):
    """A tiny synth dataset, its feature store (tiny CLIP) and every part of a pipeline, saved to folders."""
    from dsanchor.align.heads import AlignConfig, AlignmentHeads
    from dsanchor.captioning import DecoderConfig, VocabConfig, Vocabulary
    from dsanchor.captioning.decoder import CaptionDecoder
    from dsanchor.controller import ControllerConfig, GranularityController
    from dsanchor.data import SynthConfig, generate_synth, load_dataset
    from dsanchor.encoders import create_encoder
    from dsanchor.encoders.clip import save_tiny_clip
    from dsanchor.encoders.regions import RegionConfig
    from dsanchor.features.extract import ExtractConfig, extract_features
    from dsanchor.features.store import FeatureStore
    from dsanchor.hallucination import DetectorConfig, HallucinationDetector
    from dsanchor.state import query_states

    root = tmp_path_factory.mktemp("tiny-pipeline")
    generate_synth(root / "synth", SynthConfig(scenes=7, image_size=64, max_objects=3, supersample=1))
    clip = save_tiny_clip(root / "clip")
    encoder = create_encoder("clip", model_path=str(clip), coarse_layer=1)
    extract_features(load_dataset("synth", root / "synth"), root / "synth", root / "feats", encoder,
                     ExtractConfig(workers=0, progress=False, shard_size=4), RegionConfig(max_regions=4))
    store = FeatureStore(root / "feats")
    d = store.dims
    torch.manual_seed(0)
    AlignmentHeads(AlignConfig(coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"], dim=16,
                               hidden=16)).save_pretrained(root / "heads")
    ctrl = GranularityController(ControllerConfig(state_dim=d["text"] + d["coarse"] + 1, hidden=8, layers=1,
                                                  codebook=2, text_dim=d["text"]))
    s_t, s_i = query_states(store.texts().embeddings, store.images().coarse)
    ctrl.fit_inputs(torch.cat([s_t, s_i]))
    ctrl.save_pretrained(root / "ppo" / "controller")
    HallucinationDetector(DetectorConfig(coarse_dim=d["coarse"], region_dim=d["region"], text_dim=d["text"], dim=8,
                                         hidden=8)).save_pretrained(root / "detector")
    vocab = Vocabulary.build(store.texts().captions, VocabConfig(max_len=12))
    dec = CaptionDecoder(DecoderConfig(vocab_size=len(vocab), visual_dim=16, width=16, layers=1, heads=2,
                                       max_len=vocab.max_len + 2, granularities=("scene", "object")))
    dec.save_pretrained(root / "decoder", vocab)
    return root


@pytest.fixture(scope="session")
def pipe(parts):
    """The saved and reloaded pipeline of :func:`parts` (fixed g 0.4, used without a controller)."""
    from dsanchor.pipeline import load, save_pipeline

    save_pipeline(parts / "pipe", parts / "feats", parts / "heads", parts / "ppo", parts / "detector",
                  parts / "decoder", fixed_g=0.4)
    return load(parts / "pipe")
