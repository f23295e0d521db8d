import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from dsanchor.data.records import Caption, ObjectAnnotation, Sample
from dsanchor.encoders import (
    EncoderBackend,
    EncoderConfig,
    EncoderDims,
    ImageTransform,
    RegionConfig,
    create_encoder,
    list_encoders,
    pool_coarse,
    roi_vectors,
    save_tiny_clip,
)
from dsanchor.errors import ConfigError, DataError
from dsanchor.features import ExtractConfig, FeatureStore, TextCache, extract_features

HERE = Path(__file__).resolve().parent


# ---- a tiny deterministic test-only backend (registered only inside these tests) ---------------------------

@dataclass
class ToyConfig(EncoderConfig):
    image_size: int = field(default=16, metadata={"help": "input side"})


class ToyEncoder(EncoderBackend):
    """Coarse = pixel means (global + quadrants), regions = RoI-aligned pixels, texts = hashed vectors."""

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config=None):
        super().__init__(config or ToyConfig())
        self._transform = ImageTransform(self.config.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.text_calls = 0

    @property
    def dims(self):
        return EncoderDims(coarse=15, region=3, text=8)

    @property
    def transform(self):
        return self._transform

    def encode_pixels(self, pixels, boxes, mask):
        return pool_coarse(pixels, "avg+grid2"), roi_vectors(pixels, boxes, mask, self.config.roi_samples)

    def encode_texts(self, texts):
        self.text_calls += len(texts)
        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(8, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(out), dim=-1) if out else torch.zeros(0, 8)


@pytest.fixture
def toy_registered(monkeypatch):
    import dsanchor.encoders as enc

    monkeypatch.setitem(enc._ENCODERS, "toy", ToyEncoder)


def make_dataset(root: Path, n: int, size=(48, 40)) -> list[Sample]:
    """n tiny CLEVR-like PNGs: grey background, 1-3 coloured squares; every third image has no boxes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        im = Image.new("RGB", size, (128, 128, 128))
        d = ImageDraw.Draw(im)
        objs = []
        for k in range(1 + i % 3):
            x, y = 4 + 13 * k, 4 + (i * 7 + 5 * k) % 20
            color = [(220, 30, 30), (30, 200, 60), (40, 60, 220)][(i + k) % 3]
            d.rectangle([x, y, x + 9, y + 11], fill=color)
            objs.append(ObjectAnnotation(["red", "green", "blue"][(i + k) % 3] + " cube", (x, y, 10, 12)))
        im.save(root / "images" / f"{i:04d}.png")
        caps = [Caption(f"a scene with {len(objs)} cubes", "scene"), Caption(f"image {i} has a cube", "object")]
        if i % 4 == 0:
            caps.append(Caption("a cube left of a cube", None))
        samples.append(Sample(image_id=100 + i, image_path=f"images/{i:04d}.png", width=size[0], height=size[1],
                              captions=caps, objects=objs if i % 3 else [],
                              split=["train", "val", "test"][i % 3]))
    return samples


def _store_tensors(path: Path) -> dict[str, torch.Tensor]:
    s = FeatureStore(path)
    img, txt = s.images(), s.texts()
    return {"ids": img.image_ids, "coarse": img.coarse, "regions": img.regions, "boxes": img.boxes,
            "mask": img.mask, "text": txt.embeddings, "text_ids": txt.image_ids, "gran": txt.granularity}


def assert_same_store(a: Path, b: Path, atol: float = 1e-5) -> None:
    ta, tb = _store_tensors(a), _store_tensors(b)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], atol=atol, rtol=0, msg=k)
    assert FeatureStore(a).texts().captions == FeatureStore(b).texts().captions


# ---- tests -----------------------------------------------------------------------------------------------------

def test_round_trip_matches_direct_encoding(tmp_path):
    samples = make_dataset(tmp_path / "data", 7)
    enc = ToyEncoder()
    res = extract_features(samples, tmp_path / "data", tmp_path / "feats", enc,
                           ExtractConfig(batch_size=2, shard_size=3, workers=0, progress=False),
                           RegionConfig(max_regions=4), source={"format": "test"})
    assert res.images == 7 and res.shards == 3 and res.texts == 16 and res.texts_encoded == 11
    store = FeatureStore(res.out)
    m = store.manifest
    assert m["n_images"] == 7 and m["n_shards"] == 3 and m["encoder"]["name"] == "toy"
    assert m["regions"]["max_regions"] == 4 and m["source"]["format"] == "test"
    img = store.images()
    assert img.image_ids.tolist() == list(range(100, 107))
    assert img.regions.shape == (7, 4, 3) and img.coarse.shape == (7, 15)
    assert img.objects[1] == ["green cube", "blue cube"] and img.objects[0] == []
    # image 1 has 2 annotated boxes; image 0 has none and gets the proposal fallback (4 boxes)
    assert img.mask[1].tolist() == [True, True, False, False] and img.mask[0].all()
    torch.testing.assert_close(img.boxes[1, 1], torch.tensor([17 / 48, 16 / 40, 10 / 48, 12 / 40]))
    ims = [Image.open(tmp_path / "data" / s.image_path) for s in samples[:2]]
    boxes = torch.tensor([o.box for o in samples[1].objects])  # (2, 4) pixels
    direct = enc.encode_images(ims, [boxes, boxes], 4)
    torch.testing.assert_close(img.coarse[:2], direct.coarse)
    torch.testing.assert_close(img.regions[1], direct.regions[1])
    txt = store.texts()
    assert len(txt) == sum(len(s.captions) for s in samples)
    assert txt.granularity[:3].tolist() == [0, 1, -1] and txt.image_ids[:3].tolist() == [100, 100, 100]
    assert txt.captions[1] == "image 0 has a cube"
    torch.testing.assert_close(txt.embeddings[0], enc.encode_texts(["a scene with 1 cubes"])[0])
    assert store.images("val").image_ids.tolist() == [101, 104]
    assert set(store.texts("val").image_ids.tolist()) == {101, 104}
    names, emb = store.object_vocabulary()
    assert names == ["blue cube", "green cube", "red cube"]
    torch.testing.assert_close(emb, enc.encode_texts(names))
    assert store.timing["images_per_s"] > 0


def test_workers_give_the_same_store(tmp_path):
    samples = make_dataset(tmp_path / "data", 6)
    for w in (0, 2):
        extract_features(samples, tmp_path / "data", tmp_path / f"w{w}", ToyEncoder(),
                         ExtractConfig(batch_size=4, shard_size=4, workers=w, progress=False))
    assert_same_store(tmp_path / "w0", tmp_path / "w2", atol=0)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    samples = make_dataset(tmp_path / "data", 8)
    cfg = ExtractConfig(batch_size=2, shard_size=3, workers=0, progress=False)
    extract_features(samples, tmp_path / "data", tmp_path / "full", ToyEncoder(), cfg)

    def die(shard):
        if shard == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        extract_features(samples, tmp_path / "data", tmp_path / "resumed", ToyEncoder(), cfg, on_shard_written=die)
    with pytest.raises(DataError, match="not a finished feature store"):
        FeatureStore(tmp_path / "resumed")
    (tmp_path / "resumed" / "shards" / ".shard-00002.safetensors.tmp-1").write_bytes(b"partial")
    done = []
    enc = ToyEncoder()
    extract_features(samples, tmp_path / "data", tmp_path / "resumed", enc, cfg, on_shard_written=done.append)
    assert done == [2]  # shards 0 and 1 were kept
    assert_same_store(tmp_path / "full", tmp_path / "resumed", atol=0)
    enc.text_calls = 0
    res = extract_features(samples, tmp_path / "data", tmp_path / "resumed", enc, cfg)  # finished: no work
    assert enc.text_calls == 0 and res.images == 0


def test_rerun_with_other_settings_needs_overwrite(tmp_path):
    samples = make_dataset(tmp_path / "data", 3)
    cfg = ExtractConfig(workers=0, progress=False)
    extract_features(samples, tmp_path / "data", tmp_path / "feats", ToyEncoder(), cfg)
    with pytest.raises(ConfigError, match="different regions.*--overwrite"):
        extract_features(samples, tmp_path / "data", tmp_path / "feats", ToyEncoder(), cfg,
                         RegionConfig(max_regions=2))
    cfg_over = ExtractConfig(workers=0, progress=False, overwrite=True)
    extract_features(samples, tmp_path / "data", tmp_path / "feats", ToyEncoder(), cfg_over,
                     RegionConfig(max_regions=2))
    assert FeatureStore(tmp_path / "feats").images().regions.shape[1] == 2


def test_missing_image_and_duplicate_ids(tmp_path):
    samples = make_dataset(tmp_path / "data", 3)
    (tmp_path / "data" / samples[1].image_path).unlink()
    with pytest.raises(DataError, match=r"0001\.png: image file not found"):
        extract_features(samples, tmp_path / "data", tmp_path / "a", ToyEncoder(),
                         ExtractConfig(workers=1, progress=False))
    samples[2].image_id = samples[0].image_id
    with pytest.raises(DataError, match="image id 100 appears more than once"):
        extract_features(samples, tmp_path / "data", tmp_path / "b", ToyEncoder(), ExtractConfig(progress=False))


def test_text_cache_encodes_each_text_once():
    enc = ToyEncoder()
    cache = TextCache(enc.encode_texts, 8, max_items=2)
    a = cache(["x", "y", "x"])
    assert enc.text_calls == 2 and torch.equal(a[0], a[2])
    b = cache(["y", "z"])
    assert enc.text_calls == 3 and torch.equal(b[0], a[1])
    cache(["x"])  # "x" was evicted (max 2 kept)
    assert enc.text_calls == 4 and cache([]).shape == (0, 8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), image_size=32, patch_size=8)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "effnet-minilm" else n
                                  for n in list_encoders()])  # effnet's real weights: slow on CPU
def test_every_backend_extracts_and_resumes(tmp_path, tiny_clip, name):
    """Each registered backend goes through the store: shapes, no NaN, resume gives the same store."""
    kwargs = {"clip": {"model_path": str(tiny_clip), "coarse_layer": 1}}.get(name, {})
    enc = create_encoder(name, **kwargs)
    samples = make_dataset(tmp_path / "data", 4)
    cfg = ExtractConfig(batch_size=2, shard_size=2, workers=0, progress=False)
    extract_features(samples, tmp_path / "data", tmp_path / "full", enc, cfg)
    img, txt = FeatureStore(tmp_path / "full").images(), FeatureStore(tmp_path / "full").texts()
    d = enc.dims
    assert img.coarse.shape == (4, d.coarse) and img.regions.shape == (4, 10, d.region)
    assert txt.embeddings.shape == (len(txt), d.text)
    assert all(torch.isfinite(t).all() for t in (img.coarse, img.regions, txt.embeddings))

    def die(shard):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        extract_features(samples, tmp_path / "data", tmp_path / "resumed", enc, cfg, on_shard_written=die)
    extract_features(samples, tmp_path / "data", tmp_path / "resumed", enc, cfg)
    assert_same_store(tmp_path / "full", tmp_path / "resumed")


def _cli(argv):
    import argparse

    from dsanchor.commands import extract as cmd

    parser = argparse.ArgumentParser(prog="dsanchor")
    cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_on_synth_scenes(tmp_path):
    from dsanchor.data import SynthConfig, generate_synth

    generate_synth(tmp_path / "synth", SynthConfig(scenes=6, image_size=64, max_objects=4, supersample=1))
    out = tmp_path / "feats"
    argv = ["extract", "--data", str(tmp_path / "synth"), "--format", "synth", "--out", str(out),
            "--encoder", "clip", "--model-path", str(save_tiny_clip(tmp_path / "clip")), "--coarse-layer", "2",
            "--workers", "0", "--max-regions", "5", "--no-progress", "--split", "train"]
    assert _cli(argv) == 0
    store = FeatureStore(out)
    assert len(store) == store.manifest["split_counts"]["train"] > 0
    assert store.manifest["source"]["split"] == "train" and (out / "config.yaml").is_file()
    assert store.images().mask.any(dim=1).all() and len(store.texts()) > 0
    assert _cli(argv) == 0  # rerun of a finished store: nothing to do
    with pytest.raises(ConfigError, match="--coarse-layer applies to encoder clip"):
        _cli(argv[:7] + ["--coarse-layer", "1"])  # default encoder effnet-minilm


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    samples_root = tmp_path / "data"
    make_dataset(samples_root, 9)
    runner = tmp_path / "run_extract.py"
    runner.write_text(f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import torch.distributed as dist
from test_extract import ToyEncoder, make_dataset
from dsanchor.features import ExtractConfig, extract_features, init_distributed
rank, world = init_distributed()
samples = make_dataset(__import__("pathlib").Path({str(samples_root)!r}), 9)
extract_features(samples, {str(samples_root)!r}, sys.argv[1], ToyEncoder(),
                 ExtractConfig(batch_size=2, shard_size=2, workers=1, progress=False))
if dist.is_initialized():
    dist.destroy_process_group()
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(runner), str(tmp_path / "one")], check=True, env=env, timeout=300)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    two = [torchrun, "--nproc-per-node", "2", "--standalone", str(runner), str(tmp_path / "two")]
    subprocess.run(two, check=True, env=env, timeout=300)
    assert_same_store(tmp_path / "one", tmp_path / "two")
    assert FeatureStore(tmp_path / "two").manifest["n_shards"] == 5
    subprocess.run(two, check=True, env=env, timeout=300)  # a finished store: every rank returns
