"""Paired bootstrap comparisons of methods (dsanchor.eval.compare)."""

import pytest
import torch

from dsanchor.eval.compare import compare_methods, load_hits, paired_bootstrap, save_hits
from dsanchor.report.results import merge_seeds, paired_table


def test_identical_methods_give_zero():
    a = torch.rand(500) > 0.5
    r = paired_bootstrap(a, a.clone(), n_boot=500)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0 and r["p_le_0"] == 1.0


def test_interval_covers_the_known_difference_and_detects_a_real_one():
    gen = torch.Generator().manual_seed(0)
    b = torch.rand(2000, generator=gen) < 0.3
    a = b | (torch.rand(2000, generator=gen) < 0.1)  # a hits wherever b does, plus ~7% more
    r = paired_bootstrap(a, b, n_boot=2000)
    true = float((a.double() - b.double()).mean())
    assert r["diff"] == pytest.approx(true)
    assert 0 < r["lo"] < true < r["hi"]
    assert r["p_le_0"] == 0.0
    flipped = paired_bootstrap(b, a, n_boot=2000)
    assert flipped["hi"] < 0 and flipped["p_le_0"] == 1.0


def test_no_difference_gives_an_interval_around_zero():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(3000, generator=gen) < 0.4, torch.rand(3000, generator=gen) < 0.4
    r = paired_bootstrap(a, b, n_boot=2000)
    assert r["lo"] < 0 < r["hi"]  # two draws of the same rate: the interval must contain 0
    assert 0.0 < r["p_le_0"] < 1.0


def test_interval_matches_the_normal_approximation():
    gen = torch.Generator().manual_seed(2)
    d = (torch.rand(4000, generator=gen) < 0.55).double() - (torch.rand(4000, generator=gen) < 0.5).double()
    r = paired_bootstrap(d, torch.zeros_like(d), n_boot=4000, seed=3)
    se = float(d.std() / len(d) ** 0.5)
    assert r["hi"] - r["lo"] == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_seeds_are_averaged_and_their_spread_reported():
    a = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    b = torch.zeros(2, 4, dtype=torch.bool)
    r = paired_bootstrap(a, b, n_boot=200)
    assert r["diff"] == pytest.approx(0.375)
    assert r["diff_std"] == pytest.approx(0.125)
    assert r["n_queries"] == 4


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="at least one query"):
        paired_bootstrap(torch.ones(0), torch.ones(0))


def test_deterministic_for_a_seed():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.rand(300, generator=gen) < 0.5, torch.rand(300, generator=gen) < 0.5
    assert paired_bootstrap(a, b, n_boot=300, seed=7) == paired_bootstrap(a, b, n_boot=300, seed=7)


def test_hits_round_trip_and_merged_table(tmp_path):
    gen = torch.Generator().manual_seed(5)
    paths = []
    for s in range(2):
        hits = {m: {"t2i": torch.rand(50, generator=gen) < p, "i2t": torch.rand(10, generator=gen) < p}
                for m, p in (("fine", 0.3), ("dsa_ppo", 0.5), ("coarse", 0.2))}
        paths.append(tmp_path / f"hits{s}.safetensors")
        save_hits(paths[-1], hits)
    stacked = load_hits(paths)
    assert stacked["fine"]["t2i"].shape == (2, 50) and stacked["fine"]["t2i"].dtype == torch.bool
    paired = compare_methods(stacked, k=10, n_boot=200)
    assert set(paired["pairs"]) == {"dsa_ppo-fine", "dsa_ppo-coarse"}  # pairs with absent methods skipped
    per_seed = [{"seeds": [s], "n_images": 10, "n_captions": 50, "methods": {}, "paired": {"k": 10}} for s in (0, 1)]
    merged = merge_seeds(per_seed, paired)
    assert merged["paired"] is paired
    table = paired_table(merged)
    assert "dsa_ppo − fine" in table and "seed std" in table
