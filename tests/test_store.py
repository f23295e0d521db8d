import json

import pytest
import torch

from dsanchor.errors import ConfigError, DataError
from dsanchor.features import FeatureStore, ShardData, StoreWriter
from dsanchor.features.store import FORMAT_VERSION

R, DC, DR, DT = 3, 5, 4, 6


def _plan(fingerprint="abc", **extra):
    return {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "regions": {"max_regions": R},
            "encoder": {"name": "toy", "config": {}, "dims": {"coarse": DC, "region": DR, "text": DT}}, **extra}


def _shard(first_id: int, n: int, splits, seed: int) -> ShardData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(first_id, first_id + n)
    text_ids = ids.repeat_interleave(2)  # two captions per image
    return ShardData(
        image_ids=ids, coarse=torch.randn(n, DC, generator=g), regions=torch.randn(n, R, DR, generator=g),
        boxes=torch.rand(n, R, 4, generator=g), mask=torch.rand(n, R, generator=g) > 0.3,
        text_embeddings=torch.randn(2 * n, DT, generator=g), text_image_ids=text_ids,
        text_granularity=torch.tensor([0, 1] * n),
        image_paths=[f"img/{i}.png" for i in ids.tolist()], splits=list(splits),
        objects=[[f"obj{i}"] * (i % 3) for i in ids.tolist()],
        captions=[f"caption {k} of {i}" for i in ids.tolist() for k in range(2)])


def _write(path, shards, fingerprint="abc"):
    w = StoreWriter(path, _plan(fingerprint))
    assert w.prepare() is False
    for i, s in enumerate(shards):
        w.write_shard(i, s)
    return w.finish(len(shards))


def test_round_trip_and_split_filters(tmp_path):
    shards = [_shard(0, 3, ["train", "test", "train"], 0), _shard(3, 2, ["test", None], 1)]
    manifest = _write(tmp_path / "feats", shards)
    assert manifest["n_images"] == 5 and manifest["n_texts"] == 10
    assert manifest["split_counts"] == {"train": 2, "test": 2, "None": 1}
    store = FeatureStore(tmp_path / "feats")
    assert len(store) == 5 and store.num_shards == 2 and store.dims == {"coarse": DC, "region": DR, "text": DT}
    img = store.images()
    torch.testing.assert_close(img.coarse, torch.cat([s.coarse for s in shards]))
    torch.testing.assert_close(img.regions, torch.cat([s.regions for s in shards]))
    assert img.mask.dtype == torch.bool and torch.equal(img.mask, torch.cat([s.mask for s in shards]))
    assert img.image_ids.tolist() == [0, 1, 2, 3, 4] and img.splits == ["train", "test", "train", "test", None]
    assert img.objects == [[], ["obj1"], ["obj2", "obj2"], [], ["obj4"]]
    test = store.images("test")
    assert test.image_ids.tolist() == [1, 3] and len(test) == 2
    torch.testing.assert_close(test.coarse, torch.stack([shards[0].coarse[1], shards[1].coarse[0]]))
    txt = store.texts("test")
    assert txt.image_ids.tolist() == [1, 1, 3, 3] and txt.captions[0] == "caption 0 of 1"
    torch.testing.assert_close(txt.embeddings, torch.cat([shards[0].text_embeddings[2:4],
                                                          shards[1].text_embeddings[0:2]]))
    assert txt.granularity.tolist() == [0, 1, 0, 1]
    assert len(store.texts()) == 10 and store.image_paths("train") == ["img/0.png", "img/2.png"]
    assert len(store.images("val")) == 0 and store.texts("val").embeddings.shape == (0, DT)


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="not a finished feature store"):
        FeatureStore(tmp_path)
    w = StoreWriter(tmp_path / "part", _plan())
    w.prepare()
    w.write_shard(0, _shard(0, 2, ["train"] * 2, 0))
    with pytest.raises(DataError, match="rerun the same extract command"):
        FeatureStore(tmp_path / "part")
    _write(tmp_path / "old", [_shard(0, 1, ["train"], 0)])
    m = json.loads((tmp_path / "old" / "manifest.json").read_text())
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(DataError, match="format_version"):
        FeatureStore(tmp_path / "old")


def test_resume_keeps_finished_shards_and_ignores_partial_files(tmp_path):
    path = tmp_path / "feats"
    w = StoreWriter(path, _plan())
    w.prepare()
    w.write_shard(0, _shard(0, 2, ["train"] * 2, 0))
    (path / "shards" / ".shard-00001.safetensors.tmp-123").write_bytes(b"half a shard")
    with pytest.raises(DataError, match="shard missing or unfinished"):
        w.finish(2)
    again = StoreWriter(path, _plan())
    assert again.prepare() is False
    assert again.is_done(0) and not again.is_done(1)
    assert not list((path / "shards").glob(".*tmp*"))  # leftovers removed
    again.write_shard(1, _shard(2, 1, ["test"], 1))
    again.finish(2)
    assert len(FeatureStore(path)) == 3
    assert StoreWriter(path, _plan()).prepare() is True  # finished: nothing to do


def test_other_plan_needs_overwrite(tmp_path):
    path = tmp_path / "feats"
    _write(path, [_shard(0, 2, ["train"] * 2, 0)])
    with pytest.raises(ConfigError, match="--overwrite"):
        StoreWriter(path, _plan("xyz", shard_size=7)).prepare()
    w = StoreWriter(path, _plan("xyz"), overwrite=True)
    assert w.prepare() is False and not w.is_done(0)
    assert not (path / "manifest.json").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and is not a feature store"):
        StoreWriter(tmp_path / "busy", _plan(), overwrite=True).prepare()


def test_shard_from_another_plan_is_not_done(tmp_path):
    path = tmp_path / "feats"
    w = StoreWriter(path, _plan("one"))
    w.prepare()
    w.write_shard(0, _shard(0, 1, ["train"], 0))
    assert not StoreWriter(path, _plan("two")).is_done(0)
