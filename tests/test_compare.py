"""Image-level (cluster) bootstrap comparisons of methods, with the spread over seeds (dsanchor.eval.compare)."""

import numpy as np
import pytest
import torch

from dsanchor.eval.compare import bootstrap_diff, cluster_bootstrap, compare_methods, load_hits, save_hits
from dsanchor.report.results import merge_seeds, paired_table


def _clusters(n_images: int, per: int) -> torch.Tensor:
    return torch.arange(n_images).repeat_interleave(per)


def test_identical_methods_give_zero():
    d = torch.zeros(1, 500, dtype=torch.float64)
    r = cluster_bootstrap(d, _clusters(100, 5), n_boot=300)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0 and r["p_le_0"] == 1.0


def test_interval_covers_a_known_difference_and_detects_it():
    gen = torch.Generator().manual_seed(0)
    b = (torch.rand(2000, generator=gen) < 0.3).double()
    a = torch.maximum(b, (torch.rand(2000, generator=gen) < 0.1).double())  # a >= b everywhere, ~7% more
    d = (a - b).view(1, -1)
    r = cluster_bootstrap(d, _clusters(400, 5), n_boot=2000)
    assert r["diff"] == pytest.approx(float(d.mean()))
    assert 0 < r["lo"] < r["diff"] < r["hi"] and r["p_le_0"] == 0.0
    flipped = cluster_bootstrap(-d, _clusters(400, 5), n_boot=2000)
    assert flipped["hi"] < 0


def test_no_difference_gives_an_interval_around_zero():
    gen = torch.Generator().manual_seed(1)
    d = ((torch.rand(3000, generator=gen) < 0.4).double() - (torch.rand(3000, generator=gen) < 0.4).double())
    r = cluster_bootstrap(d.view(1, -1), _clusters(600, 5), n_boot=2000)
    assert r["lo"] < 0 < r["hi"] and 0.0 < r["p_le_0"] < 1.0


def test_independent_queries_match_the_normal_approximation():
    gen = torch.Generator().manual_seed(2)
    d = (torch.rand(4000, generator=gen) < 0.55).double() - (torch.rand(4000, generator=gen) < 0.5).double()
    r = cluster_bootstrap(d.view(1, -1), torch.arange(4000), n_boot=3000, seed=3)  # one query per cluster
    se = float(d.std() / len(d) ** 0.5)
    assert r["hi"] - r["lo"] == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_correlated_queries_widen_the_interval_as_the_design_effect_says():
    """Five identical queries per image carry the information of one: the interval is sqrt(5) wider than a
    per-query bootstrap that treats them as independent."""
    gen = torch.Generator().manual_seed(3)
    per_image = (torch.rand(800, generator=gen) < 0.55).double() - (torch.rand(800, generator=gen) < 0.5).double()
    d = per_image.repeat_interleave(5).view(1, -1)
    clustered = cluster_bootstrap(d, _clusters(800, 5), n_boot=3000)
    naive = cluster_bootstrap(d, torch.arange(4000), n_boot=3000)
    ratio = (clustered["hi"] - clustered["lo"]) / (naive["hi"] - naive["lo"])
    assert ratio == pytest.approx(5 ** 0.5, rel=0.12)


def test_seed_spread_widens_the_interval_and_is_reported():
    gen = torch.Generator().manual_seed(4)
    base = (torch.rand(1000, generator=gen) < 0.5).double() - 0.5
    stable = torch.stack([base, base, base]) * 0.0 + 0.02  # every seed +0.02 on every query
    noisy = torch.stack([base * 0 - 0.08, base * 0 + 0.02, base * 0 + 0.12])  # seeds disagree
    r_s = cluster_bootstrap(stable, _clusters(200, 5), n_boot=1000)
    r_n = cluster_bootstrap(noisy, _clusters(200, 5), n_boot=1000)
    assert r_s["diff"] == pytest.approx(0.02) and r_n["diff"] == pytest.approx(0.02)
    assert r_s["diff_std"] == pytest.approx(0.0) and r_n["diff_std"] == pytest.approx(0.0816, abs=1e-3)
    assert r_s["lo"] > 0 and r_n["lo"] < 0 < r_n["hi"]  # resampling the seeds shows their disagreement
    assert r_n["n_seeds"] == 3 and r_n["n_images"] == 200


def test_bonferroni_interval_is_wider():
    gen = torch.Generator().manual_seed(5)
    d = (torch.rand(1, 1000, generator=gen) < 0.5).double()
    r = cluster_bootstrap(d, _clusters(200, 5), n_boot=2000, bonferroni=20)
    assert r["lo_bonf"] < r["lo"] < r["hi"] < r["hi_bonf"]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one cluster per query"):
        cluster_bootstrap(torch.ones(1, 3), torch.arange(4))


def test_deterministic_for_a_seed():
    gen = torch.Generator().manual_seed(6)
    d = torch.rand(2, 300, generator=gen)
    assert cluster_bootstrap(d, _clusters(60, 5), 300, seed=7) == cluster_bootstrap(d, _clusters(60, 5), 300, seed=7)


def test_records_round_trip_and_merged_table(tmp_path):
    gen = torch.Generator().manual_seed(5)
    clusters = {"t2i": _clusters(10, 5).int(), "i2t": torch.arange(10).int()}
    paths = []
    for s in range(2):
        rec = {m: {f"{p}.{d}": torch.randint(1, 8, (50 if d == "t2i" else 10,), generator=gen) // (1 + lift)
                   for p in ("paired", "exact") for d in ("t2i", "i2t")}
               for m, lift in (("fine", 0), ("dsa_ppo", 1), ("coarse", 0))}
        paths.append(tmp_path / f"hits{s}.safetensors")
        save_hits(paths[-1], rec, clusters)
    records, cl = load_hits(paths)
    assert records["fine"]["exact.t2i"].shape == (2, 50) and torch.equal(cl["t2i"], clusters["t2i"])
    paired = compare_methods(records, cl, n_boot=200)
    assert set(paired["pairs"]) == {"dsa_ppo-fine", "dsa_ppo-coarse"}  # pairs with absent methods skipped
    assert paired["n_comparisons"] == 2 * 4 * 2 and paired["n_seeds"] == 2
    r1 = paired["pairs"]["dsa_ppo-fine"]["exact"]["t2i"]["R@1"]
    exp = float(((records["dsa_ppo"]["exact.t2i"] <= 1).double() - (records["fine"]["exact.t2i"] <= 1).double()).mean())
    assert r1["diff"] == pytest.approx(exp)
    per_seed = [{"seeds": [s], "n_images": 10, "n_captions": 50, "methods": {}, "paired": {}} for s in (0, 1)]
    merged = merge_seeds(per_seed, paired)
    assert merged["paired"] is paired
    table = paired_table(merged)
    assert "dsa_ppo − fine" in table and "exact t2i R@1" in table and "16 comparisons" in table


def test_records_of_different_test_queries_are_refused(tmp_path):
    rec = {"fine": {"paired.t2i": torch.ones(5, dtype=torch.int32)}}
    save_hits(tmp_path / "a.safetensors", rec, {"t2i": torch.zeros(5, dtype=torch.int32)})
    save_hits(tmp_path / "b.safetensors", rec, {"t2i": torch.arange(5, dtype=torch.int32)})
    with pytest.raises(ValueError, match="different test queries"):
        load_hits([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def _mean(x):
    return float(x.mean()) if len(x) else 0.0


def test_bootstrap_difference_resolves_a_shift_and_not_noise():
    """The per-image bootstrap of `mllm eval` (moved here from integrations/evaluate.py; same draws)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 200))
    shifted = bootstrap_diff(_mean, a + 1.0, a + rng.normal(scale=0.1, size=(1, 200)), 500)
    assert shifted["excludes_zero"] and shifted["low"] > 0.8
    noise = bootstrap_diff(_mean, rng.normal(size=(1, 200)), rng.normal(size=(1, 200)), 500)
    assert noise["low"] < noise["diff"] < noise["high"]
    # three training seeds that disagree widen the interval beyond the image-only one
    seeds = np.stack([a[0] + 0.5, a[0] + 1.0, a[0] + 1.5])  # (3, 200)
    spread = bootstrap_diff(_mean, seeds, a, 500)
    single = bootstrap_diff(_mean, seeds.mean(0, keepdims=True), a, 500)
    assert spread["diff"] == pytest.approx(single["diff"]) and spread["seeds"] == [3, 1]
    assert spread["high"] - spread["low"] > 3 * (single["high"] - single["low"])
